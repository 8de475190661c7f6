"""Every path-taking option of the command line, given a path it cannot use, ends in one sentence.

Three hostile paths: one inside a folder of mode 0000, one with a name over 255 bytes, and a symbolic link
loop. Each is given to every option and key that takes a path; each run must end in one ``error:``
sentence naming the problem, exit status 2, and no traceback. The cases run in one process, through click's
runner (Python and the libraries start once, not 60 times), that file permissions bind: as root (as the
tests run here and in CI) it is root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, which is what lets
root ignore a folder's mode. (Switching to ``nobody`` instead would also take away the interpreter, which
lives under root's 0700 home on this machine.)

Output folders: an export into an empty read-only folder is refused for that user and the folder is left as
it was (root, whom permissions do not bind, writes the export and the folder stays read-only); a report
into a folder holding the user's own PNG of the same name is refused and the PNG untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from studies.cli import cli
from tests.studies.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]
AS_ROOT = os.geteuid() == 0
# <linux/prctl.h> and <linux/capability.h>
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2

#: Each hostile path (a name under the module's folder) and what the refusal must say about it.
HOSTILE = {
    "unreadable folder": ("locked/item", "permission denied"),
    "over-long name": ("n" * 300, "too long for the file system"),
    "symlink loop": ("loop", "loop of symbolic links"),
}

#: Each path-taking option: the command line, with ``{bad}`` for the hostile path and ``{...}`` for the
#: module's good paths (a YAML key's case writes a config file whose key is the hostile path).
OPTIONS: dict[str, list[str]] = {
    "study create CONFIG": ["study", "create", "{bad}", "--storage", "{new_db}"],
    "model": ["study", "create", "{yaml:model}", "--storage", "{new_db}"],
    "data.source": ["study", "create", "{yaml:data.source}", "--storage", "{new_db}"],
    "data.heldout": ["study", "create", "{yaml:data.heldout}", "--storage", "{new_db}"],
    "data.ood": ["study", "create", "{yaml:data.ood}", "--storage", "{new_db}"],
    "study create --storage": ["study", "create", "{yaml}", "--storage", "sqlite:///{bad}"],
    "study list --storage": ["study", "list", "--storage", "sqlite:///{bad}"],
    "study status --storage": ["study", "status", "tiny", "--storage", "sqlite:///{bad}"],
    "apply --lookup": ["apply", "--lookup", "{bad}", "--model", "{model}", "--seq-len", "32", "--sequences", "2"],
    "apply --model": ["apply", "--lookup", "{lookup}", "--model", "{bad}", "--seq-len", "32", "--sequences", "2"],
    "apply --data": ["apply", "--lookup", "{lookup}", "--model", "{model}", "--data", "{bad}", "--seq-len", "32"],
    "evaluate --model": ["evaluate", "--sparsity", "0.5", "--model", "{bad}", "--seq-len", "32"],
    "evaluate --data": ["evaluate", "--sparsity", "0.5", "--model", "{model}", "--data", "{bad}", "--seq-len", "32"],
    "calibrate --model": ["calibrate", "--model", "{bad}", "--seq-len", "32"],
    "calibrate --data": ["calibrate", "--model", "{model}", "--data", "{bad}", "--seq-len", "32"],
    "calibrate --out": ["calibrate", "--model", "{model}", "--seq-len", "32", "--out", "{bad}"],
    "study export --out": ["study", "export", "tiny", "--out", "{bad}", "--storage", "{url}"],
    "study report --out": ["study", "report", "tiny", "--out", "{bad}", "--storage", "{url}"],
    "demo --out": ["demo", "--out", "{bad}"],
}

#: Run by the unprivileged user: each named command line through click's runner; results as one JSON line.
_BATCH = """
import json, sys
from click.testing import CliRunner
from studies.cli import cli
results = {}
for name, argv in json.load(sys.stdin).items():
    result = CliRunner().invoke(cli, argv)
    failure = result.exception if not isinstance(result.exception, SystemExit) else None
    results[name] = {"exit_code": result.exit_code, "stderr": result.stderr, "output": result.output,
                     "exception": None if failure is None else repr(failure)}
print("RESULTS " + json.dumps(results))
"""


def run(*args: Any) -> dict[str, Any]:
    """A command line run here (as this user), in the shape the batch reports."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    failure = result.exception if not isinstance(result.exception, SystemExit) else None
    return {
        "exit_code": result.exit_code,
        "stderr": result.stderr,
        "output": result.output,
        "exception": None if failure is None else repr(failure),
    }


def assert_one_sentence(result: dict[str, Any], fragment: str) -> None:
    """Exit status 2, and the run ends in exactly one ``error:`` sentence holding ``fragment``; no traceback."""
    assert result["exception"] is None and result["exit_code"] == 2, result
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result["stderr"]
    assert fragment in errors[0], errors[0]
    assert "Traceback" not in result["output"] + result["stderr"]


@pytest.fixture(scope="module")
def place(tmp_path_factory, trained_tiny_dir) -> Iterator[dict[str, Any]]:
    """A finished study of the tiny model with an export, the hostile paths, and a scratch folder."""
    root = tmp_path_factory.mktemp("paths")
    url = f"sqlite:///{root / 'study.db'}"
    good = tiny_config(trained_tiny_dir, trials=2)
    (root / "tiny.yaml").write_text(yaml.safe_dump(good))
    for args in (
        ("study", "create", root / "tiny.yaml"),
        ("study", "run", "tiny"),
        ("study", "export", "tiny", "--out", root / "lookup"),
    ):
        result = run(*args, "--storage", url)
        assert result["exit_code"] == 0, result
    (root / "scratch").mkdir()
    (root / "locked").mkdir()
    (root / "locked" / "item").write_text("never reached")
    (root / "locked").chmod(0)
    (root / "loop").symlink_to(root / "loop")
    try:
        yield {"root": root, "url": url, "good": good, "model": trained_tiny_dir, "lookup": root / "lookup"}
    finally:
        (root / "locked").chmod(0o755)


def _yaml_case(place: dict[str, Any], key: str, bad: Path, name: str) -> Path:
    """A copy of the good YAML with ``key`` (``model`` or ``data.<role>``) set to ``bad``."""
    config = json.loads(json.dumps(place["good"]))
    if key == "model":
        config["model"] = str(bad)
    else:
        config["data"][key.removeprefix("data.")] = str(bad)
    path = place["root"] / "scratch" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _argv(place: dict[str, Any], option: str, bad: Path, name: str) -> list[str]:
    values = {
        "{bad}": str(bad),
        "{new_db}": f"sqlite:///{place['root'] / 'scratch' / 'new.db'}",
        "{yaml}": str(place["root"] / "tiny.yaml"),
        "{model}": str(place["model"]),
        "{lookup}": str(place["lookup"]),
        "{url}": place["url"],
    }
    argv = []
    for part in OPTIONS[option]:
        if part.startswith("{yaml:"):
            part = str(_yaml_case(place, part[len("{yaml:") : -1], bad, name))
        for key, value in values.items():
            part = part.replace(key, value)
        argv.append(part)
    return argv


def _drop_permission_override() -> None:
    """In the child, before it runs Python: take CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH out of its bounding set,
    so that after exec it is root without the capabilities that let root ignore file permissions; the files
    here are root's, so their mode bits bind it as they bind any owner."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _run_unprivileged(place: dict[str, Any], cases: dict[str, list[str]]) -> dict[str, Any]:
    """Run every case in one Python process that file permissions bind (as this user when not root)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _BATCH],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=place["root"],
        env=env,
        preexec_fn=_drop_permission_override if AS_ROOT else None,
        start_new_session=True,
    )
    try:
        output, errors = process.communicate(json.dumps(cases), timeout=900)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    lines = [line for line in output.splitlines() if line.startswith("RESULTS ")]
    assert process.returncode == 0 and lines, output + errors
    return json.loads(lines[-1].removeprefix("RESULTS "))


@pytest.fixture(scope="module")
def readonly(place) -> dict[str, Any]:
    """An empty folder of mode 0555, and how it was (mode, inode) before anything ran."""
    folder = place["root"] / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return {"path": folder, "before": (stat.S_IMODE(folder.stat().st_mode), folder.stat().st_ino)}


@pytest.fixture(scope="module")
def results(place, readonly) -> dict[str, Any]:
    """Every option against every hostile path, and an export into the read-only folder, as one batch."""
    cases = {
        f"{option} / {hostile}": _argv(place, option, place["root"] / name, f"{option}-{hostile}".replace(" ", "_"))
        for option in OPTIONS
        for hostile, (name, _) in HOSTILE.items()
    }
    cases["export into a read-only folder"] = ["study", "export", "tiny", "--out", str(readonly["path"]), "--storage"]
    cases["export into a read-only folder"].append(place["url"])
    return _run_unprivileged(place, cases)


@pytest.mark.parametrize("hostile", list(HOSTILE))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_a_path_that_cannot_be_used_is_one_sentence(results, option, hostile):
    assert_one_sentence(results[f"{option} / {hostile}"], HOSTILE[hostile][1])


def test_an_export_into_an_empty_read_only_folder_is_refused_and_leaves_it_as_it_was(results, readonly):
    assert_one_sentence(results["export into a read-only folder"], "read-only to this user")
    folder = readonly["path"]
    assert (stat.S_IMODE(folder.stat().st_mode), folder.stat().st_ino) == readonly["before"]
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(not AS_ROOT, reason="only root may write into a read-only folder")
def test_root_writes_an_export_into_a_read_only_folder_which_stays_read_only(place):
    folder = place["root"] / "readonly-for-root"
    folder.mkdir()
    folder.chmod(0o555)
    result = run("study", "export", "tiny", "--out", folder, "--storage", place["url"])
    assert result["exit_code"] == 0, result
    assert (folder / "lookup.json").is_file()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o555


def test_a_report_refuses_a_folder_holding_the_users_own_png_and_replaces_an_earlier_report(place):
    mine = place["root"] / "my-plots"
    mine.mkdir()
    png = mine / "best_so_far.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n the user's own plot")
    result = run("study", "report", "tiny", "--out", mine, "--storage", place["url"])
    assert_one_sentence(result, "holds files that are not a sparsealloc report")
    assert png.read_bytes() == b"\x89PNG\r\n\x1a\n the user's own plot"
    assert [p.name for p in mine.iterdir()] == ["best_so_far.png"]
    report = place["root"] / "report"
    for _ in range(2):  # a new folder, then the earlier report, which is recognised and replaced
        result = run("study", "report", "tiny", "--out", report, "--storage", place["url"])
        assert result["exit_code"] == 0, result
    assert sorted(p.name for p in report.iterdir()) == [
        "best_allocation.png",
        "best_so_far.png",
        "report.json",
        "sparsity_vs_objective.png",
    ]

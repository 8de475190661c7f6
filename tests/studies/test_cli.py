from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from studies.cli import cli

SMALL = ["--seq-len", "32", "--calibration-sequences", "4", "--heldout-sequences", "2", "--batch-size", "2"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_one_sentence_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert pattern in lines[0]
    assert "Traceback" not in result.output


def test_evaluate_prints_perplexity_measured_sparsity_and_time(tiny_model_dir, text_file):
    result = run("evaluate", "--model", str(tiny_model_dir), "--data", str(text_file), "--sparsity", "0.5", *SMALL)
    assert result.exit_code == 0, result.output
    assert "held-out     dense thresholds: measured sparsity 0." in result.stdout
    line = next(line for line in result.stdout.splitlines() if "sparse thresholds" in line)
    assert abs(float(line.split("measured sparsity ")[1].split(",")[0]) - 0.5) < 0.02, line


def test_calibrate_reports_dense_perplexity_and_writes_the_calibration(tiny_model_dir, text_file, tmp_path):
    from allocator import Calibration

    out = tmp_path / "cal.safetensors"
    result = run("calibrate", "--model", str(tiny_model_dir), "--data", str(text_file), "--out", str(out), *SMALL)
    assert result.exit_code == 0, result.output
    assert "dense, on calibration tokens" in result.stdout
    assert Calibration.from_bytes(out.read_bytes()).n_tokens == 4 * 32


@pytest.mark.parametrize("sparsity", ["1.0", "-0.2"])
def test_sparsity_outside_range_is_one_sentence(sparsity):
    assert_one_sentence_error(run("evaluate", "--sparsity", sparsity), "`--sparsity` should be in [0, 1)")


def test_missing_model_is_one_sentence(tmp_path):
    result = run("evaluate", "--model", str(tmp_path / "nope"), "--sparsity", "0.5")
    assert_one_sentence_error(result, "neither an embedded model")


def test_bad_data_is_one_sentence(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_sentence_error(
        run("evaluate", "--model", str(tiny_model_dir), "--data", str(empty), "--sparsity", "0.5"),
        "contains no text",
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{oops\n")
    assert_one_sentence_error(
        run("evaluate", "--model", str(tiny_model_dir), "--data", str(bad), "--sparsity", "0.5"), "line 2"
    )
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert_one_sentence_error(
        run("evaluate", "--model", str(tiny_model_dir), "--data", str(short), "--sparsity", "0.5"),
        "are needed for 16 heldout, 1 validation, 16 calibration, 1 search sequences",
    )


def test_console_script_answers_help_without_heavy_imports():
    code = "import sys; from studies.cli import main; sys.argv=['sparsealloc','--help']; main()"
    probe = code.replace("main()", "import contextlib, io\nwith contextlib.suppress(SystemExit): main()") + (
        "\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "evaluate" in result.stdout and result.stdout.strip().endswith("False")

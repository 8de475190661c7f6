"""The ``sparsealloc`` command line: each command parses, calls the library and prints.

Every error a user can cause ends in one sentence on stderr and exit status 2; heavy libraries are imported
inside the commands, so ``sparsealloc --help`` answers at once.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click

from allocator.errors import SparseallocError, first_line
from studies._progress import progress_bar, stderr_console

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_DATA = "pydoc"


def _error(ctx: click.Context, message: str) -> None:
    """Print ``error: MESSAGE`` (passwords redacted) on stderr and exit with status 2."""
    from rich.text import Text

    from storage import redact

    stderr_console.print(Text.assemble(("error:", "bold red"), " ", redact(message)), highlight=False, soft_wrap=True)
    ctx.exit(2)


class _Cli(click.Group):
    """A click group that turns every error a user can cause into one sentence and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SparseallocError as error:
            _error(ctx, str(error))
        except Exception as error:
            from storage import database_error, is_connection_error

            found = database_error(error)
            if found is None:
                raise
            reason = first_line(found)
            if is_connection_error(error):
                # A database that went away outside the runner's reconnect loop.
                _error(ctx, f"Lost the database ({reason}); what finished is stored, and `study resume` continues.")
            _error(ctx, f"The database failed ({reason}); nothing stored was changed by this command.")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log what is loaded, converted and cached.")
@click.version_option(package_name="sparsealloc")
def cli(verbose: bool) -> None:
    """Bayesian optimisation of per-block activation sparsity for LLMs."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    # Optuna flags its heartbeat and retry helpers as experimental; we rely on them knowingly.
    warnings.filterwarnings("ignore", message=r".* is experimental \(supported from")
    if not verbose:
        # transformers' own progress bars and notices would drown ours.
        import os

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# -- shared options ---------------------------------------------------------------------------------------
def _placement_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--device`` and ``--dtype``: where the model runs (one worker per GPU: ``--device cuda:1``)."""
    function = click.option(
        "--dtype",
        type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
        default=None,
        help="Weights' precision (default: the study's, else auto: bfloat16 on CUDA, float32 on the CPU).",
    )(function)
    return click.option(
        "--device",
        default=None,
        help="auto, cpu, cuda, cuda:N or mps (default: the study's, else auto: CUDA where present, else CPU).",
    )(function)


def _model_data_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--model",
            default=DEFAULT_MODEL,
            show_default=True,
            help="Embedded model name, a .gguf file, or a local Hugging Face model directory.",
        ),
        click.option(
            "--data",
            default=DEFAULT_DATA,
            show_default=True,
            help="'pydoc' (embedded corpus), a .txt file or folder, a .jsonl file, or a save_to_disk dataset.",
        ),
        click.option(
            "--seq-len", type=click.IntRange(min=2), default=256, show_default=True, help="Tokens per sequence."
        ),
        click.option(
            "--calibration-sequences",
            type=click.IntRange(min=1),
            default=16,
            show_default=True,
            help="Sequences for calibration and the search objective.",
        ),
        click.option(
            "--heldout-sequences",
            type=click.IntRange(min=1),
            default=16,
            show_default=True,
            help="Sequences kept apart for reporting.",
        ),
        click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Data seed."),
        click.option(
            "--score",
            type=click.Choice(["magnitude", "weight_aware"]),
            default="magnitude",
            show_default=True,
            help="What is compared with the threshold: |x| or |x|·‖W[:, j]‖.",
        ),
        click.option(
            "--norm",
            type=click.Choice(["1", "2"]),
            default="1",
            show_default=True,
            help="Column norm of weight_aware (1 = WAS, 2 = WINA).",
        ),
        click.option(
            "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Sequences per forward."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return _placement_options(function)


def _adhoc_session(*, sparsify_fraction: float = 1.0, **options: Any) -> Any:
    """The library's one-off session (:func:`studies.open_adhoc_session`) on the command's options, with the
    progress of its preparation and three lines on what it prepared."""
    from studies._adhoc import AdhocSettings, open_adhoc_session

    settings = AdhocSettings(
        **{**options, "norm": int(options["norm"]), "device": options.get("device") or None},
        sparsify_fraction=sparsify_fraction,
    )
    config = settings.config(source="command line", seq_len_option="--seq-len")  # before any progress shows
    started = time.perf_counter()
    with _progress() as bar:
        session = open_adhoc_session(config, progress=bar)
    loaded, tokens, calibration = session.loaded, session.tokens, session.calibration
    click.echo(
        f"model        {loaded.name} ({loaded.architecture}, {loaded.adapter.n_blocks} blocks, "
        f"fingerprint {loaded.fingerprint[:12]})"
    )
    click.echo(
        f"data         {tokens.source}: {tokens.calibration.shape[0]} calibration + {tokens.heldout.shape[0]} "
        f"held-out sequences of {tokens.seq_len} tokens (disjoint by {tokens.unit})"
    )
    click.echo(
        f"calibration  {calibration.n_tokens:,} tokens, {calibration.score.kind} score, {calibration.seconds:.1f} s "
        f"(prepared in {time.perf_counter() - started:.1f} s)"
    )
    return session


@contextmanager
def _progress() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """``bar(label, total)`` factories on one rich progress display."""
    with _progress_display() as (_, bar):
        yield bar


@contextmanager
def _progress_display() -> Iterator[tuple[Any, Callable[[str, int], Callable[[int], None]]]]:
    """One rich progress display and its ``bar(label, total)`` factory (a task each, advanced by ``advance(n)``)."""
    from studies._progress import study_progress

    with study_progress() as progress:

        def bar(label: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(label, total=total)
            return lambda n: progress.advance(task, n)

        yield progress, bar


@contextmanager
def _bars() -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """``bar(label, total)``: a progress bar of sequences of its own for each evaluation, closed once full (or
    when the next one opens, or the command ends)."""
    with ExitStack() as stack:

        def bar(label: str, total: int) -> Callable[[int], None]:
            stack.close()
            advance = stack.enter_context(progress_bar(label, total, unit="sequences"))
            done = [0]

            def step(n: int) -> None:
                advance(n)
                done[0] += n
                if done[0] >= total:
                    stack.close()

            return step

        yield bar


# -- one-off commands ---------------------------------------------------------------------------------------
@cli.command()
@_model_data_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the calibration to this file.")
def calibrate(out: Path | None, **options: Any) -> None:
    """Calibrate score histograms on the calibration tokens and report the dense perplexity."""
    from studies._adhoc import check_calibration_target, save_calibration

    if out is not None:
        check_calibration_target(out)  # before calibrating
    session = _adhoc_session(**options)
    dense = session.objective.evaluate(0.0, session.tokens.calibration, rule="threshold")
    ratio = session.calibration.seconds / dense.seconds
    click.echo(f"perplexity   {dense.perplexity:.3f} dense, on calibration tokens ({dense.seconds:.1f} s)")
    click.echo(f"time         calibration took {ratio:.2f}x one dense evaluation pass")
    if out is not None:
        save_calibration(session.calibration, out)
        click.echo(f"written      {out}")


@cli.command()
@_model_data_options
@click.option("--sparsity", type=float, required=True, help="Uniform sparsity of every site, in [0, 1).")
@click.option(
    "--sparsify-fraction",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Share of each sequence's trailing tokens that are sparsified (TEAL: 0.5, WAS: 0.99).",
)
def evaluate(sparsity: float, sparsify_fraction: float, **options: Any) -> None:
    """KL, perplexity and measured sparsity on held-out tokens at a uniform sparsity, with thresholds from the
    dense calibration (nominal) and calibrated under the sparse model (what an export uses)."""
    from studies._adhoc import check_uniform_sparsity, evaluate_uniform

    check_uniform_sparsity(sparsity, option="--sparsity")
    session = _adhoc_session(sparsify_fraction=sparsify_fraction, **options)
    with _bars() as bar:
        measured = evaluate_uniform(session, sparsity, progress=bar)
    click.echo(f"sparsity     {sparsity:.3f} uniform (sparsify fraction {sparsify_fraction:g})")
    for label, result in (("dense thresholds", measured.nominal), ("sparse thresholds", measured.sparse)):
        click.echo(
            f"held-out     {label}: measured sparsity {result.measured_sparsity:.4f}, perplexity "
            f"{result.perplexity:.3f}, KL {result.kl:.4f} ({result.seconds:.1f} s)"
        )


@cli.command()
@click.option(
    "--lookup", "lookup_path", type=click.Path(path_type=Path), required=True, help="Exported lookup directory."
)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="The model the lookup was made for.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Text to measure perplexity on.")
@click.option("--seq-len", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--sequences", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--sparsity",
    type=float,
    default=None,
    help="Model-level sparsity to load from a frontier export (interpolated between its targets); for a "
    "single lookup, its own target or nothing.",
)
@_placement_options
def apply(
    lookup_path: Path,
    model: str,
    data: str,
    seq_len: int,
    sequences: int,
    seed: int,
    batch_size: int,
    sparsity: float | None,
    device: str | None,
    dtype: str | None,
) -> None:
    """Install an exported lookup on MODEL and report perplexity and measured sparsity on DATA.

    A frontier export is loaded at ``--sparsity``: a target's own point, or the interpolation of the two
    neighbouring points.
    """
    from studies._adhoc import apply_lookup

    with _bars() as bar:
        applied = apply_lookup(
            lookup_path,
            model=model,
            data=data,
            seq_len=seq_len,
            sequences=sequences,
            seed=seed,
            batch_size=batch_size,
            sparsity=sparsity,
            device=device,
            dtype=dtype,
            progress=bar,
            seq_len_option="--seq-len",
        )
    evaluation = applied.evaluation
    click.echo(
        f"perplexity   {evaluation.perplexity:.3f} on {evaluation.n_tokens:,} tokens of {data} "
        f"({evaluation.seconds:.1f} s)"
    )
    click.echo(f"KL           {evaluation.kl:.4f} to the dense model, per token")
    click.echo(f"sparsity     {_loaded_target(applied.lookup)}; measured {evaluation.measured_sparsity:.4f}")


@cli.command("tasks")
@click.option(
    "--lookup", "lookup_path", type=click.Path(path_type=Path), required=True, help="Exported lookup directory."
)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="The model the lookup was made for.")
@click.option("--tasks", "task_list", required=True, help="lm-eval tasks, comma-separated (piqa,arc_easy) or YAMLs.")
@click.option(
    "--num-fewshot", type=click.IntRange(min=0), default=None, help="Examples per prompt (default: the task's, or 0)."
)
@click.option(
    "--limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Items per task (a share of them if below 1): for quick checks, not for reporting.",
)
@click.option(
    "--include-path",
    type=click.Path(path_type=Path),
    multiple=True,
    help="A folder of your own task YAMLs (lm-eval's; local data runs offline). Repeatable.",
)
@click.option(
    "--sparsity",
    type=float,
    default=None,
    help="Model-level sparsity to load from a frontier export; for a single lookup, its own target or nothing.",
)
@click.option("--dense", is_flag=True, help="Also run the dense model, and print both with the difference.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="lm-eval's requests per forward."
)
@click.option("--log-samples", is_flag=True, help="Also write lm-eval's per-item records (samples) to --out.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write lm-eval's results JSON, with the lookup's provenance and the measured sparsity, to this file.",
)
@_placement_options
def tasks_command(lookup_path: Path, task_list: str, log_samples: bool, **options: Any) -> None:
    """Run lm-evaluation-harness tasks on MODEL with an exported lookup installed (pip install sparsealloc[eval]).

    Prints lm-eval's own table and the sparsity the model really ran at on the tasks' inputs; with --dense,
    the dense model's table and each metric side by side with the difference.
    """
    from allocator import InputError
    from studies._tasks import run_tasks

    if log_samples and options["out"] is None:
        raise InputError("--log-samples writes lm-eval's per-item records to the results file; give --out too.")
    if not click.get_current_context().find_root().params.get("verbose"):
        logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notices on every task config would drown ours
    run = run_tasks(
        lookup_path,
        tasks=task_list,
        log_samples=log_samples,
        **{**options, "include_path": list(options["include_path"])},
    )
    _print_tasks(run, options["dense"], options["out"])


def _print_tasks(run: Any, dense: bool, out: Path | None) -> None:
    """``tasks``' report: lm-eval's table(s), the side-by-side comparison, and the measured sparsity."""
    evaluation = run.evaluation
    study = evaluation.lookup.get("study") or {}
    trial = f", trial {study['trial']}" if "trial" in study else ""
    click.echo(f"model        {run.model['name']} ({run.model['architecture']}, {run.model['n_blocks']} blocks)")
    click.echo(f"lookup       {evaluation.lookup['path']} (study {study.get('name', 'not recorded')!r}{trial})")
    click.echo(f"\nsparse model (lookup installed), lm-eval's results:\n{evaluation.table()}")
    if dense:
        click.echo(f"dense model, lm-eval's results:\n{evaluation.table(dense=True)}")
        click.echo(f"{'task':<24} {'metric':<16} {'sparse':>9} {'dense':>9} {'difference':>11}")
        for task, metric, sparse_value, dense_value in evaluation.comparison():
            other = "-" if dense_value is None else f"{dense_value:.4f}"
            difference = "-" if dense_value is None else f"{sparse_value - dense_value:+.4f}"
            click.echo(f"{task:<24} {metric:<16} {sparse_value:>9.4f} {other:>9} {difference:>11}")
    click.echo(
        f"sparsity     {_loaded_target(evaluation.lookup)}; measured {evaluation.measured_sparsity:.4f} "
        "on the tasks' inputs"
    )
    if out is not None:
        click.echo(f"written      {out}")


def _loaded_target(lookup: dict[str, Any]) -> str:
    """What ``apply`` loaded: the lookup's target, and for a frontier export which point(s) gave it."""
    target = lookup.get("target_sparsity")
    text = f"target {target:.4f}" if isinstance(target, float | int) else "target not recorded"
    frontier = lookup.get("frontier")
    if frontier is None:
        return text
    if len(frontier["targets"]) == 1:
        return f"{text} (a point of the frontier)"
    low, high = frontier["targets"]
    return f"{text} (interpolated between the frontier's points at {low:g} and {high:g})"


# -- studies ----------------------------------------------------------------------------------------------
_storage_option = click.option(
    "--storage",
    default=None,
    help="Database URL (sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST/DB). "
    "Default: $SPARSEALLOC_STORAGE, else sqlite:///sparsealloc.db in the working directory.",
)


def _database(url: str | None, *, create: bool = False) -> Any:
    from storage import Database

    return Database(url, create=create)


@cli.group()
def study() -> None:
    """Create, run, resume, inspect, export and delete studies (stored in SQLite or PostgreSQL)."""


@study.command("create")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_storage_option
def study_create(config: Path, storage: str | None) -> None:
    """Check the study defined by the YAML file CONFIG and register it."""
    import optuna

    from studies._config import load_config
    from studies._manage import check_study, create_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_config, config_storage = load_config(config)
    check_study(study_config)  # everything that can be checked before the database is touched
    database = _database(storage or config_storage, create=True)
    created = create_study(database, study_config, checked=True)
    verb = "created" if created else "already exists with this configuration"
    click.echo(f"study {study_config.name!r} {verb} in {database.masked_url}")


def _run(
    name: str,
    storage: str | None,
    trials: int | None,
    *,
    wait_s: float = 0.0,
    device: str | None = None,
    dtype: str | None = None,
) -> None:
    import optuna

    from studies._manage import open_study, summarize
    from studies._progress import RichReporter
    from studies._runner import count_states, load_optuna_study, run_study, target_trials
    from studies._session import open_session

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    database, config = open_study(name, storage, wait_s=wait_s)
    with _progress_display() as (progress, bar):
        session = open_session(
            database, config, notify=progress.console.print, progress=bar, device=device, dtype=dtype
        )
        target = target_trials(session, trials)
        complete = count_states(load_optuna_study(session))[optuna.trial.TrialState.COMPLETE]
        reporter = RichReporter(progress, target, complete)
        try:
            result = run_study(session, n_trials=trials, reporter=reporter)
        except KeyboardInterrupt:
            progress.console.print("interrupted: the running trial was re-enqueued; `study resume` continues.")
            raise SystemExit(130) from None
    summary = summarize(database, name)
    click.echo(f"study {name!r}: {result.complete}/{result.target} trials complete ({result.evaluated_here} here)")
    if summary.best_trial is not None:
        heldout_ppl = summary.best_heldout_perplexity
        heldout = f", held-out perplexity {heldout_ppl:.3f}" if heldout_ppl else ""
        click.echo(f"best trial {summary.best_trial}: search {summary.objective} {summary.best_value:.4g}{heldout}")
    for point in summary.frontier:
        click.echo(f"at {point.target:.3f}: {_target_line(summary.objective, point)}")


_trials_option = click.option(
    "--trials", type=click.IntRange(min=1), default=None, help="Finished trials to reach (default: config)."
)


@study.command("run")
@click.argument("name")
@_trials_option
@_storage_option
@_placement_options
def study_run(name: str, trials: int | None, storage: str | None, device: str | None, dtype: str | None) -> None:
    """Run study NAME until it has the requested number of finished trials (or its token budget is spent)."""
    _run(name, storage, trials, device=device, dtype=dtype)


@study.command("resume")
@click.argument("name")
@_trials_option
@_storage_option
@_placement_options
def study_resume(name: str, trials: int | None, storage: str | None, device: str | None, dtype: str | None) -> None:
    """Continue study NAME after an interruption: interrupted trials are failed and retried."""
    _run(name, storage, trials, device=device, dtype=dtype)


@cli.command()
@click.argument("name")
@_storage_option
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for the study (and its database) to be created.",
)
@_placement_options
def worker(name: str, storage: str | None, wait_s: float, device: str | None, dtype: str | None) -> None:
    """One more worker on study NAME (any number may share a study, on one or several machines)."""
    _run(name, storage, None, wait_s=wait_s, device=device, dtype=dtype)


@study.command("status")
@click.argument("name")
@_storage_option
def study_status(name: str, storage: str | None) -> None:
    """Trials done/running/failed, best calibration and held-out perplexity, best vector of study NAME."""
    from studies._manage import summarize

    database = _database(storage)
    summary = summarize(database, name)
    measured = summary.best_measured_sparsity
    measured = "" if measured is None else f", measured sparsity {measured:.4f}"
    rows = [
        ("study", f"{summary.name} ({database.masked_url})"),
        ("sampler", f"{summary.sampler}, {summary.split} split, target {summary.target_label}"),
        (
            "trials",
            f"{summary.complete}/{summary.trials} complete, {summary.running} running, {summary.waiting} waiting, "
            f"{summary.failed} failed, {summary.pruned} pruned",
        ),
        (
            "best",
            "-"
            if summary.best_trial is None
            else f"trial {summary.best_trial}: search {summary.objective} {summary.best_value:.4g}{measured}",
        ),
        ("no search", _no_search_line(summary)),
        ("held-out", "-" if summary.best_heldout_perplexity is None else f"{summary.best_heldout_perplexity:.3f}"),
        ("vector", summary.vector_summary()),
    ]
    if summary.best_share is not None:
        rows[3] = ("best", f"{rows[3][1]}, greedy split share {summary.best_share:g}")
    if summary.frontier:  # values of different targets never compare: the best of each target
        rows[3:] = [(f"at {point.target:.3f}", _target_line(summary.objective, point)) for point in summary.frontier]
    for key, value in rows:
        click.echo(f"{key:<10} {value}")


def _no_search_line(summary: Any) -> str:
    """The best no-search allocation among the trials, and how much lower the search's best is (same screen)."""
    point = summary.no_search
    if point is None:
        return "-"
    gain = summary.search_gain
    beside = "" if gain is None else f"; the search's best is {gain:.1%} lower on the same sequences"
    return f"{point.name} (trial {point.trial}): search {summary.objective} {point.value:.4g}{beside}"


def _target_line(objective: str, point: Any) -> str:
    if point.trial is None:
        return f"{point.complete} complete"
    heldout = "" if point.heldout_perplexity is None else f", held-out perplexity {point.heldout_perplexity:.3f}"
    measured = "" if point.measured_sparsity is None else f", measured sparsity {point.measured_sparsity:.4f}"
    best = f"best trial {point.trial}: search {objective} {point.value:.4g}"
    return f"{point.complete} complete; {best}{measured}{heldout}"


@study.command("list")
@_storage_option
def study_list(storage: str | None) -> None:
    """Every study in the database, one line each."""
    from studies._manage import summarize

    database = _database(storage)
    names = database.study_names()
    if not names:
        click.echo(f"no studies in {database.masked_url}")
        return
    header = ("study", "sampler", "target", "done", "run", "fail", "best", "held-out")
    click.echo("{:<28} {:<9} {:>15} {:>9} {:>4} {:>4} {:>10} {:>9}".format(*header))
    for name in names:
        s = summarize(database, name)
        best = f"{s.best_value:.4g}" if s.best_value is not None else "-"
        heldout = f"{s.best_heldout_perplexity:.3f}" if s.best_heldout_perplexity is not None else "-"
        click.echo(
            f"{s.name:<28} {s.sampler:<9} {s.target_label:>15} {s.complete:>4}/{s.trials:<4} "
            f"{s.running:>4} {s.failed:>4} {best:>10} {heldout:>9}"
        )


@study.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Confirm: the study's trials are deleted for good.")
@click.option("--force", is_flag=True, help="Delete even while another process runs a trial (it then stops).")
@_storage_option
def study_delete(name: str, yes: bool, force: bool, storage: str | None) -> None:
    """Delete study NAME and its trials (shared calibrations stay). Asks for --yes; refuses while a trial runs
    in another process, unless --force."""
    from allocator import InputError
    from studies._manage import delete_study

    database = _database(storage)
    database.study_config(name)  # an unknown study is refused before asking
    if not yes:
        raise InputError(f"Deleting study {name!r} removes its trials for good; run it again with --yes to confirm.")
    trials = delete_study(database, name, force=force)
    click.echo(f"deleted study {name!r} ({trials} trials) from {database.masked_url}")


@study.command("export")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export directory.")
@_storage_option
def study_export(name: str, out: Path, storage: str | None) -> None:
    """Export the best trial of NAME as a lookup (lookup.json + TEAL files), measuring its held-out perplexity.

    OUT must be a new or empty directory, or an earlier export (which is replaced atomically).
    """
    from allocator import check_export_target
    from studies._export import FrontierExportResult, export_study
    from studies._manage import load_study_config
    from studies._session import open_session

    check_export_target(out)  # refuse a bad target before loading anything
    database = _database(storage)
    config = load_study_config(database, name)
    with _progress() as bar:
        session = open_session(database, config, notify=stderr_console.print, progress=bar)
        result = export_study(session, out)
    if isinstance(result, FrontierExportResult):
        _print_frontier_export(name, result)
        return
    click.echo(f"exported trial {result.trial_number} of {name!r} to {result.path}")
    click.echo(
        f"chosen       among {result.candidates} candidate(s) by validation: KL {result.validation.kl:.4f}, "
        f"perplexity {result.validation.perplexity:.3f}"
    )
    for label, measured in (("held-out", result.heldout), ("out-of-domain", result.ood)):
        if measured is not None:
            exact, fixed = measured.exact, measured.thresholds
            click.echo(
                f"{label:<12} KL {fixed.kl:.4f}, perplexity {fixed.perplexity:.3f} with the exported thresholds "
                f"(measured sparsity {fixed.measured_sparsity:.4f}); KL {exact.kl:.4f}, perplexity "
                f"{exact.perplexity:.3f} at exactly the target"
            )
    click.echo(
        f"sparsity     target {result.achieved_sparsity:.4f}; measured with the thresholds on the search pool "
        f"{result.search_measured_sparsity:.4f}; "
        + ("TEAL files written" if result.teal_files else "no TEAL files (weight_aware score)")
    )


def _print_frontier_export(name: str, result: Any) -> None:
    """One line per frontier point of ``study export``."""
    click.echo(f"exported the frontier of {name!r} ({len(result.points)} targets) to {result.path}")
    for point in result.points:
        fixed = point.heldout.thresholds
        click.echo(
            f"target {point.target:.3f}  trial {point.trial_number} of {point.candidates} candidate(s): validation "
            f"KL {point.validation.kl:.4f}; held-out KL {fixed.kl:.4f}, perplexity {fixed.perplexity:.3f}, "
            f"measured sparsity {fixed.measured_sparsity:.4f} with the exported thresholds -> {point.path.name}/"
        )


@study.command("report")
@click.argument("name")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for the PNGs.")
@_storage_option
def study_report(name: str, out: Path, storage: str | None) -> None:
    """PNG plots of study NAME: best-so-far perplexity, best allocation by depth, sparsity vs perplexity.

    OUT must be a new or empty directory, or an earlier report (which is replaced atomically).
    """
    from studies._report import check_report_target, write_report

    check_report_target(out)  # refuse a bad target before opening the database
    for path in write_report(_database(storage), name, out):
        click.echo(f"wrote {path}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--trials", type=click.IntRange(min=4), default=None, help="Trials of the bo study (default: 16).")
def demo(out: Path, trials: int | None) -> None:
    """A complete study on the embedded SmolLM2 and pydoc corpus, with SQLite in OUT.

    Calibrates, runs a `bo` study at 50% model-level sparsity that searches the site split too (its first
    trials are the allocations that need no search: uniform, TEAL's greedy-uniform and blend-uniform), exports
    the allocation chosen on validation data among the search's best and those, writes the report, and
    measures them all on held-out data: the search's gain over the best allocation that needs no search. Run
    it again to reuse what OUT holds (the calibration and the finished trials).
    """
    import optuna

    from studies._demo import demo_config, run_demo
    from studies._progress import RichReporter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _progress_display() as (progress, bar):
        reporter = RichReporter(progress, demo_config(trials).trials)
        result = run_demo(out, trials=trials, notify=progress.console.print, progress=bar, reporter=reporter)
    _print_demo(result)


def _print_demo(result: Any) -> None:
    config, target = result.config, result.config.sparsity.target
    click.echo(f"\nsparsealloc demo: SmolLM2-135M, pydoc corpus, target {target:.0%} model-level sparsity (measured)")
    click.echo(f"study          {config.name}: {result.run.complete} bo trials in {result.database.masked_url}")
    click.echo(f"held-out       dense perplexity {result.dense.perplexity:.3f}")
    click.echo(f"               {'allocation':<26} {'with exported thresholds':^30}   {'at exactly the target':^20}")
    click.echo(f"               {'':<26} {'perplexity':>10} {'KL':>8} {'measured':>9}   {'perplexity':>10} {'KL':>8}")
    for label, measured in result.rows():
        fixed, exact = measured.thresholds, measured.exact
        figures = f"{fixed.perplexity:>10.3f} {fixed.kl:>8.4f} {fixed.measured_sparsity:>9.4f}"
        click.echo(f"               {label:<26} {figures}   {exact.perplexity:>10.3f} {exact.kl:>8.4f}")
    best = result.best_no_search
    if best is not None:
        others = [name for name in ("uniform", "greedy-uniform") if name in result.baselines and name != best]
        also = "".join(f", {result.gain(name):.0%} of {name}'s" for name in others)
        click.echo(
            f"               -> bo removes {result.gain(best):.0%} of the best no-search allocation's ({best}, chosen "
            f"on validation){also} degradation over dense (held-out perplexity)"
        )
    click.echo(f"exported       {result.exported.path}/lookup.json (+ TEAL files)")
    click.echo(f"report         {', '.join(str(p) for p in result.plots)}")
    click.echo(f"time           {result.minutes:.1f} min")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sparsealloc")

"""The ``sparsealloc`` command line.

Every error a user can cause ends in one sentence on stderr and exit status 2; heavy libraries are imported
inside the commands, so ``sparsealloc --help`` answers at once.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from allocator._errors import SparseallocError, first_line
from studies._progress import progress_bar, stderr_console

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_DATA = "pydoc"


class _Cli(click.Group):
    """A click group that turns :class:`SparseallocError` into one sentence and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SparseallocError as error:
            stderr_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            ctx.exit(2)
        except Exception as error:
            from storage import is_connection_error

            if not is_connection_error(error):
                raise
            # A database that went away outside the runner's reconnect loop: one sentence, no traceback.
            reason = first_line(error)
            stderr_console.print(
                f"[bold red]error:[/] Lost the database ({reason}); what finished is stored, and "
                "`sparsealloc study resume NAME` continues.",
                highlight=False,
                soft_wrap=True,
            )
            ctx.exit(2)


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
            type=click.IntRange(min=0),
            default=16,
            show_default=True,
            help="Sequences kept apart for reporting.",
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data split."),
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
    return function


@dataclass
class _Prepared:
    loaded: Any
    split: Any
    calibration: Any


def _prepare(
    *,
    model: str,
    data: str,
    seq_len: int,
    calibration_sequences: int,
    heldout_sequences: int,
    seed: int,
    score: str,
    norm: str,
    batch_size: int,
) -> _Prepared:
    from allocator import Score, calibrate, load_model, load_text, tokenize_split

    score_obj = Score(kind=score, norm=int(norm))
    with stderr_console.status(f"Loading {model} …"):
        started = time.perf_counter()
        loaded = load_model(model)
        corpus = load_text(data)
        split = tokenize_split(
            corpus,
            loaded.tokenizer,
            seq_len=seq_len,
            n_calibration=calibration_sequences,
            n_heldout=heldout_sequences,
            seed=seed,
        )
    stderr_console.print(f"Loaded {model} and {data} in {time.perf_counter() - started:.1f} s.")
    with progress_bar("Calibrating", split.calibration.shape[0], unit="sequences") as advance:
        calibration = calibrate(
            loaded.adapter,
            split.calibration,
            score=score_obj,
            model_fingerprint=loaded.fingerprint,
            batch_size=batch_size,
            data=split.describe(),
            progress=advance,
        )
    return _Prepared(loaded=loaded, split=split, calibration=calibration)


def _describe(prepared: _Prepared) -> None:
    loaded, split, calibration = prepared.loaded, prepared.split, prepared.calibration
    click.echo(
        f"model        {loaded.name} ({loaded.architecture}, {loaded.adapter.n_blocks} blocks, "
        f"fingerprint {loaded.fingerprint[:12]})"
    )
    click.echo(
        f"data         {split.source}: {split.calibration.shape[0]} calibration + {split.heldout.shape[0]} held-out "
        f"sequences of {split.seq_len} tokens (disjoint by {split.split_unit})"
    )
    click.echo(
        f"calibration  {calibration.n_tokens:,} tokens, {calibration.score.kind} score, {calibration.seconds:.1f} s"
    )


def _evaluate_with_progress(objective: Any, allocation: Any, *, heldout: bool, label: str) -> Any:
    tokens = objective.tokens.heldout if heldout else objective.tokens.calibration
    with progress_bar(label, tokens.shape[0], unit="sequences") as advance:
        done = [0]

        def on_batch(sequences: int, _nll: float) -> bool:
            advance(sequences - done[0])
            done[0] = sequences
            return False

        return (objective.heldout if heldout else objective)(allocation, on_batch=on_batch)


# -- commands ---------------------------------------------------------------------------------------------
@cli.command()
@_model_data_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the calibration to this file.")
def calibrate(out: Path | None, **options: Any) -> None:
    """Calibrate score histograms on the calibration tokens and report the dense perplexity."""
    from allocator import PerplexityObjective, SparseModel

    prepared = _prepare(**options)
    _describe(prepared)
    objective = PerplexityObjective(
        SparseModel(prepared.loaded.adapter, prepared.calibration), prepared.split, batch_size=options["batch_size"]
    )
    dense = _evaluate_with_progress(objective, 0.0, heldout=False, label="Dense perplexity")
    ratio = prepared.calibration.seconds / dense.seconds
    click.echo(f"perplexity   {dense.perplexity:.3f} dense, on calibration tokens ({dense.seconds:.1f} s)")
    click.echo(f"time         calibration took {ratio:.2f}x one dense evaluation pass")
    if out is not None:
        from allocator._files import atomic_write_bytes

        atomic_write_bytes(out, prepared.calibration.to_bytes())
        click.echo(f"written      {out}")


@cli.command()
@_model_data_options
@click.option(
    "--sparsity",
    type=float,
    required=True,
    help="Uniform sparsity of every site, in [0, 1).",
)
@click.option(
    "--sparsify-fraction",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Share of each sequence's trailing tokens that are sparsified (TEAL: 0.5, WAS: 0.99).",
)
def evaluate(sparsity: float, sparsify_fraction: float, **options: Any) -> None:
    """Perplexity and measured sparsity at a uniform sparsity, on calibration and held-out tokens."""
    from allocator import InputError, PerplexityObjective, SparseModel

    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"The value of `--sparsity` should be in [0, 1), got {sparsity}.")
    prepared = _prepare(**options)
    _describe(prepared)
    sparse_model = SparseModel(prepared.loaded.adapter, prepared.calibration, sparsify_fraction=sparsify_fraction)
    objective = PerplexityObjective(sparse_model, prepared.split, batch_size=options["batch_size"])
    calibration_eval = _evaluate_with_progress(objective, sparsity, heldout=False, label="Calibration perplexity")
    click.echo(
        f"sparsity     {sparsity:.3f} uniform (sparsify fraction {sparsify_fraction:g}); "
        f"measured {calibration_eval.measured_sparsity:.4f}"
    )
    click.echo(
        f"perplexity   {calibration_eval.perplexity:.3f} on calibration tokens ({calibration_eval.seconds:.1f} s)"
    )
    if prepared.split.heldout.shape[0]:
        heldout_eval = _evaluate_with_progress(objective, sparsity, heldout=True, label="Held-out perplexity")
        click.echo(f"perplexity   {heldout_eval.perplexity:.3f} on held-out tokens ({heldout_eval.seconds:.1f} s)")


# -- studies ----------------------------------------------------------------------------------------------
_storage_option = click.option(
    "--storage",
    default=None,
    help="Database URL (sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST/DB). "
    "Default: $SPARSEALLOC_STORAGE, else sqlite:///sparsealloc.db in the working directory.",
)


def _database(url: str | None) -> Any:
    from storage import Database

    return Database(url)


@cli.group()
def study() -> None:
    """Create, run, resume, inspect and export studies (stored in SQLite or PostgreSQL)."""


@study.command("create")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@_storage_option
def study_create(config: Path, storage: str | None) -> None:
    """Register the study defined by the YAML file CONFIG."""
    import optuna

    from studies._config import load_config
    from studies._manage import create_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_config, config_storage = load_config(config)
    database = _database(storage or config_storage)
    created = create_study(database, study_config)
    verb = "created" if created else "already exists with this configuration"
    click.echo(f"study {study_config.name!r} {verb} in {database.masked_url}")


def _run(name: str, storage: str | None, trials: int | None, *, wait_s: float = 0.0) -> None:
    import optuna

    from studies._manage import load_study_config, summarize
    from studies._progress import RichReporter, study_progress
    from studies._runner import load_optuna_study, make_sampler, run_study, target_trials
    from studies._session import open_session

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    database = _database(storage)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            config = load_study_config(database, name)
            break
        except SparseallocError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(2.0)
    with study_progress() as progress:

        def bar(label: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(label, total=total)
            return lambda n: progress.advance(task, n)

        session = open_session(database, config, notify=progress.console.print, progress=bar)
        sampler = make_sampler(session)
        target = target_trials(session, sampler, trials)
        complete = sum(1 for t in load_optuna_study(session).get_trials(deepcopy=False) if t.state.name == "COMPLETE")
        reporter = RichReporter(progress, target, complete)
        try:
            result = run_study(session, n_trials=trials, reporter=reporter)
        except KeyboardInterrupt:
            progress.console.print("interrupted: the running trial was re-enqueued; `study resume` continues.")
            raise SystemExit(130) from None
    summary = summarize(database, name)
    click.echo(f"study {name!r}: {result.complete}/{result.target} trials complete ({result.evaluated_here} here)")
    if summary.best_trial is not None:
        heldout = f", held-out {summary.best_heldout_perplexity:.3f}" if summary.best_heldout_perplexity else ""
        click.echo(f"best trial {summary.best_trial}: calibration perplexity {summary.best_perplexity:.3f}{heldout}")


@study.command("run")
@click.argument("name")
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Finished trials to reach (default: config).")
@_storage_option
def study_run(name: str, trials: int | None, storage: str | None) -> None:
    """Run study NAME until it has the requested number of finished trials."""
    _run(name, storage, trials)


@study.command("resume")
@click.argument("name")
@_storage_option
def study_resume(name: str, storage: str | None) -> None:
    """Continue study NAME after an interruption: interrupted trials are failed and retried."""
    _run(name, storage, None)


@cli.command()
@click.argument("name")
@_storage_option
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for the study to be created.",
)
def worker(name: str, storage: str | None, wait_s: float) -> None:
    """One more worker on study NAME (any number may share a study, on one or several machines)."""
    _run(name, storage, None, wait_s=wait_s)


@study.command("status")
@click.argument("name")
@_storage_option
def study_status(name: str, storage: str | None) -> None:
    """Trials done/running/failed, best calibration and held-out perplexity, best vector of study NAME."""
    from studies._manage import summarize

    database = _database(storage)
    summary = summarize(database, name)
    rows = [
        ("study", f"{summary.name} ({database.masked_url})"),
        ("sampler", f"{summary.sampler}, {summary.split} split, target {summary.target_sparsity:.3f}"),
        (
            "trials",
            f"{summary.complete}/{summary.trials} complete, {summary.running} running, {summary.waiting} waiting, "
            f"{summary.failed} failed, {summary.pruned} pruned",
        ),
        (
            "best",
            "-"
            if summary.best_trial is None
            else f"trial {summary.best_trial}: perplexity {summary.best_perplexity:.3f}",
        ),
        ("held-out", "-" if summary.best_heldout_perplexity is None else f"{summary.best_heldout_perplexity:.3f}"),
        ("vector", summary.vector_summary()),
    ]
    for key, value in rows:
        click.echo(f"{key:<10} {value}")


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
    header = ("study", "sampler", "target", "done", "run", "fail", "best ppl", "held-out")
    click.echo("{:<28} {:<9} {:>6} {:>9} {:>4} {:>4} {:>10} {:>9}".format(*header))
    for name in names:
        s = summarize(database, name)
        best = f"{s.best_perplexity:.3f}" if s.best_perplexity is not None else "-"
        heldout = f"{s.best_heldout_perplexity:.3f}" if s.best_heldout_perplexity is not None else "-"
        click.echo(
            f"{s.name:<28} {s.sampler:<9} {s.target_sparsity:>6.3f} {s.complete:>4}/{s.trials:<4} "
            f"{s.running:>4} {s.failed:>4} {best:>10} {heldout:>9}"
        )


@study.command("export")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Export directory.")
@_storage_option
def study_export(name: str, out: Path, storage: str | None) -> None:
    """Export the best trial of NAME as a lookup (lookup.json + TEAL files), measuring its held-out perplexity."""
    from studies._export import export_study
    from studies._manage import load_study_config
    from studies._session import open_session

    database = _database(storage)
    config = load_study_config(database, name)
    with stderr_console.status("Preparing the export …"):
        session = open_session(database, config)
        result = export_study(session, out)
    click.echo(f"exported trial {result.trial_number} of {name!r} to {result.path}")
    click.echo(
        f"perplexity {result.calibration_perplexity:.3f} calibration, {result.heldout_perplexity:.3f} held-out; "
        f"sparsity {result.achieved_sparsity:.4f}; "
        + ("TEAL files written" if result.teal_files else "no TEAL files (weight_aware score)")
    )


@study.command("report")
@click.argument("name")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory for the PNGs.")
@_storage_option
def study_report(name: str, out: Path, storage: str | None) -> None:
    """PNG plots of study NAME: best-so-far perplexity, best allocation by depth, sparsity vs perplexity."""
    from studies._report import write_report

    for path in write_report(_database(storage), name, out):
        click.echo(f"wrote {path}")


@cli.command()
@click.option(
    "--lookup", "lookup_path", type=click.Path(path_type=Path), required=True, help="Exported lookup directory."
)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="The model the lookup was made for.")
@click.option("--data", default=DEFAULT_DATA, show_default=True, help="Text to measure perplexity on.")
@click.option("--seq-len", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--sequences", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
def apply(lookup_path: Path, model: str, data: str, seq_len: int, sequences: int, seed: int, batch_size: int) -> None:
    """Install an exported lookup on MODEL and report perplexity and measured sparsity on DATA."""
    import math

    from allocator import load_lookup, load_model, load_text, read_lookup, tokenize_split
    from allocator._objective import batch_nll

    read_lookup(lookup_path)  # refuse a bad lookup before loading the model
    loaded = load_model(model)
    split = tokenize_split(
        load_text(data), loaded.tokenizer, seq_len=seq_len, n_calibration=sequences, n_heldout=0, seed=seed
    )
    total, count = 0.0, 0
    started = time.perf_counter()
    with (
        load_lookup(loaded.model, lookup_path) as sparsifiers,
        progress_bar("Evaluating", sequences, unit="sequences") as advance,
    ):
        for start in range(0, sequences, batch_size):
            batch = split.calibration[start : start + batch_size]
            nll, n = batch_nll(loaded.adapter, batch)
            total, count = total + nll, count + n
            advance(batch.shape[0])
        measured = sparsifiers.measured_model_sparsity()
    click.echo(
        f"perplexity   {math.exp(total / count):.3f} on {count:,} tokens of {data} "
        f"({time.perf_counter() - started:.1f} s)"
    )
    click.echo(f"sparsity     measured {measured:.4f}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--trials", type=click.IntRange(min=2), default=None, help="Trials of the bo study (default: 30).")
def demo(out: Path, trials: int | None) -> None:
    """A complete study on the embedded SmolLM2 and pydoc corpus, with SQLite in OUT.

    Calibrates, runs a `bo` study at 50% model-level sparsity, exports the best allocation, writes the
    report, and compares the best allocation with uniform sparsity on the calibration (search) data and on
    held-out data. Run it again to reuse what OUT holds (the calibration and the finished trials).
    """
    import optuna

    from studies._demo import demo_config
    from studies._export import export_study
    from studies._manage import create_study
    from studies._progress import RichReporter, study_progress
    from studies._report import write_report
    from studies._runner import run_study
    from studies._session import open_session

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    database = _database(f"sqlite:///{out / 'sparsealloc.db'}")
    config = demo_config(trials)
    create_study(database, config)
    with study_progress() as progress:

        def bar(label: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(label, total=total)
            return lambda n: progress.advance(task, n)

        session = open_session(database, config, notify=progress.console.print, progress=bar)
        result = run_study(session, reporter=RichReporter(progress, config.trials))
        progress.console.print("Exporting the best trial and measuring uniform sparsity on held-out data")
        exported = export_study(session, out / "lookup")
        uniform = session.objective.heldout(config.sparsity.target)
        dense = session.objective.heldout(0.0)
        uniform_calibration = session.objective(config.sparsity.target)
    plots = write_report(database, config.name, out / "report")
    minutes = (time.perf_counter() - started) / 60
    click.echo(
        f"\nsparsealloc demo: SmolLM2-135M, pydoc corpus, target {config.sparsity.target:.0%} model-level sparsity"
    )
    click.echo(f"study          {config.name}: {result.complete} bo trials in {database.masked_url}")
    click.echo(
        f"calibration    uniform {config.sparsity.target:.0%}: {uniform_calibration.perplexity:.3f}"
        f"   bo best: {exported.calibration_perplexity:.3f}   (the search objective)"
    )
    click.echo(f"held-out ppl   dense {dense.perplexity:.3f}")
    click.echo(f"               uniform {config.sparsity.target:.0%}: {uniform.perplexity:.3f}")
    click.echo(f"               bo best (trial {exported.trial_number}): {exported.heldout_perplexity:.3f}")
    gain = (uniform.perplexity - exported.heldout_perplexity) / (uniform.perplexity - dense.perplexity)
    click.echo(f"               -> the best allocation removes {gain:.0%} of uniform's degradation over dense")
    click.echo(f"exported       {exported.path}/lookup.json (+ TEAL files)")
    click.echo(f"report         {', '.join(str(p) for p in plots)}")
    click.echo(f"time           {minutes:.1f} min")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sparsealloc")

"""The ``btard`` command line (typer).

Errors a user can fix (a bad config, a missing directory) print one line and exit 2;
a run that fails for another reason prints one line and exits 1. No tracebacks unless
``BTARD_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console

from btard_ray.config import ConfigError, JobConfig, dump_config, load_config

app = typer.Typer(
    name="btard",
    help=(
        "Byzantine-tolerant elastic training on Ray (BTARD-SGD).\n\n"
        "Start with:  btard run configs/quickstart.yaml\n\n"
        "On a cluster:  btard cluster start, then btard submit configs/quickstart.yaml"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
from btard_ray.cluster_cli import cluster_app  # noqa: E402
from btard_ray.jobs_cli import jobs_app, submit  # noqa: E402
from btard_ray.ledger_cli import ledger_app  # noqa: E402

app.add_typer(ledger_app, name="ledger", help="Audit a ban ledger: list, show a peer, export, verify.")
app.add_typer(cluster_app, name="cluster")
app.add_typer(jobs_app, name="jobs")
err = Console(stderr=True)
out = Console()

CONFIG_ARG = typer.Argument(
    None,
    help="YAML config (see configs/). Omitted: the built-in quickstart (6 peers on the bundled digits).",
    show_default=False,
)
SET_OPT = typer.Option(
    [],
    "--set",
    "-s",
    help="Override any config key: --set optimizer.lr=0.1 --set aggregator.name=mean (repeatable).",
    metavar="KEY=VALUE",
)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _unexpected(exc: Exception) -> NoReturn:
    """A failure the user did not cause: its last line, exit 1 (BTARD_DEBUG=1: the traceback)."""
    if os.environ.get("BTARD_DEBUG"):
        raise exc
    text = str(exc).strip()
    _fail(f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}", 1)


def _load(config: Optional[Path], overrides: list[str], name: Optional[str] = None) -> JobConfig:
    """The validated config; its name is ``name``, else its ``name`` key, else the file's stem,
    else ``quickstart``."""
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        _fail(str(exc), 2)
    if name:
        cfg.name = name
    if cfg.name is None:
        cfg.name = config.stem if config is not None else "quickstart"
    return cfg


@app.command()
def run(
    config: Optional[Path] = CONFIG_ARG,
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory to write. Default: runs/<name>-<UTC time>.", show_default=False
    ),
    overrides: list[str] = SET_OPT,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    name: Optional[str] = typer.Option(
        None, "--name", "-n", help="The job's name. Default: the config's name key, else the file's stem.",
        show_default=False,
    ),
) -> None:
    """Train a model with n Ray peers using butterfly CenteredClip all-reduce.

    Starts a local Ray instance unless ray.address is set, writes config.yaml,
    metrics.jsonl, summary.json and a final checkpoint to the run directory.

    Example:  btard run configs/quickstart.yaml --set steps=50 --out runs/try
    """
    cfg = _load(config, overrides, name)
    from btard_ray.run_dir import RunDir, default_run_dir
    from btard_ray.data import DataError

    target = out_dir or default_run_dir(cfg.name or "job")
    out.print(f"[bold]btard run[/] job [cyan]{cfg.name}[/]: {cfg.peers} peers, {cfg.steps} steps, "
              f"{cfg.model.name} on {cfg.data.name}, aggregator {cfg.aggregator.name} -> {target}")
    try:
        from btard_ray.trainer import train

        summary = train(cfg, RunDir(target), show_progress=progress, console=out)
    except (ConfigError, DataError) as exc:
        _fail(str(exc), 2)
    except Exception as exc:  # noqa: BLE001 - one line for the user; BTARD_DEBUG shows the rest
        _unexpected(exc)
    if summary.get("diverged"):
        # The run's files are written; the exit status says that it did not train to the end.
        out.print(f"[red]diverged[/] at step {summary['diverged']['step']}: {summary['diverged']['reason']}; "
                  f"test accuracy {100 * summary['final_test_accuracy']:.2f}%. Plot it: btard plot {target}",
                  soft_wrap=True)
        raise typer.Exit(1)
    out.print(
        f"done: test accuracy [bold]{100 * summary['final_test_accuracy']:.2f}%[/] after {summary['steps']} steps "
        f"in {summary['wall_seconds']:.0f} s; weights agree ({summary['weight_hash'][:12]}). "
        f"Plot it: btard plot {target}"
    )


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="A run directory written by `btard run`.", show_default=False),
    steps: Optional[int] = typer.Option(
        None, "--steps", min=1, help="Train to this many steps in all. Default: the config's steps.",
        show_default=False,
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Continue a run whose driver died, from its latest checkpoint.

    Reads RUN_DIR/config.yaml and the latest checkpoint (checkpoint_every),
    starts new peers with its weights, optimizer state and membership, reopens
    the run's ledger with its job key and trains on to the config's steps (or
    --steps): the steps, the metrics and the ledger's chain continue.

    Example:  btard resume runs/quickstart-20260101-120000 --steps 400
    """
    from btard_ray.checkpoint import ResumeError
    from btard_ray.run_dir import RunDir

    target = RunDir(run_dir)
    try:
        from btard_ray.trainer import load_for_resume, resume as resume_job

        cfg, ckpt = load_for_resume(target, steps)
        out.print(f"[bold]btard resume[/] job [cyan]{cfg.name}[/] at step {ckpt.step} of {cfg.steps}: "
                  f"{len(ckpt.members)} peers (banned: {len(ckpt.banned)}) -> {run_dir}", soft_wrap=True)
        summary = resume_job(target, steps, show_progress=progress, console=out, loaded=(cfg, ckpt))
    except ResumeError as exc:
        _fail(str(exc), 2)
    except Exception as exc:  # noqa: BLE001 - one line for the user; BTARD_DEBUG shows the rest
        _unexpected(exc)
    out.print(
        f"done: test accuracy [bold]{100 * summary['final_test_accuracy']:.2f}%[/] after {summary['steps']} steps "
        f"(resumed from step {ckpt.step}); weights agree ({summary['weight_hash'][:12]}).",
        soft_wrap=True,
    )


@app.command()
def plot(
    run_dir: Path = typer.Argument(..., help="A run directory written by `btard run`.", show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write PNGs. Default: RUN_DIR/plots."),
) -> None:
    """Write PNG plots of loss and accuracy against steps for a run directory.

    Example:  btard plot runs/quickstart-20260101-120000
    """
    from btard_ray.plotting import plot_run

    if not run_dir.is_dir():
        _fail(f"{run_dir}: no such run directory", 2)
    try:
        paths = plot_run(run_dir, out_dir)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), 2)
    for p in paths:
        out.print(f"wrote {p}")


@app.command()
def experiment(
    grid_file: Path = typer.Argument(..., metavar="GRID", help="A grid YAML (see configs/experiments/).",
                                     show_default=False),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Results directory; finished cells in it are skipped."),
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", "-j", min=1,
        help="Cells at once. Default: the grid's `concurrency`, else as many as the cluster's CPUs hold.",
        show_default=False),
    only: Optional[list[str]] = typer.Option(
        None, "--only", metavar="PATTERN",
        help="Run only the cells whose id matches this shell pattern (repeatable), e.g. 'mean--*' or "
             "'*--sign_flip--*'. The report still covers every finished cell.", show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the grid and list its cells; run nothing."),
) -> None:
    """Run a grid of attacked training runs and write results.csv, results.md and PNG figures.

    The grid is the cross product of attacks, schedules, seeds and defences (see
    configs/experiments/mnist_replication.yaml). Cells run concurrently on the Ray cluster
    (ray.address / RAY_ADDRESS, else a local instance); a grid too long for one sitting
    runs in pieces: run the same command again and finished cells are skipped.

    Example:  btard experiment configs/experiments/mnist_replication.yaml --out runs/replication
    """
    from btard_ray.experiment.grid import check_cells, load_grid

    try:
        grid, base = load_grid(grid_file)
        planned = check_cells(grid, base, only or ())
    except ConfigError as exc:
        _fail(str(exc), 2)
    if dry_run:
        for cell, cfg in planned:
            out.print(f"{cell.id}: {cfg.peers} peers, {cfg.steps} steps")
        out.print(f"{len(planned)} cells")
        return
    import platform

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from btard_ray.experiment.report import write_results
    from btard_ray.experiment.runner import run_grid
    from btard_ray.runtime import connect, disconnect

    out_dir.mkdir(parents=True, exist_ok=True)
    first = planned[0][1]
    started = connect(first.ray, grid.name)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=out) as bar:
            task = bar.add_task(f"grid {grid.name}", total=len(planned))

            def done(cell, status: str) -> None:
                bar.advance(task)
                if status != "skipped":
                    bar.console.print(f"{status}: {cell.id}")

            result = run_grid(grid, base, out_dir, concurrency, on_done=done, only=only or ())
        command = "btard experiment " + " ".join(sys.argv[2:])
        machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
        paths = write_results(grid, out_dir, command, machine)
    except Exception as exc:  # noqa: BLE001 - one line for the user; BTARD_DEBUG shows the rest
        _unexpected(exc)
    finally:
        disconnect(started)
    out.print(f"cells: {len(result['done'])} run, {len(result['skipped'])} skipped, {len(result['failed'])} failed"
              + (f" (see {out_dir}/cells/*/error.txt)" if result["failed"] else ""))
    for path in paths:
        out.print(f"wrote {path}")
    if result["failed"]:
        raise typer.Exit(1)


@app.command("config")
def show_config(config: Optional[Path] = CONFIG_ARG, overrides: list[str] = SET_OPT) -> None:
    """Validate a config (with overrides) and print it fully resolved.

    Example:  btard config configs/quickstart.yaml --set peers=4
    """
    cfg = _load(config, overrides)
    sys.stdout.write(dump_config(cfg))


app.command("submit")(submit)  # defined in jobs_cli.py; registered here to list after `config`


from btard_ray.membership_cli import finish, join, leave, status  # noqa: E402

app.command()(join)
app.command()(leave)
app.command()(status)
app.command()(finish)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

"""``btard submit`` and ``btard jobs``: run ``btard run`` as a Ray job on a cluster, and follow it.

A submitted job is a Ray Jobs API job (``ray.job_submission.JobSubmissionClient``) whose
submission id is the job's name, so that the name finds it again, and whose entrypoint is

    python -m btard_ray.cli run CONFIG --name NAME --out RUNDIR --no-progress [--set K=V]...

run by Ray on the head node with ``RAY_ADDRESS`` set to the cluster, which ``btard run``
joins (:func:`btard_ray.runtime.connect`). ``python`` is the head's: ``btard cluster start``
puts its own Python first on the head's ``PATH``. The config is validated here first, so a
bad config is the usual one-line error and nothing is submitted. CONFIG and RUNDIR are
absolute paths on the submitting machine: on one machine that is simply right; on a cluster
of several machines they must lie on a file system that the head node shares.

Exit codes: 0 success; 1 the followed job did not succeed (``logs --follow``, ``submit
--follow``) or a stop timed out; 2 a bad config or option, no cluster at the address, an
unknown job name, a name already taken, or a log stream that broke off; 130 Ctrl-C while
following (the job keeps running). Errors are one line on stderr.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
import time
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from btard_ray.config import ConfigError, load_config
from btard_ray.dashboard import (
    META_BTARD,
    META_CONFIG,
    META_RUN_DIR,
    ClusterUnreachable,
    JobNotFound,
)

jobs_app = typer.Typer(
    name="jobs",
    help=(
        "Follow submitted jobs: list, status, logs --follow, stop.\n\n"
        "Every command takes --address (default $BTARD_DASHBOARD, else http://127.0.0.1:8265).\n\n"
        "Example:  btard jobs logs quickstart --follow"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ADDRESS_OPT = typer.Option(
    None, "--address", "-a", metavar="URL",
    help="The cluster's dashboard. Default: $BTARD_DASHBOARD, else http://127.0.0.1:8265.", show_default=False,
)
NAME_ARG = typer.Argument(..., help="The job's name (given to `btard submit`).", show_default=False)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _client(address: Optional[str]):
    from btard_ray.dashboard import job_client

    try:
        return job_client(address)
    except ClusterUnreachable as exc:
        _fail(str(exc), 2)


def _job(client, name: str):
    from btard_ray.dashboard import get_job

    try:
        return get_job(client, name)
    except JobNotFound:
        _fail(f"no job named {name!r} on the cluster at {client.get_address()} (see `btard jobs list`)", 2)
    except ClusterUnreachable as exc:
        _fail(str(exc), 2)


def _follow_hint(address: Optional[str]) -> str:
    return f" --address {address}" if address else ""


def _entrypoint(config: Optional[Path], name: str, run_dir: Path, overrides: list[str]) -> str:
    args = ["python", "-m", "btard_ray.cli", "run"]
    if config is not None:
        args.append(str(config.resolve()))
    args += ["--name", name, "--out", str(run_dir), "--no-progress"]
    for override in overrides:
        args += ["--set", override]
    return shlex.join(args)


def submit(
    config: Optional[Path] = typer.Argument(
        None, help="YAML config (see configs/). Omitted: the built-in quickstart.", show_default=False
    ),
    address: Optional[str] = ADDRESS_OPT,
    name: Optional[str] = typer.Option(
        None, "--name", "-n",
        help="The job's name, its Ray submission id. Default: the config's name, else the file's stem.",
        show_default=False,
    ),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", metavar="KEY=VALUE", help="Override any config key (repeatable), as for `btard run`."
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run directory. Default: runs/<name> under the current directory.",
        show_default=False,
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Then print the job's output until it ends."),
) -> None:
    """Submit `btard run CONFIG` to a Ray cluster as a job named NAME.

    The config is checked here first. The job runs on the cluster's head
    node and writes its run directory (default runs/<name>, passed as an
    absolute path: with several machines it must be on a shared file
    system). Follow it with `btard jobs logs NAME --follow`.

    Example:  btard submit configs/quickstart.yaml --name digits-1 --set steps=50
    """
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        _fail(str(exc), 2)
    name = name or cfg.name or "quickstart"
    if not NAME_RE.match(name):
        _fail(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names the job and its run directory)", 2)
    run_dir = (out_dir or Path("runs") / name).resolve()
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        _fail(f"{run_dir} already exists; pick another --name or --out", 2)

    client = _client(address)
    from btard_ray.dashboard import get_job, submission_error

    try:
        taken = get_job(client, name)
    except JobNotFound:
        taken = None
    except ClusterUnreachable as exc:
        _fail(str(exc), 2)
    if taken is not None:
        _fail(f"the cluster already has a job named {name!r} ({taken.status}); pick another --name", 2)

    entrypoint = _entrypoint(config, name, run_dir, overrides)
    metadata = {META_BTARD: "1", META_RUN_DIR: str(run_dir), META_CONFIG: str(config.resolve()) if config else ""}
    try:
        client.submit_job(
            entrypoint=entrypoint,
            submission_id=name,
            metadata=metadata,
            # Unbuffered, so that `btard jobs logs --follow` shows lines as they are printed;
            # wide, so that rich does not wrap them at 80 columns (the log is not a terminal).
            runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1", "COLUMNS": "160"}},
        )
    except RuntimeError as exc:
        _fail(f"the cluster refused the job: {submission_error(exc)}", 2)
    where = _follow_hint(address)
    out.print(f"submitted job [bold cyan]{escape(name)}[/] to {client.get_address()}; run dir {escape(str(run_dir))}")
    out.print(f"  follow:  btard jobs logs {escape(name)} --follow{escape(where)}")
    out.print(f"  status:  btard jobs status {escape(name)}{escape(where)}")
    out.print(f"  stop:    btard jobs stop {escape(name)}{escape(where)}")
    if follow:
        raise typer.Exit(_follow(client, name))


@jobs_app.command("list")
def list_cmd(
    address: Optional[str] = ADDRESS_OPT,
    all_jobs: bool = typer.Option(False, "--all", help="Also list Ray jobs not submitted by btard."),
) -> None:
    """List the cluster's btard jobs, oldest first: status, times, run dir.

    Example:  btard jobs list --address http://127.0.0.1:8265
    """
    from btard_ray.dashboard import list_jobs

    client = _client(address)
    try:
        jobs = list_jobs(client, btard_only=not all_jobs)
    except ClusterUnreachable as exc:
        _fail(str(exc), 2)
    if not jobs:
        out.print(f"no {'' if all_jobs else 'btard '}jobs on the cluster at {client.get_address()}")
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("name", "status", "started", "duration", "run dir"):
        table.add_column(column)
    for j in jobs:
        table.add_row(
            escape(j.submission_id), str(j.status), _clock(j.start_time), _duration(j.start_time, j.end_time),
            escape((j.metadata or {}).get(META_RUN_DIR, "")),
        )
    out.print(table)


@jobs_app.command("status")
def status_cmd(name: str = NAME_ARG, address: Optional[str] = ADDRESS_OPT) -> None:
    """Show a job's status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED.

    The first line is `NAME: STATUS`; then its times and run directory and,
    when this machine can read it, the final accuracy from summary.json.

    Example:  btard jobs status digits-1
    """
    client = _client(address)
    job = _job(client, name)
    meta = job.metadata or {}
    out.print(f"{escape(name)}: [bold]{job.status}[/]")
    if job.message:
        out.print(f"  message: {escape(job.message.strip())}")
    out.print(f"  started: {_clock(job.start_time)}; " + (
        f"ended {_clock(job.end_time)} after {_duration(job.start_time, job.end_time)}"
        if job.end_time else f"running for {_duration(job.start_time, None)}"
    ))
    run_dir = meta.get(META_RUN_DIR)
    if run_dir:
        out.print(f"  run dir: {escape(run_dir)}")
        summary = Path(run_dir) / "summary.json"
        if summary.is_file():
            import json

            try:
                data = json.loads(summary.read_text())
                out.print(f"  result:  test accuracy {100 * data['final_test_accuracy']:.2f}% after "
                          f"{data['steps']} steps in {data['wall_seconds']:.0f} s (summary.json)")
            except (ValueError, KeyError, TypeError):
                pass
    if job.status == "FAILED" and job.driver_exit_code is not None:
        out.print(f"  exit code: {job.driver_exit_code}; see `btard jobs logs {escape(name)}`")


@jobs_app.command("logs")
def logs_cmd(
    name: str = NAME_ARG,
    address: Optional[str] = ADDRESS_OPT,
    follow: bool = typer.Option(
        False, "--follow", "-f",
        help="Keep printing until the job ends; then exit 0 if it SUCCEEDED, else 1.",
    ),
) -> None:
    """Print a job's output (its `btard run` driver's stdout and stderr).

    With --follow, keep printing until the job ends; the exit code then
    says whether it succeeded (0) or not (1). Ctrl-C stops following, not
    the job.

    Example:  btard jobs logs digits-1 --follow
    """
    client = _client(address)
    _job(client, name)
    if not follow:
        from btard_ray.dashboard import call

        sys.stdout.write(call(client.get_address(), client.get_job_logs, name))
        sys.stdout.flush()
        return
    raise typer.Exit(_follow(client, name))


def _follow(client, name: str) -> int:
    """Stream the job's output to stdout until it ends; 0 if it SUCCEEDED, else 1."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(name):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        err.print(f"stopped following; job {escape(name)} keeps running (stop it: btard jobs stop {escape(name)})")
        return 130
    except Exception as exc:  # noqa: BLE001 - the connection to the dashboard broke
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.print(f"[bold red]error:[/] lost the log stream of {escape(name)}: {escape(reason)}")
        return 2
    job = _job(client, name)
    # The stream ends when the driver exits; the status turns terminal a moment later.
    deadline = time.monotonic() + 30
    while not job.status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        job = _job(client, name)
    err.print(f"job {escape(name)}: {job.status}")
    return 0 if job.status == "SUCCEEDED" else 1


@jobs_app.command("stop")
def stop_cmd(
    name: str = NAME_ARG,
    address: Optional[str] = ADDRESS_OPT,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until the job has stopped."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for it."),
) -> None:
    """Stop a running job; its peers go with it.

    Ray sends its driver SIGTERM, then SIGKILL a few seconds later. A job
    that has already finished is left as it is (one line, exit code 0).

    Example:  btard jobs stop digits-1
    """
    client = _client(address)
    job = _job(client, name)
    if job.status.is_terminal():
        out.print(f"job {escape(name)} already finished ({job.status}); nothing to stop")
        return
    from btard_ray.dashboard import call

    if not call(client.get_address(), client.stop_job, name):
        out.print(f"job {escape(name)} already finished ({_job(client, name).status}); nothing to stop")
        return
    if not wait:
        out.print(f"asked job {escape(name)} to stop")
        return
    deadline = time.monotonic() + timeout
    while not job.status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        job = _job(client, name)
    if not job.status.is_terminal():
        _fail(f"asked job {name} to stop; after {timeout:.0f} s it is still {job.status}", 1)
    out.print(f"stopped job {escape(name)} ({job.status})")


def _clock(ms: Optional[int]) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _duration(start_ms: Optional[int], end_ms: Optional[int]) -> str:
    if not start_ms:
        return "-"
    seconds = ((end_ms or time.time() * 1000) - start_ms) / 1000
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


"""``btard cluster``: start, stop and inspect the Ray cluster that ``btard submit`` runs jobs on.

``start`` runs ``ray start --head`` (see :mod:`btard_ray.head` for what it sets and why) and
prints how other machines join and where to submit; ``stop`` stops that head and nothing
else (``--all``: ``ray stop``, every Ray process on this machine); ``status`` lists the
nodes and the btard jobs running, from the dashboard.

Exit codes: 0 success; 1 Ray failed to start or stop; 2 no cluster at the address, or
nothing recorded to stop, or a bad option. Errors are one line on stderr.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from btard_ray.dashboard import ClusterUnreachable, dashboard_address

cluster_app = typer.Typer(
    name="cluster",
    help=(
        "Start, stop and inspect the Ray cluster that jobs are submitted to.\n\n"
        "The head runs with token authentication, usage statistics off and the dashboard's "
        "Jobs API on.\n\n"
        "Example:  btard cluster start --num-cpus 2 && btard cluster status"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ADDRESS_OPT = typer.Option(
    None, "--address", "-a", metavar="URL",
    help="The cluster's dashboard. Default: $BTARD_DASHBOARD, else http://127.0.0.1:8265.", show_default=False,
)
TEMP_DIR_OPT = typer.Option(
    None, "--temp-dir", metavar="DIR",
    help="Ray's temp root for this head (absolute; default Ray's own, /tmp/ray).", show_default=False,
)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _wait_for_jobs_api(url: str, timeout_s: float = 60.0) -> None:
    """The dashboard comes up a little after `ray start` returns; wait until it answers."""
    from btard_ray.dashboard import job_client

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            job_client(url).list_jobs()
            return
        except Exception:  # noqa: BLE001 - not up yet; the last failure is reported below
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _token_instructions() -> list[str]:
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode != "token":
        return [
            f"[bold yellow]warning:[/] token authentication is off (RAY_AUTH_MODE={escape(mode)}): anyone who can "
            "reach this head's ports can run code on the cluster."
        ]
    if os.environ.get("RAY_AUTH_TOKEN"):
        return ["  1. set RAY_AUTH_TOKEN there to the same value as here (it is this cluster's token)"]
    from btard_ray.ray_auth import DEFAULT_TOKEN_PATH

    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(DEFAULT_TOKEN_PATH)
    return [
        f"  1. copy this cluster's token file {escape(path)} to ~/.ray/auth_token there, owner-only, e.g.",
        f"       ssh OTHER 'mkdir -p ~/.ray && umask 077 && cat > ~/.ray/auth_token' < {escape(path)}",
    ]


@cluster_app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def start(
    ctx: typer.Context,
    port: int = typer.Option(6379, "--port", help="The head's GCS port: the address other machines join."),
    num_cpus: Optional[int] = typer.Option(
        None, "--num-cpus", help="CPUs this node offers. Default: all.", show_default=False
    ),
    num_gpus: Optional[int] = typer.Option(
        None, "--num-gpus", help="GPUs this node offers. Default: all.", show_default=False
    ),
    object_store_memory: Optional[int] = typer.Option(
        None, "--object-store-memory", metavar="MB", help="Object store size in MB. Default: Ray's.", show_default=False
    ),
    dashboard_port: int = typer.Option(8265, "--dashboard-port", help="Port of the dashboard and its Jobs API."),
    dashboard_host: str = typer.Option(
        "127.0.0.1", "--dashboard-host",
        help="Interface the dashboard listens on; 0.0.0.0 to submit from other machines (token-protected).",
    ),
    temp_dir: Optional[Path] = TEMP_DIR_OPT,
) -> None:
    """Start a Ray head node on this machine for btard jobs; say how to join it.

    Runs `ray start --head` with token authentication (RAY_AUTH_MODE=token,
    the token in ~/.ray/auth_token), usage statistics off and the dashboard
    on, then prints the command other machines run to join and the address
    for `btard submit --address`. Other `ray start` options can follow `--`.

    Example:  btard cluster start --num-cpus 2 --dashboard-port 8265
    """
    from btard_ray.head import HeadError, start_command, start_head

    if temp_dir is not None and not temp_dir.is_absolute():
        _fail(f"--temp-dir {temp_dir}: must be an absolute path", 2)
    extra = [a for a in ctx.args if a != "--"]
    local_host = "127.0.0.1" if dashboard_host in ("0.0.0.0", "::", "localhost") else dashboard_host
    url = f"http://{local_host}:{dashboard_port}"
    try:
        cmd = start_command(
            port, dashboard_port, dashboard_host, num_cpus, num_gpus, object_store_memory, temp_dir, extra
        )
        err.print(f"[dim]starting the Ray head: {escape(' '.join(cmd[1:]))}[/]")
        record = start_head(cmd, temp_dir, url)
    except HeadError as exc:
        _fail(str(exc), 1)
    try:
        _wait_for_jobs_api(url)
    except Exception as exc:  # noqa: BLE001
        _fail(f"the head started (GCS {record.gcs_address}) but its dashboard at {url} does not answer: {exc}", 1)

    head_ip = record.gcs_address.rsplit(":", 1)[0]
    stop_hint = "btard cluster stop" + (f" --temp-dir {temp_dir}" if temp_dir else "")
    lines = [
        f"[bold green]Ray head started[/]: GCS {record.gcs_address}, dashboard {url} "
        f"(auth: {escape(os.environ.get('RAY_AUTH_MODE', 'token'))}).",
        "",
        "Submit btard jobs to it:",
        f"  btard submit configs/quickstart.yaml --address {url}",
        f"  (or export {_env_name()}={url}; then plain `btard submit`, `btard jobs list`)",
    ]
    if dashboard_host != local_host:
        lines.append(f"  from another machine: --address http://{head_ip}:{dashboard_port}")
    lines += [
        "",
        "Add a machine (with the same Python, Ray and btard-ray installed):",
        *_token_instructions(),
        f"  2. there:  RAY_AUTH_MODE=token ray start --address {record.gcs_address}",
        "     (run dirs and configs of submitted jobs must be on a file system every node shares)",
        "",
        f"Status: btard cluster status --address {url}    Stop: {stop_hint}",
    ]
    for line in lines:
        out.print(line)


def _env_name() -> str:
    from btard_ray.dashboard import DASHBOARD_ENV

    return DASHBOARD_ENV


@cluster_app.command()
def stop(
    temp_dir: Optional[Path] = TEMP_DIR_OPT,
    all_processes: bool = typer.Option(
        False, "--all", help="Run `ray stop` instead: every Ray process of this user on this machine, "
        "local `btard run` instances and worker nodes included.",
    ),
    grace_period: int = typer.Option(10, "--grace-period", help="Seconds between SIGTERM and SIGKILL."),
) -> None:
    """Stop the Ray head that `btard cluster start` started on this machine.

    Stops that head's processes only (recorded in the Ray temp dir) and the
    jobs running on it; other Ray instances on the machine keep running. On
    a machine that joined with `ray start --address`, use --all (ray stop).

    Example:  btard cluster stop
    """
    from btard_ray.head import HeadError, forget_head, ray_stop_all, read_record, stop_head

    record = read_record(temp_dir)
    if all_processes:
        result = ray_stop_all(grace_period)
        if record is not None:
            forget_head(record)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        if result.returncode != 0:
            _fail(f"ray stop failed: {lines[-1] if lines else result.returncode}", 1)
        out.print(f"ray stop: {escape(lines[-1]) if lines else 'done'}")
        return
    if record is None:
        from btard_ray.head import record_path

        _fail(
            f"no head started by `btard cluster start` is recorded in {record_path(temp_dir).parent}; "
            "`btard cluster stop --all` stops every Ray process on this machine (ray stop)",
            2,
        )
    try:
        count = stop_head(record, grace_period)
    except HeadError as exc:
        _fail(str(exc), 1)
    if count == 0:
        out.print(f"the head at {record.gcs_address} was not running any more; forgot it")
    else:
        out.print(f"stopped the Ray head at {record.gcs_address} ({count} processes)")


@cluster_app.command()
def status(address: Optional[str] = ADDRESS_OPT) -> None:
    """Show the cluster's nodes (alive, resources) and its running btard jobs.

    Exit code 2, with one line, when no cluster answers at the address.

    Example:  btard cluster status --address http://127.0.0.1:8265
    """
    from btard_ray.dashboard import job_client, list_jobs, list_nodes

    url = dashboard_address(address)
    try:
        client = job_client(url)
        nodes = list_nodes(url)
        jobs = [j for j in list_jobs(client) if not j.status.is_terminal()]
    except ClusterUnreachable as exc:
        _fail(str(exc), 2)

    alive = [n for n in nodes if n.get("state") == "ALIVE"]
    out.print(f"cluster at {url}: {len(alive)} node{'s' * (len(alive) != 1)} alive"
              + (f", {len(nodes) - len(alive)} dead" if len(nodes) > len(alive) else ""))
    table = Table(show_edge=False, pad_edge=False)
    for column in ("node", "ip", "role", "state", "CPU", "GPU", "memory", "object store"):
        table.add_column(column)
    for n in sorted(nodes, key=lambda n: (not n.get("is_head_node"), n.get("node_ip") or "")):
        res = n.get("resources_total") or {}
        table.add_row(
            (n.get("node_id") or "")[:12], n.get("node_ip") or "", "head" if n.get("is_head_node") else "worker",
            n.get("state") or "", _num(res.get("CPU")), _num(res.get("GPU")),
            _gib(res.get("memory")), _gib(res.get("object_store_memory")),
        )
    out.print(table)
    if not jobs:
        out.print("btard jobs running: none")
        return
    out.print(f"btard jobs running: {len(jobs)}")
    jt = Table(show_edge=False, pad_edge=False)
    for column in ("name", "status", "running for", "run dir"):
        jt.add_column(column)
    from btard_ray.dashboard import META_RUN_DIR

    now = time.time()
    for j in jobs:
        jt.add_row(j.submission_id, str(j.status), f"{now - (j.start_time or now * 1000) / 1000:.0f} s",
                   escape((j.metadata or {}).get(META_RUN_DIR, "")))
    out.print(jt)


def _num(value) -> str:
    if value is None:
        return "0"
    return f"{value:g}"


def _gib(value) -> str:
    if not value:
        return "-"
    return f"{value / 2**30:.1f} GiB"

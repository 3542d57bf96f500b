"""The Ray head node that ``btard cluster start`` runs, and stopping exactly that head.

:func:`start_head` runs ``ray start --head`` (the ``ray`` next to this Python) with:

* the auth mode btard-ray decided on import (``RAY_AUTH_MODE=token`` and a token, see
  :mod:`btard_ray.ray_auth`), passed through the environment so that the head enforces it;
* usage statistics off (``RAY_USAGE_STATS_ENABLED=0`` and ``--disable-usage-stats``);
* the dashboard on: the Jobs API behind ``btard submit`` and ``btard jobs`` lives in it;
* this Python's ``bin`` directory first on ``PATH``, so that a job's entrypoint
  (``python -m btard_ray.cli run ...``) finds the Python that has btard-ray installed;
* a new session (process group) for ``ray start`` and every daemon it leaves behind.

The head is recorded in ``<ray temp dir>/btard_head.json`` (process group, GCS address,
dashboard URL). :func:`stop_head` stops that process group only. ``ray stop``, by contrast,
stops every Ray process of this user on the machine, local instances of ``btard run``
included; ``btard cluster stop --all`` does that on purpose.

Stopping by process group is Linux-only (it reads ``/proc``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RECORD_NAME = "btard_head.json"
START_LOG_NAME = "btard_head_start.log"
ADDRESS_FILE = "ray_current_cluster"  # where `ray start` writes the GCS address of its cluster


class HeadError(RuntimeError):
    """The head cannot be started or stopped; the message is one line for the user."""


@dataclass
class HeadRecord:
    """What ``btard cluster stop`` and ``status`` need to find the head again."""

    pgid: int
    gcs_address: str
    dashboard_url: str
    temp_dir: str
    started_at: float


def ray_executable() -> str:
    """The ``ray`` console script of this Python's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise HeadError(f"no `ray` executable next to {sys.executable} or on PATH (pip install 'ray[default]')")
    return found


def default_temp_dir() -> Path:
    """Ray's own default temp root (``/tmp/ray``, or under ``$RAY_TMPDIR`` / ``$TMPDIR``)."""
    from ray._common.utils import get_default_ray_temp_dir

    return Path(get_default_ray_temp_dir())


def head_environment() -> dict[str, str]:
    """The environment ``ray start`` runs in: btard's auth mode, no usage stats, our PATH."""
    import btard_ray  # noqa: F401  - configure_ray_auth() has run: RAY_AUTH_MODE and the token exist

    env = dict(os.environ)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.pop("RAY_ADDRESS", None)  # a head starts its own cluster
    return env


def start_command(
    port: int,
    dashboard_port: int,
    dashboard_host: str,
    num_cpus: int | None,
    num_gpus: int | None,
    object_store_memory_mb: int | None,
    temp_dir: Path | None,
    extra: list[str],
) -> list[str]:
    """The ``ray start --head`` command line."""
    cmd = [
        ray_executable(), "start", "--head",
        f"--port={port}",
        "--include-dashboard=true",
        f"--dashboard-host={dashboard_host}",
        f"--dashboard-port={dashboard_port}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus}")
    if object_store_memory_mb is not None:
        cmd.append(f"--object-store-memory={object_store_memory_mb * 1024 * 1024}")
    if temp_dir is not None:
        cmd.append(f"--temp-dir={temp_dir}")
    return cmd + list(extra)


def record_path(temp_dir: Path | None) -> Path:
    return (temp_dir or default_temp_dir()) / RECORD_NAME


def read_record(temp_dir: Path | None) -> HeadRecord | None:
    path = record_path(temp_dir)
    if not path.is_file():
        return None
    try:
        return HeadRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def start_head(cmd: list[str], temp_dir: Path | None, dashboard_url: str, timeout_s: float = 180.0) -> HeadRecord:
    """Run ``cmd`` (``ray start --head ...``) in a new session and record the head.

    Raises :class:`HeadError` (one line: the last line Ray printed) when it fails, or when a
    head recorded in the same temp dir is still running.
    """
    root = temp_dir or default_temp_dir()
    previous = read_record(temp_dir)
    if previous is not None and _is_this_head(group_members(previous.pgid), previous):
        raise HeadError(
            f"a head started by `btard cluster start` is already running here (GCS {previous.gcs_address}, "
            f"dashboard {previous.dashboard_url}); stop it first with `btard cluster stop`"
        )
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / START_LOG_NAME
    started_at = time.time()
    # `ray start` leaves its daemons running after it exits: their output goes to a file, not
    # to a pipe that would never reach EOF. start_new_session=True puts them in one process
    # group of their own, which is what stop_head() stops.
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, env=head_environment(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            raise HeadError(f"`ray start --head` did not finish in {timeout_s:.0f} s (log: {log_path})") from None
    if proc.returncode != 0:
        _signal_group(proc.pid, signal.SIGKILL)  # whatever it had started before failing (our own session)
        raise HeadError(f"`ray start --head` failed: {_last_error_line(log_path)} (log: {log_path})")
    gcs_address = _read_gcs_address(root)
    record = HeadRecord(
        pgid=proc.pid, gcs_address=gcs_address, dashboard_url=dashboard_url, temp_dir=str(root),
        started_at=started_at,
    )
    record_path(temp_dir).write_text(json.dumps(asdict(record), indent=2) + "\n")
    return record


def _read_gcs_address(root: Path) -> str:
    path = root / ADDRESS_FILE
    try:
        return path.read_text().strip()
    except OSError:
        raise HeadError(f"`ray start --head` reported success but wrote no {path}") from None


def _last_error_line(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in ("Error", "error", "ERROR", "failed", "Failed")):
            return _strip_ansi(line)
    return _strip_ansi(lines[-1]) if lines else "no output"


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# -- stopping by process group ------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, int]]:
    """``pid -> (ppid, pgid)`` of every live (not zombie) process, from ``/proc``."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # After the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes whose process group is ``pgid``."""
    return sorted(pid for pid, (_, group) in _process_table().items() if group == pgid)


def _descendants(roots: list[int]) -> list[int]:
    """Every live process below ``roots`` (Ray's workers and job drivers run in groups of their own)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in _process_table().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found - set(roots))


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _is_this_head(members: list[int], record: HeadRecord) -> bool:
    """Whether the group still is the recorded head: one of its Ray daemons runs in its temp dir."""
    return any(record.temp_dir + "/" in _cmdline(pid) and "ray" in _cmdline(pid) for pid in members)


def stop_head(record: HeadRecord, grace_s: float = 10.0) -> int:
    """Stop the head's process group; returns how many processes it had.

    The group and every process below it (workers and job drivers run in process groups of
    their own), in ``ray stop``'s order: the raylet first, then every other process, then
    the GCS; each in turn gets SIGTERM and, after its share of ``grace_s``, SIGKILL.
    Raises :class:`HeadError` when the group is not the recorded head any more (its id was
    reused after a reboot) or when ``/proc`` is missing.
    """
    if not Path("/proc").is_dir():
        raise HeadError("stopping one head needs Linux's /proc; use `btard cluster stop --all` (ray stop)")
    members = group_members(record.pgid)
    if members and not _is_this_head(members, record):
        raise HeadError(
            f"process group {record.pgid} is no longer the Ray head recorded in {record.temp_dir}; "
            "not stopping it. Use `btard cluster stop --all` (ray stop)"
        )
    everyone = members + _descendants(members)
    buckets = [
        [p for p in everyone if _program(p) == "raylet"],
        [p for p in everyone if _program(p) not in ("raylet", "gcs_server")],
        [p for p in everyone if _program(p) == "gcs_server"],
    ]
    for bucket in buckets:
        _terminate(bucket, grace_s / len(buckets))
    _terminate(group_members(record.pgid), grace_s / len(buckets))  # anything started meanwhile
    forget_head(record)
    return len(everyone)


def _program(pid: int) -> str:
    """The executable's base name of ``pid`` (``raylet``, ``gcs_server``, ``python3``...)."""
    words = _cmdline(pid).split(" ", 1)
    return Path(words[0]).name if words[0] else ""


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2:][:1] != "Z"


def _terminate(pids: list[int], grace_s: float) -> None:
    """SIGTERM ``pids``; SIGKILL whichever is still alive after ``grace_s``."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def forget_head(record: HeadRecord) -> None:
    """Remove the record, and Ray's address file when it still names this head."""
    root = Path(record.temp_dir)
    (root / RECORD_NAME).unlink(missing_ok=True)
    address_file = root / ADDRESS_FILE
    try:
        if address_file.read_text().strip() == record.gcs_address:
            address_file.unlink()
    except OSError:
        pass


def ray_stop_all(grace_s: int = 10) -> subprocess.CompletedProcess:
    """``ray stop``: every Ray process of this user on this machine."""
    return subprocess.run(
        [ray_executable(), "stop", f"--grace-period={grace_s}"], env=head_environment(),
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )

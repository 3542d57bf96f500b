"""The run directory: everything a person needs to inspect, plot or audit a finished run.

    config.yaml        the resolved config (loadable with ``btard run``)
    metrics.jsonl      one JSON object per evaluation
    summary.json       final accuracy, wall time, peers, bans, timings
    checkpoint/        step-<t>.pt every ``checkpoint_every`` steps (the latest kept) and
                       final.pt; see :mod:`btard_ray.checkpoint` for the format
    ledger.db, job_key the ban ledger and the key that signs its head (with the defence on)
    .driver.lock       locked (flock) by the job's live driver: no second driver (a
                       ``btard resume`` of a job still running) can run it beside the first
    plots/             PNGs written by ``btard plot``
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from btard_ray.checkpoint import (FINAL, Checkpoint, ResumeError, load_checkpoint, save_checkpoint, step_file_name,
                                  step_of_file)
from btard_ray.config import JobConfig, dump_config

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoint"
DRIVER_LOCK = ".driver.lock"


class RunDirBusy(ResumeError):
    """Another live driver holds the run directory (``btard resume`` of a job still running)."""


def default_run_dir(job_name: str, root: Path = Path("runs")) -> Path:
    """``runs/<job name>-<UTC timestamp>``: a fresh directory per run."""
    return root / f"{job_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


class RunDir:
    """Writes and reads the files of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._lock_depth = 0

    @contextmanager
    def driver_lock(self) -> Iterator["RunDir"]:
        """Hold the directory's driver lock (re-entrant on this object); RunDirBusy if taken.

        An ``flock`` on ``.driver.lock``: the kernel drops it when the driver exits, killed or
        not, so a crashed job can be resumed at once and a running one cannot be resumed a
        second time beside itself.
        """
        if self._lock_depth == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / DRIVER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise RunDirBusy(f"{self.path}: another driver (pid {holder}) is running this job; "
                                 "stop it first") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def create(self, cfg: JobConfig) -> "RunDir":
        """Make the directory, write the resolved config and start an empty metrics file.

        The summary and checkpoints of an earlier run in the same directory are removed:
        they belong to another job, which ``btard resume`` must not mistake for this one.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(cfg)
        (self.path / METRICS).write_text("")
        (self.path / SUMMARY).unlink(missing_ok=True)
        for _, path in self._periodic_checkpoints():
            path.unlink(missing_ok=True)
        (self.path / CHECKPOINTS / FINAL).unlink(missing_ok=True)
        return self

    def write_config(self, cfg: JobConfig) -> None:
        _write_atomic(self.path / CONFIG, dump_config(cfg))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self.path / METRICS).open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")

    def checkpoint_path(self, name: str = "final.pt") -> Path:
        folder = self.path / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    # -- checkpoints (btard resume) -------------------------------------------------------

    def save_checkpoint(self, ckpt: Checkpoint, final: bool = False) -> Path:
        """Write ``ckpt`` atomically: ``final.pt``, or ``step-<t>.pt`` replacing older ones."""
        path = self.checkpoint_path(FINAL if final else step_file_name(ckpt.step))
        save_checkpoint(path, ckpt)
        if not final:
            for step, old in self._periodic_checkpoints():
                if step < ckpt.step:
                    old.unlink(missing_ok=True)
        for stale in path.parent.glob(".*.pt.tmp-*"):  # left by a driver killed while writing
            stale.unlink(missing_ok=True)
        return path

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint with the most completed steps (``final.pt`` or ``step-<t>.pt``).

        None when there is none. Raises CheckpointError for a file that is not one.
        """
        candidates = [path for _, path in sorted(self._periodic_checkpoints(), reverse=True)][:1]
        final = self.path / CHECKPOINTS / FINAL
        if final.is_file():
            candidates.append(final)
        loaded = [load_checkpoint(path) for path in candidates]
        return max(loaded, key=lambda c: c.step, default=None)

    def _periodic_checkpoints(self) -> list[tuple[int, Path]]:
        folder = self.path / CHECKPOINTS
        if not folder.is_dir():
            return []
        found = ((step_of_file(p.name), p) for p in folder.iterdir())
        return [(step, p) for step, p in found if step is not None]

    def truncate_metrics(self, step: int) -> None:
        """Drop the metrics lines of steps after ``step`` (written before a crash, redone on resume)."""
        path = self.path / METRICS
        kept = [line for line in (path.read_text().splitlines() if path.is_file() else [])
                if _step_of(line) is not None and _step_of(line) <= step]  # type: ignore[operator]
        _write_atomic(path, "".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every evaluation record, oldest first. Raises FileNotFoundError naming the file."""
        path = self.path / METRICS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics (is {self.path} a btard run directory?)")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def read_summary(self) -> dict[str, Any]:
        path = self.path / SUMMARY
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no summary (the run did not finish?)")
        return json.loads(path.read_text())


def _step_of(line: str) -> int | None:
    """The step of a metrics line; None for a line a killed driver left half-written."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

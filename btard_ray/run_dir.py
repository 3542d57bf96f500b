"""The run directory: everything a person needs to inspect, plot or audit a finished run.

    config.yaml        the resolved config (loadable with ``btard run``)
    metrics.jsonl      one JSON object per evaluation
    summary.json       final accuracy, wall time, peers, bans, timings
    checkpoint/        final.pt: weights, optimizer state, step, membership
    plots/             PNGs written by ``btard plot``
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from btard_ray.config import JobConfig, dump_config

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoint"


def default_run_dir(job_name: str, root: Path = Path("runs")) -> Path:
    """``runs/<job name>-<UTC timestamp>``: a fresh directory per run."""
    return root / f"{job_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


class RunDir:
    """Writes and reads the files of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def create(self, cfg: JobConfig) -> "RunDir":
        """Make the directory, write the resolved config and start an empty metrics file."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG).write_text(dump_config(cfg))
        (self.path / METRICS).write_text("")
        return self

    def append_metrics(self, record: dict[str, Any]) -> None:
        with (self.path / METRICS).open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")

    def checkpoint_path(self, name: str = "final.pt") -> Path:
        folder = self.path / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

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

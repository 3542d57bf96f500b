"""Running a grid's cells concurrently on the Ray cluster, resumably.

Each cell is one training job, run by a Ray task (the task is the cell's driver: it starts
the cell's peers and tribunal as usual). At most ``concurrency`` cells run at once: by
default as many as the cluster's CPUs hold peers (``peers × cpus_per_peer`` per cell). A
cell whose ``summary.json`` already exists in the output directory is skipped, so a grid too
long for one sitting runs in pieces; a cell that fails writes ``error.txt`` and is retried
the next time.
"""

from __future__ import annotations

import math
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import ray

from btard_ray.config import JobConfig
from btard_ray.experiment.grid import Cell, GridConfig, check_cells
from btard_ray.run_dir import RunDir


@ray.remote(num_cpus=0)
def _run_cell(config: dict[str, Any], run_dir: str) -> dict[str, Any]:
    from btard_ray.trainer import train

    return train(JobConfig.model_validate(config), RunDir(run_dir), show_progress=False)


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.id


def default_concurrency(cfgs: list[JobConfig]) -> int:
    """How many cells the cluster's CPUs hold at once (at least one)."""
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    need = max(c.peers * c.resources.cpus_per_peer for c in cfgs) or 1.0
    return max(1, math.floor(cpus / need + 1e-9))


def run_grid(grid: GridConfig, base: Path, out: Path, concurrency: int | None = None,
             on_done: Callable[[Cell, str], None] | None = None, only: Sequence[str] = ()
             ) -> dict[str, list[Cell]]:
    """Run every unfinished cell (of those ``only`` selects: shell patterns on cell ids);
    returns ``{"done": [...], "skipped": [...], "failed": [...]}``.

    ``on_done(cell, status)`` is called as each cell ends (status: done, failed, skipped).
    Ray must be connected.
    """
    planned = check_cells(grid, base, only)
    result: dict[str, list[Cell]] = {"done": [], "skipped": [], "failed": []}
    todo: list[tuple[Cell, JobConfig]] = []
    for cell, cfg in planned:
        if (cell_dir(out, cell) / "summary.json").is_file():
            result["skipped"].append(cell)
            if on_done:
                on_done(cell, "skipped")
        else:
            todo.append((cell, cfg))
    limit = concurrency or grid.concurrency or default_concurrency([cfg for _, cfg in planned])
    running: dict[ray.ObjectRef, Cell] = {}
    queue = list(todo)
    while queue or running:
        while queue and len(running) < limit:
            cell, cfg = queue.pop(0)
            path = cell_dir(out, cell)
            path.mkdir(parents=True, exist_ok=True)
            (path / "error.txt").unlink(missing_ok=True)
            running[_run_cell.remote(cfg.model_dump(mode="json"), str(path))] = cell
        ready, _ = ray.wait(list(running), num_returns=1)
        cell = running.pop(ready[0])
        try:
            ray.get(ready[0])
            status = "done"
        except Exception as exc:  # noqa: BLE001 - a failed cell is recorded, the grid goes on
            (cell_dir(out, cell) / "error.txt").write_text("".join(traceback.format_exception(exc)))
            status = "failed"
        result[status].append(cell)
        if on_done:
            on_done(cell, status)
    return result

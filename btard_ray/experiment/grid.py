"""An experiment grid: the cross product of attacks, schedules, seeds and defences. Pure.

A grid file (YAML) names a base job config and what varies::

    name: mnist_replication
    base: ../quickstart.yaml          # relative to the grid file
    set: [steps=900, data.name=idx]   # overrides for every cell
    seeds: [0, 1, 2]
    attacks: [sign_flip, constant_direction, label_flip, label_shuffle, gaussian_noise]
    schedules:
      aggressive: {count: 2, every: 1, start_step: 100}
      mild: {count: 1, every: 5, start_step: 100}
    defences:                         # the first is the full protocol: every seed
      btard: []
      centered_clip: [protocol.checks=false]
      median: [protocol.checks=false, aggregator.name=coordinate_median]
      mean: [protocol.checks=false, aggregator.name=mean]
    baseline_seeds: 1                 # the other defences run on the first seeds only

Every defence gets a clean cell (no attack) per seed, and one cell per attack × schedule per
seed. A cell is one ``btard run`` of the base config with its overrides.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from btard_ray.config import ConfigError, JobConfig, load_config

CLEAN = "none"


class Schedule(BaseModel):
    """How many attackers and when they act (the config's ``attack`` keys)."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(1, ge=1)
    start_step: int = Field(0, ge=0)
    every: int = Field(1, ge=1)
    stop_step: int | None = Field(None, ge=0)


class GridConfig(BaseModel):
    """A grid file, validated (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    base: str
    set: list[str] = []
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    attacks: list[str] = []
    schedules: dict[str, Schedule] = Field(default_factory=lambda: {"every_step": Schedule()})
    defences: dict[str, list[str]] = Field(default_factory=lambda: {"btard": []}, min_length=1)
    baseline_seeds: int | None = Field(1, ge=1)
    concurrency: int | None = Field(None, ge=1)

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, names: list[str]) -> list[str]:
        from attacks.registry import attack_class

        for name in names:
            attack_class(name)  # raises UnknownAttack naming the known ones
        return names


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    defence: str
    attack: str  # CLEAN for the clean run
    schedule: str  # "" for the clean run
    seed: int
    overrides: tuple[str, ...] = field(default=(), compare=False)

    @property
    def id(self) -> str:
        """A file-name-safe id: ``defence--attack--schedule--seedN`` (``defence--clean--seedN``)."""
        middle = ["clean"] if self.attack == CLEAN else [self.attack, self.schedule]
        return "--".join([self.defence, *middle, f"seed{self.seed}"])


def load_grid(path: str | Path) -> tuple[GridConfig, Path]:
    """The validated grid and the path of its base config; ConfigError naming the problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the grid ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    try:
        grid = GridConfig.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "grid"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    except ValueError as exc:  # an unknown attack name
        raise ConfigError(f"{path}: {exc}") from None
    base = (path.parent / grid.base).resolve()
    if not base.is_file():
        raise ConfigError(f"{path}: base config {base} does not exist")
    return grid, base


def expand(grid: GridConfig) -> list[Cell]:
    """Every cell of the grid, the full protocol's first, clean cells before attacked ones."""
    cells = []
    for k, (defence, extra) in enumerate(grid.defences.items()):
        seeds = grid.seeds if k == 0 or grid.baseline_seeds is None else grid.seeds[: grid.baseline_seeds]
        for seed in seeds:
            common = (*grid.set, *extra, f"seed={seed}")
            cells.append(Cell(defence, CLEAN, "", seed, common))
            for attack in grid.attacks:
                for sched_name, sched in grid.schedules.items():
                    attack_keys = [f"attack.name={attack}", f"attack.count={sched.count}",
                                   f"attack.start_step={sched.start_step}", f"attack.every={sched.every}"]
                    if sched.stop_step is not None:
                        attack_keys.append(f"attack.stop_step={sched.stop_step}")
                    cells.append(Cell(defence, attack, sched_name, seed, (*common, *attack_keys)))
    return cells


def cell_config(grid: GridConfig, base: Path, cell: Cell) -> JobConfig:
    """The job config of ``cell`` (validated; ConfigError for a bad override)."""
    cfg = load_config(base, list(cell.overrides))
    cfg.name = f"{grid.name}-{cell.id}"
    return cfg


def select(cells: Sequence[Cell], only: Sequence[str]) -> list[Cell]:
    """The cells whose id matches one of the shell patterns ``only`` (all cells when empty),
    in grid order: ``mean--*`` is one defence, ``*--sign_flip--*`` one attack.

    A pattern that matches no cell is a ConfigError (a typo would otherwise run nothing).
    """
    if not only:
        return list(cells)
    for pattern in only:
        if not any(fnmatch.fnmatchcase(c.id, pattern) for c in cells):
            raise ConfigError(f"--only {pattern!r} matches no cell (cell ids look like {cells[0].id})")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in only)]


def check_cells(grid: GridConfig, base: Path, only: Sequence[str] = ()) -> list[tuple[Cell, JobConfig]]:
    """Every cell (or those ``only`` selects, see :func:`select`) with its config, so that a
    bad override fails before anything runs."""
    out = []
    for cell in select(expand(grid), only):
        try:
            out.append((cell, cell_config(grid, base, cell)))
        except ConfigError as exc:
            raise ConfigError(f"cell {cell.id}: {exc}") from None
    return out


def summary_row(cell: Cell, summary: dict[str, Any]) -> dict[str, Any]:
    """One results.csv row from a finished cell's summary.json."""
    attackers = set(summary.get("attackers", []))
    banned = summary.get("banned", [])
    ban_steps = sorted(b["step"] for b in banned if b["peer"] in attackers)
    return {
        "cell": cell.id, "defence": cell.defence, "attack": cell.attack, "schedule": cell.schedule,
        "seed": cell.seed, "final_test_accuracy": summary.get("final_test_accuracy"),
        "steps": summary.get("steps"), "attackers": len(attackers),
        "attackers_banned": len([b for b in banned if b["peer"] in attackers]),
        "honest_banned": len([b for b in banned if b["peer"] not in attackers]),
        "ban_steps": " ".join(str(s) for s in ban_steps),
        # the step at which the weights went non-finite (an undefended run's collapse), else ""
        "diverged_step": (summary.get("diverged") or {}).get("step", ""),
        "wall_seconds": round(float(summary.get("wall_seconds", 0.0)), 1),
    }

"""A grid's results: ``results.csv`` (one row per cell), ``results.md`` (per cell of the
table: accuracy mean ± std over seeds, gap to the clean run, ban steps, honest peers
banned) and PNG figures (accuracy and loss against steps per attack, one panel per
schedule; a ban timeline)."""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from btard_ray.experiment.grid import CLEAN, Cell, GridConfig, expand, summary_row  # noqa: E402
from btard_ray.experiment.runner import cell_dir  # noqa: E402
from btard_ray.run_dir import RunDir  # noqa: E402


def collect(grid: GridConfig, out: Path) -> list[dict[str, Any]]:
    """The results.csv rows of every finished cell, in grid order."""
    rows = []
    for cell in expand(grid):
        summary_path = cell_dir(out, cell) / "summary.json"
        if summary_path.is_file():
            rows.append(summary_row(cell, json.loads(summary_path.read_text())))
    return rows


def _pct(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (defence, attack, schedule): seeds, accuracy, gap to the same defence's clean
    runs on the same seeds (points; positive = worse), ban steps, attackers and honest peers banned."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["defence"], row["attack"], row["schedule"])].append(row)
    clean = {(r["defence"], r["seed"]): r["final_test_accuracy"] for r in rows if r["attack"] == CLEAN}
    out = []
    for (defence, attack, schedule), members in groups.items():
        accs = [r["final_test_accuracy"] for r in members]
        refs = [clean[(defence, r["seed"])] for r in members if (defence, r["seed"]) in clean]
        gap = 100 * (statistics.fmean(refs) - statistics.fmean(accs)) if attack != CLEAN and len(refs) == len(
            members) else None
        out.append({
            "defence": defence, "attack": attack, "schedule": schedule or "-", "seeds": len(members),
            "accuracy": _pct(accs), "gap_points": None if gap is None else round(gap, 2),
            "ban_steps": "; ".join(r["ban_steps"] or "-" for r in members) if attack != CLEAN else "-",
            "attackers_banned": f"{sum(r['attackers_banned'] for r in members)}/{sum(r['attackers'] for r in members)}",
            "honest_banned": sum(r["honest_banned"] for r in members),
            "diverged": "; ".join(str(r["diverged_step"]) for r in members if r.get("diverged_step") not in ("", None))
                        or "-",
        })
    return out


def write_results(grid: GridConfig, out: Path, command: str, machine: str) -> list[Path]:
    """Write results.csv, results.md and the figures into ``out``; returns the paths."""
    rows = collect(grid, out)
    if not rows:
        raise ValueError(f"{out}: no finished cells yet")
    paths = [out / "results.csv", out / "results.md"]
    with paths[0].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = ["defence", "attack", "schedule", "seeds", "accuracy", "gap_points", "ban_steps", "attackers_banned",
            "honest_banned", "diverged"]
    lines = [f"# {grid.name}: results", "", f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"Cells finished: {len(rows)} of {len(expand(grid))}. Accuracy: final test accuracy in %, mean ± std "
             "over seeds; gap: points below the same defence's clean runs on the same seeds; ban steps: the "
             "0-based steps at which attackers were banned, per seed; diverged: the step at which the weights "
             "went non-finite and the run ended (its accuracy is that of the diverged model).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table(rows):
        lines.append("| " + " | ".join("-" if row[c] is None else str(row[c]) for c in cols) + " |")
    paths[1].write_text("\n".join(lines) + "\n")
    return paths + figures(grid, out, rows)


def _curves(grid: GridConfig, out: Path, cells: list[Cell], key: str) -> tuple[list[int], list[float]] | None:
    """Mean of ``key`` over the cells' metrics, at the steps all of them evaluated."""
    series = []
    for cell in cells:
        path = cell_dir(out, cell)
        if (path / "metrics.jsonl").is_file():
            series.append({r["step"]: r[key] for r in RunDir(path).read_metrics()})
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return steps, [statistics.fmean(s[t] for s in series) for t in steps]


def figures(grid: GridConfig, out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """accuracy_<attack>.png, loss_<attack>.png and ban_timeline.png."""
    cells = expand(grid)
    written = []
    for attack in grid.attacks:
        for key, label, name in (("test_accuracy", "test accuracy", "accuracy"), ("test_loss", "test loss", "loss")):
            fig, axes = plt.subplots(1, len(grid.schedules), figsize=(5.5 * len(grid.schedules), 4), squeeze=False)
            for ax, schedule in zip(axes[0], grid.schedules):
                for defence in grid.defences:
                    for att, sched, style in ((attack, schedule, "-"), (CLEAN, "", ":")):
                        chosen = [c for c in cells if (c.defence, c.attack, c.schedule) == (defence, att, sched)]
                        curve = _curves(grid, out, chosen, key)
                        if curve:
                            ax.plot(*curve, style, label=f"{defence}" + (" (clean)" if att == CLEAN else ""))
                ax.set(title=f"{attack}, {schedule}", xlabel="step", ylabel=label)
                if key == "test_loss":
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"{name}_{attack}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    attacked = [r for r in rows if r["attack"] != CLEAN]
    fig, ax = plt.subplots(figsize=(8, 0.3 * max(len(attacked), 4) + 1))
    for y, row in enumerate(attacked):
        steps = [int(s) for s in row["ban_steps"].split()]
        ax.scatter(steps, [y] * len(steps), marker="x", color="tab:red")
    ax.set_yticks(range(len(attacked)), [r["cell"] for r in attacked], fontsize=6)
    ax.set(xlabel="step of the ban", title=f"{grid.name}: attackers banned")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "ban_timeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return written + [path]

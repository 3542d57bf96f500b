"""`btard experiment`: grid expansion and validation (pure), and a tiny real grid on Ray."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from btard_ray.config import ConfigError
from btard_ray.experiment.grid import CLEAN, check_cells, expand, load_grid, select

REPO = Path(__file__).resolve().parents[1]


def _grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'quickstart.yaml'}\n" + text)
    return path


def test_the_replication_grid_expands_to_its_cells():
    grid, base = load_grid(REPO / "configs" / "experiments" / "mnist_replication.yaml")
    cells = expand(grid)
    # The full protocol on 3 seeds, three baselines on one: (1 clean + 5 attacks x 2 schedules) each.
    assert len(cells) == 3 * 11 + 3 * 11
    assert len({c.id for c in cells}) == len(cells)
    btard = [c for c in cells if c.defence == "btard"]
    assert {c.seed for c in btard} == {0, 1, 2} and {c.seed for c in cells if c.defence == "mean"} == {0}
    aggressive = next(c for c in btard if c.schedule == "aggressive" and c.attack == "sign_flip")
    assert {"attack.count=2", "attack.every=1", "attack.start_step=100"} <= set(aggressive.overrides)
    assert sum(c.attack == CLEAN for c in cells) == 6


@pytest.mark.parametrize("text, message", [
    ("name: g\nattacks: [no_such_attack]\n", "unknown attack 'no_such_attack'"),
    ("name: g\nschedule: {}\n", "schedule: Extra inputs are not permitted"),
    ("name: g\nschedules: {s: {count: 0}}\n", "schedules.s.count"),
])
def test_a_bad_grid_is_one_clear_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_grid(_grid(tmp_path, text))


def test_a_bad_override_names_its_cell(tmp_path):
    grid, base = load_grid(_grid(tmp_path, "name: g\nset: [optimizer.lrr=1]\n"))
    with pytest.raises(ConfigError, match=r"cell btard--clean--seed0: optimizer.lrr: unknown key"):
        check_cells(grid, base)


def test_only_selects_cells_by_pattern_in_grid_order():
    grid, base = load_grid(REPO / "configs" / "experiments" / "mnist_replication.yaml")
    cells = expand(grid)
    picked = select(cells, ["mean--sign_flip--*", "mean--clean--*"])
    assert [c.id for c in picked] == ["mean--clean--seed0", "mean--sign_flip--aggressive--seed0",
                                      "mean--sign_flip--mild--seed0"]
    assert len(select(cells, ["*--mild--seed2"])) == 5  # one per attack, the full protocol only
    assert select(cells, []) == cells
    with pytest.raises(ConfigError, match=r"--only 'men--\*' matches no cell \(cell ids look like btard--clean--seed0"):
        select(cells, ["men--*"])
    assert [c.id for c, _ in check_cells(grid, base, ["btard--clean--*"])] == [
        f"btard--clean--seed{s}" for s in (0, 1, 2)]


def test_experiment_cli_only_and_dry_run(tmp_path):
    from typer.testing import CliRunner

    from btard_ray.cli import app

    grid = REPO / "configs" / "experiments" / "mnist_replication.yaml"
    result = CliRunner().invoke(app, ["experiment", str(grid), "--out", str(tmp_path), "--dry-run",
                                      "--only", "coordinate_median--label_flip--*"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "2 cells"
    assert "coordinate_median--label_flip--mild--seed0: 6 peers, 900 steps" in result.output
    bad = CliRunner().invoke(app, ["experiment", str(grid), "--out", str(tmp_path), "--dry-run", "--only", "x"])
    assert bad.exit_code == 2 and "--only 'x' matches no cell" in bad.output


@pytest.mark.integration
def test_a_tiny_grid_runs_reports_and_resumes(ray_session, tmp_path):
    from btard_ray.experiment.report import write_results
    from btard_ray.experiment.runner import run_grid

    grid, base = load_grid(_grid(tmp_path, (
        "name: tiny\nset: [steps=6, eval_every=3, peers=4]\nattacks: [sign_flip]\n"
        "schedules: {every: {count: 1}}\ndefences: {btard: [], mean: [protocol.checks=false, aggregator.name=mean]}\n")))
    out = tmp_path / "out"
    part = run_grid(grid, base, out, concurrency=1, only=["mean--*"])
    assert [c.id for c in part["done"]] == ["mean--clean--seed0", "mean--sign_flip--every--seed0"]
    first = run_grid(grid, base, out, concurrency=1)
    assert len(first["done"]) == 2 and len(first["skipped"]) == 2 and not first["failed"]
    paths = write_results(grid, out, "test", "test machine")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    rows = {r["cell"]: r for r in csv.DictReader((out / "results.csv").open())}
    attacked = rows["btard--sign_flip--every--seed0"]
    assert (attacked["attackers"], attacked["attackers_banned"], attacked["honest_banned"]) == ("1", "1", "0")
    assert attacked["ban_steps"] == "0"
    undefended = rows["mean--sign_flip--every--seed0"]
    assert undefended["attackers_banned"] == "0"  # no defence, no bans
    assert undefended["diverged_step"] != "" and float(undefended["final_test_accuracy"]) < 0.2  # the mean collapses
    assert rows["btard--sign_flip--every--seed0"]["diverged_step"] == ""
    assert "| btard | sign_flip | every | 1 |" in (out / "results.md").read_text()
    again = run_grid(grid, base, out, concurrency=1)
    assert len(again["skipped"]) == 4 and not again["done"]

"""The `btard` command line: help, one-line config errors, a real run and plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from btard_ray.cli import app

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["run", "plot", "config"]
runner = CliRunner()


def _btard(*args: str, **kw) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "btard_ray.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=300, **kw
    )


def test_top_level_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "configs/quickstart.yaml", "--set", "optimizer.lrr=1"], "optimizer.lrr: unknown key"),
        (["run", "configs/quickstart.yaml", "--set", "steps=ten"], "steps:"),
        (["run", "configs/does-not-exist.yaml"], "does-not-exist.yaml: config file not found"),
        (["config", "configs/quickstart.yaml", "--set", "data.name=mnist"], "data.name:"),
    ],
)
def test_bad_config_is_one_line_exit_2_no_traceback(args, fragment):
    result = _btard(*args)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_config_prints_resolved_yaml():
    result = runner.invoke(app, ["config", str(REPO / "configs/quickstart.yaml"), "--set", "peers=4"])
    assert result.exit_code == 0
    assert "peers: 4" in result.output


def test_plot_of_missing_dir_is_one_line(tmp_path):
    result = _btard("plot", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "no such run directory" in result.stderr


@pytest.mark.integration
def test_run_then_plot_from_a_separate_process(ray_session, tmp_path):
    """`btard run` as a user types it (joining the session's Ray), then `btard plot`."""
    out = tmp_path / "run"
    result = _btard(
        "run", "configs/quickstart.yaml", "--out", str(out), "--no-progress",
        "--set", "peers=3", "--set", "steps=6", "--set", "eval_every=3", "--set", f"ray.address={ray_session}",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "test accuracy" in result.stdout
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint/final.pt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["peers"] == 3 and summary["banned"] == []
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 6]
    assert {"step", "train_loss", "test_loss", "test_accuracy", "active_peers"} <= set(metrics[0])

    plotted = _btard("plot", str(out))
    assert plotted.returncode == 0, plotted.stderr
    for name in ("loss.png", "accuracy.png"):
        png = out / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

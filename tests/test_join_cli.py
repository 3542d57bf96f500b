"""`btard join` from a separate process into a running `btard run` job, end to end (issue 5).

Two real processes, as a user runs them in two terminals: `btard run` starts its own local
Ray instance and prints the exact join command; `btard join` connects to that instance,
solves the puzzle, starts its peer, follows it until it is active, and exits when the job
ends (`btard finish`, in a third process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lines import Lines

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
LONG_STEPS = 5000  # the job runs until `btard finish` ends it: no step count is long enough for a join


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed
    return env


def test_btard_join_into_a_running_btard_run(tmp_path):
    """`btard run` prints the join command; `btard join` in a second process follows its peer
    through probation to active; `btard finish` (a third) ends the job cleanly; the joiner
    exits with it."""
    run_dir = tmp_path / "run"
    job = subprocess.Popen(
        [sys.executable, "-m", "btard_ray.cli", "run", str(QUICKSTART), "--no-progress", "--name", "join-cli",
         "--out", str(run_dir), "--set", f"steps={LONG_STEPS}", "--set", f"eval_every={LONG_STEPS}",
         "--set", "checkpoint_every=0", "--set", "admission.alpha=1", "--set", "admission.probation_steps=3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
    joiner = None
    try:
        job_lines = Lines(job)
        address = job_lines.wait_for(r"btard join --job join-cli --address (\S+)", 180).group(1)

        key = tmp_path / "me.key"
        joiner = subprocess.Popen(
            [sys.executable, "-m", "btard_ray.cli", "join", "--job", "join-cli", "--address", address, "--key",
             str(key)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
        joiner_lines = Lines(joiner)
        joiner_lines.wait_for(r"admitted as peer 6", 300)
        # (its 3 probation steps may pass between two of the joiner's status polls: the
        # summary below shows them)
        joiner_lines.wait_for(r"peer 6 is active", 120)

        finished = subprocess.run(
            [sys.executable, "-m", "btard_ray.cli", "finish", "--job", "join-cli", "--address", address],
            capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert "job join-cli finishes after the step it is in" in finished.stdout
        assert "job join-cli has finished" in finished.stdout or "job join-cli has ended" in finished.stdout
        out = joiner_lines.rest(120)
        assert joiner.returncode == 0, out
        assert "the job has finished" in out or "the job has ended" in out
        rest = job_lines.rest(300)
        assert job.returncode == 0, rest
    finally:
        for proc in (job, joiner):
            if proc is not None and proc.poll() is None:
                proc.kill()
    summary = json.loads((run_dir / "summary.json").read_text())
    record = summary["membership"]["6"]
    assert record["state"] == "active" and record["promoted_step"] - record["joined_step"] == 3
    assert summary["membership"]["6"]["aggregated_parts"] > 0
    assert summary["active_peers"] == 7 and summary["weights_agree"]
    assert summary["finished_early"]["steps"] == summary["steps"] < LONG_STEPS


def test_join_an_unknown_job_is_one_line(tmp_path):
    """No job of that name in the cluster: one line, exit 2 (here: no cluster at all)."""
    result = subprocess.run(
        [sys.executable, "-m", "btard_ray.cli", "join", "--job", "nope", "--address", "127.0.0.1:1",
         "--key", str(tmp_path / "k.key")], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "cannot reach a Ray cluster at '127.0.0.1:1'" in result.stderr

"""`btard join` from a separate process into a running `btard run` job, end to end (issue 5).

Two real processes, as a user runs them in two terminals: `btard run` starts its own local
Ray instance and prints the exact join command; `btard join` connects to that instance,
solves the puzzle, starts its peer, follows it through probation to active, and exits when
the job ends.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_btard_join_into_a_running_btard_run(tmp_path):
    run_dir = tmp_path / "run"
    job = subprocess.Popen(
        [sys.executable, "-m", "btard_ray.cli", "run", str(QUICKSTART), "--no-progress", "--name", "join-cli",
         "--out", str(run_dir), "--set", "steps=150", "--set", "eval_every=150", "--set", "checkpoint_every=0",
         "--set", "admission.alpha=1", "--set", "admission.probation_steps=3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
    try:
        command, seen, deadline = None, [], time.monotonic() + 180
        while command is None and time.monotonic() < deadline:
            line = job.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"btard join --job join-cli --address (\S+)", line)
            command = found and found.group(1)
        assert command, "btard run did not print the join command:\n" + "".join(seen)

        key = tmp_path / "me.key"
        joined = subprocess.run(
            [sys.executable, "-m", "btard_ray.cli", "join", "--job", "join-cli", "--address", command, "--key",
             str(key)], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        assert "admitted as peer 6" in joined.stdout
        assert "peer 6 is probation" in joined.stdout and "peer 6 is active" in joined.stdout
        rest, _ = job.communicate(timeout=300)
        assert job.returncode == 0, "".join(seen) + rest
    finally:
        if job.poll() is None:
            job.kill()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["membership"]["6"]["state"] == "active"
    assert summary["membership"]["6"]["aggregated_parts"] > 0
    assert summary["active_peers"] == 7 and summary["weights_agree"]


def test_join_an_unknown_job_is_one_line(tmp_path):
    """No job of that name in the cluster: one line, exit 2 (here: no cluster at all)."""
    result = subprocess.run(
        [sys.executable, "-m", "btard_ray.cli", "join", "--job", "nope", "--address", "127.0.0.1:1",
         "--key", str(tmp_path / "k.key")], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "cannot reach a Ray cluster at '127.0.0.1:1'" in result.stderr

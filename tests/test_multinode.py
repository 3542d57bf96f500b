"""Several Ray nodes (``ray.cluster_utils.Cluster``): removing a node drops exactly its peers.

A test process can be connected to one Ray cluster only, and the session shares one local
instance, so the multi-node job runs in a subprocess (:data:`SCRIPT`) that builds a real
cluster of a head (no CPUs: only the driver, tribunal and admission controller live there)
and two worker nodes of one CPU each, trains on it in a background thread, removes one worker
node mid-run (its raylet and every process on it die), and prints the summary and the
removed node's id as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys, threading, time
import btard_ray  # the Ray auth mode, before Ray
import ray
from ray.cluster_utils import Cluster
from admission.client import find_controller
from btard_ray.config import load_config
from btard_ray.run_dir import RunDir
from btard_ray.trainer import train

out, quickstart = sys.argv[1], sys.argv[2]
MB = 1024 * 1024
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 150 * MB})
workers = [cluster.add_node(num_cpus=1, object_store_memory=150 * MB) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, namespace="btard-multinode", log_to_driver=False)
cfg = load_config(quickstart, ["name=multinode", "steps=30", "eval_every=30", "checkpoint_every=0",
                               "timeouts.phase_seconds=60"])
result = {}

def run():
    try:
        result["summary"] = train(cfg, RunDir(out), show_progress=False)
    except BaseException as exc:
        result["error"] = repr(exc)

thread = threading.Thread(target=run, daemon=True)
thread.start()
deadline = time.monotonic() + 300
controller = None
while controller is None and time.monotonic() < deadline:
    try:
        controller = find_controller("multinode")
    except Exception:
        time.sleep(0.2)
while ray.get(controller.status.remote()).get("step", 0) < 8 and time.monotonic() < deadline:
    time.sleep(0.1)
victim = workers[1]
cluster.remove_node(victim)
thread.join(300)
result["removed_node"] = victim.node_id
print("RESULT " + json.dumps(result, default=str))
ray.shutdown()
cluster.shutdown()
"""


def test_removing_a_node_drops_exactly_its_peers(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"), str(ROOT / "configs/quickstart.yaml")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result (exit {proc.returncode}): {proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert "error" not in result, result["error"]
    summary = result["summary"]
    on_removed = sorted(int(p) for p, r in summary["membership"].items() if r["node"] == result["removed_node"])
    assert on_removed, "no peer was placed on the removed node"
    assert len(on_removed) < 6
    assert sorted(d["peer"] for d in summary["dropped"]) == on_removed
    assert all(d["reason"] == "crashed" for d in summary["dropped"])
    assert summary["banned"] == [] and summary["steps"] == 30 and summary["weights_agree"]
    assert summary["active_peers"] == 6 - len(on_removed)

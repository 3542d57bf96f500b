"""End-to-end training on a real Ray instance with real data (the bundled digits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch

from btard_ray.butterfly import run_step
from btard_ray.config import load_config
from btard_ray.partition import join
from btard_ray.replica import Replica
from btard_ray.run_dir import RunDir
from btard_ray.trainer import WeightDivergenceError, check_weights, spawn_peers, train

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"

pytestmark = pytest.mark.integration


def test_quickstart_reaches_90_percent_and_weights_agree(ray_session, tmp_path):
    cfg = load_config(QUICKSTART, ["peers=4", "steps=120", "eval_every=40", "weight_check_every=5"])
    summary = train(cfg, RunDir(tmp_path), show_progress=False)
    assert summary["final_test_accuracy"] >= 0.90, summary
    # train() checks the weight hashes of all peers every 5 steps and raises on a mismatch;
    # the final hash is stored with the checkpoint and must be that of the saved weights.
    ckpt = torch.load(tmp_path / "checkpoint" / "final.pt", weights_only=False)
    replica = Replica(cfg)
    replica.model.load_state_dict(ckpt["model"])
    assert replica.weight_hash() == summary["weight_hash"] == ckpt["weight_hash"]
    assert summary["active_peers"] == 4 and summary["banned"] == []
    # Bytes: the butterfly moves exactly 2(n-1)/n·d floats per peer and step.
    assert summary["bytes_per_peer_step"] == pytest.approx(summary["butterfly_min_bytes_per_peer_step"])


def test_mean_aggregator_matches_single_process_reference(ray_session, tmp_path):
    """With aggregator=mean the Ray butterfly equals plain SGD on the mean gradient."""
    steps, peers = 8, 3
    cfg = load_config(QUICKSTART, [f"peers={peers}", f"steps={steps}", "aggregator.name=mean", "protocol.checks=false", "eval_every=8"])
    train(cfg, RunDir(tmp_path), show_progress=False)
    trained = torch.load(tmp_path / "checkpoint" / "final.pt", weights_only=False)["model"]

    reference = Replica(cfg)
    for t in range(steps):
        grads = [reference.gradient_for(pid, t)[0] for pid in range(peers)]
        reference.apply_gradient(torch.stack(grads).mean(dim=0))
    ref_state = reference.model.state_dict()
    moved = sum(float((trained[k] - Replica(cfg).model.state_dict()[k]).abs().sum()) for k in trained)
    assert moved > 0  # the run really trained
    for key, value in ref_state.items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_step_parts_are_owned_by_the_driver_and_hashes_detect_divergence(ray_session):
    """Peers exchange parts through the object store; a diverged replica is reported by name."""
    cfg = load_config(QUICKSTART, ["peers=3", "steps=2"])
    peers = spawn_peers(cfg, [0, 1, 2])
    try:
        members = [0, 1, 2]
        outcome = run_step(peers, members, 0, check_weights=True)
        check_weights(outcome)  # identical after an honest step
        # Parts returned by compute() are owned by the driver and survive the peer's death.
        refs = peers[1].compute.options(num_returns=4).remote(1, members)
        ray.get(refs[3])
        ray.kill(peers[1])
        assert join([ray.get(r) for r in refs[:3]]).numel() > 0

        bad = dict(outcome.weight_hashes)
        bad[2] = "0" * 64
        outcome.weight_hashes = bad
        with pytest.raises(WeightDivergenceError, match=r"peers \[2\]"):
            check_weights(outcome)
    finally:
        for actor in peers.values():
            ray.kill(actor)

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


def test_an_attacker_attacks_without_the_defence_too(ray_session, tmp_path):
    """The baselines of an experiment (protocol.checks=false) face the same attack: with the
    plain mean, a sign-flipping peer's −1000·g enters the mean exactly."""
    import json

    steps, peers = 4, 3
    cfg = load_config(QUICKSTART, [f"peers={peers}", f"steps={steps}", "aggregator.name=mean", "protocol.checks=false",
                                   "eval_every=4", "attack.name=sign_flip", "attack.count=1", "attack.start_step=1"])
    train(cfg, RunDir(tmp_path), show_progress=False)
    (attacker,) = json.loads((tmp_path / "summary.json").read_text())["attackers"]
    trained = torch.load(tmp_path / "checkpoint" / "final.pt", weights_only=False)["model"]

    reference = Replica(cfg)
    for t in range(steps):
        grads = [reference.gradient_for(pid, t)[0] * (-1000.0 if pid == attacker and t >= 1 else 1.0)
                 for pid in range(peers)]
        reference.apply_gradient(torch.stack(grads).mean(dim=0))
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(trained[key], value, rtol=1e-4, atol=1e-4, msg=key)
    honest = Replica(cfg)
    for t in range(steps):
        honest.apply_gradient(torch.stack([honest.gradient_for(pid, t)[0] for pid in range(peers)]).mean(dim=0))
    assert any(not torch.allclose(trained[k], v, atol=1e-3) for k, v in honest.model.state_dict().items())


def test_an_undefended_mean_collapses_and_the_job_ends_as_diverged(ray_session, tmp_path):
    """Sign flip against the plain mean: the weights go non-finite within a few steps; the
    job ends with its results (no "no active peer is left" error) and says where."""
    import json

    cfg = load_config(QUICKSTART, ["peers=3", "steps=40", "aggregator.name=mean", "protocol.checks=false",
                                   "eval_every=10", "attack.name=sign_flip", "attack.count=1"])
    summary = train(cfg, RunDir(tmp_path), show_progress=False)
    assert summary["diverged"] is not None and 0 < summary["diverged"]["step"] < 40
    assert "non-finite" in summary["diverged"]["reason"]
    assert summary["steps"] == summary["diverged"]["step"] and summary["final_test_accuracy"] < 0.2
    assert json.loads((tmp_path / "summary.json").read_text())["diverged"] == summary["diverged"]
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["diverged"] is True and last["step"] == summary["diverged"]["step"]
    assert (tmp_path / "checkpoint" / "final.pt").is_file()


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

"""The job driver: starts the peers, runs the steps, evaluates, writes the run directory.

The driver (the coordinator of design §2) only schedules and relays; it never aggregates
gradients. Every ``weight_check_every`` steps all peers report the hash of their weights;
honest replicas must agree bit for bit, and a disagreement stops the run with an error
naming the peers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray.actor import ActorHandle
from rich.console import Console

from btard_ray.butterfly import PHASES, StepOutcome, run_step
from btard_ray.config import JobConfig
from btard_ray.peer import Peer
from btard_ray.progress import TrainingProgress
from btard_ray.run_dir import RunDir
from btard_ray.runtime import connect, disconnect


class WeightDivergenceError(RuntimeError):
    """Peers that should hold identical weights do not."""


@dataclass
class _Window:
    """Losses and timings accumulated between two evaluations."""

    losses: list[float]
    outcomes: list[StepOutcome]

    @classmethod
    def empty(cls) -> "_Window":
        return cls([], [])


def spawn_peers(cfg: JobConfig, peer_ids: list[int]) -> dict[int, ActorHandle]:
    """Start one Peer actor per id with the configured resources; wait until all are built."""
    options: dict[str, Any] = {"num_cpus": cfg.resources.cpus_per_peer}
    if cfg.resources.gpus_per_peer > 0:
        options["num_gpus"] = cfg.resources.gpus_per_peer
    config = cfg.model_dump(mode="json")
    peers = {pid: Peer.options(**options).remote(config, pid) for pid in peer_ids}
    ray.get([p.info.remote() for p in peers.values()])
    return peers


def check_weights(outcome: StepOutcome) -> str:
    """The common weight hash of a checked step; raises WeightDivergenceError otherwise."""
    assert outcome.weight_hashes is not None
    by_hash: dict[str, list[int]] = {}
    for pid, digest in outcome.weight_hashes.items():
        by_hash.setdefault(digest, []).append(pid)
    if len(by_hash) > 1:
        groups = "; ".join(f"{h[:12]}: peers {ids}" for h, ids in by_hash.items())
        raise WeightDivergenceError(f"step {outcome.step + 1}: peers' weights differ ({groups})")
    return next(iter(by_hash))


def train(cfg: JobConfig, run_dir: RunDir, show_progress: bool = True, console: Console | None = None) -> dict[str, Any]:
    """Run the job described by ``cfg`` and fill ``run_dir``; returns the summary.

    Step ``t`` (0-based) is the update computed from the peers' batches for step t; metrics
    and the summary count completed updates (``step = t + 1``).
    """
    assert cfg.name is not None
    run_dir.create(cfg)
    started = connect(cfg.ray, cfg.name)
    peers: dict[int, ActorHandle] = {}
    t_start = time.perf_counter()
    try:
        peers = spawn_peers(cfg, list(range(cfg.peers)))
        members = sorted(peers)
        num_params = ray.get(peers[members[0]].info.remote())["num_params"]
        window, all_outcomes = _Window.empty(), []
        last_eval: dict[str, float] = {}
        weight_hash = ""
        with TrainingProgress(cfg.steps, cfg.name, enabled=show_progress, console=console) as progress:
            for t in range(cfg.steps):
                last = t + 1 == cfg.steps
                checked = (t + 1) % cfg.weight_check_every == 0 or last
                outcome = run_step(peers, members, t, checked)
                if checked:
                    weight_hash = check_weights(outcome)
                window.losses.append(outcome.mean_loss)
                window.outcomes.append(outcome)
                all_outcomes.append(outcome)
                accuracy = None
                if (t + 1) % cfg.eval_every == 0 or last:
                    last_eval = ray.get(peers[members[0]].evaluate.remote())
                    accuracy = last_eval["test_accuracy"]
                    run_dir.append_metrics(
                        {
                            "step": t + 1,
                            "train_loss": sum(window.losses) / len(window.losses),
                            **last_eval,
                            "active_peers": len(members),
                            "lr": outcome.lr,
                            "wall_seconds": time.perf_counter() - t_start,
                            "step_seconds": sum(o.wall_s for o in window.outcomes) / len(window.outcomes),
                        }
                    )
                    window = _Window.empty()
                progress.advance(outcome.mean_loss, len(members), accuracy)

        state = ray.get(peers[members[0]].state.remote())
        torch.save(
            {**state, "step": cfg.steps, "members": members, "weight_hash": weight_hash,
             "config": cfg.model_dump(mode="json")},
            run_dir.checkpoint_path("final.pt"),
        )
        summary = _summary(cfg, all_outcomes, last_eval, members, num_params, weight_hash,
                           time.perf_counter() - t_start)
        run_dir.write_summary(summary)
        return summary
    finally:
        for actor in peers.values():
            ray.kill(actor)
        disconnect(started)


def _summary(
    cfg: JobConfig,
    outcomes: list[StepOutcome],
    last_eval: dict[str, float],
    members: list[int],
    num_params: int,
    weight_hash: str,
    wall: float,
) -> dict[str, Any]:
    n = len(members)
    # The first steps include actor warm-up (imports, first allocation): leave them out of
    # the per-step means when there are enough steps.
    steady = outcomes[min(len(outcomes) // 10, 5):] or outcomes
    return {
        "job": cfg.name,
        "final_test_accuracy": last_eval.get("test_accuracy", math.nan),
        "final_test_loss": last_eval.get("test_loss", math.nan),
        "steps": len(outcomes),
        "wall_seconds": wall,
        "peers": cfg.peers,
        "active_peers": n,
        "aggregator": cfg.aggregator.name,
        "num_params": num_params,
        "weights_agree": True,
        "weight_hash": weight_hash,
        "attackers": [],
        "banned": [],
        "mean_step_seconds": sum(o.wall_s for o in steady) / len(steady),
        "phase_seconds": {ph: sum(o.phase_s[ph] for o in steady) / len(steady) for ph in PHASES},
        "bytes_per_peer_step": sum(o.bytes_per_peer for o in steady) / len(steady),
        "butterfly_min_bytes_per_peer_step": 2 * (n - 1) / n * num_params * 4,
    }

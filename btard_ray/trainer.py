"""The job driver: starts the peers, runs the steps, evaluates, writes the run directory.

The driver (the coordinator of design §2) only schedules and relays; it never aggregates
gradients. Every ``weight_check_every`` steps all peers report the hash of their weights;
honest replicas must agree bit for bit, and a disagreement stops the run with an error
naming the peers.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.actor import ActorHandle
from rich.console import Console

from attacks.registry import choose_attackers
from btard_ray.butterfly import run_step
from btard_ray.config import JobConfig
from btard_ray.identity import Identity
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
    outcomes: list[Any]

    @classmethod
    def empty(cls) -> "_Window":
        return cls([], [])


def spawn_peers(cfg: JobConfig, peer_ids: list[int], attackers: frozenset[int] = frozenset()
                ) -> dict[int, ActorHandle]:
    """Start one Peer actor per id with the configured resources; wait until all are built."""
    options: dict[str, Any] = {"num_cpus": cfg.resources.cpus_per_peer}
    if cfg.resources.gpus_per_peer > 0:
        options["num_gpus"] = cfg.resources.gpus_per_peer
    config = cfg.model_dump(mode="json")
    peers = {pid: Peer.options(**options).remote(config, pid, pid in attackers) for pid in peer_ids}
    ray.get([p.info.remote() for p in peers.values()])
    return peers


def _start_tribunal(cfg: JobConfig, run_dir: RunDir) -> ActorHandle:
    """The job's tribunal on the driver's node (the ledger file lives in the run directory).

    The job key signs the ledger's chain head; it is kept in ``job_key`` (owner-only).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from btard_ray.ledger import resolve_ledger_url
    from btard_ray.tribunal import Tribunal

    key_seed = secrets.token_bytes(32)
    Identity.from_seed(key_seed).save(run_dir.path / "job_key", overwrite=True)
    url = cfg.ledger.url or resolve_ledger_url(str(run_dir.path))
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return Tribunal.options(scheduling_strategy=here).remote(cfg.name, url, key_seed)


def check_weights(outcome: Any) -> str:
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
    tribunal: ActorHandle | None = None
    try:
        attackers = choose_attackers(cfg.seed, list(range(cfg.peers)), cfg.attack.count) if cfg.attack.name else []
        peers = spawn_peers(cfg, list(range(cfg.peers)), frozenset(attackers))
        members = sorted(peers)
        infos = dict(zip(members, ray.get([peers[p].info.remote() for p in members])))
        num_params = infos[members[0]]["num_params"]
        keys = {p: infos[p]["public_key"] for p in members}
        banned: list[dict[str, Any]] = []
        if cfg.protocol.checks:
            from btard_ray.protocol.randomness import initial_seed
            from btard_ray.secure_step import run_secure_step

            ray.get([peers[p].set_keys.remote(keys) for p in members])
            tribunal = _start_tribunal(cfg, run_dir)
            ray.get(tribunal.record.remote(0, "job_started", None, None, {
                "members": {str(p): keys[p] for p in members}, "config": cfg.model_dump(mode="json")}))
            seed = initial_seed(cfg.name, cfg.seed)
        window, all_outcomes = _Window.empty(), []
        last_eval: dict[str, float] = {}
        weight_hash = ""
        with TrainingProgress(cfg.steps, cfg.name, enabled=show_progress, console=console) as progress:
            for t in range(cfg.steps):
                last = t + 1 == cfg.steps
                checked = (t + 1) % cfg.weight_check_every == 0 or last
                if tribunal is not None:
                    outcome = run_secure_step(cfg.name, peers, members, keys, t, seed, tribunal, checked)
                    seed = outcome.next_seed
                    for ban in outcome.bans:
                        banned.append({"peer": ban["peer"], "step": t, "reason": ban["reason"]})
                else:
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
                # Bans take effect at the step boundary: the banned leave the membership, the
                # partition is recomputed from the new n, and their actors are stopped.
                gone = {b["peer"] for b in getattr(outcome, "bans", [])}
                if gone:
                    for pid in gone & set(members):
                        ray.kill(peers.pop(pid))
                    members = [p for p in members if p not in gone]
                    if console is not None and show_progress:
                        console.print(f"step {t}: banned " + ", ".join(
                            f"peer {b['peer']} ({b['reason']})" for b in outcome.bans))

        state = ray.get(peers[members[0]].state.remote())
        torch.save(
            {**state, "step": cfg.steps, "members": members, "weight_hash": weight_hash,
             "config": cfg.model_dump(mode="json")},
            run_dir.checkpoint_path("final.pt"),
        )
        summary = _summary(cfg, all_outcomes, last_eval, members, num_params, weight_hash,
                           time.perf_counter() - t_start)
        summary["attackers"] = attackers
        summary["banned"] = banned
        if tribunal is not None:
            ray.get(tribunal.record.remote(cfg.steps, "job_finished", None, None, {
                "final_test_accuracy": summary["final_test_accuracy"], "weight_hash": weight_hash,
                "banned": [str(b["peer"]) for b in banned]}))
            summary["job_public_key"] = ray.get(tribunal.public_key.remote())
            summary["accusations"] = sum(o.accusations for o in all_outcomes)
            summary["protocol_bytes_per_step"] = sum(o.protocol_bytes for o in all_outcomes) / len(all_outcomes)
        run_dir.write_summary(summary)
        return summary
    finally:
        for actor in peers.values():
            ray.kill(actor)
        if tribunal is not None:
            ray.kill(tribunal)
        disconnect(started)


def _summary(
    cfg: JobConfig,
    outcomes: list[Any],
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
        "defence": cfg.protocol.checks,
        "aggregator": cfg.aggregator.name,
        "num_params": num_params,
        "weights_agree": True,
        "weight_hash": weight_hash,
        "mean_step_seconds": sum(o.wall_s for o in steady) / len(steady),
        "phase_seconds": {ph: sum(o.phase_s.get(ph, 0.0) for o in steady) / len(steady) for ph in steady[0].phase_s},
        "bytes_per_peer_step": sum(o.bytes_per_peer for o in steady) / len(steady),
        "butterfly_min_bytes_per_peer_step": 2 * (n - 1) / n * num_params * 4,
    }

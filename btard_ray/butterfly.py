"""The driver's side of one butterfly all-reduce step over Ray actors.

For members m_0..m_{n-1} (in membership order) the whole step is submitted at once and Ray
resolves the dependencies:

    parts[i]   = m_i.compute(step)              -> n part refs + stats, owned by the driver
    agg[j]     = m_j.aggregate([parts[i][j]])    -> part j's aggregate (own slot: None)
    applied[i] = m_i.apply([agg[j]])             -> optimizer step (own slot: None)

Part j of every gradient therefore travels once, to aggregator j, and aggregate j travels
once to every other peer: (n-1)/n·d floats out and (n-1)/n·d in per peer, the butterfly
minimum of 2·(n-1)/n·d·4 bytes per peer and step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import ray
from ray.actor import ActorHandle

from btard_ray.failures import PeerFailure, gather, gather_surviving

PHASES = ("compute_s", "scatter_wait_s", "scatter_fetch_s", "aggregate_s", "gather_wait_s", "gather_fetch_s", "update_s")


@dataclass
class StepOutcome:
    """What one step produced: per-peer losses, phase timings, bytes and weight hashes."""

    step: int
    members: list[int]
    losses: dict[int, float]
    wall_s: float
    lr: float
    phase_s: dict[str, float] = field(default_factory=dict)  # mean over peers
    bytes_per_peer: float = 0.0  # mean payload bytes a peer fetched (scatter + gather)
    weight_hashes: dict[int, str] | None = None
    # Peers that crashed or went silent in the step's last round: the step completed without
    # them (a failure in an earlier round makes the driver run the step again instead).
    dropped: dict[int, str] = field(default_factory=dict)
    compute_s: float = 0.0  # mean seconds of one peer's gradient (the admission puzzle follows it)

    @property
    def mean_loss(self) -> float:
        return sum(self.losses.values()) / len(self.losses)


def _collect_errors(refs: list[ray.ObjectRef], timeout: float = 5.0) -> None:
    """Fetch and discard whichever of ``refs`` finish within ``timeout`` (errors included)."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            pass


def run_step(peers: Mapping[int, ActorHandle], members: list[int], step: int, check_weights: bool,
             timeout: float | None = None) -> StepOutcome:
    """Run one synchronous butterfly step over ``members`` and wait for every update.

    A peer that crashes or stays silent for ``timeout`` seconds raises
    :class:`~btard_ray.failures.PeerFailure` when nobody applied the step (the driver runs
    it again without that peer); when it failed in the apply round, everybody else has
    applied the same update and the step completes without it (``dropped``).
    """
    t0 = time.perf_counter()
    n = len(members)
    computed = {pid: peers[pid].compute.options(num_returns=n + 1).remote(step, members) for pid in members}
    aggregated = {}
    for j, pid in enumerate(members):
        refs = [None if src == pid else computed[src][j] for src in members]
        aggregated[pid] = peers[pid].aggregate.options(num_returns=2).remote(step, refs)
    applied = {
        pid: peers[pid].apply.remote(step, [None if a == pid else aggregated[a][0] for a in members], check_weights)
        for pid in members
    }
    # The rounds are pipelined, so a silent peer stalls everybody behind it: look for failures
    # round by round, the earliest round first, to name the peer that stalled.
    try:
        compute_stats = gather({p: computed[p][n] for p in members}, peers, timeout, "compute")
        agg_stats = gather({p: aggregated[p][1] for p in members}, peers, timeout, "aggregate")
    except PeerFailure:
        # The later rounds fail with the earlier one: collect their errors, which Ray would
        # otherwise print as "unhandled" tracebacks once the refs go out of scope.
        _collect_errors([*(r for c in computed.values() for r in c), *(r for c in aggregated.values() for r in c),
                         *applied.values()])
        raise
    # Every apply needs every aggregate, so a peer that fails now failed after the aggregates
    # were made: everybody else applies the same update and the step completes without it.
    apply_stats, failed = gather_surviving(applied, peers, timeout, "apply")
    missing = [p for p in members if p not in failed and p not in apply_stats]
    if missing:
        raise RuntimeError(f"step {step}: peers {missing} did not apply although the aggregates exist")
    members = [p for p in members if p not in failed]
    wall = time.perf_counter() - t0

    merged = {p: {**compute_stats[p], **agg_stats[p], **apply_stats[p]} for p in members}
    phase_s = {ph: sum(m[ph] for m in merged.values()) / len(merged) for ph in PHASES}
    bytes_per_peer = sum(m["scatter_bytes"] + m["gather_bytes"] for m in merged.values()) / len(merged)
    hashes = {p: m["weight_hash"] for p, m in merged.items()} if check_weights else None
    return StepOutcome(
        step=step,
        members=list(members),
        dropped=failed,
        compute_s=sum(m["compute_s"] for m in merged.values()) / len(merged),
        losses={p: m["loss"] for p, m in merged.items()},
        wall_s=wall,
        lr=merged[members[0]]["lr"],
        phase_s=phase_s,
        bytes_per_peer=bytes_per_peer,
        weight_hashes=hashes,
    )

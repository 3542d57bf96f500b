"""The driver's side of one BTARD-SGD step (design §4) over Ray actors.

The driver is the control plane of design §2: it relays messages, owns the object refs,
and never aggregates. It checks every relayed message once with a
:class:`~btard_ray.messages.MessageVerifier` (signature, job, step, kind, replay); a message
that fails is not relayed (its slot is empty), so the peers see a missing commitment,
report, reveal or inner product and accuse its author, and the rejection is kept as
evidence for the tribunal.

Phases, each a round of actor calls (the step's sync points are the messages every peer
needs before the next phase):

    commit -> aggregate -> reveal (gather) -> project -> audit -> [tribunal] -> apply
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import ray
from ray.actor import ActorHandle

from btard_ray.butterfly import StepOutcome
from btard_ray.messages import Message, MessageError, MessageVerifier
from btard_ray.peer_protocol import reveal_nonce
from btard_ray.protocol.randomness import next_seed

SECURE_PHASES = ("commit", "aggregate", "reveal", "project", "audit", "tribunal", "apply")


@dataclass
class SecureOutcome(StepOutcome):
    """What one defended step produced: a StepOutcome plus the protocol's results."""

    next_seed: bytes = b""
    bans: list[dict[str, Any]] = field(default_factory=list)
    accusations: int = 0
    rejected: list[str] = field(default_factory=list)
    protocol_bytes: int = 0


class Relay:
    """Checks each message once before relaying it; remembers what it rejected and why."""

    def __init__(self, job: str, keys: Mapping[int, str]) -> None:
        self.verifier = MessageVerifier(job)
        self.keys = keys
        self.rejected: list[str] = []
        self.bytes = 0

    def accept(self, pid: int, raw: Any, step: int, kind: str) -> dict | None:
        if raw is None:
            return None
        try:
            msg = self.verifier.check(Message.from_dict(raw), step, kind)
        except MessageError as exc:
            self.rejected.append(f"peer {pid}: {exc}")
            return None
        if msg.sender != self.keys.get(pid):
            self.rejected.append(f"peer {pid}: {kind} signed by another key {msg.sender[:16]}")
            return None
        self.bytes += len(msg.canonical_bytes()) + 64
        return raw

    def accept_all(self, pid: int, raws: list[Any], step: int, kind: str) -> list[dict]:
        return [r for r in (self.accept(pid, raw, step, kind) for raw in raws) if r is not None]


def run_secure_step(
    job: str,
    peers: Mapping[int, ActorHandle],
    members: list[int],
    keys: Mapping[int, str],
    step: int,
    seed: bytes,
    tribunal: ActorHandle,
    check_weights: bool,
) -> SecureOutcome:
    """Run one defended step over ``members`` with shared seed r_t = ``seed``."""
    t_start = time.perf_counter()
    n = len(members)
    relay = Relay(job, keys)
    phase: dict[str, float] = {}

    def timed(name: str, t0: float) -> float:
        now = time.perf_counter()
        phase[name] = now - t0
        return now

    # 1. compute and commit: parts stay in the object store, owned by the driver.
    t = time.perf_counter()
    committed = {pid: peers[pid].commit.options(num_returns=n + 2).remote(step, members, seed) for pid in members}
    part_refs = {pid: list(committed[pid][:n]) for pid in members}
    raw_commits = ray.get([committed[p][n] for p in members])
    commitments = {p: relay.accept(p, raw, step, "commitment") for p, raw in zip(members, raw_commits)}
    compute_stats = dict(zip(members, ray.get([committed[p][n + 1] for p in members])))
    t = timed("commit", t)

    # 2. scatter and aggregate part j at member j.
    aggregated = {}
    for j, pid in enumerate(members):
        refs = [None if src == pid else part_refs[src][j] for src in members]
        aggregated[pid] = peers[pid].secure_aggregate.options(num_returns=4).remote(step, refs, commitments)
    agg_refs = {pid: aggregated[pid][0] for pid in members}
    reports = {p: relay.accept(p, raw, step, "aggregate_report")
               for p, raw in zip(members, ray.get([aggregated[p][1] for p in members]))}
    accusations: list[dict] = []
    for p, raws in zip(members, ray.get([aggregated[p][2] for p in members])):
        accusations += relay.accept_all(p, raws, step, "accusation")
    agg_stats = dict(zip(members, ray.get([aggregated[p][3] for p in members])))
    t = timed("aggregate", t)

    # 3. gather the aggregates, check them against the reports, reveal the nonces.
    revealed = {pid: peers[pid].reveal.options(num_returns=3).remote(
        step, [None if a == pid else agg_refs[a] for a in members], reports) for pid in members}
    reveals = {p: relay.accept(p, raw, step, "reveal")
               for p, raw in zip(members, ray.get([revealed[p][0] for p in members]))}
    for p, raws in zip(members, ray.get([revealed[p][1] for p in members])):
        accusations += relay.accept_all(p, raws, step, "accusation")
    gather_stats = dict(zip(members, ray.get([revealed[p][2] for p in members])))
    new_seed = next_seed(seed, [reveal_nonce(reveals[p], commitments[p], job, keys[p], step) for p in members])
    t = timed("reveal", t)

    # 4. every peer's signed shares s_ij and distances for every part.
    projected = {pid: peers[pid].project.options(num_returns=2).remote(step, reveals, commitments) for pid in members}
    inner = {p: relay.accept(p, raw, step, "inner_products")
             for p, raw in zip(members, ray.get([projected[p][0] for p in members]))}
    for p, raws in zip(members, ray.get([projected[p][1] for p in members])):
        accusations += relay.accept_all(p, raws, step, "accusation")
    t = timed("project", t)

    # 5. check every aggregate, validate random peers.
    audited = {pid: peers[pid].audit.remote(step, inner, reports, commitments, part_refs) for pid in members}
    for p, raws in zip(members, ray.get([audited[p] for p in members])):
        accusations += relay.accept_all(p, raws, step, "accusation")
    t = timed("audit", t)

    # 6. judge (only when somebody accused somebody).
    verdict: dict[str, Any] = {"bans": [], "replacements": {}}
    if accusations:
        ctx = {"members": members, "keys": dict(keys), "part_refs": part_refs, "agg_refs": agg_refs,
               "commitments": commitments, "reports": reports, "reveals": reveals, "inner": inner,
               "rejected": relay.rejected}
        verdict = ray.get(tribunal.judge.remote(step, accusations, ctx, dict(peers)))
    t = timed("tribunal", t)

    # 7. update with the aggregates (judges' replacements substituted).
    applied = {pid: peers[pid].secure_apply.remote(step, verdict["replacements"], check_weights) for pid in members}
    apply_stats = dict(zip(members, ray.get([applied[p] for p in members])))
    timed("apply", t)

    merged = {p: {**compute_stats[p], **agg_stats[p], **gather_stats[p], **apply_stats[p]} for p in members}
    return SecureOutcome(
        step=step,
        members=list(members),
        losses={p: m["loss"] for p, m in merged.items()},
        wall_s=time.perf_counter() - t_start,
        lr=merged[members[0]]["lr"],
        next_seed=new_seed,
        bans=verdict["bans"],
        accusations=len(accusations),
        rejected=relay.rejected,
        phase_s=phase,
        bytes_per_peer=sum(m["scatter_bytes"] + m["gather_bytes"] for m in merged.values()) / n,
        protocol_bytes=relay.bytes,
        weight_hashes={p: m["weight_hash"] for p, m in merged.items()} if check_weights else None,
    )

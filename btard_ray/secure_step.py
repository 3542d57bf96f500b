"""The driver's side of one BTARD-SGD step (design §4) over Ray actors.

The driver is the control plane of design §2: it relays messages, owns the object refs,
and never aggregates. It checks every relayed message once with a
:class:`~btard_ray.messages.MessageVerifier` (signature, job, step, kind, replay); a message
that fails is not relayed (its slot is empty), so the peers see a missing commitment,
report, reveal or inner product and accuse its author, and the rejection is kept as
evidence for the tribunal.

Phases, each a round of actor calls (the step's sync points are the messages every peer
needs before the next phase):

    commit -> aggregate + reveal -> gather + project [+ validate] -> audit + apply (+ next commit)
           [-> rollback -> tribunal -> apply, only when somebody accused somebody]

Three rounds per step in the common case: the last round also computes and commits the next
step's gradient on the new weights (the driver then only collects it). The reveals travel
with the aggregate reports (the relay hands out neither before all are in, so no aggregator
knows r_{t+1} when its aggregate is fixed). The validators re-compute once r_{t+1} is open,
in a call the driver does not wait for: the validator's actor runs it before its audit, and
reports its accusations with the audit, so the re-computation overlaps the driver's work
between rounds instead of holding up round 3. The projection check is a deterministic
function of relayed messages, so every honest peer reaches the same finding and may apply
the step in the same call. When anybody accuses (a validator included), the peers that
applied roll back to w_t, the tribunal judges at w_t, and everybody applies the judged
update (with replaced aggregates, or none when a forged gradient was found).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import ray
from ray.actor import ActorHandle

from btard_ray.butterfly import StepOutcome
from btard_ray.messages import Message, MessageError, MessageVerifier
from btard_ray.payloads import payload_problem
from btard_ray.config import JobConfig
from btard_ray.failures import PeerFailure, gather, gather_surviving
from btard_ray.peer_protocol import audit_pairs, reported_distances, reveal_nonce
from btard_ray.protocol.randomness import next_seed



@dataclass
class SecureOutcome(StepOutcome):
    """What one defended step produced: a StepOutcome plus the protocol's results."""

    next_seed: bytes = b""
    bans: list[dict[str, Any]] = field(default_factory=list)
    accusations: int = 0
    skipped: bool = False
    next_commits: Any = None  # the next step's round 1, issued with this step (see run_secure_step)
    rejected: list[str] = field(default_factory=list)
    protocol_bytes: int = 0


class Relay:
    """Checks each message once before relaying it (signature, job, step, kind, replay, the
    sender's key, the payload's shape: :mod:`btard_ray.payloads`); remembers what it rejected
    and why."""

    def __init__(self, job: str, keys: Mapping[int, str], members: Sequence[int], probation: Sequence[int] = ()
                 ) -> None:
        self.verifier = MessageVerifier(job)
        self.keys = keys
        self.members = list(members)
        self.probation = list(probation)
        self.rejected: list[str] = []
        self.bytes = 0

    def accept(self, pid: int, raw: Any, step: int, kind: str) -> dict | None:
        if raw is None:
            return None
        try:
            msg = Message.from_dict(raw)
            canonical = _encoded(msg)  # encoded once: verified, then counted
            self.verifier.check(msg, step, kind, canonical=canonical)
        except MessageError as exc:
            self.rejected.append(f"peer {pid}: {exc}")
            return None
        if msg.sender != self.keys.get(pid):
            self.rejected.append(f"peer {pid}: {kind} signed by another key {msg.sender[:16]}")
            return None
        problem = payload_problem(kind, msg.payload, self.members, pid, self.probation)
        if problem is not None:
            self.rejected.append(f"peer {pid}: malformed {kind}: {problem}")
            return None
        self.bytes += len(canonical or b"") + 64
        return raw

    def accept_all(self, pid: int, raws: list[Any], step: int, kind: str) -> list[dict]:
        return [r for r in (self.accept(pid, raw, step, kind) for raw in raws) if r is not None]


def _field(value: Any, key: str | int) -> Any:
    """``value[key]`` of a peer's packed result; None when the result has no such field (a
    peer's actor may run its owner's code: what it returns is read, never trusted)."""
    if isinstance(key, str):
        return value.get(key) if isinstance(value, dict) else None
    return value[key] if isinstance(value, (tuple, list)) and len(value) > key else None


def _listed(value: Any) -> list:
    """A peer's list of accusations; anything else is one (malformed) message."""
    return value if isinstance(value, list) else ([] if value is None else [value])


def _encoded(msg: Message) -> bytes | None:
    """The message's canonical bytes; None when it has none (the verifier then refuses it
    as a bad signature, as it would any message it cannot encode)."""
    try:
        return msg.canonical_bytes()
    except MessageError:
        return None


def _parsed(raw: dict | None) -> Message | None:
    return None if raw is None else Message.from_dict(raw)


@dataclass
class Commits:
    """Round 1 of step ``step`` as issued to the peers: refs to their parts (owned by the
    driver) and to one dict per peer holding its signed ``commitment`` and ``compute`` stats,
    for the members and the peers on probation (who commit like everybody else; their parts
    are validated, never aggregated). Step t+1's are issued inside step t's last round."""

    step: int
    members: list[int]
    probation: list[int]
    parts: dict[int, list[ray.ObjectRef]]
    meta: dict[int, ray.ObjectRef]

    @classmethod
    def from_returns(cls, step: int, members: list[int], probation: list[int],
                     returns: Mapping[int, Sequence[ray.ObjectRef]]) -> "Commits":
        """From each peer's ``commit`` returns (n parts, then the dict), in that order."""
        n = len(members)
        everyone = [*members, *probation]
        return cls(step, list(members), list(probation), {p: list(returns[p][:n]) for p in everyone},
                   {p: returns[p][n] for p in everyone})

    def matches(self, step: int, members: Sequence[int], probation: Sequence[int]) -> bool:
        return self.step == step and self.members == list(members) and self.probation == list(probation)


def issue_commits(peers: Mapping[int, ActorHandle], members: list[int], step: int, seed: bytes,
                  probation: Sequence[int] = ()) -> Commits:
    """Round 1 on its own: every member and probationer computes, splits and commits its gradient."""
    n = len(members)
    returns = {pid: peers[pid].commit.options(num_returns=n + 1).remote(step, members, seed)
               for pid in [*members, *probation]}
    return Commits.from_returns(step, members, list(probation), returns)


def run_secure_step(
    cfg: JobConfig,
    peers: Mapping[int, ActorHandle],
    members: list[int],
    keys: Mapping[int, str],
    step: int,
    seed: bytes,
    tribunal: ActorHandle,
    check_weights: bool,
    committed: Commits | None = None,
    prefetch: bool = False,
    probation: Sequence[int] = (),
) -> SecureOutcome:
    """Run one defended step of job ``cfg`` over ``members`` with shared seed r_t = ``seed``.

    ``committed``: this step's round 1 if it was issued with the previous step (used only if
    it is for this step and these peers). ``prefetch``: issue the next step's round 1 in
    this step's last round; the outcome's ``next_commits`` holds it when the step went
    through without accusations (otherwise the weights or the membership change first).
    ``probation``: newcomers that commit, are validated (each by one member drawn from
    r_{t+1}) and apply the step, but aggregate nothing and are aggregated by nobody.

    A peer that crashes or stays silent for ``timeouts.phase_seconds`` in rounds 1-3 raises
    :class:`~btard_ray.failures.PeerFailure` (nobody has applied anything: the driver drops
    it and runs the step again); in the last rounds the step completes without it, and the
    outcome's ``dropped`` names it.
    """
    assert cfg.name is not None
    job = cfg.name
    t_start = time.perf_counter()
    n = len(members)
    probation = list(probation)
    everyone = [*members, *probation]
    timeout = cfg.timeouts.phase_seconds
    relay = Relay(job, keys, members, probation)
    phase: dict[str, float] = {}

    def timed(name: str, t0: float) -> float:
        now = time.perf_counter()
        phase[name] = now - t0
        return now

    # 1. compute and commit: parts stay in the object store, owned by the driver.
    t = time.perf_counter()
    if committed is None or not committed.matches(step, members, probation):
        committed = issue_commits(peers, members, step, seed, probation)
    part_refs = committed.parts
    commit_meta, dropped = gather_surviving(committed.meta, peers, timeout, "commit", blame_all=True)
    _members_failed(dropped, members, "commit")
    # A probationer that failed is simply not part of this step (nothing depends on it yet).
    probation = [p for p in probation if p not in dropped]
    everyone = [*members, *probation]
    commitments = {p: relay.accept(p, _field(commit_meta[p], "commitment"), step, "commitment") for p in everyone}
    compute_stats = {p: _field(commit_meta[p], "compute") for p in members}
    t = timed("commit", t)

    # 2. scatter and aggregate part j at member j; the reveals travel with the reports.
    aggregated = {}
    for j, pid in enumerate(members):
        refs = [None if src == pid else part_refs[src][j] for src in members]
        aggregated[pid] = peers[pid].aggregate_reveal.options(num_returns=2).remote(step, refs, commitments)
    agg_refs = {pid: aggregated[pid][0] for pid in members}
    said = gather({p: c[1] for p, c in aggregated.items()}, peers, timeout, "aggregate")
    reports = {p: relay.accept(p, _field(said[p], "report"), step, "aggregate_report") for p in members}
    reveals = {p: relay.accept(p, _field(said[p], "reveal"), step, "reveal") for p in members}
    accusations: list[dict] = []
    for p in members:
        accusations += relay.accept_all(p, _listed(_field(said[p], "accusations")), step, "accusation")
    agg_stats = {p: _field(said[p], "stats") for p in members}
    # (the relay has verified both messages' signatures)
    new_seed = next_seed(seed, [reveal_nonce(reveals[p], commitments[p], job, keys[p], step, verify=False)
                                for p in members])
    t = timed("aggregate", t)

    # 3. gather the aggregates, open r_{t+1}, sign the inner products; then validate (each
    # validator gets the parts of its targets, derived here exactly as the peers derive them).
    # The round waits for the inner products only: a validator re-computes while the driver
    # checks them and issues round 4, and reports what it found with its audit (its actor
    # runs ``validate`` before ``audit_apply``). Probationers only fetch the aggregates, to
    # apply the step with everybody.
    projected = {pid: peers[pid].gather_project.remote(
        step, [None if a == pid else agg_refs[a] for a in members], reports, reveals) for pid in members}
    pairs = audit_pairs(new_seed, members, cfg.aggregator.tau, cfg.protocol.validators, cfg.protocol.suspect_audits,
                        reported_distances(members, {p: _parsed(r) for p, r in reports.items()}), probation)
    handed: dict[int, dict[int, list]] = {}
    for validator, target in pairs:
        handed.setdefault(validator, {})[target] = part_refs[target]
    for validator, targets in handed.items():
        peers[validator].validate.remote(step, targets, probation)  # (no result: see audit_apply)
    following = {pid: peers[pid].follow_gather.remote(step, [agg_refs[a] for a in members]) for pid in probation}
    said, failed = gather_surviving({**projected, **following}, peers, timeout, "project")
    _members_failed(failed, members, "project")
    dropped.update(failed)
    probation = [p for p in probation if p not in failed]
    everyone = [*members, *probation]
    inner = {p: relay.accept(p, _field(said[p], 0), step, "inner_products") for p in members}
    for p in members:
        accusations += relay.accept_all(p, _listed(_field(said[p], 1)), step, "accusation")
    gather_stats = {p: _field(said[p], 2) for p in members}
    t = timed("project", t)

    # 4. check every aggregate; with no accusation so far, peers that find nothing apply at
    # once (and, with ``prefetch``, compute and commit the next step in the same call).
    # From here on nobody runs the step again: a peer that fails is dropped after it.
    apply_now = not accusations
    ahead = (members, new_seed) if prefetch and apply_now else None
    # Returns: (n next parts, when ahead), then one dict (see Peer.audit_apply).
    returns = 1 + (n if ahead else 0)
    audited = {pid: peers[pid].audit_apply.options(num_returns=returns).remote(
        step, inner, apply_now, check_weights, ahead, pid in handed) for pid in members}
    audited.update({pid: peers[pid].follow_apply.options(num_returns=returns).remote(
        step, apply_now, check_weights, ahead) for pid in probation})
    for p in audited:
        if returns == 1:  # one return comes back as a bare ref, not a list of one
            audited[p] = [audited[p]]
    answered, failed = gather_surviving({p: c[-1] for p, c in audited.items()}, peers, timeout, "audit",
                                        blame_all=True)
    dropped.update(failed)
    alive = [p for p in everyone if p not in dropped]
    for p in members:
        if p in answered:
            accusations += relay.accept_all(p, _listed(_field(answered[p], "accusations")), step, "accusation")
    apply_stats = {p: _field(answered[p], "apply") for p in alive}
    next_commits = None
    if ahead and not accusations and not dropped and all(stats is not None for stats in apply_stats.values()):
        next_commits = Commits.from_returns(step + 1, members, probation, {p: audited[p] for p in everyone})
    t = timed("audit", t)

    # 5. judge (only when somebody accused somebody), then (re-)apply from w_t everywhere.
    verdict: dict[str, Any] = {"bans": [], "replacements": {}}
    skipped = False
    if accusations:
        # Judges re-compute at w_t: undo the update where a peer already took it.
        rolled = {p: peers[p].rollback.remote(step) for p in alive if apply_stats[p] is not None}
        _, failed = gather_surviving(rolled, peers, timeout, "rollback", blame_all=True)
        dropped.update(failed)
        alive = [p for p in alive if p not in failed]
        ctx = {"members": members, "keys": dict(keys), "part_refs": part_refs, "agg_refs": agg_refs,
               "commitments": commitments, "reports": reports, "reveals": reveals, "inner": inner,
               "rejected": relay.rejected, "timeout": timeout}
        verdict = ray.get(tribunal.judge.remote(step, accusations, ctx, dict(peers)))
        # A forged gradient of a member reached the aggregates: nobody applies this step. A
        # probationer's never did, so its ban changes nothing in the update.
        skipped = any(b["reason"] == "wrong_gradient" and b["peer"] in members for b in verdict["bans"])
        # An aggregate found wrong with no verified replacement (no judge handed over one that
        # matches the digest the majority signed): better no step than a forged part.
        skipped |= any(b["reason"] == "wrong_aggregate" and members.index(b["peer"]) not in verdict["replacements"]
                       for b in verdict["bans"] if b["peer"] in members)
        t = timed("tribunal", t)
        banned = {b["peer"] for b in verdict["bans"]}
        applied = {pid: peers[pid].secure_apply.remote(step, verdict["replacements"], skipped, check_weights)
                   for pid in alive if pid not in banned}
        apply_stats, failed = gather_surviving(applied, peers, timeout, "apply", blame_all=True)
        dropped.update(failed)
        alive = [p for p in alive if p in apply_stats]
        timed("apply", t)
    elif any(stats is None for stats in apply_stats.values()):
        # A peer held back without a valid accusation (its accusation did not verify): it
        # still takes the step everybody else took.
        late = [p for p in alive if apply_stats[p] is None]
        redo, failed = gather_surviving({p: peers[p].secure_apply.remote(step, {}, False, check_weights)
                                         for p in late}, peers, timeout, "apply", blame_all=True)
        apply_stats.update(redo)
        dropped.update(failed)
        alive = [p for p in alive if p not in failed]

    # Only members' numbers count: a probationer's actor runs its owner's code, so what it
    # returns is checked, never trusted (a wrong weight hash drops it instead of the job).
    merged = {p: {**compute_stats[p], **agg_stats[p], **gather_stats[p], **apply_stats[p]} for p in members
              if p in alive and isinstance(apply_stats.get(p), dict)}
    hashes = {p: m["weight_hash"] for p, m in merged.items()} if check_weights else None
    if hashes:
        majority = Counter(hashes.values()).most_common(1)[0][0]
        for p in probation:
            stats = apply_stats.get(p)
            if p in alive and (not isinstance(stats, dict) or stats.get("weight_hash") != majority):
                dropped[p] = "diverged"
    return SecureOutcome(
        step=step,
        members=list(merged),
        losses={p: m["loss"] for p, m in merged.items()},
        wall_s=time.perf_counter() - t_start,
        lr=next(iter(merged.values()))["lr"],
        next_seed=new_seed,
        bans=verdict["bans"],
        accusations=len(accusations),
        skipped=skipped,
        next_commits=next_commits,
        rejected=relay.rejected,
        phase_s=phase,
        bytes_per_peer=sum(m["scatter_bytes"] + m["gather_bytes"] for m in merged.values()) / len(merged),
        protocol_bytes=relay.bytes,
        weight_hashes=hashes,
        dropped=dropped,
        compute_s=statistics.median(m["compute_s"] for m in merged.values()),
    )


def _members_failed(failed: Mapping[int, str], members: Sequence[int], phase: str) -> None:
    """Before anybody applied: a member that failed means running the step again without it
    (the failed probationers, if any, go with it)."""
    if any(p in members for p in failed):
        raise PeerFailure(failed, phase)

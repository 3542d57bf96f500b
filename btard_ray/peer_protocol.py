"""What one peer does in each phase of a BTARD-SGD step (design §4), without Ray.

The Ray actor (:mod:`btard_ray.peer`) fetches objects and calls these methods; everything a
peer decides lives here, so it can be read in one place and tested without a cluster.

Phases of step t for a peer with index k among the members m_0..m_{n-1}:

1. ``commit``    gradient g (an attacker may lie), parts g[0..n-1], signed commitment to
                 every part's digest and to the digest of a fresh nonce.
2. ``aggregate`` as aggregator of part k: check every received part against its sender's
                 commitment (a mismatch is excluded and accused), CenteredClip, signed
                 report of the aggregate's digest and the n distances; ``reveal`` the
                 nonce (signed) in the same round.
3. ``check_aggregates`` every gathered aggregate against its report; ``open_seed``
                 r_{t+1} = H(r_t ‖ reveals); ``project``: for every part j the signed share
                 s_kj = c_kj·⟨z_j, g[j] − x_j⟩ and distance ‖g[j] − x_j‖; ``validate``: as
                 a validator (random, or of a clipped suspect), re-compute the target's
                 gradient at w_t and compare.
4. ``audit``     check every aggregate's projection sum and distances.
5. ``judge``     on request of the tribunal, re-compute a disputed quantity and vote.
6. ``apply``     take the optimizer step with the aggregates (judges' replacements for
                 aggregates found wrong; no step at all when a forged gradient was found).

Accusations are signed messages ``{"accused": hex key, "accused_peer": id, "case": ...}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from attacks.base import Attack
from btard_ray.aggregation import centered_clip
from btard_ray.config import JobConfig
from btard_ray.identity import Identity
from btard_ray.messages import Message, MessageError, signed_dict
from btard_ray.partition import join, split
from btard_ray.protocol.commitments import new_nonce, nonce_digest, part_digest
from btard_ray.protocol.projection import check_aggregate, peer_share, projection_vector
from btard_ray.protocol.randomness import check_reveal, next_seed
from btard_ray.protocol.validation import (
    choose_suspect_validators,
    choose_validators,
    clipped_suspects,
    compare_gradients,
)
from btard_ray.replica import Replica

#: float32 unit roundoff: a float32 aggregate x cannot be placed closer than about
#: u32·‖x‖ to the exact CenteredClip fixed point, so no honest aggregator can push the
#: residual below that floor (measured: ≈ 1·u32·‖x‖); we allow 8x that.
FLOAT32_FLOOR = 8 * 2.0**-24


def effective_eps(eps: float, aggregate: torch.Tensor) -> float:
    """The residual bound an honest float32 aggregate meets: max(eps, 8·u32·‖x‖).

    Every peer computes it from the published x_j itself, so an aggregator cannot widen it
    beyond what the size of its own aggregate implies.
    """
    return max(eps, FLOAT32_FLOOR * float(aggregate.double().norm()))


def aggregate_digest(job: str, step: int, aggregator: int, index: int, x: torch.Tensor) -> str:
    """Digest of a published aggregate (a part digest under the aggregator's name, tagged)."""
    return part_digest(job, step, f"aggregate:{aggregator}", index, x)


def _finite_or_none(value: float) -> float | None:
    # Signed payloads are canonical JSON, which has no Infinity: a non-finite distance is None.
    return value if math.isfinite(value) else None


def _as_float(value: Any) -> float:
    return math.inf if value is None else float(value)


@dataclass
class StepState:
    """What a peer remembers about the step in progress."""

    step: int
    members: list[int]
    seed: bytes
    parts: list[torch.Tensor]
    nonce: bytes
    loss: float
    attacking: bool
    aggregates: dict[int, torch.Tensor] = field(default_factory=dict)  # part index -> x_j
    next_seed: bytes | None = None
    z_norms: dict[int, float] = field(default_factory=dict)  # part index -> ‖z_j‖ (for the check)
    z: dict[int, torch.Tensor] = field(default_factory=dict)  # part index -> z_j, drawn once per step
    validated: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # honest targets' sent parts


class PeerProtocol:
    """The protocol logic of peer ``peer_id``; ``keys`` maps every member to its hex key."""

    def __init__(self, cfg: JobConfig, peer_id: int, identity: Identity, replica: Replica,
                 attack: Attack | None = None) -> None:
        assert cfg.name is not None
        self.cfg = cfg
        self.job = cfg.name
        self.me = peer_id
        self.identity = identity
        self.replica = replica
        self.attack = attack
        self.tau = cfg.aggregator.tau
        self.keys: dict[int, str] = {}
        self.state: StepState | None = None  # the latest step's
        # Step t's state outlives the commitment of step t+1 (sent in the same call as step
        # t's audit), so that step t can still be rolled back, judged and applied.
        self._states: dict[int, StepState] = {}
        self._seen: dict[str, tuple[dict, Message]] = {}

    # -- helpers ---------------------------------------------------------------------------

    def sign(self, step: int, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A signed message of ``kind``; an attacker may send something else (replays)."""
        raw = signed_dict(self.identity, self.job, step, kind, payload)
        return self.attack.outgoing(step, kind, raw) if self._attacking(step) else raw  # type: ignore[union-attr]

    def valid(self, raw: Any, peer: int, step: int, kind: str) -> Message | None:
        """:func:`valid_message` for ``peer``'s key in this job.

        A message comes through the relay, which has verified its signature (design §2: the
        control plane is trusted to relay, and rejects what does not verify). A peer checks
        the envelope (job, step, kind, sender) of everything it uses, and re-verifies the
        Ed25519 signature itself only with ``protocol.peer_signature_checks``: that costs
        O(n²) verifications per step, the largest CPU cost of the protocol on a small model.
        Either way a message is parsed once per peer (cached by its signature, reused only
        for an identical dict).
        """
        key = self.keys.get(peer)
        if raw is None or key is None or not isinstance(raw, Mapping):
            return None
        signature = raw.get("signature")
        hit = self._seen.get(signature) if isinstance(signature, str) else None
        # (the relayed dicts are kept for the step, so the same object comes back: `is` first)
        if hit is not None and (hit[0] is raw or hit[0] == raw):
            msg = hit[1]
        else:
            msg = valid_message(raw, self.job, key, step, kind, verify=self.cfg.protocol.peer_signature_checks)
            if msg is None:
                return None
            if len(self._seen) > 4096:  # a few steps' messages; older ones are never asked for again
                self._seen.clear()
            # Relayed messages are never mutated once received, so the dict itself is kept.
            self._seen[signature] = (raw, msg)
        ok = msg.job == self.job and msg.step == step and msg.kind == kind and msg.sender == key
        return msg if ok else None

    def accuse(self, step: int, accused: int, case: str, **detail: Any) -> dict[str, Any]:
        payload = {"accused": self.keys.get(accused, ""), "accused_peer": accused, "case": case, **detail}
        return self.sign(step, "accusation", payload)

    def _state(self, step: int) -> StepState:
        if step not in self._states:
            raise RuntimeError(f"peer {self.me}: no state for step {step}")
        return self._states[step]

    def _attacking(self, step: int) -> bool:
        return self.attack is not None and self.cfg.attack.active_at(step)

    # -- 1. compute and commit ---------------------------------------------------------------

    def gradient(self, step: int, members: Sequence[int]) -> tuple[torch.Tensor, float, bool]:
        """(flat gradient this peer sends at ``step``, batch loss, whether it attacks now):
        the honest gradient of its public batch, or what its attack makes of it. Used with
        and without the defence (``protocol.checks: false`` runs the same attacks)."""
        flat, loss = self.replica.gradient_for(self.me, step)
        attacking = self._attacking(step)
        if attacking:
            from attacks.context import AttackContext  # only an attacker builds one

            ctx = AttackContext.for_replica(self.replica, self.me, step, members, own=flat)
            flat = self.attack.gradient(step, flat, ctx)  # type: ignore[union-attr]
        return flat, loss, attacking

    def commit(self, step: int, members: list[int], seed: bytes) -> tuple[list[torch.Tensor], dict, float]:
        """Gradient parts to send, the signed commitment, and the batch loss."""
        flat, loss, attacking = self.gradient(step, members)
        # clone: a view would pickle its whole base tensor into the object store
        parts = [p.cpu().clone() for p in split(flat, len(members))]
        nonce = new_nonce()
        commitment = self.sign(step, "commitment", {
            "parts": [part_digest(self.job, step, str(self.me), j, p) for j, p in enumerate(parts)],
            "nonce": nonce_digest(nonce),
        })
        self.state = StepState(step, list(members), seed, parts, nonce, loss, attacking)
        self._states = {t: st for t, st in self._states.items() if t == step - 1}
        self._states[step] = self.state
        sent = self.attack.sent_parts(step, parts) if attacking else parts  # type: ignore[union-attr]
        return sent, commitment, loss

    def own_part(self, step: int) -> torch.Tensor:
        st = self._state(step)
        return st.parts[st.members.index(self.me)]

    # -- 2. aggregate ------------------------------------------------------------------------

    def aggregate(self, step: int, rows: Mapping[int, torch.Tensor], commitments: Mapping[int, Any]
                  ) -> tuple[torch.Tensor, dict, list[dict]]:
        """CenteredClip of this peer's part over every member's row; (x, report, accusations)."""
        st = self._state(step)
        j = st.members.index(self.me)
        accusations, excluded, stacked = [], [], []
        for pid in st.members:
            row = rows[pid]
            commit = self.valid(commitments.get(pid), pid, step, "commitment")
            expected = commit.payload["parts"][j] if commit is not None else None
            if expected != part_digest(self.job, step, str(pid), j, row):
                excluded.append(pid)
                accusations.append(self.accuse(step, pid, "bad_commitment", part=j))
                row = torch.full_like(row, math.nan)  # CenteredClip gives a non-finite row no weight
            stacked.append(row)
        result = centered_clip(torch.stack(stacked).to(self.replica.device), self.tau,
                               self.cfg.aggregator.eps, self.cfg.aggregator.max_iters)
        x = result.aggregate.cpu()
        distances = result.distances.tolist()
        if st.attacking:
            x = self.attack.aggregate(step, j, x)  # type: ignore[union-attr]
            distances = [float((r.double() - x.double()).norm()) if pid not in excluded else math.inf
                         for pid, r in zip(st.members, stacked)]
        st.aggregates[j] = x
        report = self.sign(step, "aggregate_report", {
            "part": j,
            "digest": aggregate_digest(self.job, step, self.me, j, x),
            "distances": [_finite_or_none(d) for d in distances],
            "excluded": excluded,
        })
        return x, report, accusations

    # -- 2b. reveal (sent with the aggregate report) ------------------------------------------

    def reveal(self, step: int) -> dict | None:
        """The signed nonce reveal (None: withheld).

        It travels in the same round as this peer's aggregate report: the relay hands no
        reveal to anybody before every report is in, so r_{t+1} is still unknown to every
        aggregator when its aggregate is fixed (design §4.3).
        """
        st = self._state(step)
        nonce = self.attack.reveal(step, st.nonce) if st.attacking else st.nonce  # type: ignore[union-attr]
        return None if nonce is None else self.sign(step, "reveal", {"nonce": nonce.hex()})

    # -- 3. gather, open the seed, project -----------------------------------------------------

    def check_aggregates(self, step: int, aggregates: Mapping[int, torch.Tensor], reports: Mapping[int, Any]
                         ) -> list[dict]:
        """Check every gathered aggregate against its signed report; keep them for the update."""
        st = self._state(step)
        accusations = []
        for j, pid in enumerate(st.members):
            x = aggregates[pid]
            report = self.valid(reports.get(pid), pid, step, "aggregate_report")
            if report is None or report.payload.get("digest") != aggregate_digest(self.job, step, pid, j, x):
                accusations.append(self.accuse(step, pid, "aggregate_check", part=j, why="report"))
            st.aggregates[j] = x
        return accusations

    def open_seed(self, step: int, reveals: Mapping[int, Any], commitments: Mapping[int, Any]) -> list[dict]:
        """r_{t+1} = H(r_t ‖ reveals); a missing or non-opening reveal is an accusation."""
        st = self._state(step)
        accusations, nonces = [], []
        for pid in st.members:
            nonce = opened_nonce(self.valid(reveals.get(pid), pid, step, "reveal"),
                                 self.valid(commitments.get(pid), pid, step, "commitment"))
            if nonce is None:
                accusations.append(self.accuse(step, pid, "withheld_reveal"))
            nonces.append(nonce)
        st.next_seed = next_seed(st.seed, nonces)
        return accusations

    def project(self, step: int) -> dict:
        """The signed shares s_kj = c_kj·⟨z_j, g[j] − x_j⟩ and distances for every part j."""
        st = self._state(step)
        assert st.next_seed is not None
        shares, distances = [], []
        for j, part in enumerate(st.parts):
            z = st.z[j] = projection_vector(st.next_seed, j, part.numel())
            st.z_norms[j] = float(z.double().norm())
            s, d = peer_share(part, st.aggregates[j], z, self.tau)
            shares.append(s)
            distances.append(_finite_or_none(d))
        return self.sign(step, "inner_products", {"shares": shares, "distances": distances})

    # -- 3b. validate ---------------------------------------------------------------------------

    def validation_targets(self, step: int, reports: Mapping[int, Any], probation: Sequence[int] = ()) -> list[int]:
        """The peers this peer must re-compute at ``step``, drawn from r_{t+1}.

        The m random (validator, target) pairs of :func:`choose_validators`, plus one pair per
        suspect of :func:`clipped_suspects` (from the signed reports' distances). The driver
        derives the same list to know whose parts to hand over.
        """
        st = self._state(step)
        assert st.next_seed is not None
        parsed = {pid: self.valid(reports.get(pid), pid, step, "aggregate_report") for pid in st.members}
        pairs = audit_pairs(st.next_seed, st.members, self.tau, self.cfg.protocol.validators,
                            self.cfg.protocol.suspect_audits, reported_distances(st.members, parsed), probation)
        return sorted({target for validator, target in pairs if validator == self.me})

    def validate(self, step: int, target_parts: Mapping[int, Sequence[torch.Tensor] | Callable[[], Sequence[torch.Tensor]]],
                 commitments: Mapping[int, Any]) -> list[dict]:
        """Re-compute each target's gradient at w_t and compare with what it sent.

        ``target_parts`` maps a target to its sent parts, or to a function that fetches them:
        for a member whose re-computed parts hash to exactly the digests it committed to,
        they are never fetched. That is not a weaker check: equal digests mean the committed
        gradient *is* the re-computed one (the tolerance comparison could only pass), and
        every part a member sends is checked against its commitment by that part's
        aggregator. A probationer's parts reach no aggregator, so they are always fetched
        and checked here (:func:`gradient_problem`).
        """
        st = self._state(step)
        accusations = []
        for target, sent in target_parts.items():
            recomputed = recompute_parts(self, step, target)
            if target in st.members and matches_commitment(self, step, target, recomputed, commitments.get(target)):
                st.validated[target] = recomputed  # bitwise the committed parts
                continue
            sent = list(sent() if callable(sent) else sent)
            problem = gradient_problem(self, step, target, sent, commitments.get(target), recomputed)
            if problem is not None:
                accusations.append(self.accuse(step, target, problem[0], why=problem[1]))
            elif target in st.members:  # its inner products are checked against these parts in the audit
                st.validated[target] = sent
        return accusations

    # -- 4. audit -------------------------------------------------------------------------------

    def audit(self, step: int, inner: Mapping[int, Any], reports: Mapping[int, Any]) -> list[dict]:
        """Accusations from the projection check of every aggregate.

        The check is a deterministic function of the relayed messages, so every honest peer
        reaches the same finding: either all of them apply the step or none does.
        """
        st = self._state(step)
        assert st.next_seed is not None
        accusations = []
        messages = {pid: self.valid(inner.get(pid), pid, step, "inner_products") for pid in st.members}
        for pid, msg in messages.items():
            if msg is None:
                accusations.append(self.accuse(step, pid, "bad_message", what="inner_products"))
        for j, aggregator in enumerate(st.members):
            report = self.valid(reports.get(aggregator), aggregator, step, "aggregate_report")
            if report is None:
                continue  # already accused when the aggregates were gathered
            if self.me in report.payload.get("excluded", []) and aggregator != self.me and not st.attacking:
                # This peer sent exactly the part it committed to: excluding it is the
                # aggregator's lie (it would also zero this peer's share in the check).
                accusations.append(self.accuse(step, aggregator, "aggregate_check", part=j, why="excluded me"))
                continue
            check = aggregate_check_for(self, j, st, report, messages)
            if check is not None and not check.ok:
                accusations.append(self.accuse(step, aggregator, "aggregate_check", part=j, why=check.reason))
        # A validated peer's signed shares and distances must be those of the parts it sent:
        # otherwise an aggregator could cancel a shifted aggregate with its own share.
        for target, sent in st.validated.items():
            msg = messages.get(target)
            bad = [j for j, part in enumerate(sent)
                   if msg is not None and not share_claim_ok(msg, j, part, st.aggregates[j],
                                                             _z(st, j, part.numel()), self.tau)]
            if bad:
                accusations.append(self.accuse(step, target, "inner_products", part=bad[0], why="shares"))
        if st.attacking:
            for claim in self.attack.false_claims(step, self.me, st.members):  # type: ignore[union-attr]
                accusations.append(self.accuse(step, claim.accused, claim.case, why="made up"))
        return accusations

    def follow(self, step: int, aggregates: Sequence[torch.Tensor]) -> None:
        """A peer on probation takes the members' aggregates as they are (it is not a member:
        it neither checks nor accuses; the members do both)."""
        st = self._state(step)
        st.aggregates = dict(enumerate(aggregates))

    # -- 5. apply -------------------------------------------------------------------------------

    def apply(self, step: int, replacements: Mapping[int, torch.Tensor], skip: bool = False) -> None:
        """Optimizer step with ĝ = join(x_0..x_{n-1}), replacing aggregates judged wrong.

        ``skip``: the tribunal found a forged gradient in this step; nobody applies it, so the
        forged contribution never reaches the weights (the honest peers lose one step).
        """
        st = self._state(step)
        if skip:
            return
        aggregates = dict(st.aggregates)
        aggregates.update(replacements)
        self.replica.apply_gradient(join([aggregates[j] for j in range(len(st.members))]))


def _z(st: StepState, j: int, size: int) -> torch.Tensor:
    """z_j of the step, as drawn in :meth:`PeerProtocol.project` (drawn now if it was not)."""
    z = st.z.get(j)
    if z is None or z.numel() != size:
        assert st.next_seed is not None
        z = projection_vector(st.next_seed, j, size)
    return z


def reported_distances(members: Sequence[int], reports: Mapping[int, Message | None]) -> list[list[float | None]]:
    """The distances of every valid aggregate report, in part order (a bad report: none);
    None for a row the aggregator excluded, inf for a non-finite row it did not exclude."""
    rows = []
    for aggregator in members:
        report = reports.get(aggregator)
        distances = report.payload.get("distances", []) if report is not None else []
        if isinstance(distances, list) and len(distances) == len(members):
            excluded = set(report.payload.get("excluded", [])) if report is not None else set()
            # No distance (JSON has no inf) for a row that matched its commitment: the row
            # itself is not finite (NaN/inf gradient), the most suspect of all.
            rows.append([(None if pid in excluded else math.inf) if d is None else float(d)
                         for pid, d in zip(members, distances)])
    return rows


def audit_pairs(seed: bytes, members: Sequence[int], tau: float, validators: int, suspect_audits: int,
                reported: Sequence[Sequence[float | None]], probation: Sequence[int] = ()) -> list[tuple[int, int]]:
    """Every (validator, target) pair of a step: m random ones, one per clipped suspect, and
    one per peer on probation (validated at every step of its probation, design §5.3)."""
    names = [str(m) for m in members]
    pairs = choose_validators(seed, names, validators)
    suspects = clipped_suspects(names, reported, tau, suspect_audits)
    pairs += choose_suspect_validators(seed, names, suspects)
    pairs += choose_suspect_validators(seed, names, [str(p) for p in probation], label="validators/probation")
    return [(int(v), int(t)) for v, t in pairs]


# -- checks shared by auditing peers and judges ------------------------------------------------


def share_claim_ok(msg: Message, j: int, row: torch.Tensor, x: torch.Tensor, z: torch.Tensor, tau: float) -> bool:
    """Is the share and distance ``msg`` (signed inner products) claims for part j those of
    ``row``, the part its sender sent? (float64 re-computation, relative 1e-9.)"""
    share, dist = peer_share(row, x, z, tau)
    try:
        claimed_s = float(msg.payload["shares"][j])
        claimed_d = msg.payload["distances"][j]
        claimed_d = math.inf if claimed_d is None else float(claimed_d)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        return False
    scale = float(z.double().norm()) * max(dist, 1e-30) if math.isfinite(dist) else 1.0
    return (math.isclose(share, claimed_s, rel_tol=1e-9, abs_tol=1e-12 * scale)
            and (dist == claimed_d or math.isclose(dist, claimed_d, rel_tol=1e-9)))


def valid_message(raw: Any, job: str, key: str | None, step: int, kind: str, verify: bool = True
                  ) -> Message | None:
    """The message if ``raw`` is a well-formed message of ``kind`` for ``job`` and ``step``,
    signed by ``key``; None otherwise (the caller decides whether that is an accusation).
    ``verify=False`` checks the envelope only (for messages the relay has verified)."""
    if raw is None or key is None:
        return None
    try:
        msg = Message.from_dict(raw)
    except MessageError:
        return None
    ok = msg.job == job and msg.step == step and msg.kind == kind and msg.sender == key
    return msg if ok and (not verify or msg.signature_valid()) else None


def reveal_nonce(raw_reveal: Any, raw_commitment: Any, job: str, key: str | None, step: int,
                 verify: bool = True) -> bytes | None:
    """The nonce of a reveal if it is signed by ``key`` and opens the same peer's commitment
    (``verify=False``: the signatures were verified by the relay)."""
    return opened_nonce(valid_message(raw_reveal, job, key, step, "reveal", verify),
                        valid_message(raw_commitment, job, key, step, "commitment", verify))


def opened_nonce(reveal: Message | None, commit: Message | None) -> bytes | None:
    """The revealed nonce if it opens the commitment's nonce digest; None otherwise."""
    if reveal is None or commit is None:
        return None
    try:
        nonce = bytes.fromhex(str(reveal.payload.get("nonce", "")))
    except ValueError:
        return None
    return nonce if check_reveal(nonce, str(commit.payload.get("nonce", ""))) else None


def aggregate_check_for(proto: PeerProtocol, j: int, st: StepState, report: Message,
                        messages: Mapping[int, Message | None]):
    """The projection check of part j from every member's signed share and distance.

    A row the aggregator excluded (its part did not match its commitment) got weight 0 in
    CenteredClip, so it enters the check as share 0 at distance inf on both sides. The
    residual bound is :func:`effective_eps`. Returns None (no check) when a member's inner
    products are missing.
    """
    excluded = set(report.payload.get("excluded", []))
    reported = list(report.payload.get("distances", []))
    if len(reported) != len(st.members):
        return _Failed("the report does not hold one distance per member")
    if any(messages.get(pid) is None for pid in st.members if pid not in excluded):
        # Without every share the sum says nothing; the silent peer is accused of that
        # (bad_message) instead of framing every aggregator.
        return None
    shares, peer_d, agg_d = [], [], []
    for i, pid in enumerate(st.members):
        msg = messages.get(pid)
        if pid in excluded or msg is None:
            shares.append(0.0)
            peer_d.append(math.inf)
            agg_d.append(math.inf)
            continue
        shares.append(float(msg.payload["shares"][j]))
        peer_d.append(_as_float(msg.payload["distances"][j]))
        agg_d.append(_as_float(reported[i]))
    size = st.parts[j].numel()
    z_norm = st.z_norms.get(j)
    if z_norm is None:
        z_norm = float(projection_vector(st.next_seed, j, size).double().norm())
    eps = effective_eps(proto.cfg.aggregator.eps, st.aggregates[j])
    return check_aggregate(shares, peer_d, agg_d, len(st.members), eps, z_norm,
                           proto.cfg.protocol.distance_rtol, part_size=size, tau=proto.tau)


@dataclass(frozen=True)
class _Failed:
    """A check that failed before any arithmetic (a malformed report)."""

    reason: str
    ok: bool = False


def recompute_parts(proto: PeerProtocol, step: int, target: int) -> list[torch.Tensor]:
    """``target``'s gradient for ``step`` re-computed at the current weights (w_t), in parts."""
    recomputed, _ = proto.replica.gradient_for(target, step)
    return [p.clone() for p in split(recomputed.cpu(), len(proto._state(step).members))]


def matches_commitment(proto: PeerProtocol, step: int, target: int, parts: Sequence[torch.Tensor],
                       raw_commitment: Any) -> bool:
    """Whether ``parts`` hash to exactly the digests of ``target``'s valid commitment."""
    commit = proto.valid(raw_commitment, target, step, "commitment")
    digests = [part_digest(proto.job, step, str(target), j, p) for j, p in enumerate(parts)]
    return commit is not None and commit.payload.get("parts") == digests


def gradient_problem(proto: PeerProtocol, step: int, target: int, sent: Sequence[torch.Tensor],
                     raw_commitment: Any, recomputed: Sequence[torch.Tensor] | None = None) -> tuple[str, str] | None:
    """Re-compute ``target``'s gradient at the current weights (w_t) and compare with what it
    sent; returns (case, why) for a mismatch, None when the target was honest.
    ``recomputed``: the re-computed parts, when the caller has them already."""
    if not matches_commitment(proto, step, target, sent, raw_commitment):
        return "bad_commitment", "sent parts do not match the commitment"
    if recomputed is None:
        recomputed = recompute_parts(proto, step, target)
    comparison = compare_gradients(list(recomputed), list(sent), rtol=proto.cfg.protocol.validation_rtol)
    return None if comparison.ok else ("wrong_gradient", comparison.reason)

"""Who takes part in a job, and in what role (design §4 membership rules, §5.3 probation). Pure.

Every peer the job ever had has one :class:`PeerRecord` whose ``state`` moves along

    probation ──(probation_steps clean steps)──> active
    probation | active ──> banned | left | dropped

(initial peers start ``active``). Only active peers aggregate and are aggregated; peers on
probation commit and are validated at every step. Changes take effect at step boundaries:
the driver applies them between steps, so a step always runs over one fixed membership.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ACTIVE, PROBATION, BANNED, LEFT, DROPPED = "active", "probation", "banned", "left", "dropped"
ENDED = (BANNED, LEFT, DROPPED)


@dataclass
class PeerRecord:
    """One peer's story in the job (also what ``btard status`` shows)."""

    peer: int
    public_key: str
    state: str
    joined_step: int | None = None  # None: an initial peer
    promoted_step: int | None = None
    clean_steps: int = 0  # probation steps passed
    ended_step: int | None = None
    reason: str | None = None
    node: str | None = None
    attacker: bool = False
    aggregated_parts: int = 0  # steps in which this peer aggregated a part


@dataclass
class Membership:
    """The records of every peer; ``probation_steps``: clean steps before promotion."""

    probation_steps: int
    records: dict[int, PeerRecord] = field(default_factory=dict)

    def active(self) -> list[int]:
        return sorted(p for p, r in self.records.items() if r.state == ACTIVE)

    def on_probation(self) -> list[int]:
        return sorted(p for p, r in self.records.items() if r.state == PROBATION)

    def participants(self) -> list[int]:
        """Active peers, then peers on probation: everybody who takes part in the next step."""
        return [*self.active(), *self.on_probation()]

    def next_id(self) -> int:
        return max(self.records, default=-1) + 1

    def add(self, peer: int, public_key: str, *, joined_step: int | None = None, node: str | None = None,
            attacker: bool = False) -> PeerRecord:
        """An initial peer (active) or, with ``joined_step``, a newcomer (on probation)."""
        if peer in self.records:
            raise ValueError(f"peer {peer} is already a peer of this job")
        record = PeerRecord(peer, public_key, ACTIVE if joined_step is None else PROBATION, joined_step,
                            node=node, attacker=attacker)
        self.records[peer] = record
        return record

    def end(self, peer: int, state: str, step: int, reason: str | None = None) -> None:
        """``peer`` is banned, left or was dropped at ``step`` (no-op if it already ended)."""
        assert state in ENDED, state
        record = self.records[peer]
        if record.state not in ENDED:
            record.state, record.ended_step, record.reason = state, step, reason

    def step_done(self, step: int, aggregators: list[int], probation: list[int]) -> list[int]:
        """Book a completed step; returns the peers that have now passed their probation.

        ``aggregators``: the members that aggregated a part of it; ``probation``: peers that
        took the step on probation (were validated) and were not banned in it.
        """
        for p in aggregators:
            self.records[p].aggregated_parts += 1
        passed = []
        for p in probation:
            record = self.records[p]
            if record.state != PROBATION:
                continue
            record.clean_steps += 1
            if record.clean_steps == self.probation_steps:  # once: a peer may then wait for room
                passed.append(p)
        return passed

    def promote(self, peer: int, step: int) -> None:
        record = self.records[peer]
        if record.state != PROBATION:
            raise ValueError(f"peer {peer} is {record.state}, not on probation")
        record.state, record.promoted_step = ACTIVE, step

    def snapshot(self) -> dict[str, Any]:
        """JSON-plain records by peer id (string keys), for status, summary and checkpoints."""
        return {str(p): asdict(r) for p, r in sorted(self.records.items())}

    @classmethod
    def from_snapshot(cls, probation_steps: int, snapshot: dict[str, Any]) -> "Membership":
        return cls(probation_steps, {int(p): PeerRecord(**r) for p, r in snapshot.items()})


def admission_capacity(active: int, on_probation: int, max_joins_per_step: int, max_probation_share: float) -> int:
    """How many newcomers may start probation at this step boundary.

    At most ``max_joins_per_step``, and only while the peers on probation stay at most
    ``max_probation_share`` of the active peers (at least one may always be on probation):

        capacity = max(0, min(max_joins, max(1, ⌊share·active⌋) − on_probation))

    Promotion takes ``probation_steps`` clean steps, each validated, so joiners reach the
    active set at most ``max_joins_per_step`` per step however many identities wait.
    """
    cap = max(1, int(max_probation_share * active))
    return max(0, min(max_joins_per_step, cap - on_probation))


def may_promote(active: int, joined_active: int, max_joined_share: float) -> bool:
    """Whether one more joiner may become active: (joined + 1) / (active + 1) ≤ max_joined_share.

    With the job's own peers honest and ``max_joined_share`` < 1/2, honest peers stay a
    strict majority of the active peers however many identities an attacker buys; a joiner
    that passed probation waits (still validated at every step) until there is room.
    """
    return (joined_active + 1) <= max_joined_share * (active + 1)

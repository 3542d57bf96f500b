"""Attacks on the protocol's messages rather than on the numbers: commitments, reveals,
accusations, replays and timing.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from attacks.base import Attack, FalseClaim, seeded_generator
from attacks.context import AttackContext


class FalseAccusation(Attack):
    """Accuse an honest-looking peer (the next member after the attacker) of sending a wrong
    gradient, although it did not."""

    name = "false_accusation"
    reason = "false_accusation"

    def false_claims(self, step: int, me: int, members: Sequence[int]) -> list[FalseClaim]:
        others = [m for m in members if m != me]
        if not others:
            return []
        return [FalseClaim(accused=others[(members.index(me)) % len(others)], case="wrong_gradient")]


class BadCommitment(Attack):
    """Commit to the honest parts p_j, then put p'_j = p_j + noise·ξ_j into the object store
    for every part j (ξ_j ~ N(0, I) from (seed, step); ``params.noise``, default 1.0)."""

    name = "bad_commitment"
    reason = "bad_commitment"

    def perturbed(self, step: int, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """p_j + noise·ξ_j for every part (the same ξ_j whichever parts are asked for)."""
        gen = torch.Generator().manual_seed(self.seed * 7919 + step)
        noise = self.param("noise", 1.0)
        return [p + noise * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in parts]

    def sent_parts(self, step: int, committed: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.perturbed(step, committed)


class Equivocate(BadCommitment):
    """Send ``params.receivers`` (default 1) receivers a part other than the one committed:
    p'_j = p_j + noise·ξ_j (as :class:`BadCommitment`) for receivers j drawn from (seed,
    step) among the other members' parts; every other part p'_j = p_j.

    In this design part j of a peer goes to aggregator j only, and validators and judges
    fetch the very object the aggregator got (the driver owns it), so "telling different
    receivers different things" can only mean: some parts do not match their committed
    digests. Aggregator j finds it at once (digest mismatch: the part is excluded and
    accused); the others see a consistent peer.
    """

    name = "equivocate"
    reason = "bad_commitment"

    def __init__(self, params=None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self._own_index: dict[int, int] = {}

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        # sent_parts does not know the membership; remember which part is ours (never sent).
        if ctx is not None:
            self._own_index = {step: ctx.members.index(ctx.peer_id)}
        return honest

    def receivers(self, step: int, n: int) -> list[int]:
        """The part indices (receivers) that get a part other than the committed one."""
        own = self._own_index.get(step)
        others = [j for j in range(n) if j != own]
        gen = seeded_generator(self.seed, self.name, step)
        order = torch.randperm(len(others), generator=gen).tolist()
        count = min(len(others), max(1, int(self.param("receivers", 1))))
        return sorted(others[i] for i in order[:count])

    def sent_parts(self, step: int, committed: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        chosen = set(self.receivers(step, len(committed)))
        forged = self.perturbed(step, committed)
        return [forged[j] if j in chosen else p for j, p in enumerate(committed)]


class WithholdReveal(Attack):
    """Never reveal the seed nonce (to bias or stall the shared randomness)."""

    name = "withhold_reveal"
    reason = "withheld_reveal"

    def reveal(self, step: int, nonce: bytes) -> bytes | None:
        return None


class Replay(Attack):
    """Re-send, instead of each signed message of step t, the message of the same kind it
    sent at its latest earlier active step (its honest message while it has none).

    Uses the ``outgoing`` hook, which ``PeerProtocol.sign`` calls for every signed message
    of an attacking peer. Outcome: every message names its step, so the relay's verifier refuses the
    replayed commitment (wrong step), its slot stays empty, every aggregator excludes the
    replayer's part and accuses it of ``bad_commitment``, and the judges (who find no valid
    commitment) ban it for that.
    """

    name = "replay"
    reason = "bad_commitment"

    def __init__(self, params=None, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.sent: dict[str, tuple[int, dict[str, Any]]] = {}  # kind -> (step, honest message)

    def outgoing(self, step: int, kind: str, message: dict[str, Any]) -> dict[str, Any]:
        earlier = self.sent.get(kind)
        if earlier is None or earlier[0] != step:
            # Remember the first honest message of this kind at this step (a step may sign
            # several of a kind, e.g. accusations; the first stands for them).
            self.sent[kind] = (step, message)
        if earlier is not None and earlier[0] < step:
            return earlier[1]
        return message


class Late(Attack):
    """Behave honestly but sleep ``params.delay_s`` (default 1.0) seconds in one phase:
    ``params.phase`` 0 = commit (before computing the commitment, default), 1 = aggregate
    (before publishing its aggregate), 2 = reveal.

    Lateness is not a ban reason: design §4 drops a silent peer after a timeout (not
    banned). A delay under ``timeouts.phase_seconds`` only costs the step time; a longer
    one gets the peer dropped and the step finishes without it.
    """

    name = "late"
    reason = ""

    def _sleep_in(self, phase: int) -> None:
        if int(self.param("phase", 0)) == phase:
            time.sleep(max(0.0, self.param("delay_s", 1.0)))

    def gradient(self, step: int, honest: torch.Tensor, ctx: AttackContext | None = None) -> torch.Tensor:
        self._sleep_in(0)
        return honest

    def aggregate(self, step: int, part_index: int, honest: torch.Tensor) -> torch.Tensor:
        self._sleep_in(1)
        return honest

    def reveal(self, step: int, nonce: bytes) -> bytes | None:
        self._sleep_in(2)
        return nonce

"""What an attacker knows when it forges a gradient: :class:`AttackContext`.

The data set and every peer's batch are public (design §2), and every peer holds the same
weights w_t, so an attacker is *omniscient* about the honest gradients of the step: it can
re-compute any member's true gradient exactly as a validator would. The context hands the
gradient hook that knowledge, computed lazily (and cached) so that an attack pays only for
what it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

if TYPE_CHECKING:  # no import of the replica (and so of the models) for a type
    from btard_ray.replica import Replica

Relabel = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class AttackContext:
    """The step as an attacker sees it when the gradient hook runs.

    peer_id:      the attacker's own id.
    step:         the (0-based) protocol step.
    members:      ids of the active peers this step, in part order.
    attackers:    the job's colluding attackers among ``members`` (chosen from the public job
                  seed by :func:`attacks.registry.choose_attackers`, so every colluder knows them).
    num_classes:  classes of the task (the vocabulary size for masked-LM data).
    param_sizes:  numel of every trainable parameter tensor, in the order the flat gradient
                  concatenates them (so an attack can act per tensor).
    honest_gradient(peer): the true flat gradient of ``peer``'s public batch at w_t.
    gradient_with_labels(relabel): the gradient of this peer's own public batch at w_t with
                  its labels replaced by ``relabel(labels)`` (a 1-D tensor of the labels that
                  count; for masked-LM batches only the masked positions).
    """

    peer_id: int
    step: int
    members: tuple[int, ...]
    attackers: tuple[int, ...]
    num_classes: int
    param_sizes: tuple[int, ...]
    _gradient: Callable[[int], torch.Tensor] = field(repr=False)
    _relabelled: Callable[[Relabel], torch.Tensor] = field(repr=False)
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def for_replica(cls, replica: Replica, peer_id: int, step: int, members: Sequence[int],
                    own: torch.Tensor | None = None) -> AttackContext:
        """The context of ``peer_id`` at ``step`` over ``replica`` (at w_t); ``own``: its
        already computed honest gradient, reused instead of re-computed."""
        from attacks.registry import choose_attackers  # the registry imports the attack modules

        cfg = replica.cfg
        colluders = set(choose_attackers(cfg.seed, list(range(cfg.peers)), cfg.attack.count))
        ctx = cls(
            peer_id=peer_id,
            step=step,
            members=tuple(members),
            attackers=tuple(m for m in members if m in colluders or m == peer_id),
            num_classes=replica.dataset.num_classes,
            param_sizes=tuple(p.numel() for p in replica.params),
            _gradient=lambda pid: replica.gradient_for(pid, step)[0],
            _relabelled=lambda relabel: replica.gradient_for(peer_id, step, _relabel_batch(relabel))[0],
        )
        if own is not None:
            ctx._cache[peer_id] = own
        return ctx

    def honest_gradient(self, peer: int) -> torch.Tensor:
        """The true flat gradient of ``peer`` at this step (re-computed once, then cached)."""
        if peer not in self._cache:
            self._cache[peer] = self._gradient(peer)
        return self._cache[peer]

    def honest_gradients(self) -> torch.Tensor:
        """(n, d): the true gradient of every member, in ``members`` order."""
        return torch.stack([self.honest_gradient(p) for p in self.members])

    def gradient_with_labels(self, relabel: Relabel) -> torch.Tensor:
        """The gradient of this peer's own public batch at w_t with relabelled targets."""
        return self._relabelled(relabel)

    def split_tensors(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``flat`` cut into one view per parameter tensor (:attr:`param_sizes`)."""
        if sum(self.param_sizes) != flat.numel():
            raise ValueError(f"flat gradient has {flat.numel()} entries, the model {sum(self.param_sizes)}")
        return list(torch.split(flat, list(self.param_sizes)))


def _relabel_batch(relabel: Relabel) -> Callable[[dict], dict]:
    """A batch transform applying ``relabel`` to the labels that count.

    Classification batches: ``y``. Masked-LM batches: ``labels`` at the masked positions
    (labels ≠ −100); the other positions keep −100 (they are not predicted).
    """

    def transform(batch: dict) -> dict:
        batch = dict(batch)
        if "y" in batch:
            batch["y"] = relabel(batch["y"].clone()).to(batch["y"].dtype)
        elif "labels" in batch:
            labels = batch["labels"].clone()
            counted = labels != -100
            labels[counted] = relabel(labels[counted]).to(labels.dtype)
            batch["labels"] = labels
        else:
            raise ValueError(f"no labels in a batch with keys {sorted(batch)}")
        return batch

    return transform

"""One peer's model replica: public batches, gradients, updates and evaluation. No Ray here.

The Ray actor (:mod:`btard_ray.peer`) is a thin wrapper around a :class:`Replica`; the
single-process reference run in the tests and, later, validators that re-compute another
peer's gradient use the same class, so "the gradient of peer i at step t" has exactly one
definition: :meth:`Replica.gradient_for`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from collections import OrderedDict
from typing import Any, Callable

import torch

from btard_ray.config import JobConfig
from btard_ray.data import load_dataset, public_batch, dropout_seed
from btard_ray.data.dataset import Batch
from btard_ray.models import build_model, compute_loss
from btard_ray.optim import build_optimizer, build_scheduler
from btard_ray.partition import flatten_grads, unflatten_like
from btard_ray.weights import state_hash


class NonFiniteGradientError(FloatingPointError):
    """A gradient this peer computed contains NaN or Inf (training diverged)."""


@dataclass(frozen=True)
class Evaluation:
    """Test-set metrics of one replica."""

    test_loss: float
    test_accuracy: float


class Replica:
    """Model, optimizer and data of one peer.

    ``gradient_for(peer_id, step)`` is a pure function of the current weights and the public
    seeds (job seed, peer id, step): the batch and the dropout masks are drawn from them.
    """

    def __init__(self, cfg: JobConfig, device: str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.dataset = load_dataset(cfg.data)
        self.model = build_model(cfg.model, self.dataset, cfg.seed).to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.num_params = sum(p.numel() for p in self.params)
        self.optimizer = build_optimizer(self.params, cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.optimizer, cfg.steps)
        self._saved: tuple | None = None  # see save_point

    def gradient_for(self, peer_id: int, step: int, transform: Callable[[Batch], Batch] | None = None
                     ) -> tuple[torch.Tensor, float]:
        """Flat float32 gradient of peer ``peer_id``'s public batch at ``step``, and its loss.

        ``transform`` rewrites the batch before the forward pass (only attacks use it, e.g.
        flipped labels; the protocol's gradient is ``transform=None``). Raises
        NonFiniteGradientError if the gradient is not finite.
        """
        batch = public_batch(self.dataset, self.cfg.seed, peer_id, step, self.cfg.data.batch_size)
        if transform is not None:
            batch = transform(batch)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        # Seed the generators the model can draw dropout masks from (torch.manual_seed also
        # walks every CUDA device and costs ~1 ms on a CPU-only machine).
        seed = dropout_seed(self.cfg.seed, peer_id, step)
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        self.model.train()
        for p in self.params:
            p.grad = None
        loss, _, _ = compute_loss(self.model, batch)
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = flatten_grads(grads).detach().float()
        if not bool(torch.isfinite(flat).all()):
            raise NonFiniteGradientError(
                f"peer {peer_id} step {step}: gradient has NaN/Inf (loss {float(loss):.4g}); "
                "lower optimizer.lr or check the data"
            )
        return flat, float(loss.detach())

    def apply_gradient(self, flat: torch.Tensor) -> None:
        """Take one optimizer step with the aggregated flat gradient, then advance the schedule."""
        flat = flat.to(self.device, dtype=self.params[0].dtype)
        for p, g in zip(self.params, unflatten_like(flat, self.params)):
            p.grad = g.clone()
        self.optimizer.step()
        self.scheduler.step()

    def save_point(self) -> None:
        """Remember the weights and the optimizer and schedule state (see :meth:`restore_point`).

        Taken before every defended update, so it must be cheap. The model's parameters and
        buffers are copied into tensors kept from the previous save point (no allocation once
        warm), the optimizer's per-parameter state (momentum buffers, Adam moments) is cloned
        entry by entry, and the hyper-parameters and the schedule are copied as plain values.
        That skips building and cloning three ``state_dict()`` trees: 0.2-0.25 ms per save
        point of the quickstart model against 0.9-1.2 ms (``benchmarks/peer_step_cost.py``).
        """
        live = self._live_tensors()
        kept = self._saved[0] if self._saved is not None else []
        if len(kept) != len(live) or any(k.shape != t.shape or k.dtype != t.dtype or k.device != t.device
                                         for k, t in zip(kept, live)):
            kept = [t.detach().clone() for t in live]
        else:
            with torch.no_grad():
                for k, t in zip(kept, live):
                    k.copy_(t)
        optimizer_state = {p: clone_state(dict(state)) for p, state in self.optimizer.state.items()}
        groups = [{k: clone_state(v) for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self._saved = (kept, optimizer_state, groups, clone_state(self.scheduler.state_dict()))

    def restore_point(self) -> None:
        """Go back, bit for bit, to the state of the last :meth:`save_point`.

        Used when a step that was applied must be re-applied differently (an aggregate the
        tribunal replaced, a forged gradient): re-applying from the same state on every peer
        keeps the replicas identical. Weights are copied back in place (the optimizer keeps
        its parameter objects); the saved optimizer state is cloned again, since the
        optimizer updates its buffers in place.
        """
        if self._saved is None:
            raise RuntimeError("restore_point: no save point was taken")
        kept, optimizer_state, groups, scheduler = self._saved
        with torch.no_grad():
            for t, k in zip(self._live_tensors(), kept):
                t.copy_(k)
        self.optimizer.state.clear()
        for p, state in optimizer_state.items():
            self.optimizer.state[p] = clone_state(state)
        for group, saved in zip(self.optimizer.param_groups, groups):
            group.update(clone_state(saved))
        self.scheduler.load_state_dict(clone_state(scheduler))

    def _live_tensors(self) -> list[torch.Tensor]:
        """Every parameter and buffer of the model, in a fixed order (what a save point copies)."""
        return [*self.model.parameters(), *self.model.buffers()]

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def weight_hash(self) -> str:
        return state_hash(self.model)

    @torch.no_grad()
    def evaluate(self, batch_size: int = 512) -> Evaluation:
        """Mean test loss and accuracy over the whole test set."""
        self.model.eval()
        total_loss, correct, count = 0.0, 0, 0
        for batch in self.dataset.test_batches(batch_size):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            loss, n_correct, n_count = compute_loss(self.model, batch)
            total_loss += float(loss) * n_count
            correct += n_correct
            count += n_count
        self.model.train()
        mean_loss = total_loss / max(count, 1)
        return Evaluation(test_loss=mean_loss if math.isfinite(mean_loss) else float("inf"),
                          test_accuracy=correct / max(count, 1))

    def state(self) -> dict:
        """Weights and optimizer state, for checkpoints."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        """Take the weights, optimizer and schedule state of :meth:`state` (a checkpoint's).

        Tensors go to this replica's device. The schedule keeps its step count but takes its
        length from this replica's config, so a resumed job with a new ``steps`` follows the
        new schedule from the resumed step on. ``state`` is copied first: the optimizer
        would otherwise keep the caller's tensors as its own buffers.
        """
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The optimizer's saved lr was set for the old length (0 at the end of a finished
        # cosine run): take the new schedule's value at the resumed step.
        from btard_ray.optim import lr_factor

        factor = lr_factor(self.scheduler.last_epoch, self.cfg.steps, self.cfg.optimizer)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor


def clone_state(value: Any) -> Any:
    """A copy of a state tree that shares nothing mutable with ``value``: tensors cloned
    (detached), dicts, lists and tuples rebuilt, anything else deep-copied (numbers and
    strings are immutable and returned as they are)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if type(value) in (dict, OrderedDict):
        return type(value)((k, clone_state(v)) for k, v in value.items())
    if type(value) is list:
        return [clone_state(v) for v in value]
    if type(value) is tuple:
        return tuple(clone_state(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return copy.deepcopy(value)

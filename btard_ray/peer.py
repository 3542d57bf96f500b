"""The peer: a thin Ray actor around a :class:`~btard_ray.replica.Replica`.

A peer plays three roles in every step of the butterfly all-reduce (design §4):

1. ``compute``: it computes its gradient on its public batch and returns it split into n
   parts. The parts are *returned* (``num_returns=n+1``), so the driver owns them and they
   survive this actor's death; the peer keeps its own part locally, so it never moves.
2. ``aggregate``: as aggregator of part j it fetches part j of every other peer from the
   object store and runs the configured aggregator (CenteredClip by default).
3. ``apply``: it fetches the other n-1 aggregates, joins them with its own and takes the
   optimizer step.

Timings and payload bytes of every phase are returned so the driver can report them.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import ray
import torch

from attacks.registry import make_attack
from btard_ray.aggregation import make_aggregator
from btard_ray.config import JobConfig
from btard_ray.heap import freeze_long_lived
from btard_ray.identity import Identity
from btard_ray.partition import join, split
from btard_ray.replica import Replica


def _payload_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _fetch(refs: list[Optional[ray.ObjectRef]], own: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Resolve ``refs`` (None marks this peer's own slot, filled with ``own``).

    Waiting for the producers and moving the bytes are timed apart: on a shared machine
    the wait is other peers' compute, not transfer.
    """
    remote = [r for r in refs if r is not None]
    t0 = time.perf_counter()
    if remote:
        ray.wait(remote, num_returns=len(remote), fetch_local=True)
    t1 = time.perf_counter()
    fetched = iter(ray.get(remote))
    t2 = time.perf_counter()
    rows = [own if r is None else next(fetched) for r in refs]
    foreign = [row for row, r in zip(rows, refs) if r is not None]
    return rows, {"wait_s": t1 - t0, "fetch_s": t2 - t1, "bytes": float(_payload_bytes(foreign))}


@ray.remote
class Peer:
    """One training participant. Create with ``Peer.options(num_cpus=..., num_gpus=...)``."""

    def __init__(self, config: dict[str, Any], peer_id: int, attacker: bool = False,
                 key_seed: bytes | None = None) -> None:
        cfg = JobConfig.model_validate(config)
        torch.set_num_threads(cfg.resources.torch_threads)
        self.peer_id = peer_id
        self.device = "cuda" if cfg.resources.gpus_per_peer > 0 and torch.cuda.is_available() else "cpu"
        self.replica = Replica(cfg, self.device)
        self.aggregate_fn = make_aggregator(cfg.aggregator.name, **cfg.aggregator.params())
        self._own_part: tuple[int, torch.Tensor] | None = None
        self._own_aggregate: tuple[int, torch.Tensor] | None = None
        # The private key is made here and never leaves this process; a joiner brings its own
        # (``btard join --key``: its seed comes from the joiner's process, which owns this actor).
        self.identity = Identity.generate() if key_seed is None else Identity.from_seed(key_seed)
        attack = None
        if attacker and cfg.attack.name:
            attack = make_attack(cfg.attack.name, cfg.attack.params, seed=cfg.seed * 7 + 1)
        from btard_ray.peer_protocol import PeerProtocol  # its attack also acts without the defence

        self.protocol = PeerProtocol(cfg, peer_id, self.identity, self.replica, attack)
        self._sent: tuple[int, list[torch.Tensor]] | None = None
        self._applied: int | None = None  # the step applied in audit_apply (rollback target)
        # (step, accusations, or the error that stopped it) of the latest validate
        self._validation: tuple[int, list | Exception] | None = None
        # Messages the driver relayed earlier in the step in progress, so it sends each once.
        self._relayed: dict[str, Any] = {}
        # Everything made so far lives as long as the actor: keep the collector off it.
        freeze_long_lived()

    def ping(self) -> bool:
        """Liveness probe of the driver (:mod:`btard_ray.failures`)."""
        return True

    def assign_id(self, peer_id: int) -> int:
        """The id the admission controller gave this joiner (it had none before)."""
        self.peer_id = peer_id
        self.protocol.me = peer_id
        return peer_id

    def info(self) -> dict[str, Any]:
        """Who and where this peer is: id, parameter count, device, Ray node."""
        return {
            "peer_id": self.peer_id,
            "num_params": self.replica.num_params,
            "device": self.device,
            "node_id": ray.get_runtime_context().get_node_id(),
            "public_key": self.identity.public_hex,
            "attacker": self.protocol.attack is not None,
            "pid": os.getpid(),
        }

    # -- the BTARD step (design §4); see btard_ray.peer_protocol for what each phase does ----

    def set_keys(self, keys: dict[int, str]) -> None:
        """The public key of every member, as published by the control plane."""
        self.protocol.keys = dict(keys)

    def commit(self, step: int, members: list[int], seed: bytes) -> tuple:
        """n parts (returned: owned by the driver), then one dict ``{"commitment": signed
        commitment, "compute": stats}`` (one small object instead of two: every returned
        object costs the caller a registration and a fetch)."""
        t0 = time.perf_counter()
        sent, commitment, loss = self.protocol.commit(step, members, seed)
        self._sent = (step, sent)
        return (*sent, {"commitment": commitment, "compute": {"loss": loss, "compute_s": time.perf_counter() - t0}})

    def aggregate_reveal(self, step: int, refs: list[Optional[ray.ObjectRef]], commitments: dict) -> tuple:
        """(aggregate, ``{"report", "reveal", "accusations", "stats"}``): the aggregate is its
        own object (every other peer fetches it), the small results travel together.

        ``refs`` holds every member's part j (None for this peer's own slot). The relayed
        ``commitments`` are kept for the rest of the step (:meth:`gather_project` uses them),
        so the driver sends them once.
        """
        if self._sent is None or self._sent[0] != step:
            raise RuntimeError(f"peer {self.peer_id}: no parts for step {step}")
        own = self._sent[1][refs.index(None)]
        rows, fetch = _fetch(refs, own)
        members = self.protocol._state(step).members
        t0 = time.perf_counter()
        x, report, accusations = self.protocol.aggregate(step, dict(zip(members, rows)), commitments)
        self._relayed = {"step": step, "commitments": commitments}
        stats = {"scatter_wait_s": fetch["wait_s"], "scatter_fetch_s": fetch["fetch_s"],
                 "scatter_bytes": fetch["bytes"], "aggregate_s": time.perf_counter() - t0}
        return x, {"report": report, "reveal": self.protocol.reveal(step), "accusations": accusations, "stats": stats}

    def _relayed_for(self, step: int, what: str) -> dict:
        """What the driver relayed earlier in ``step`` (commitments in round 2, reports in round 3)."""
        if self._relayed.get("step") != step or what not in self._relayed:
            raise RuntimeError(f"peer {self.peer_id}: no relayed {what} for step {step}")
        return self._relayed[what]

    def gather_project(self, step: int, refs: list[Optional[ray.ObjectRef]], reports: dict, reveals: dict) -> tuple:
        """Gather and check the aggregates, open r_{t+1}, sign the inner products.

        Returns (inner products, accusations, stats) as one object. The commitments are
        those relayed in round 2; the ``reports`` are kept for :meth:`validate` and
        :meth:`audit_apply`.
        """
        commitments = self._relayed_for(step, "commitments")
        self._relayed["reports"] = reports
        st = self.protocol._state(step)
        own = st.aggregates[st.members.index(self.peer_id)]
        rows, fetch = _fetch(refs, own)
        accusations = self.protocol.check_aggregates(step, dict(zip(st.members, rows)), reports)
        accusations += self.protocol.open_seed(step, reveals, commitments)
        inner = self.protocol.project(step)
        return inner, accusations, {"gather_wait_s": fetch["wait_s"], "gather_fetch_s": fetch["fetch_s"],
                                    "gather_bytes": fetch["bytes"]}

    def validate(self, step: int, part_refs: dict[int, list[ray.ObjectRef]], probation: list[int] = []) -> None:
        """As a validator of ``step``: re-compute the targets' gradients at w_t and compare.

        Called right after :meth:`gather_project`, and the driver does not wait for it: the
        actor runs it before its :meth:`audit_apply` (an actor runs one caller's calls in
        order), which reports the accusations, so the re-computation is off the round's
        critical path. ``part_refs`` holds the sent parts of this peer's targets (the driver
        derives the same targets); they are fetched only when needed
        (:meth:`PeerProtocol.validate`).
        """
        try:
            commitments = self._relayed_for(step, "commitments")
            targets = self.protocol.validation_targets(step, self._relayed_for(step, "reports"), probation)
            missing = set(targets) - set(part_refs)
            if missing:
                raise RuntimeError(f"no parts handed over for validation targets {sorted(missing)}")
            lazy = {t: (lambda refs=part_refs[t]: ray.get(refs)) for t in targets}
            self._validation = (step, self.protocol.validate(step, lazy, commitments))
        except Exception as exc:
            # Nobody waits for this call's result: the audit that reports it names the error.
            self._validation = (step, exc)
            raise

    def _validation_of(self, step: int) -> list:
        if self._validation is None or self._validation[0] != step:
            raise RuntimeError(f"peer {self.peer_id}: asked to report a validation of step {step} it did not run")
        found = self._validation[1]
        if isinstance(found, Exception):
            raise RuntimeError(f"peer {self.peer_id}: its validation of step {step} failed: {found!r}") from found
        return found

    def audit_apply(self, step: int, inner: dict, apply: bool, check_weights: bool,
                    next_commit: tuple[list[int], bytes] | None = None, validated: bool = False) -> dict | tuple:
        """Check every aggregate (against the reports relayed in round 3); when ``apply`` and
        this peer found nothing, also take the step.

        Returns ``{"accusations", "apply": stats or None when the step was not applied}``. The
        state before the update is kept, so a step the tribunal must redo can be rolled back.
        ``validated``: this peer ran :meth:`validate` for ``step``; its accusations are among
        these (a validator that accuses does not apply).

        ``next_commit = (members, r_{t+1})`` also runs step t+1's :meth:`commit` on the new
        weights in this same call, saving the step a round of actor calls: the call then
        returns n parts first (None when the step was not applied) and the dict also holds
        ``commit``'s ``commitment`` and ``compute``.
        """
        found = self._validation_of(step) if validated else []
        accusations = found + self.protocol.audit(step, inner, self._relayed_for(step, "reports"))
        return self._take_step(step, accusations, apply and not accusations, check_weights, next_commit)

    def _take_step(self, step: int, accusations: list, apply: bool, check_weights: bool,
                   next_commit: tuple[list[int], bytes] | None) -> dict | tuple:
        """:meth:`audit_apply`'s returns: apply (keeping a save point), then commit ahead."""
        parts: tuple = () if next_commit is None else (None,) * len(next_commit[0])
        result: dict[str, Any] = {"accusations": accusations, "apply": None}
        if next_commit is not None:
            result.update(commitment=None, compute=None)
        if apply:
            self.replica.save_point()
            self._applied = step
            result["apply"] = self._apply(step, {}, False, check_weights)
            if next_commit is not None:
                *parts, ahead = self.commit(step + 1, *next_commit)
                result.update(ahead)
        # (one return value is the value itself, not a tuple of one)
        return result if next_commit is None else (*parts, result)

    # -- a peer on probation (design §5.3): commits and applies, aggregates nothing ----------

    def follow_gather(self, step: int, refs: list[ray.ObjectRef]) -> dict:
        """Fetch every part's aggregate (the members check them), to apply the step with them."""
        rows, fetch = _fetch(refs, torch.empty(0))
        self.protocol.follow(step, rows)
        return {"gather_wait_s": fetch["wait_s"], "gather_fetch_s": fetch["fetch_s"], "gather_bytes": fetch["bytes"]}

    def follow_apply(self, step: int, apply: bool, check_weights: bool,
                     next_commit: tuple[list[int], bytes] | None = None) -> dict | tuple:
        """:meth:`audit_apply` of a peer on probation: no audit (it has no say yet), same returns."""
        return self._take_step(step, [], apply, check_weights, next_commit)

    def rollback(self, step: int) -> None:
        """Undo this step's update, if this peer applied it (before judging and re-applying)."""
        if self._applied == step:
            self.replica.restore_point()
            self._applied = None

    def judge(self, step: int, case: dict, ctx: dict) -> tuple:
        """A signed vote on ``case``, and the re-computed aggregate when one is found wrong."""
        from btard_ray.judging import judge_case, objects_needed

        needed = objects_needed(case, ctx)
        fetched = {k: ray.get(v) for k, v in needed.items()}
        guilty, replacement = judge_case(self.protocol, step, case, ctx, fetched)
        digest = None
        if replacement is not None:
            from btard_ray.peer_protocol import aggregate_digest

            digest = aggregate_digest(self.protocol.job, step, -1, case["accused"], replacement)
        vote = self.protocol.sign(step, "vote", {"case": case["id"], "guilty": {str(p): r for p, r in guilty.items()},
                                                 "replacement": digest})
        return vote, replacement

    def secure_apply(self, step: int, replacements: dict[int, ray.ObjectRef], skip: bool,
                     check_weights: bool) -> dict:
        """Optimizer step with the aggregates, judges' replacements substituted (none: ``skip``)."""
        fixed = {j: ray.get(ref) for j, ref in replacements.items()}
        return self._apply(step, fixed, skip, check_weights)

    def _apply(self, step: int, fixed: dict, skip: bool, check_weights: bool) -> dict:
        t0 = time.perf_counter()
        self.protocol.apply(step, fixed, skip)
        stats: dict[str, Any] = {"update_s": time.perf_counter() - t0, "lr": self.replica.current_lr()}
        if check_weights:
            stats["weight_hash"] = self.replica.weight_hash()
        return stats

    def compute(self, step: int, members: list[int]) -> tuple:
        """Gradient of this peer's public batch at ``step`` (an attacker's: what its attack
        makes of it), as n parts plus a stats dict."""
        t0 = time.perf_counter()
        # An attacker attacks without the defence too: that is what the baselines are for.
        flat, loss, _ = self.protocol.gradient(step, members)
        # clone: a view would pickle its whole base tensor into the object store
        parts = [p.cpu().clone() for p in split(flat, len(members))]
        self._own_part = (step, parts[members.index(self.peer_id)])
        stats = {"loss": loss, "compute_s": time.perf_counter() - t0}
        return (*parts, stats)

    def aggregate(self, step: int, refs: list[Optional[ray.ObjectRef]]) -> tuple[torch.Tensor, dict]:
        """Aggregate this peer's part: ``refs`` holds every member's part (None for our own)."""
        own = self._take_own(self._own_part, step, "part")
        rows, fetch = _fetch(refs, own)
        t0 = time.perf_counter()
        stacked = torch.stack(rows).to(self.device)
        result = self.aggregate_fn(stacked).cpu()
        if self.protocol._attacking(step):  # an aggregation attack (shifted, scaled, ...)
            result = self.protocol.attack.aggregate(step, refs.index(None), result)  # type: ignore[union-attr]
        self._own_aggregate = (step, result)
        stats = {
            "scatter_wait_s": fetch["wait_s"],
            "scatter_fetch_s": fetch["fetch_s"],
            "scatter_bytes": fetch["bytes"],
            "aggregate_s": time.perf_counter() - t0,
        }
        return result, stats

    def apply(self, step: int, refs: list[Optional[ray.ObjectRef]], check_weights: bool) -> dict:
        """Gather every part's aggregate (None for ours), take the optimizer step."""
        own = self._take_own(self._own_aggregate, step, "aggregate")
        rows, fetch = _fetch(refs, own)
        t0 = time.perf_counter()
        self.replica.apply_gradient(join(rows))
        stats: dict[str, Any] = {
            "gather_wait_s": fetch["wait_s"],
            "gather_fetch_s": fetch["fetch_s"],
            "gather_bytes": fetch["bytes"],
            "update_s": time.perf_counter() - t0,
            "lr": self.replica.current_lr(),
        }
        if check_weights:
            stats["weight_hash"] = self.replica.weight_hash()
        return stats

    def evaluate(self) -> dict[str, float]:
        ev = self.replica.evaluate()
        return {"test_loss": ev.test_loss, "test_accuracy": ev.test_accuracy}

    def weight_hash(self) -> str:
        return self.replica.weight_hash()

    def state_hash(self) -> str:
        """Hash of the whole state (weights, optimizer, schedule): what a newcomer must match."""
        from btard_ray.weights import tree_hash

        return tree_hash(self.replica.state())

    def state(self) -> dict:
        return self.replica.state()

    def load_state(self, state: dict) -> str:
        """Take a checkpoint's weights, optimizer and schedule state; returns the weight hash."""
        self.replica.load_state(state)
        return self.replica.weight_hash()

    def take_state(self, state: dict) -> str:
        """Take an active peer's whole state (a newcomer); returns :meth:`state_hash`."""
        self.replica.load_state(state)
        return self.state_hash()

    def _take_own(self, slot: tuple[int, torch.Tensor] | None, step: int, what: str) -> torch.Tensor:
        if slot is None or slot[0] != step:
            raise RuntimeError(f"peer {self.peer_id}: no own {what} for step {step}")
        return slot[1]

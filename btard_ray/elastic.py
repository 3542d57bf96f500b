"""Membership changes of a running job, applied by the driver at step boundaries (design §4, §5).

:class:`ElasticJob` is the driver's side of elasticity. Between two steps it

* takes in newcomers the admission controller admitted (at most the capacity of
  :func:`~btard_ray.membership.admission_capacity`): each gets the current weights,
  optimizer and schedule state from an active peer (and must then hold the same weights) and
  starts its probation; the ledger gets ``admitted`` with the puzzle evidence;
* promotes peers whose probation passed at the previous step (``promoted``);
* lets go of peers that asked to leave (``left``, with the signed request);
* after each step books bans (a probationer's ban is also ``probation_failed``), drops
  peers that crashed or stayed silent (``dropped``: not a ban), counts clean probation
  steps (``probation_passed``) and who aggregated.

Every change stops the actors of peers that go and hands every remaining peer the keys of
the new membership; the partition is recomputed from the new n at the next step.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections import Counter
from typing import Any

import ray
from ray.actor import ActorHandle
from rich.console import Console

from btard_ray.config import JobConfig
from btard_ray.membership import BANNED, DROPPED, LEFT, PROBATION, Membership, admission_capacity, may_promote
from btard_ray.run_dir import RunDir
from btard_ray.runtime import namespace_for

NAME_RELEASE_SECONDS = 10.0
GRADIENT_WINDOW = 20  # steps whose median gradient time prices the admission puzzle


class JobNameTaken(RuntimeError):
    """Another running job in this Ray cluster already has this name."""


class ElasticJob:
    """The driver's bookkeeping of who takes part; see the module docstring."""

    def __init__(self, cfg: JobConfig, run_dir: RunDir, peers: dict[int, ActorHandle], membership: Membership,
                 keys: dict[int, str], banned: list[dict[str, Any]], tribunal: ActorHandle | None,
                 console: Console | None = None) -> None:
        assert cfg.name is not None
        self.cfg = cfg
        self.run_dir = run_dir
        self._run_dir_abs = str(run_dir.path.resolve())  # in the status: `btard finish` finds the job key there
        self.peers = peers
        self.membership = membership
        self.keys = keys
        self.banned = banned
        self.tribunal = tribunal
        self.console = console
        self.controller: ActorHandle | None = None
        self.history: list[dict[str, Any]] = []  # test-set evaluations, for `btard status`
        self.passed: list[int] = []  # probation passed at the last step: promoted at the next boundary
        self.stepped: list[int] = []  # peers on probation in the step now running
        self.gradient_seconds = 0.0
        self._recent: list[float] = []
        self._sync: ray.ObjectRef | None = None
        self.first_id = 0  # the lowest peer id the controller may hand out
        self.dropped: list[dict[str, Any]] = []
        self.left: list[dict[str, Any]] = []
        #: the owner's signed request to finish early (``btard finish``), once the driver has it
        self.finish_request: dict[str, Any] | None = None

    def resumed(self, step: int) -> None:
        """After ``btard resume``: record the joiners that were not resumed, and never hand out
        again a peer id that the crashed driver gave (the ledger knows every id it used)."""
        for peer, record in sorted(self.membership.records.items()):
            if record.state == DROPPED and record.ended_step == step and record.reason == "not resumed":
                self._record(step, "dropped", peer, "not resumed", {"why": "joined before the crash; may join again"})
        if self.tribunal is not None:
            from btard_ray.ledger import Ledger
            from btard_ray.trainer import _ledger_url

            with Ledger(_ledger_url(self.cfg, self.run_dir), create=False) as ledger:
                used = [int(p) for p in ledger.peers() if p.isdigit()]
            self.first_id = max([self.membership.next_id(), *(p + 1 for p in used)])

    # -- the admission controller ------------------------------------------------------------

    def start_controller(self, step: int, seed: bytes | None) -> ActorHandle:
        """Start the job's named admission controller (one job of a name per cluster)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from admission.controller import CONTROLLER_NAME, AdmissionController

        job_key = ray.get(self.tribunal.public_key.remote()) if self.tribunal is not None else None
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        deadline = time.monotonic() + NAME_RELEASE_SECONDS
        while True:
            try:
                self.controller = AdmissionController.options(
                    name=CONTROLLER_NAME, namespace=namespace_for(self.cfg.name), scheduling_strategy=here,
                ).remote(self.cfg.model_dump(mode="json"), self.tribunal, job_key,
                         max(self.first_id, self.membership.next_id()), step,
                         seed or b"")
                break
            except ValueError:  # the name is taken: a job of this name runs, or just ended
                if time.monotonic() > deadline:
                    raise JobNameTaken(f"a job named {self.cfg.name!r} is already running in this Ray cluster "
                                       "(pick another --name)") from None
                time.sleep(0.2)
        ray.get(self.controller.publish.remote(self._status(step, "starting", {})))
        self._actors()
        return self.controller

    def close(self, state: str = "finished") -> None:
        """Publish the final state, stop the controller and wait until its name is free again."""
        if self.controller is None:
            return
        from admission.controller import CONTROLLER_NAME

        try:
            ray.get(self.controller.publish.remote({"state": state}), timeout=5)
        except ray.exceptions.RayError:
            pass
        ray.kill(self.controller)
        self.controller = None
        deadline = time.monotonic() + NAME_RELEASE_SECONDS
        while time.monotonic() < deadline:
            try:
                ray.get_actor(CONTROLLER_NAME, namespace=namespace_for(self.cfg.name))
            except ValueError:
                return
            time.sleep(0.1)

    def _actors(self) -> None:
        # Handles of the peers by id, for operators and fault tests (`ray.kill` one of them).
        assert self.controller is not None
        self.controller.set_actors.remote(dict(self.peers))

    # -- step boundaries -----------------------------------------------------------------------

    def boundary(self, step: int, seed: bytes | None, last_eval: dict[str, float]) -> bool:
        """Apply the changes due before ``step``; True when the membership changed."""
        changed = False
        news = None
        if self._sync is not None:
            # (ready long ago: it ran during the step; a stalled controller must not stall the job)
            ready, _ = ray.wait([self._sync], timeout=self.cfg.timeouts.phase_seconds)
            if ready:
                news, self._sync = ray.get(self._sync), None
        if news is not None:
            if news.get("finish") and self.finish_request is None:
                self.finish_request = dict(news["finish"])
            for entry in news["admitted"]:
                changed |= self._admit(entry, step)
            for peer, request in news["leaving"].items():  # after admitting: one may leave at once
                changed |= self._let_go(int(peer), step, request)
        waiting = []
        for peer in self.passed:
            if self.membership.records[peer].state != PROBATION:
                continue
            m = self.membership
            joined = sum(1 for p in m.active() if m.records[p].joined_step is not None)
            if not may_promote(len(m.active()), joined, self.cfg.admission.max_joined_share):
                waiting.append(peer)  # no room for another joiner: stays on probation, validated
                continue
            m.promote(peer, step)
            self._record(step, "promoted", peer, None, {"after_clean_steps": m.records[peer].clean_steps})
            changed = True
        self.passed = waiting
        if changed:
            self._hand_keys(step)
            self._actors()
            if self.console is not None:
                self.console.print(f"step {step}: {len(self.membership.active())} active, "
                                   f"{len(self.membership.on_probation())} on probation")
        self.stepped = self.membership.on_probation()
        if self.controller is not None and self._sync is None:
            m = self.membership
            capacity = admission_capacity(len(m.active()), len(m.on_probation()), self.cfg.admission.max_joins_per_step,
                                          self.cfg.admission.max_probation_share)
            self._sync = self.controller.sync.remote(step, seed or b"", self._status(step, "running", last_eval),
                                                     capacity)
        return changed

    def _status(self, step: int, state: str, last_eval: dict[str, float]) -> dict[str, Any]:
        return {"job": self.cfg.name, "state": state, "step": step, "steps": self.cfg.steps,
                "peers": self.membership.snapshot(), "last_eval": dict(last_eval), "history": self.history[-10:],
                "gradient_seconds": self.gradient_seconds, "run_dir": self._run_dir_abs}

    def _admit(self, entry: dict[str, Any], step: int) -> bool:
        """A newcomer takes the current state and starts its probation.

        Its actor runs its owner's code, so every call has a timeout, and what it returns is
        checked: its key must be the one that solved the puzzle, and after loading it must
        hold the state the majority of the active peers hold (weights, optimizer, schedule;
        taken from a random one of that majority, not from one fixed peer).
        """
        peer, actor = int(entry["peer"]), entry["actor"]
        timeout = self.cfg.timeouts.phase_seconds
        active = self.membership.active()
        problem = None
        try:
            info = ray.get(actor.info.remote(), timeout=timeout)
            if not isinstance(info, dict) or info.get("public_key") != entry["public_key"]:
                problem = "its actor does not hold the key that solved the puzzle"
            else:
                ray.get(actor.assign_id.remote(peer), timeout=timeout)
                hashes = dict(zip(active, ray.get([self.peers[p].state_hash.remote() for p in active],
                                                  timeout=timeout)))
                majority, votes = Counter(hashes.values()).most_common(1)[0]
                if 2 * votes <= len(active):
                    raise RuntimeError(f"step {step}: the active peers' states disagree ({len(set(hashes.values()))} "
                                       "different hashes)")
                source = self.peers[random.choice([p for p, h in hashes.items() if h == majority])]
                loaded = ray.get(actor.take_state.remote(source.state.remote()), timeout=timeout)
                if loaded != majority:
                    problem = f"holds state {str(loaded)[:12]} after loading {majority[:12]}"
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
            problem = f"could not take the job's state ({type(exc).__name__})"
        record = self.membership.add(peer, entry["public_key"], joined_step=step,
                                     node=info.get("node_id") if problem is None else None,
                                     attacker=bool(info.get("attacker")) if problem is None else False)
        self.keys[peer] = record.public_key
        # The signed solution sits under "evidence", where `btard ledger verify` checks signatures.
        self._record(step, "admitted", peer, None, {**entry["evidence"], "public_key": record.public_key,
                                                    "node": record.node})
        if problem is not None:
            self.membership.end(peer, DROPPED, step, "state")
            self._record(step, "dropped", peer, "state", {"problem": problem})
            self.dropped.append({"peer": peer, "step": step, "reason": "state"})
            ray.kill(actor)
            return False
        self.peers[peer] = actor
        return True

    def _let_go(self, peer: int, step: int, request: dict[str, Any]) -> bool:
        record = self.membership.records.get(peer)
        if record is None or record.state not in ("active", PROBATION):
            return False
        self.membership.end(peer, LEFT, step, request.get("by"))
        self._record(step, "left", peer, request.get("by"), {"evidence": request.get("evidence", [])})
        self.left.append({"peer": peer, "step": step})
        self._stop(peer)
        return True

    def drop(self, failed: dict[int, str], step: int, phase: str) -> None:
        """Peers that crashed or stayed silent in ``phase`` of ``step``: dropped, not banned."""
        for peer, why in sorted(failed.items()):
            if self.membership.records[peer].state in (BANNED, LEFT, DROPPED):
                continue
            self.membership.end(peer, DROPPED, step, why)
            self._record(step, "dropped", peer, why, {"phase": phase})
            self.dropped.append({"peer": peer, "step": step, "reason": why, "phase": phase})
            self._stop(peer)
            if self.console is not None:
                self.console.print(f"step {step}: dropped peer {peer} ({why} in {phase})")
        if not self.membership.active():
            raise RuntimeError(f"step {step}: no active peer is left")
        self._hand_keys(step)

    def _hand_keys(self, step: int) -> None:
        """Every participant gets the keys of the membership; one that fails to take them is dropped."""
        from btard_ray.failures import gather_surviving

        participants = self.membership.participants()
        keys = {p: self.keys[p] for p in participants}
        calls = {p: self.peers[p].set_keys.remote(keys) for p in participants}
        _, failed = gather_surviving(calls, self.peers, self.cfg.timeouts.phase_seconds, "set_keys", blame_all=True)
        if failed:
            self.drop(failed, step, "set_keys")  # hands the keys again, to fewer peers

    def step_done(self, step: int, outcome: Any) -> None:
        """Book bans, drops, aggregators and probation of a completed step."""
        if outcome.dropped:
            self.drop(outcome.dropped, step, "last rounds")
        # the puzzle's price follows the median gradient time of the last steps, not one step's
        seconds = float(getattr(outcome, "compute_s", 0.0))
        if math.isfinite(seconds) and seconds > 0:
            self._recent.append(seconds)
            del self._recent[:-GRADIENT_WINDOW]
            self.gradient_seconds = statistics.median(self._recent)
        bans = getattr(outcome, "bans", [])
        for ban in bans:
            peer = int(ban["peer"])
            if self.membership.records[peer].state == PROBATION:
                self._record(step, "probation_failed", peer, ban["reason"], {"case": ban.get("case")})
            self.membership.end(peer, BANNED, step, ban["reason"])
            self._stop(peer)
        if bans and self.console is not None:
            self.console.print(f"step {step}: banned " + ", ".join(f"peer {b['peer']} ({b['reason']})" for b in bans))
        clean = [p for p in self.stepped if self.membership.records[p].state == PROBATION]
        passed = self.membership.step_done(step, list(outcome.members), clean)
        self.passed = [*self.passed, *(p for p in passed if p not in self.passed)]
        for peer in passed:
            self._record(step, "probation_passed", peer, None,
                         {"clean_steps": self.membership.records[peer].clean_steps})

    def _stop(self, peer: int) -> None:
        actor = self.peers.pop(peer, None)
        if actor is not None:
            ray.kill(actor)

    def _record(self, step: int, kind: str, peer: int, reason: str | None, details: dict[str, Any]) -> None:
        if self.tribunal is not None:
            ray.get(self.tribunal.record.remote(step, kind, str(peer), reason, details))

    def summary(self) -> dict[str, Any]:
        """The summary's membership keys: every peer's record, joins, departures, drops."""
        records = self.membership.records
        return {
            "membership": self.membership.snapshot(),
            "joined": [{"peer": p, "step": r.joined_step, "promoted_step": r.promoted_step, "state": r.state,
                        "attacker": r.attacker} for p, r in sorted(records.items()) if r.joined_step is not None],
            "left": list(self.left),
            "dropped": list(self.dropped),
        }

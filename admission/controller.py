"""The admission controller (design §5): a named Ray actor in the job's namespace.

Every job starts one, named :data:`CONTROLLER_NAME` in namespace ``btard-<job name>``, so
``btard join``, ``btard leave`` and ``btard status`` find a job by its name. It is control
plane (design §2): it hands out puzzles, checks solutions (one argon2id evaluation each,
:mod:`admission.book`), queues admitted newcomers for the driver, takes leave requests and
holds the status the driver publishes every step. It never trains or aggregates.

The driver calls :meth:`AdmissionController.sync` once per step: it learns the step and the
shared seed r_t (challenges are bound to them), the cost of a gradient (the puzzle's
difficulty follows it), and the status; it gets back the newcomers it may take in at this
step boundary (at most ``capacity``: :func:`btard_ray.membership.admission_capacity`), the
peers that asked to leave, and the owner's request to finish early (``btard finish``), if any.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.actor import ActorHandle

from admission.book import CLOSED, EXPIRED, OTHER_KEY, RATE_LIMITED, REPLAYED, WRONG, AdmissionBook, AdmissionError
from admission.puzzle import PuzzleParams
from btard_ray.config import JobConfig
from btard_ray.messages import Message, MessageError

CONTROLLER_NAME = "admission"
#: refusals written to the ledger: those of an authentic message about one of our challenges
RECORDED = (WRONG, EXPIRED, REPLAYED, OTHER_KEY)
_MB = 1024 * 1024


class LeaveError(ValueError):
    """A leave request that is not signed by the peer itself or by the job's owner, or for a
    peer the job does not have (any more)."""


@ray.remote(num_cpus=0)
class AdmissionController:
    """Admission of one job; see the module docstring."""

    def __init__(self, config: dict[str, Any], tribunal: ActorHandle | None, job_public_key: str | None,
                 next_id: int, step: int = 0, seed: bytes = b"") -> None:
        cfg = JobConfig.model_validate(config)
        assert cfg.name is not None
        self.job = cfg.name
        self.config = config
        self.tribunal = tribunal
        self.job_public_key = job_public_key
        self.accepting = cfg.protocol.checks and cfg.admission.enabled
        self.refusal = ("" if self.accepting else
                        f"job {cfg.name!r} admits no new peers: " + (
                            "it runs without the defence (protocol.checks=false), so nobody could validate "
                            "a newcomer's probation" if not cfg.protocol.checks else "admission.enabled is false"))
        params = PuzzleParams(opslimit=cfg.admission.opslimit, memlimit=cfg.admission.memlimit_mb * _MB)
        self.book = AdmissionBook(cfg.name, params, alpha=cfg.admission.alpha, expiry_steps=cfg.admission.expiry_steps)
        # (a job without the defence has no shared seed; it admits nobody either)
        self.book.advance(step, seed or bytes(32))
        self.next_id = next_id
        self.queue: list[dict[str, Any]] = []
        self.leaving: dict[int, dict[str, Any]] = {}
        self.finishing: dict[str, Any] | None = None  # the owner's signed finish request, for the driver
        self.status_: dict[str, Any] = {"job": cfg.name, "step": step, "peers": {}}
        self.rejected = 0
        self.challenges_per_step = cfg.admission.challenges_per_step
        self.issued: dict[int | None, int] = {}
        self.actors: dict[int, ActorHandle] = {}
        self.handed: dict[int, str] = {}
        self.recorded: set[tuple[str, str, str]] = set()

    # -- joiners -----------------------------------------------------------------------------

    def job_info(self) -> dict[str, Any]:
        """What a joiner needs: the job's config, whether it admits, the puzzle's costs, the step."""
        return {"job": self.job, "config": self.config, "accepting": self.accepting, "refusal": self.refusal,
                "costs": self.book.costs(), "step": self.status_.get("step", 0)}

    def challenge(self, public_key: str) -> dict[str, Any]:
        """A fresh puzzle bound to ``public_key`` and the current shared seed (as a dict)."""
        if not self.accepting:
            raise AdmissionError(CLOSED, self.refusal)
        # Each challenge lets its holder have up to three nonces evaluated here (admission.book),
        # so challenges are rationed per step: a flood of keys buys no free lottery tickets.
        if self.issued.get(self.book.step, 0) >= self.challenges_per_step:
            raise AdmissionError(RATE_LIMITED, f"{self.challenges_per_step} challenges were handed out at step "
                                               f"{self.book.step}; ask again at the next step")
        self.issued = {self.book.step: self.issued.get(self.book.step, 0) + 1}
        return self.book.issue(public_key).to_dict()

    def submit(self, raw_solution: dict[str, Any], actor: ActorHandle) -> int:
        """Check a signed solution (one puzzle evaluation) and queue ``actor``; its peer id.

        ``actor`` is the joiner's Peer, created with the key that signed the solution. The
        controller never calls it (a joiner's actor runs its owner's code and could stall
        it): the driver checks its key, with a timeout, when it takes the peer in. A wrong,
        expired, replayed or other-key solution raises :class:`AdmissionError` and is written
        to the ledger (``admission_rejected``, under the signer's key, with the signed message
        as evidence), once per challenge, signer and reason.
        """
        if not self.accepting:
            raise AdmissionError(CLOSED, self.refusal)
        try:
            admission = self.book.check(raw_solution)
        except AdmissionError as exc:
            self._reject(raw_solution, exc)
            raise
        peer = self.next_id
        self.next_id += 1
        self.queue.append({"peer": peer, "actor": actor, "public_key": admission.public_key,
                           "evidence": admission.evidence()})
        return peer

    def _reject(self, raw: Any, exc: AdmissionError) -> None:
        self.rejected += 1
        if self.tribunal is None or exc.reason not in RECORDED:
            return  # a message that does not verify is nobody's: there is nothing to attribute
        msg = Message.from_dict(raw)  # (it parsed and verified, or the reason would be bad_message)
        key = (exc.reason, str(msg.payload.get("challenge_id")), msg.sender)
        if key in self.recorded:
            return  # a replayed message fills no ledger
        self.recorded.add(key)
        ray.get(self.tribunal.record.remote(self.book.step or 0, "admission_rejected", msg.sender, exc.reason,
                                            {"problem": str(exc), "evidence": [msg.to_dict()]}))

    # -- leaving -----------------------------------------------------------------------------

    def leave(self, raw: dict[str, Any]) -> int:
        """A signed ``leave`` message ``{"peer": id}``: by the peer's own key or the job key.

        The peer leaves at the next step boundary; returns its id.
        """
        try:
            msg = Message.from_dict(raw)
        except MessageError as exc:
            raise LeaveError(f"not a signed leave message: {exc}") from None
        peer = msg.payload.get("peer")
        record = self.status_.get("peers", {}).get(str(peer))
        queued = next((e for e in self.queue if e["peer"] == peer), None)
        if queued is not None:  # admitted, not yet taken in by the driver
            record = {"state": "queued", "public_key": queued["public_key"]}
        elif record is None and peer in self.handed:  # being taken in at the next step boundary
            record = {"state": "probation", "public_key": self.handed[peer]}
        if msg.job != self.job or msg.kind != "leave" or record is None:
            raise LeaveError(f"job {self.job!r} has no peer {peer!r}" if record is None
                             else "not a leave message for this job")
        if record["state"] not in ("active", "probation", "queued"):
            raise LeaveError(f"peer {peer} has already {record['state']}")
        if msg.sender not in (record["public_key"], self.job_public_key) or not msg.signature_valid():
            raise LeaveError(f"the leave request for peer {peer} is not signed by its key or by the job's key")
        by = "peer" if msg.sender == record["public_key"] else "job owner"
        if queued is not None:
            self.queue.remove(queued)
            ray.kill(queued["actor"])
            if self.tribunal is not None:
                # its admission, too: it left before the driver took it in (and wrote `admitted`)
                ray.get(self.tribunal.record.remote(self.book.step or 0, "left", str(peer), by, {
                    "evidence": [msg.to_dict(), *queued["evidence"].get("evidence", [])],
                    "before_probation": True, "public_key": queued["public_key"],
                    "challenge": queued["evidence"].get("challenge")}))
            return int(peer)
        self.leaving[int(peer)] = {"by": by, "evidence": [msg.to_dict()]}
        return int(peer)

    # -- the owner ---------------------------------------------------------------------------

    def finish(self, raw: dict[str, Any]) -> int:
        """The owner's request to end the job early: an ``admin`` message ``{"finish": true}``
        signed by the job key. The driver learns it at its next sync, runs one more step (the
        last: evaluated, weight-checked) and finishes as if ``steps`` had been reached: final
        checkpoint, summary, ``job_finished`` in the ledger with this message as evidence.
        Returns the step the job was at; asking again changes nothing."""
        msg = self._owner_message(raw, "finish")
        if self.finishing is None:
            self.finishing = {"evidence": [msg.to_dict()], "asked_at_step": self.status_.get("step", 0)}
        return int(self.finishing["asked_at_step"])

    def _owner_message(self, raw: dict[str, Any], field: str) -> Message:
        """``raw`` as a verified ``admin`` message of this job, signed by the job key, whose
        payload has ``field``; LeaveError otherwise."""
        if self.job_public_key is None:
            raise LeaveError(f"job {self.job!r} runs without the defence (protocol.checks=false): it has no job key "
                             f"to sign a request for {field} with")
        try:
            msg = Message.from_dict(raw)
        except MessageError as exc:
            raise LeaveError(f"not a signed request: {exc}") from None
        if (msg.kind != "admin" or msg.job != self.job or field not in msg.payload
                or msg.sender != self.job_public_key or not msg.signature_valid()):
            raise LeaveError(f"only the job's key may ask for {field} (an admin message of job {self.job!r} signed by "
                             "RUN_DIR/job_key)")
        return msg

    # -- the driver --------------------------------------------------------------------------

    def sync(self, step: int, seed: bytes, status: dict[str, Any], capacity: int) -> dict[str, Any]:
        """The driver's per-step call: see the module docstring."""
        self.book.advance(step, seed or bytes(32))
        seconds = status.get("gradient_seconds")
        if isinstance(seconds, float) and 0.0 < seconds < 3600.0:  # the median over active members
            self.book.set_gradient_seconds(seconds)
        self.status_ = {**status, "step": step}
        taken, self.queue = self.queue[:max(capacity, 0)], self.queue[max(capacity, 0):]
        # handed to the driver, in the status from the next sync on
        self.handed = {e["peer"]: e["public_key"] for e in taken}
        leaving, self.leaving = self.leaving, {}
        return {"admitted": taken, "leaving": leaving, "finish": self.finishing}

    def set_actors(self, actors: dict[int, ActorHandle]) -> None:
        """The peers' actors by id (the driver sends them whenever the membership changes)."""
        self.actors = dict(actors)

    def actor(self, raw: dict[str, Any]) -> ActorHandle:
        """A peer's actor, for the job's owner only: ``raw`` is an ``admin`` message signed by
        the job key, payload ``{"actor": peer id}`` (fault drills: ``ray.kill`` it)."""
        msg = self._owner_message(raw, "actor")
        return self.actors[int(msg.payload["actor"])]

    def publish(self, status: dict[str, Any]) -> None:
        """A status update between syncs (the job finished, failed)."""
        self.status_ = {**self.status_, **status}

    def status(self) -> dict[str, Any]:
        """The job's status for ``btard status``: step, membership, recent accuracy, queue."""
        return {**self.status_, "queued": len(self.queue), "rejected_solutions": self.rejected,
                "accepting": self.accepting, "puzzle": self.book.costs()}


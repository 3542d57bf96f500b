"""Peers that crash or stay silent: how the driver notices them (design §4: dropped, not banned).

Every round of a step ends with the driver collecting one result per peer. :func:`gather`
waits at most ``timeout`` seconds (``timeouts.phase_seconds``) for all of them. A peer whose
result did not come in time is *silent*; a peer whose actor died (process crash, ``ray.kill``,
its node removed) is *crashed*. Either way :class:`PeerFailure` names them, and the driver
drops them and finishes the step without them.

A result can also be an error because *another* peer died (an aggregator whose call failed
fetching a dead peer's part). Ray's task errors take the class of their cause, so the error
alone cannot say whose fault it was: after any error :func:`gather` probes every peer of the
round with a cheap call, and only those that do not answer are failed. An error with every
peer alive is the erring peer's own (reason ``error (ExceptionType)``): a joiner's actor runs
its owner's code, and whatever it raises must cost it its seat, not stop the job.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ray
from ray.actor import ActorHandle

CRASHED = "crashed"
SILENT = "silent"
ERROR = "error"
PROBE_SECONDS = 10.0  # a live actor that finished its round answers a ping at once


class PeerFailure(RuntimeError):
    """Peers that crashed or stayed silent in ``phase``: ``failed`` maps peer id → why."""

    def __init__(self, failed: Mapping[int, str], phase: str) -> None:
        self.failed = dict(failed)
        self.phase = phase
        super().__init__(f"{phase}: " + ", ".join(f"peer {p} {why}" for p, why in sorted(self.failed.items())))


def diverged(failure: PeerFailure, members: Sequence[int]) -> bool:
    """Whether every member failed the step because its gradient was not finite.

    Then no peer is at fault: the shared weights themselves diverged (what an undefended
    mean does under a sign-flip attack). Dropping the peers one by one would only end in
    "no active peer is left"; the job ends as diverged instead, with its results.
    """
    return bool(members) and all("NonFiniteGradientError" in failure.failed.get(p, "") for p in members)


def gather(refs: Mapping[int, ray.ObjectRef], handles: Mapping[int, ActorHandle], timeout: float | None,
           phase: str) -> dict[int, Any]:
    """Every peer's result of one round, or :class:`PeerFailure` naming who failed.

    ``refs``: one result per peer; ``handles``: the peers' actors (probed after an error).
    """
    values, failed = gather_surviving(refs, handles, timeout, phase)
    if failed:
        raise PeerFailure(failed, phase)
    return values


def gather_surviving(refs: Mapping[int, ray.ObjectRef], handles: Mapping[int, ActorHandle],
                     timeout: float | None, phase: str, blame_all: bool = False
                     ) -> tuple[dict[int, Any], dict[int, str]]:
    """Like :func:`gather`, but returns (results of the peers that answered, failed peers).

    A peer whose call raised while every peer is alive failed by itself (reason
    ``error (...)``). When some peer did die, the others' errors are taken for its
    consequences and those peers are neither in the results nor failed, unless
    ``blame_all`` (for rounds whose calls depend on no other peer). Silent peers are killed,
    so that they cannot act later in a step that went on without them.
    """
    if not refs:
        return {}, {}
    order = list(refs)
    ready, _ = ray.wait([refs[p] for p in order], num_returns=len(order), timeout=timeout)
    if len(ready) == len(order):
        try:  # the common case: one batched get
            return dict(zip(order, ray.get([refs[p] for p in order]))), {}
        except ray.exceptions.RayError:
            pass  # find out whose result failed, one by one
    done = set(ready)
    failed = {p: SILENT for p in order if refs[p] not in done}
    values: dict[int, Any] = {}
    errors: dict[int, Exception] = {}
    for p in order:
        if p in failed:
            continue
        try:
            values[p] = ray.get(refs[p])
        except ray.exceptions.RayError as exc:
            errors[p] = exc
    if errors:
        failed.update(probe({p: handles[p] for p in order if p not in failed}))
        if not failed:
            # Every peer is alive, so an error is the erring peer's own doing (a joiner runs its
            # own code in its actor): it is dropped, never the job. The reason names the error.
            failed = {p: f"{ERROR} ({type(exc).__name__})" for p, exc in errors.items()}
        elif blame_all:
            failed.update({p: f"{ERROR} ({type(exc).__name__})" for p, exc in errors.items() if p not in failed})
    for p in [p for p, why in failed.items() if why == SILENT]:
        ray.kill(handles[p], no_restart=True)
    return {p: v for p, v in values.items() if p not in failed and p not in errors}, failed


def probe(handles: Mapping[int, ActorHandle], timeout: float = PROBE_SECONDS) -> dict[int, str]:
    """The peers among ``handles`` that are dead (crashed) or do not answer a ping (silent)."""
    pings = {p: h.ping.remote() for p, h in handles.items()}
    ready, _ = ray.wait(list(pings.values()), num_returns=len(pings), timeout=timeout)
    done = set(ready)
    failed: dict[int, str] = {}
    for p, ref in pings.items():
        if ref not in done:
            failed[p] = SILENT
            continue
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            failed[p] = CRASHED
    return failed

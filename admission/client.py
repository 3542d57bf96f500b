"""The joiner's side of admission (``btard join``, ``btard leave``, ``btard status``).

A joiner is a process connected to the job's Ray cluster. For each identity it

1. asks the job's admission controller for a challenge bound to its public key and the
   current shared seed,
2. solves the argon2id puzzle here, in this process (this is the compute an attacker pays
   per identity),
3. starts its own Peer actor (on this node, holding its key) and submits the signed
   solution with the actor; the controller checks it with one evaluation and gives the
   peer an id. The driver takes the peer in at a step boundary, hands it the current
   weights, and its probation begins.

The joiner process owns its actors: when it exits they die, and the job drops them (not a
ban). So ``btard join`` stays in the foreground while its peers train.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray
from ray.actor import ActorHandle

from admission.book import EXPIRED, RATE_LIMITED, AdmissionError, solution_message
from admission.controller import CONTROLLER_NAME
from admission.puzzle import Challenge, Solution, solve
from btard_ray.identity import Identity
from btard_ray.messages import sign_message
from btard_ray.runtime import namespace_for

DEFAULT_KEY_DIR = Path.home() / ".btard" / "keys"
EXPIRED_RETRIES = 2  # fresh challenges after a solution that came too late
RATE_LIMIT_SECONDS = 120.0  # how long a joiner keeps asking for a challenge while they are rationed
# How long a joiner's peer actor may take to be placed and built (a new Ray worker importing
# torch: ~10 s on 2 busy cores). Past it, the cluster most likely has no free resources for it.
START_SECONDS = 300.0


class JoinError(RuntimeError):
    """Joining failed; the message is one line naming why."""


@dataclass
class Joined:
    """One admitted identity: its peer id, key and actor (owned by this process)."""

    peer: int
    public_key: str
    actor: ActorHandle
    solution: Solution
    challenge: Challenge


def default_key_path(job: str, index: int = 0) -> Path:
    """``~/.btard/keys/<job>.key``, and ``<job>-<i>.key`` for the i-th extra identity."""
    return DEFAULT_KEY_DIR / (f"{job}.key" if index == 0 else f"{job}-{index}.key")


def key_paths(job: str, key: Path | None, count: int) -> list[Path]:
    """The key files of ``count`` identities: ``key`` (or the default), then ``STEM-1.SUFFIX``, ..."""
    first = key or default_key_path(job)
    return [first] + [first.with_name(f"{first.stem}-{i}{first.suffix}") for i in range(1, count)]


def load_or_create(path: Path) -> Identity:
    """The identity in ``path``; a new one is made and saved (mode 0600) when there is none."""
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate()
    identity.save(path)
    return identity


def find_controller(job: str) -> ActorHandle:
    """The admission controller of job ``job`` in the connected cluster; JoinError if none."""
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=namespace_for(job))
    except ValueError:
        raise JoinError(f"no running job named {job!r} in this Ray cluster (is it still running? "
                        "see `btard jobs list`, or the name `btard run` printed)") from None


def unwrap(exc: Exception) -> Exception:
    """The controller's own error inside a Ray task error (AdmissionError, LeaveError, ...)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def launch_peer(config: dict[str, Any], identity: Identity, attack: str | None = None) -> ActorHandle:
    """Create this joiner's Peer actor for a job of ``config`` (the controller's ``job_info``),
    holding ``identity``'s key, on this node, without waiting for it to be built (see
    :func:`await_peer`). ``attack``: run this attack from the library (experiments: a
    Byzantine joiner). Raises ValueError for a bad attack name."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from btard_ray.peer import Peer

    cfg = _peer_config(config, attack)
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    options: dict[str, Any] = {"num_cpus": cfg.resources.cpus_per_peer, "scheduling_strategy": here}
    if cfg.resources.gpus_per_peer > 0:
        options["num_gpus"] = cfg.resources.gpus_per_peer
    return Peer.options(**options).remote(cfg.model_dump(mode="json"), -1, bool(attack), identity.seed_for_own_actor())


def await_peer(actor: ActorHandle, config: dict[str, Any], timeout: float = START_SECONDS) -> ActorHandle:
    """``actor`` once it is built (model, data set); :class:`JoinError` when it cannot start or
    is not built within ``timeout`` seconds (Ray keeps an actor that no node has room for
    pending forever; the joiner says so instead of hanging)."""
    try:
        ray.get(actor.info.remote(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.kill(actor)
        res = _peer_config(config, None).resources
        raise JoinError(f"the peer's actor did not start within {timeout:.0f} s: this node may have no free "
                        f"resources for it (it needs {res.cpus_per_peer:g} CPUs"
                        + (f" and {res.gpus_per_peer:g} GPUs" if res.gpus_per_peer > 0 else "")
                        + "; see `btard cluster status`)") from None
    except ray.exceptions.RayError as exc:
        raise JoinError(f"this machine could not start the peer: {unwrap(exc)}") from None
    return actor


def start_peer(config: dict[str, Any], identity: Identity, attack: str | None = None,
               timeout: float = START_SECONDS) -> ActorHandle:
    """:func:`launch_peer`, then :func:`await_peer`: the joiner's actor, built."""
    return await_peer(launch_peer(config, identity, attack), config, timeout)


def _peer_config(config: dict[str, Any], attack: str | None) -> Any:
    from btard_ray.config import validate_config

    config = dict(config)
    if attack:
        config["attack"] = {**config.get("attack", {}), "name": attack, "count": 1, "start_step": 0, "every": 1,
                            "stop_step": None}
    return validate_config(config)  # also checks the attack's name


def join(controller: ActorHandle, identity: Identity, attack: str | None = None,
         on_evaluation: Callable[[int], None] | None = None, info: dict[str, Any] | None = None,
         actor: ActorHandle | None = None) -> Joined:
    """Admit ``identity`` into the controller's job; see the module docstring.

    ``attack``: run this attack from the library (experiments: a Byzantine joiner).
    ``actor``: a peer already launched (:func:`launch_peer`) with this identity, which this
    waits for (else one is started here). Raises :class:`AdmissionError` when the
    controller refuses the solution and :class:`JoinError` when the job admits nobody.
    """
    info = info or ray.get(controller.job_info.remote())
    if not info["accepting"]:
        raise JoinError(info["refusal"])
    # The actor is built (model, data set) before the puzzle is asked for: the driver takes it
    # in at a step boundary, and the whole job would otherwise wait for its construction there;
    # and the challenge's expiry then only has to cover the solving.
    actor = await_peer(actor, info["config"]) if actor is not None else start_peer(info["config"], identity, attack)
    for attempt in range(EXPIRED_RETRIES + 1):
        challenge = _challenge(controller, identity)
        solution = solve(challenge, on_evaluation=on_evaluation)
        raw = solution_message(identity, info["job"], challenge.step, challenge, solution)
        try:
            peer = ray.get(controller.submit.remote(raw, actor))
            break
        except ray.exceptions.RayTaskError as exc:
            error = unwrap(exc)
            if getattr(error, "reason", None) == EXPIRED and attempt < EXPIRED_RETRIES:
                continue  # the job outran this machine's solving: a fresh challenge, once more
            ray.kill(actor)
            raise error from None
        except ray.exceptions.RayActorError as exc:
            ray.kill(actor)
            raise JoinError(f"the job ended while joining it ({_first_line(exc)})") from None
    return Joined(peer, identity.public_hex, actor, solution, challenge)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _challenge(controller: ActorHandle, identity: Identity) -> Challenge:
    """A challenge for ``identity``; when the step's ration is used up, ask again at the next
    steps (for up to RATE_LIMIT_SECONDS)."""
    deadline = time.monotonic() + RATE_LIMIT_SECONDS
    while True:
        try:
            return Challenge.from_dict(ray.get(controller.challenge.remote(identity.public_hex)))
        except ray.exceptions.RayTaskError as exc:
            error = unwrap(exc)
            if getattr(error, "reason", None) != RATE_LIMITED or time.monotonic() > deadline:
                raise error from None
            time.sleep(1.0)
        except ray.exceptions.RayActorError:
            raise JoinError("the job ended while joining it") from None


def leave(controller: ActorHandle, job: str, peer: int, identity: Identity) -> int:
    """Ask for ``peer`` to leave at the next step boundary, signed by ``identity`` (the peer's
    own key, or the job's key from the run directory)."""
    raw = sign_message(identity, job, 0, "leave", {"peer": peer}).to_dict()
    try:
        return int(ray.get(controller.leave.remote(raw)))
    except ray.exceptions.RayTaskError as exc:
        raise unwrap(exc) from None


def finish(controller: ActorHandle, job: str, identity: Identity, step: int = 0) -> int:
    """Ask the job to end after the step it is in, signed by ``identity`` (the job's key,
    RUN_DIR/job_key); the step it was at. LeaveError for any other key."""
    raw = sign_message(identity, job, step, "admin", {"finish": True}).to_dict()
    try:
        return int(ray.get(controller.finish.remote(raw)))
    except ray.exceptions.RayTaskError as exc:
        raise unwrap(exc) from None


def connect_cluster(address: str | None, job: str) -> None:
    """Connect this process to the job's cluster: ``address``, else $RAY_ADDRESS, else ``auto``."""
    import logging

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    _reachable(target)
    try:
        ray.init(address=target, namespace=namespace_for(job), logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JoinError(f"cannot reach a Ray cluster at {target!r}: {first} (pass the --address that "
                        "`btard run` printed)") from None


def _reachable(target: str) -> None:
    """Fail fast on HOST:PORT that nothing listens on (``ray.init`` would retry for minutes)."""
    import socket

    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or "://" in target:
        return  # "auto" or a URL: Ray resolves and reports it
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise JoinError(f"cannot reach a Ray cluster at {target!r}: {exc.strerror or exc} (pass the --address "
                        "that `btard run` printed)") from None


__all__ = ["AdmissionError", "JoinError", "Joined", "await_peer", "connect_cluster", "default_key_path",
           "find_controller", "finish", "join", "key_paths", "launch_peer", "leave", "load_or_create", "start_peer",
           "unwrap"]

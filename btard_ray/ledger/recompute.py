"""Re-checking a stored verdict offline: a registry of recompute functions.

A verdict event whose details carry a ``recompute`` spec, either a name
(``"recompute": "signature"``) or a dict with a ``name`` and any parameters
(``"recompute": {"name": "gradient", ...}``), can be re-checked by an auditor with
``btard ledger verify --recompute``. The name picks a function from :data:`RECOMPUTERS`.

A recompute function receives the whole event as a plain dict (``Event.to_dict()``:
seq, job, step, kind, peer, reason, details (parsed), created_at, prev_hash, hash) and
returns True when its re-computation agrees with the verdict. It may raise
:class:`RecomputeError` with a one-line reason instead of returning False. Register one
with::

    @register_recomputer("gradient")
    def recompute_gradient(event: dict) -> bool: ...

The tribunal registers the re-computations it knows (gradient, CenteredClip of a part,
inner products); this module holds the one that needs nothing but the evidence itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from btard_ray.ledger.models import EVIDENCE_KEYS
from btard_ray.messages import KINDS, Message, MessageError

Recomputer = Callable[[dict], bool]

#: name -> function(event dict) -> bool (True: the re-computation agrees with the verdict).
RECOMPUTERS: dict[str, Recomputer] = {}


class RecomputeError(Exception):
    """A re-computation that disagrees with the stored verdict, with the reason why."""


def register_recomputer(name: str) -> Callable[[Recomputer], Recomputer]:
    """Decorator: make ``fn`` the recompute function for spec ``name`` (replacing any earlier one)."""
    def decorate(fn: Recomputer) -> Recomputer:
        RECOMPUTERS[name] = fn
        return fn
    return decorate


def recompute_spec_name(details: Mapping[str, Any]) -> str | None:
    """The recompute name in ``details`` (None when the event has no recompute spec)."""
    spec = details.get("recompute") if isinstance(details, Mapping) else None
    if spec is None:
        return None
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        return spec["name"]
    return repr(spec)  # malformed: reported as an unknown recomputer


def run_recompute(event: Mapping[str, Any]) -> str | None:
    """Run the recompute function that ``event``'s spec names.

    Returns None when it agrees with the verdict, else a one-line problem (unknown name,
    disagreement, or the error it raised). Never raises.
    """
    name = recompute_spec_name(event.get("details", {}))
    if name is None:
        return None
    fn = RECOMPUTERS.get(name)
    if fn is None:
        return f"no recompute function registered for {name!r} (known: {', '.join(sorted(RECOMPUTERS)) or 'none'})"
    try:
        agrees = fn(dict(event))
    except RecomputeError as exc:
        return f"recompute {name!r} disagrees with the verdict: {exc}"
    except Exception as exc:  # noqa: BLE001 - a failing re-computation is a failed check, not a crash
        return f"recompute {name!r} failed: {type(exc).__name__}: {exc}"
    return None if agrees is True else f"recompute {name!r} disagrees with the verdict"


def signed_message_problem(details: Mapping[str, Any], job: str) -> str | None:
    """None if every message under ``details[k]`` for k in EVIDENCE_KEYS is a message of
    ``job`` whose signature verifies; else a one-line description of the first bad one."""
    for key in EVIDENCE_KEYS:
        if key not in details:
            continue
        items = details[key]
        if not isinstance(items, list):
            return f"details[{key!r}] must be a list of signed messages, not {type(items).__name__}"
        for i, item in enumerate(items):
            where = f"{key}[{i}]"
            try:
                msg = Message.from_dict(item)
            except MessageError as exc:
                return f"{where} is not a signed message ({exc.reason})"
            what = f"{where} ({msg.kind} from {msg.sender[:16]}…, step {msg.step})"
            if not msg.signature_valid():
                return f"{what}: signature does not verify (evidence modified after signing?)"
            if msg.kind not in KINDS:
                return f"{what}: unknown message kind"
            if msg.job != job:
                return f"{what}: signed for job {msg.job!r}, not {job!r}"
    return None


@register_recomputer("signature")
def recompute_signature(event: dict) -> bool:
    """The accusation behind this verdict is authentic and says what the verdict says.

    Checks that every stored message verifies (see :func:`signed_message_problem`) and
    that ``details["evidence"]`` holds an accusation signed by ``details["accuser"]``
    whose payload names ``details["accused"]`` (both hex public keys).
    """
    details = event.get("details") or {}
    problem = signed_message_problem(details, event.get("job", ""))
    if problem:
        raise RecomputeError(problem)
    accuser, accused = details.get("accuser"), details.get("accused")
    if not isinstance(accuser, str) or not isinstance(accused, str):
        raise RecomputeError("the verdict's details do not name both 'accuser' and 'accused'")
    accusations = [Message.from_dict(d) for d in details.get("evidence", []) if d.get("kind") == "accusation"]
    if not accusations:
        raise RecomputeError("no signed accusation in the evidence")
    for msg in accusations:
        if msg.sender == accuser and msg.payload.get("accused") == accused:
            return True
    raise RecomputeError(
        f"no accusation in the evidence is signed by the accuser {accuser[:16]}… and names the accused {accused[:16]}…"
    )

"""The shape of every protocol message's payload, checked by the relay before it relays.

A signature proves who said something, not that it is well formed. A Byzantine peer can sign
a report whose distances are strings, a share of 10**400 or an accusation of nobody; if such
a payload reached the peers, the honest ones would crash on it (or, for accusations, be sent
into the slow path of a step for nothing). The relay rejects a malformed payload like a bad
signature: it is not relayed, so its author is accused of the gap it leaves.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from btard_ray.verdicts import CASE_REASON

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: what a peer on probation can be accused of (it sends a commitment and parts, nothing else)
PROBATION_CASES = ("bad_commitment", "wrong_gradient")


def _number(value: Any, minimum: float | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        as_float = float(value)
    except OverflowError:
        return False
    return math.isfinite(as_float) and (minimum is None or as_float >= minimum)


def _numbers(values: Any, n: int, minimum: float | None = None, none_ok: bool = False) -> bool:
    return isinstance(values, list) and len(values) == n and all(
        (none_ok and v is None) or _number(v, minimum) for v in values)


def payload_problem(kind: str, payload: dict[str, Any], members: Sequence[int], sender: int,
                    probation: Sequence[int] = ()) -> str | None:
    """What is wrong with a ``kind`` payload from ``sender`` (None: well formed); peers on
    ``probation`` commit like members and can be accused."""
    n = len(members)
    if kind == "commitment":
        parts = payload.get("parts")
        if not (isinstance(parts, list) and len(parts) == n and all(isinstance(p, str) and _HEX64.match(p)
                                                                    for p in parts)):
            return f"parts must be {n} sha256 hex digests"
        if not (isinstance(payload.get("nonce"), str) and _HEX64.match(payload["nonce"])):
            return "nonce must be a sha256 hex digest"
    elif kind == "aggregate_report":
        if payload.get("part") != members.index(sender) if sender in members else True:
            return "part is not the sender's part index"
        if not isinstance(payload.get("digest"), str):
            return "digest must be a string"
        if not _numbers(payload.get("distances"), n, minimum=0.0, none_ok=True):
            return f"distances must be {n} finite numbers >= 0 or null"
        excluded = payload.get("excluded")
        if not (isinstance(excluded, list) and all(isinstance(p, int) and not isinstance(p, bool) and p in members
                                                   for p in excluded) and len(set(excluded)) == len(excluded)):
            return "excluded must list distinct members"
    elif kind == "reveal":
        nonce = payload.get("nonce")
        if not (isinstance(nonce, str) and re.fullmatch(r"[0-9a-f]{2,256}", nonce)):
            return "nonce must be hex"
    elif kind == "inner_products":
        if not _numbers(payload.get("shares"), n):
            return f"shares must be {n} finite numbers"
        if not _numbers(payload.get("distances"), n, minimum=0.0, none_ok=True):
            return f"distances must be {n} finite numbers >= 0 or null"
    elif kind == "accusation":
        accused = payload.get("accused_peer")
        if payload.get("case") not in CASE_REASON:
            return f"unknown case {payload.get('case')!r}"
        if isinstance(accused, bool) or not isinstance(accused, int) or (accused not in members and accused not in probation) or accused == sender:
            return "accused_peer must be another member or a peer on probation"
        if accused in probation and payload.get("case") not in PROBATION_CASES:
            # a probationer only commits and sends parts: nothing else of it can be wrong
            return f"a peer on probation can only be accused of {' or '.join(PROBATION_CASES)}"
    return None

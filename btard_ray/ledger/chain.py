"""The ledger's hash chain, as pure functions (no database).

    hash_k = sha256( b"btard-ledger-v1\\0" || ascii(prev_hash_k) || b"\\0" ||
                     canonical_json({seq, job, step, kind, peer, reason, details, created_at}) )
    prev_hash_0 = GENESIS = "0" * 64,   prev_hash_k = hash_{k-1}

Changing any field of any row changes its hash; deleting or inserting a row breaks the
link of the next one. The head (the last seq and hash) is signed by the job key over
``head_signing_bytes``; without that key nobody can produce a valid head for a rewritten
chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from btard_ray.messages import canonical_json

GENESIS = "0" * 64
EVENT_TAG = b"btard-ledger-v1\0"
HEAD_TAG = b"btard-ledger-head-v1\0"

#: The fields an event's hash covers, in the order they are documented (the encoding sorts them).
EVENT_FIELDS: tuple[str, ...] = ("seq", "job", "step", "kind", "peer", "reason", "details", "created_at")


def event_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    """sha256 hex of the domain tag, ``prev_hash`` and the canonical JSON of ``fields``.

    ``fields`` must have exactly the keys in :data:`EVENT_FIELDS` (ValueError otherwise),
    so that no field can be silently left out of the hash.
    """
    if set(fields) != set(EVENT_FIELDS):
        missing = sorted(set(EVENT_FIELDS) - set(fields))
        extra = sorted(set(fields) - set(EVENT_FIELDS))
        raise ValueError(f"event fields must be exactly {EVENT_FIELDS} (missing {missing}, extra {extra})")
    digest = hashlib.sha256()
    digest.update(EVENT_TAG)
    digest.update(str(prev_hash).encode("utf-8"))
    digest.update(b"\0")
    digest.update(canonical_json(dict(fields), path="event"))
    return digest.hexdigest()


def head_signing_bytes(job: str, seq: int, head_hash: str) -> bytes:
    """The bytes the job key signs for a chain head: tag || canonical_json({job, seq, hash})."""
    return HEAD_TAG + canonical_json({"job": job, "seq": seq, "hash": head_hash}, path="head")

"""The ban ledger (design §6): append-only, hash-chained, head signed by the job key.

See :mod:`btard_ray.ledger.store` for the API, :mod:`btard_ray.ledger.chain` for the hash
chain, :mod:`btard_ray.ledger.models` for the tables and
:mod:`btard_ray.ledger.recompute` for offline re-checks of verdicts.
"""

from btard_ray.ledger.models import EVENT_KINDS, EVIDENCE_KEYS, ChainHead, Event
from btard_ray.ledger.store import Ledger, LedgerError, LedgerNotFound, VerifyReport, resolve_ledger_url

__all__ = [
    "EVENT_KINDS",
    "EVIDENCE_KEYS",
    "ChainHead",
    "Event",
    "Ledger",
    "LedgerError",
    "LedgerNotFound",
    "VerifyReport",
    "resolve_ledger_url",
]

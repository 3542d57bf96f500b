"""Cases, votes and verdicts (design §4.7), and their offline re-derivation. Pure; no torch.

A *case* groups the accusations of one step against one peer for one kind of misbehaviour:
``{"id", "case", "accused", "parts", "accusers", "evidence"}``. Judges vote
``{"case": id, "guilty": {peer: reason}}``; :func:`tally` decides by strict majority of the
judges, and when nobody is found guilty the accusers are, of a false accusation.

``btard ledger verify --recompute`` re-derives every verdict from its stored signed votes
(the ``tally`` recomputer registered here).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

from btard_ray.ledger.recompute import RecomputeError, register_recomputer
from btard_ray.messages import Message, MessageError

#: the ban reason of the accused when a case of this kind is upheld
CASE_REASON = {
    "bad_commitment": "bad_commitment",
    "wrong_gradient": "wrong_gradient",
    "aggregate_check": "wrong_aggregate",
    "withheld_reveal": "withheld_reveal",
    "bad_message": "bad_message",
    "inner_products": "false_inner_product",
}
FALSE_ACCUSATION = "false_accusation"
FALSE_SHARE = "false_inner_product"
#: the pseudo-peer a judge names when an accusation failed through nobody's fault
EXCUSED = -1


def group_cases(step: int, accusations: Sequence[Message], peer_of_key: Mapping[str, int]) -> list[dict[str, Any]]:
    """One case per (kind, accused peer) from valid accusations of ``step``."""
    cases: dict[tuple[str, int], dict[str, Any]] = {}
    for msg in accusations:
        case, accused = msg.payload.get("case"), msg.payload.get("accused_peer")
        accuser = peer_of_key.get(msg.sender)
        if case not in CASE_REASON or not isinstance(accused, int) or accuser is None or accuser == accused:
            continue  # malformed, unattributable, or a peer "accusing" itself: not a case
        entry = cases.setdefault((case, accused), {
            "id": f"{step}:{case}:{accused}", "case": case, "accused": accused, "parts": [], "accusers": [],
            "evidence": [],
        })
        if accuser not in entry["accusers"]:
            entry["accusers"].append(accuser)
        part = msg.payload.get("part")
        if isinstance(part, int) and part not in entry["parts"]:
            entry["parts"].append(part)
        entry["evidence"].append(msg.to_dict())
    return list(cases.values())


def tally(case: Mapping[str, Any], votes: Mapping[int, Mapping[str, str]]) -> dict[int, str]:
    """Guilty peers and reasons: those named by a strict majority of the judges' votes.

    ``votes`` maps each judge to its ``{peer: reason}`` (empty: nobody guilty). When nobody
    reaches a majority, the accusers are guilty of a false accusation, unless a majority of
    the judges named :data:`EXCUSED` (the disputed check fails for honest peers too, e.g. an
    unconverged CenteredClip): then nobody is. With no vote at all (every judge silent or
    crashed) the case is undecided: nobody is guilty.
    """
    judges = len(votes)
    if judges == 0:
        return {}
    named: Counter[int] = Counter()
    reasons: dict[int, Counter[str]] = {}
    for guilty in votes.values():
        for peer, reason in guilty.items():
            named[int(peer)] += 1
            reasons.setdefault(int(peer), Counter())[reason] += 1
    verdict = {p: reasons[p].most_common(1)[0][0] for p, count in named.items() if 2 * count > judges}
    if verdict.pop(EXCUSED, None) is not None and not verdict:
        return {}
    if not verdict:
        verdict = {int(a): FALSE_ACCUSATION for a in case["accusers"]}
    return verdict


@register_recomputer("tally")
def recompute_tally(event: dict) -> bool:
    """Re-tally a verdict from its signed votes: same case, one vote per judge, same guilty set."""
    details = event.get("details") or {}
    votes: dict[str, dict[str, str]] = {}
    for raw in details.get("votes", []):
        try:
            vote = Message.from_dict(raw)
        except MessageError as exc:
            raise RecomputeError(f"a vote is not a message: {exc.reason}") from None
        if not vote.signature_valid() or vote.kind != "vote" or vote.step != event.get("step"):
            raise RecomputeError(f"vote from {vote.sender[:16]} does not verify for this step")
        if vote.payload.get("case") != details.get("case"):
            raise RecomputeError(f"vote from {vote.sender[:16]} is about another case")
        if vote.sender in votes:
            raise RecomputeError(f"judge {vote.sender[:16]} voted twice")
        votes[vote.sender] = dict(vote.payload.get("guilty", {}))
    if len(votes) != len(details.get("judges", [])):
        raise RecomputeError(f"{len(votes)} signed votes for {len(details.get('judges', []))} judges")
    derived = tally({"accusers": details.get("accusers", [])}, votes)  # type: ignore[arg-type]
    stored = {int(p): r for p, r in (details.get("guilty") or {}).items()}
    if derived != stored:
        raise RecomputeError(f"votes give {derived}, the ledger says {stored}")
    return True

"""The tribunal (design §4.7): a control-plane actor that judges accusations and keeps the ledger.

It never aggregates gradients and never decides on its own evidence: for every case it asks
every active peer but the accused to re-compute the disputed quantity and vote (signed),
tallies the votes by strict majority (:func:`btard_ray.judging.tally`), and writes the
accusations, the signed votes and the verdict to the hash-chained ledger, whose head it signs
with the job key. It returns the bans (effective at the next step boundary) and, for an
aggregate found wrong, the judges' re-computed aggregate that replaces it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import ray

from btard_ray.identity import Identity
from btard_ray.verdicts import group_cases, tally
from btard_ray.ledger import Ledger
from btard_ray.messages import Message, MessageError, MessageVerifier

# Registered here so that `btard ledger verify --recompute` can re-derive verdicts.
from btard_ray import verdicts  # noqa: F401


@ray.remote(num_cpus=0)
class Tribunal:
    """Judges the accusations of each step; one per job, named ``tribunal`` in its namespace."""

    def __init__(self, job: str, ledger_url: str, job_key_seed: bytes) -> None:
        self.job = job
        self.identity = Identity.from_seed(job_key_seed)
        self.ledger = Ledger(ledger_url, self.identity)
        self.verifier = MessageVerifier(job)

    def public_key(self) -> str:
        return self.identity.public_hex

    def record(self, step: int, kind: str, peer: str | None = None, reason: str | None = None,
               details: dict[str, Any] | None = None) -> int:
        """Append one event (job_started, admitted, left, job_finished, ...); returns its seq."""
        return self.ledger.append(self.job, step, kind, peer=peer, reason=reason, details=details).seq

    def judge(self, step: int, accusations: list[dict], ctx: Mapping[str, Any],
              peers: Mapping[int, Any]) -> dict[str, Any]:
        """Decide every case raised by ``accusations`` at ``step``.

        Returns ``{"bans": [{"peer", "reason", "case"}], "replacements": {part: ObjectRef}}``.
        """
        keys: dict[int, str] = ctx["keys"]
        peer_of_key = {key: pid for pid, key in keys.items()}
        valid: list[Message] = []
        for raw in accusations:
            try:
                msg = self.verifier.check(Message.from_dict(raw), step, "accusation")
            except MessageError:
                continue  # unattributable or replayed: not evidence of anything
            if msg.sender in peer_of_key:
                valid.append(msg)
        bans: list[dict[str, Any]] = []
        replacements: dict[int, Any] = {}
        for case in group_cases(step, valid, peer_of_key):
            judges = [pid for pid in ctx["members"] if pid != case["accused"]]
            calls = {pid: peers[pid].judge.options(num_returns=2).remote(step, case, ctx) for pid in judges}
            # A judge that does not answer within the phase timeout has no vote (a silent
            # Byzantine judge must not hang the job).
            in_time, _ = ray.wait([c[0] for c in calls.values()], num_returns=len(calls), timeout=ctx.get("timeout"))
            answered = set(in_time)
            votes: dict[int, dict[str, str]] = {}
            replacement_digests: dict[int, str] = {}
            vote_messages: list[dict] = []
            for pid, (vote_ref, _) in calls.items():
                if vote_ref not in answered:
                    continue
                try:
                    raw_vote = ray.get(vote_ref)
                    vote = self.verifier.check(Message.from_dict(raw_vote), step, "vote")
                except (MessageError, ray.exceptions.RayError):
                    continue  # a judge that cannot vote properly simply has no vote
                if vote.sender != keys[pid] or vote.payload.get("case") != case["id"]:
                    continue
                votes[pid] = {int(p): str(r) for p, r in vote.payload.get("guilty", {}).items()}
                if vote.payload.get("replacement"):
                    replacement_digests[pid] = str(vote.payload["replacement"])
                vote_messages.append(raw_vote)
            verdict = tally(case, votes)
            accused_key = keys.get(case["accused"], "")
            self.ledger.append(self.job, step, "accused", peer=str(case["accused"]), reason=case["case"],
                               details={"case": case["id"], "accused_key": accused_key,
                                        "accusers": case["accusers"], "parts": case["parts"],
                                        "evidence": case["evidence"]})
            self.ledger.append(self.job, step, "verdict", peer=str(case["accused"]), reason=case["case"],
                               details={"case": case["id"], "judges": sorted(votes), "votes": vote_messages,
                                        "accusers": case["accusers"], "accused": case["accused"],
                                        "guilty": {str(p): r for p, r in sorted(verdict.items())},
                                        "recompute": "tally"})
            for pid, reason in sorted(verdict.items()):
                self.ledger.append(self.job, step, "banned", peer=str(pid), reason=reason,
                                   details={"case": case["id"], "public_key": keys.get(pid, "")})
                bans.append({"peer": pid, "reason": reason, "case": case["id"]})
                if reason == "wrong_aggregate":
                    replacement = _majority_aggregate(self.job, step, pid, calls, replacement_digests)
                    if replacement is not None:
                        replacements[ctx["members"].index(pid)] = replacement
        return {"bans": bans, "replacements": replacements}


def _majority_aggregate(job: str, step: int, accused: int, calls: Mapping[int, Any], digests: Mapping[int, str]):
    """The re-computed aggregate whose digest most judges signed (the honest majority's).

    A judge's vote and its tensor are separate returns, so a Byzantine judge could sign the
    honest digest and hand over another tensor: every candidate is fetched and its digest
    checked here, and only a matching one is put in the object store for the peers.
    """
    import torch

    from btard_ray.peer_protocol import aggregate_digest

    if not digests:
        return None
    best = Counter(digests.values()).most_common(1)[0][0]
    for pid, digest in sorted(digests.items()):
        if digest != best:
            continue
        try:
            tensor = ray.get(calls[pid][1])
        except ray.exceptions.RayError:
            continue
        if isinstance(tensor, torch.Tensor) and aggregate_digest(job, step, -1, accused, tensor) == best:
            return ray.put(tensor)
    return None

"""The peer's side of a BTARD step, driven in one process (no Ray): the same PeerProtocol
objects the actors wrap, with the relay's job done by passing every message to everyone.

Covers the audit targets (random validators plus clipped suspects), the message cache and
the relay trust switch, and the roll-back a re-judged step needs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import btard_ray  # noqa: F401
from attacks.registry import make_attack
from btard_ray.config import load_config
from btard_ray.identity import Identity
from btard_ray.messages import Message
from btard_ray.judging import judge_case
from btard_ray.payloads import payload_problem
from btard_ray.peer_protocol import PeerProtocol
from btard_ray.protocol.randomness import initial_seed
from btard_ray.protocol.validation import choose_suspect_validators, clipped_suspects
from btard_ray.replica import Replica

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _peers(n: int = 6, attackers: dict[int, str] | None = None, overrides: tuple[str, ...] = ()):
    cfg = load_config(QUICKSTART, list(overrides))
    cfg.name = "pp"
    peers = []
    for pid in range(n):
        attack = make_attack(attackers[pid], {}, 1) if attackers and pid in attackers else None
        peers.append(PeerProtocol(cfg, pid, Identity.generate(), Replica(cfg), attack))
    keys = {p.me: p.identity.public_hex for p in peers}
    for p in peers:
        p.keys = dict(keys)
    return peers


def _step(peers: list[PeerProtocol], step: int, seed: bytes, tamper=None, tamper_inner=None) -> dict:
    """Phases 1-4 of one step, every message handed to every peer; returns what was said.

    ``tamper(reports)`` may replace aggregate reports before anybody sees them."""
    members = [p.me for p in peers]
    committed = {p.me: p.commit(step, members, seed) for p in peers}
    commitments = {pid: c[1] for pid, c in committed.items()}
    aggregates, reports, reveals, accusations = {}, {}, {}, []
    for j, p in enumerate(peers):
        rows = {pid: committed[pid][0][j] for pid in members}
        x, report, acc = p.aggregate(step, rows, commitments)
        aggregates[p.me], reports[p.me], reveals[p.me] = x, report, p.reveal(step)
        accusations += acc
    if tamper is not None:
        tamper(reports)
    inner, targets = {}, {}
    for p in peers:
        accusations += p.check_aggregates(step, aggregates, reports)
        accusations += p.open_seed(step, reveals, commitments)
        inner[p.me] = p.project(step)
        targets[p.me] = p.validation_targets(step, reports)
        accusations += p.validate(step, {t: committed[t][0] for t in targets[p.me]}, commitments)
    if tamper_inner is not None:
        tamper_inner(inner)
    for p in peers:
        accusations += p.audit(step, inner, reports)
    return {"accusations": accusations, "targets": targets, "reports": reports, "inner": inner,
            "commitments": commitments, "reveals": reveals, "aggregates": aggregates,
            "parts": {pid: c[0] for pid, c in committed.items()}, "seed": peers[0].state.next_seed}


def _judge(peer: PeerProtocol, step: int, said: dict, accused: int) -> dict:
    """One judge's finding on an aggregate_check case against ``accused``."""
    members = [0, 1, 2, 3, 4, 5]
    j = members.index(accused)
    ctx = {"members": members, "reports": said["reports"], "commitments": said["commitments"],
           "inner": said["inner"], "reveals": said["reveals"]}
    fetched = {"rows": [said["parts"][pid][j] for pid in members], "x": said["aggregates"][accused]}
    guilty, _ = judge_case(peer, step, {"case": "aggregate_check", "accused": accused}, ctx, fetched)
    return guilty


def _relie(peers: list[PeerProtocol], who: int, step: int, change) -> callable:
    """A tamper that re-signs ``who``'s report after ``change(payload)``."""
    def tamper(reports):
        payload = dict(Message.from_dict(reports[who]).payload)
        change(payload)
        reports[who] = peers[who].sign(step, "aggregate_report", payload)
    return tamper


@pytest.mark.parametrize("lie", ["distance", "exclusion"])
def test_a_report_that_lies_is_accused_and_its_author_found_guilty(lie):
    """A right aggregate under a wrong report (a made-up distance, or an honest peer listed as
    excluded) is the aggregator's fault, never its accusers'."""
    peers = _peers()

    def change(payload):
        if lie == "distance":
            payload["distances"] = [d * 100 if i == 0 else d for i, d in enumerate(payload["distances"])]
        else:
            payload["excluded"] = [0]

    said = _step(peers, 0, initial_seed("pp", 0), tamper=_relie(peers, 2, 0, change))
    cases = {(a["accused_peer"], a["case"]) for a in (Message.from_dict(r).payload for r in said["accusations"])}
    assert cases == {(2, "aggregate_check")}
    for judge in (peers[1], peers[4]):
        assert _judge(judge, 0, said, 2) == {2: "wrong_aggregate"}


def test_the_relay_rejects_malformed_payloads():
    members = [0, 1, 2]
    good = {"part": 1, "digest": "d", "distances": [0.5, None, 1.0], "excluded": []}
    assert payload_problem("aggregate_report", good, members, 1) is None
    for bad in ({**good, "distances": ["x", 1, 2]}, {**good, "distances": [10**400, 1, 2]},
                {**good, "excluded": [[0]]}, {**good, "excluded": [7]}, {**good, "part": 0}):
        assert payload_problem("aggregate_report", bad, members, 1) is not None, bad
    assert payload_problem("inner_products", {"shares": [1.0, 2, 3e300], "distances": [1, None, 0]}, members, 0) is None
    assert "shares" in payload_problem("inner_products", {"shares": [1.0, float("nan"), 1], "distances": [1, 1, 1]},
                                       members, 0)
    accusation = {"case": "wrong_gradient", "accused_peer": 2, "accused": "k"}
    assert payload_problem("accusation", accusation, members, 0) is None
    assert "unknown case" in payload_problem("accusation", {**accusation, "case": "mischief"}, members, 0)
    assert "another member" in payload_problem("accusation", accusation, members, 2)
    assert "another member" in payload_problem("accusation", {**accusation, "accused_peer": 9}, members, 0)
    assert "parts" in payload_problem("commitment", {"parts": ["ab"] * 3, "nonce": "0" * 64}, members, 0)
    # A peer on probation (9) can be accused of its gradient or commitment, and of nothing
    # else: it sends no reveal, report or inner products, so any such case would convict it.
    assert payload_problem("accusation", {**accusation, "accused_peer": 9}, members, 0, probation=[9]) is None
    for case in ("withheld_reveal", "bad_message", "inner_products", "aggregate_check"):
        problem = payload_problem("accusation", {**accusation, "accused_peer": 9, "case": case}, members, 0, [9])
        assert "on probation can only be accused" in problem, case


def test_honest_step_has_no_accusations_and_replicas_agree():
    peers = _peers()
    seed = initial_seed("pp", 0)
    for step in range(3):
        said = _step(peers, step, seed)
        assert said["accusations"] == []
        # m = 1 random validation per step; nobody is clipped at tau = 5 on honest digits.
        assert sum(len(t) for t in said["targets"].values()) == 1
        for p in peers:
            p.apply(step, {})
        seed = said["seed"]
    assert len({p.replica.weight_hash() for p in peers}) == 1


@pytest.mark.parametrize("attack", ["sign_flip", "nan_inf"])
def test_a_forger_is_a_suspect_and_is_caught_in_the_step_it_attacks(attack):
    """A sign flip is clipped; a non-finite gradient gets no weight (distance inf)."""
    peers = _peers(attackers={3: attack}, overrides=("protocol.validators=0",))
    said = _step(peers, 0, initial_seed("pp", 0))
    # No random validator at all: the flipper is re-computed only because it was clipped.
    validators = [pid for pid, t in said["targets"].items() if 3 in t]
    assert len(validators) == 1 and validators[0] != 3
    wrong = [Message.from_dict(a).payload for a in said["accusations"]]
    assert [(a["accused_peer"], a["case"]) for a in wrong] == [(3, "wrong_gradient")]


def test_clipped_suspects_rank_limit_and_ignore_excluded():
    members = ["0", "1", "2", "3", "4"]
    reported = [[3.0, 900.0, None, 5.5, 2.5],    # part 0: peer 1 far out; 3 clipped but in the spread
                [0.5, 2.0, 50.0, 1.0, float("inf")]]  # part 1: peer 2 far out, peer 4 not finite
    assert clipped_suspects(members, reported, tau=5.0, limit=10) == ["4", "1", "2"]
    assert clipped_suspects(members, reported, tau=5.0, limit=2) == ["4", "1"]
    assert clipped_suspects(members, reported, tau=1000.0, limit=5) == ["4"]
    assert clipped_suspects(members, reported, tau=5.0, limit=0) == []
    # Large honest gradients: every distance above tau, none an outlier, nobody suspect.
    assert clipped_suspects(members, [[40.0, 55.0, 47.0, 61.0, 50.0]], tau=5.0, limit=5) == []


def test_suspect_validators_are_seeded_and_never_the_suspect():
    members = [str(i) for i in range(6)]
    seen = set()
    for k in range(200):
        seed = k.to_bytes(32, "big")
        pairs = choose_suspect_validators(seed, members, ["2", "4"])
        assert pairs == choose_suspect_validators(seed, list(reversed(members)), ["2", "4"])
        assert [t for _, t in pairs] == ["2", "4"] and all(v != t for v, t in pairs)
        seen.add(pairs[0][0])
    assert seen == set(members) - {"2"}  # every other member gets drawn


def _commitment(peer: PeerProtocol, step: int = 0) -> dict:
    return peer.sign(step, "commitment", {"parts": ["aa"], "nonce": "bb"})


@pytest.mark.parametrize("peer_checks", [False, True])
def test_message_checks_envelope_always_signature_on_request(peer_checks):
    a, b = _peers(2, overrides=(f"protocol.peer_signature_checks={str(peer_checks).lower()}",))
    raw = _commitment(a)
    assert b.valid(raw, 0, 0, "commitment") is not None
    # A message of another kind, step or sender never passes, cached or not.
    assert b.valid(raw, 0, 0, "reveal") is None and b.valid(raw, 0, 1, "commitment") is None
    assert b.valid(raw, 1, 0, "commitment") is None
    # The same signature over a changed payload is not served from the cache; only a peer
    # that re-verifies signatures can tell it is forged (otherwise the relay rejects it).
    forged = {**raw, "payload": {"parts": ["cc"], "nonce": "bb"}}
    got = b.valid(forged, 0, 0, "commitment")
    assert (got is None) if peer_checks else (got is not None and got.payload["parts"] == ["cc"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_rollback_restores_weights_and_optimizer_bit_for_bit(optimizer):
    (peer,) = _peers(1, overrides=(f"optimizer.name={optimizer}",))
    replica = peer.replica
    flat, _ = replica.gradient_for(0, 0)
    replica.apply_gradient(flat)  # momentum buffers exist from here on
    replica.save_point()  # a first save point, so that the next one reuses its tensors
    replica.apply_gradient(flat * 2)
    before = (replica.weight_hash(), replica.current_lr())
    replica.save_point()
    replica.apply_gradient(flat * 3)
    assert replica.weight_hash() != before[0]
    replica.restore_point()
    assert (replica.weight_hash(), replica.current_lr()) == before
    # Re-applying from the restored state is the same as applying once from it, and a
    # second roll-back to the same point works as well (the saved state was not adopted).
    twin = _peers(1, overrides=(f"optimizer.name={optimizer}",))[0].replica
    for scale in (1, 2, 1):
        twin.apply_gradient(flat * scale)
    replica.apply_gradient(flat * 5)
    replica.restore_point()
    replica.apply_gradient(flat)
    assert replica.weight_hash() == twin.weight_hash()
    assert replica.scheduler.state_dict() == twin.scheduler.state_dict()
    ours, theirs = replica.optimizer.state_dict(), twin.optimizer.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    for index, state in theirs["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(ours["state"][index][key]), torch.as_tensor(value)), (index, key)


def test_a_validated_peer_whose_shares_lie_is_accused_and_found_guilty():
    """An aggregator could cancel a shifted aggregate with a made-up share of its own; the
    validators re-compute their targets' shares from the parts they sent."""
    peers = _peers(overrides=("protocol.validators=6",))  # everybody validates somebody

    def forge(inner):
        payload = dict(Message.from_dict(inner[2]).payload)
        payload["shares"] = [s + (1.0 if j == 2 else 0.0) for j, s in enumerate(payload["shares"])]
        inner[2] = peers[2].sign(0, "inner_products", payload)

    said = _step(peers, 0, initial_seed("pp", 0), tamper_inner=forge)
    cases = {(a["accused_peer"], a["case"]) for a in (Message.from_dict(r).payload for r in said["accusations"])}
    assert (2, "inner_products") in cases
    ctx = {"members": list(range(6)), "inner": said["inner"]}
    guilty, _ = judge_case(peers[0], 0, {"case": "inner_products", "accused": 2}, ctx, {"sent": said["parts"][2]})
    assert guilty == {2: "false_inner_product"}
    honest, _ = judge_case(peers[0], 0, {"case": "inner_products", "accused": 3}, ctx, {"sent": said["parts"][3]})
    assert honest == {}


def _validation_round(peers: list[PeerProtocol], step: int, seed: bytes) -> dict:
    """Phases 1-3 of a step (no validation), for tests that validate by hand."""
    members = [p.me for p in peers]
    committed = {p.me: p.commit(step, members, seed) for p in peers}
    commitments = {pid: c[1] for pid, c in committed.items()}
    aggregates, reports, reveals, accusations = {}, {}, {}, []
    for j, p in enumerate(peers):
        x, reports[p.me], acc = p.aggregate(step, {pid: committed[pid][0][j] for pid in members}, commitments)
        aggregates[p.me], reveals[p.me] = x, p.reveal(step)
        accusations += acc
    for p in peers:
        accusations += p.check_aggregates(step, aggregates, reports)
        accusations += p.open_seed(step, reveals, commitments)
    return {"parts": {pid: c[0] for pid, c in committed.items()}, "commitments": commitments,
            "cases": {(m.payload["accused_peer"], m.payload["case"]) for m in map(Message.from_dict, accusations)}}


def test_a_validator_fetches_the_sent_parts_only_when_the_recomputation_differs_from_the_commitment():
    """An honest member's re-computed parts hash to its committed digests: its sent parts are
    never fetched, and they are what the audit checks its inner products against. A forged
    gradient does not: its parts are fetched and compared (and it is accused)."""
    peers = _peers(attackers={3: "sign_flip"})
    said = _validation_round(peers, 0, initial_seed("pp", 0))
    fetched = []

    def lazy(target):
        def fetch():
            fetched.append(target)
            return said["parts"][target]
        return fetch

    validator = peers[0]
    accusations = validator.validate(0, {1: lazy(1), 3: lazy(3)}, said["commitments"])
    assert fetched == [3]
    cases = [(m.payload["accused_peer"], m.payload["case"]) for m in map(Message.from_dict, accusations)]
    assert cases == [(3, "wrong_gradient")]
    # The honest target's recorded parts are bitwise the ones it sent.
    assert set(validator.state.validated) == {1}
    assert all(torch.equal(a, b) for a, b in zip(validator.state.validated[1], said["parts"][1]))


def test_a_validator_checks_a_probationers_sent_parts_against_its_commitment():
    """``bad_commitment`` commits to its honest gradient and sends other parts. A member's sent
    parts are each checked by their aggregator, so its validator may skip them; a
    probationer's reach no aggregator, so its validator fetches them and accuses."""
    peers = _peers(n=7, attackers={2: "bad_commitment", 6: "bad_commitment"})
    members, newcomer = peers[:6], peers[6]
    said = _validation_round(members, 0, initial_seed("pp", 0))
    parts, commitment, _ = newcomer.commit(0, [p.me for p in members], initial_seed("pp", 0))
    commitments = {**said["commitments"], 6: commitment}
    validator = peers[0]
    assert said["cases"] == {(2, "bad_commitment")}  # by the aggregators of the parts it changed
    assert validator.validate(0, {2: said["parts"][2]}, commitments) == []
    accusations = validator.validate(0, {6: parts}, commitments)
    assert [(m.payload["accused_peer"], m.payload["case"]) for m in map(Message.from_dict, accusations)] == [
        (6, "bad_commitment")]

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


def _step(peers: list[PeerProtocol], step: int, seed: bytes) -> dict:
    """Phases 1-4 of one step, every message handed to every peer; returns what was said."""
    members = [p.me for p in peers]
    committed = {p.me: p.commit(step, members, seed) for p in peers}
    commitments = {pid: c[1] for pid, c in committed.items()}
    aggregates, reports, reveals, accusations = {}, {}, {}, []
    for j, p in enumerate(peers):
        rows = {pid: committed[pid][0][j] for pid in members}
        x, report, acc = p.aggregate(step, rows, commitments)
        aggregates[p.me], reports[p.me], reveals[p.me] = x, report, p.reveal(step)
        accusations += acc
    inner, targets = {}, {}
    for p in peers:
        accusations += p.check_aggregates(step, aggregates, reports)
        accusations += p.open_seed(step, reveals, commitments)
        inner[p.me] = p.project(step)
        targets[p.me] = p.validation_targets(step, reports)
        accusations += p.validate(step, {t: committed[t][0] for t in targets[p.me]}, commitments)
    for p in peers:
        accusations += p.audit(step, inner, reports)
    return {"accusations": accusations, "targets": targets, "reports": reports,
            "seed": peers[0].state.next_seed}


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


def test_rollback_restores_weights_and_optimizer_bit_for_bit():
    (peer,) = _peers(1)
    replica = peer.replica
    flat, _ = replica.gradient_for(0, 0)
    replica.apply_gradient(flat)  # momentum buffers exist from here on
    before = (replica.weight_hash(), replica.current_lr())
    replica.save_point()
    replica.apply_gradient(flat * 3)
    assert replica.weight_hash() != before[0]
    replica.restore_point()
    assert (replica.weight_hash(), replica.current_lr()) == before
    # Re-applying from the restored state is the same as applying once from it.
    twin = _peers(1)[0].replica
    twin.apply_gradient(flat)
    twin.apply_gradient(flat)
    replica.apply_gradient(flat)
    assert replica.weight_hash() == twin.weight_hash()
    assert torch.equal(replica.optimizer.state_dict()["state"][0]["momentum_buffer"],
                       twin.optimizer.state_dict()["state"][0]["momentum_buffer"])

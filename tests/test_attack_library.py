"""Every attack of the library does exactly what its docstring says (no Ray).

Gradient attacks are checked against the replica of ``configs/quickstart.yaml``: the
omniscient and label attacks against gradients re-computed here with
:meth:`Replica.gradient_for`. Protocol attacks run through :class:`PeerProtocol` in one
process, every message handed to every peer (the relay's job), so the accusation each one
earns is visible without a cluster. Which attacker gets banned, and when, with real Ray
peers: ``tests/test_attack_bans.py``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pytest
import torch

import btard_ray  # noqa: F401
from attacks import ATTACKS, GRADIENT_ATTACKS, Attack, AttackContext, UnknownAttack, attack_class, make_attack
from attacks.base import seeded_generator
from attacks.omniscient_attacks import alie_z
from btard_ray.config import load_config
from btard_ray.identity import Identity
from btard_ray.messages import Message, MessageVerifier, WrongStep
from btard_ray.partition import join
from btard_ray.peer_protocol import PeerProtocol
from btard_ray.protocol.randomness import initial_seed
from btard_ray.replica import Replica

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
MEMBERS = list(range(6))
ME = 2  # one of the two attackers the fixture config draws from seed 0: [0, 2]


@pytest.fixture(scope="module")
def replica() -> Replica:
    cfg = load_config(QUICKSTART, ["attack.name=sign_flip", "attack.count=2"])
    cfg.name = "lib"
    return Replica(cfg)


def _ctx(replica: Replica, step: int = 0, peer: int = ME) -> AttackContext:
    return AttackContext.for_replica(replica, peer, step, MEMBERS)


def _honest(replica: Replica, step: int = 0, peer: int = ME) -> torch.Tensor:
    return replica.gradient_for(peer, step)[0]


def _per_tensor(replica: Replica, flat: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(flat, [p.numel() for p in replica.params]))


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()))


# -- the registry --------------------------------------------------------------------------


def test_every_attack_is_registered_by_name_with_its_formula():
    expected = {
        "sign_flip", "constant_direction", "random_direction", "label_flip", "label_shuffle", "gaussian_noise",
        "ipm", "alie", "delayed_gradient", "nan_inf",  # gradient attacks
        "wrong_aggregate", "scaled_aggregate", "swapped_aggregate",  # aggregate attacks
        "equivocate", "bad_commitment", "false_accusation", "withhold_reveal", "replay", "late",  # protocol
    }
    assert set(ATTACKS) == expected
    assert set(GRADIENT_ATTACKS) == expected & {
        "sign_flip", "constant_direction", "random_direction", "label_flip", "label_shuffle", "gaussian_noise",
        "ipm", "alie", "delayed_gradient", "nan_inf"}
    for name, cls in ATTACKS.items():
        assert cls.name == name and attack_class(name) is cls
        assert cls.__doc__ and len(cls.__doc__) > 30, f"{name} must state what it sends"
        assert name == "late" or cls.reason, f"{name} names the ban reason it earns"
    with pytest.raises(UnknownAttack) as err:
        attack_class("no_such_attack")
    assert all(name in str(err.value) for name in expected)


# -- gradient attacks ----------------------------------------------------------------------


def test_sign_flip_is_exactly_minus_1000_g(replica):
    g = _honest(replica)
    assert torch.equal(make_attack("sign_flip", {}, 1).gradient(0, g, _ctx(replica)), g * -1000.0)


@pytest.mark.parametrize("name", ["constant_direction", "random_direction"])
def test_direction_attacks_are_1000x_the_norm_of_every_tensor(name, replica):
    g = _honest(replica)
    sent = make_attack(name, {}, 1).gradient(0, g, _ctx(replica))
    assert sent.shape == g.shape and sent.dtype == g.dtype
    for true_k, sent_k in zip(_per_tensor(replica, g), _per_tensor(replica, sent)):
        assert float(sent_k.norm()) == pytest.approx(1000 * float(true_k.norm()), rel=1e-5)


def test_constant_direction_is_one_direction_for_all_steps_and_all_colluders(replica):
    a, b, other = (make_attack("constant_direction", {}, seed) for seed in (1, 1, 2))
    g0, g5 = _honest(replica, 0), _honest(replica, 5, peer=1)
    sent = [a.gradient(0, g0, _ctx(replica, 0)), a.gradient(5, g5, _ctx(replica, 5, peer=1)),
            b.gradient(0, g0, _ctx(replica, 0, peer=4))]
    for k in range(len(replica.params)):
        pieces = [_per_tensor(replica, s)[k] for s in sent]
        assert _cos(pieces[0], pieces[1]) == pytest.approx(1.0, abs=1e-6)  # across steps
        assert torch.equal(pieces[0], pieces[2])  # across attackers sharing the seed
    assert not torch.equal(other.gradient(0, g0, _ctx(replica, 0)), sent[0])  # another job's seed


def test_random_direction_changes_every_step_and_is_shared_within_a_step(replica):
    a, b = make_attack("random_direction", {}, 1), make_attack("random_direction", {}, 1)
    g = _honest(replica)
    s0, s1 = a.gradient(0, g, _ctx(replica, 0)), a.gradient(1, g, _ctx(replica, 1))
    assert torch.equal(s0, b.gradient(0, g, _ctx(replica, 0, peer=4)))
    assert abs(_cos(s0, s1)) < 0.1  # independent directions in ~10k dimensions


def test_gaussian_noise_on_every_other_tensor(replica):
    g = _honest(replica)
    sent = make_attack("gaussian_noise", {}, 1).gradient(0, g, _ctx(replica))
    for k, (true_k, sent_k) in enumerate(zip(_per_tensor(replica, g), _per_tensor(replica, sent))):
        if k % 2:
            assert torch.equal(sent_k, true_k)
        else:
            noise = sent_k - true_k
            if noise.numel() >= 500:  # enough entries for the standard deviation
                assert float(noise.std()) == pytest.approx(100.0, rel=0.1)
            assert not torch.equal(sent_k, true_k)
    # independent across attackers (peer id) and steps; every tensor with every=1
    other = make_attack("gaussian_noise", {}, 1).gradient(0, g, _ctx(replica, peer=4))
    assert not torch.equal(other, sent)
    every = make_attack("gaussian_noise", {"every": 1, "sigma": 5}, 1).gradient(0, g, _ctx(replica))
    assert all(not torch.equal(s, t) for s, t in zip(_per_tensor(replica, every), _per_tensor(replica, g)))


def test_nan_inf_is_not_finite(replica):
    g = _honest(replica)
    assert bool(torch.isnan(make_attack("nan_inf", {}, 1).gradient(0, g, _ctx(replica))).all())
    inf = make_attack("nan_inf", {"inf": 1, "stride": 100}, 1).gradient(0, g, _ctx(replica))
    assert bool(torch.isposinf(inf[::100]).all())
    keep = torch.ones_like(g, dtype=torch.bool)
    keep[::100] = False
    assert torch.equal(inf[keep], g[keep])


def test_delayed_gradient_sends_its_own_gradient_of_k_steps_before():
    attack = make_attack("delayed_gradient", {"delay": 3}, 1)
    grads = {t: torch.full((4,), float(t)) for t in range(10)}
    sent = {t: attack.gradient(t, grads[t]) for t in range(10)}
    assert all(torch.equal(sent[t], grads[t]) for t in range(3))  # no history yet: honest
    assert all(torch.equal(sent[t], grads[t - 3]) for t in range(3, 10))
    assert len(attack.history) <= 4  # only what it still needs
    default = make_attack("delayed_gradient", {}, 1)
    sent = [default.gradient(t, grads[t]) for t in range(7)]
    assert torch.equal(sent[6], grads[1]) and torch.equal(sent[4], grads[4])  # default k = 5


def test_label_flip_is_the_gradient_of_the_flipped_labels(replica):
    g = _honest(replica)
    c = replica.dataset.num_classes
    sent = make_attack("label_flip", {}, 1).gradient(0, g, _ctx(replica))
    expected = replica.gradient_for(ME, 0, transform=lambda b: {**b, "y": c - 1 - b["y"]})[0]
    assert torch.equal(sent, expected) and not torch.allclose(sent, g)
    assert torch.equal(_honest(replica), g)  # the replica is untouched


def test_label_shuffle_is_the_gradient_of_permuted_labels(replica):
    g = _honest(replica)
    sent = make_attack("label_shuffle", {}, 1).gradient(0, g, _ctx(replica))
    perm = torch.randperm(replica.cfg.data.batch_size, generator=seeded_generator(1, "label_shuffle", ME, 0))
    shuffled = {}

    def shuffle(batch):
        shuffled["y"], shuffled["orig"] = batch["y"][perm], batch["y"]
        return {**batch, "y": batch["y"][perm]}

    expected = replica.gradient_for(ME, 0, transform=shuffle)[0]
    assert torch.equal(sent, expected) and not torch.allclose(sent, g)
    assert sorted(shuffled["y"].tolist()) == sorted(shuffled["orig"].tolist())  # a permutation
    assert not torch.equal(shuffled["y"], shuffled["orig"])


def test_label_attacks_need_the_context():
    with pytest.raises(TypeError, match="needs the AttackContext"):
        make_attack("label_flip", {}, 1).gradient(0, torch.zeros(3))


def test_ipm_is_minus_epsilon_times_the_mean_honest_gradient(replica):
    honest = torch.stack([_honest(replica, 2, p) for p in MEMBERS])
    g = honest[ME]
    sent = make_attack("ipm", {}, 1).gradient(2, g, _ctx(replica, 2))
    torch.testing.assert_close(sent, -0.1 * honest.mean(dim=0), rtol=0, atol=0)
    sent = make_attack("ipm", {"epsilon": 0.5}, 1).gradient(2, g, _ctx(replica, 2))
    torch.testing.assert_close(sent, -0.5 * honest.mean(dim=0), rtol=0, atol=0)


def test_alie_z_follows_baruch_et_al():
    # s = floor(n/2 + 1) - b, z = Phi^-1((n - s)/n)
    assert alie_z(6, 1) == pytest.approx(0.0, abs=1e-12)  # s = 3: the mean itself
    assert alie_z(6, 2) == pytest.approx(0.430727, abs=1e-5)  # s = 2, Phi^-1(2/3)
    assert alie_z(50, 24) == pytest.approx(1.750686, abs=1e-5)  # s = 2, Phi^-1(0.96): the paper's n=50
    assert math.isfinite(alie_z(2, 0)) and math.isfinite(alie_z(3, 3))  # clamped ends


def test_alie_is_mean_minus_z_std_inside_the_honest_spread(replica):
    ctx = _ctx(replica, 1)
    honest = torch.stack([_honest(replica, 1, p) for p in MEMBERS])
    mu, sigma = honest.mean(dim=0), honest.std(dim=0)
    z = alie_z(len(MEMBERS), len(ctx.attackers))
    assert len(ctx.attackers) == 2  # the config's two colluders
    sent = make_attack("alie", {}, 1).gradient(1, honest[ME], ctx)
    torch.testing.assert_close(sent, mu - z * sigma, rtol=0, atol=0)
    # Within one standard deviation of the mean, and inside [min, max] of the honest
    # values in (nearly) every coordinate: it hides in the honest spread.
    assert bool(((sent - mu).abs() <= sigma + 1e-12).all())
    inside = (sent >= honest.min(dim=0).values) & (sent <= honest.max(dim=0).values)
    assert float(inside.double().mean()) > 0.99
    override = make_attack("alie", {"z": 1.5}, 1).gradient(1, honest[ME], _ctx(replica, 1))
    torch.testing.assert_close(override, mu - 1.5 * sigma, rtol=0, atol=0)


def test_old_two_argument_gradient_hooks_still_work():
    class Old(Attack):
        def gradient(self, step, honest):
            return honest + 1

    assert torch.equal(Old().gradient(0, torch.zeros(2), None), torch.ones(2))
    assert torch.equal(Old().gradient(0, torch.zeros(2)), torch.ones(2))


# -- aggregate attacks ---------------------------------------------------------------------


def test_aggregate_attacks():
    x = torch.randn(100)
    shifted = make_attack("wrong_aggregate", {"shift": 0.5}, 1).aggregate(7, 2, x)
    assert float((shifted - x).norm()) == pytest.approx(0.5, rel=1e-5)
    assert torch.equal(make_attack("scaled_aggregate", {}, 1).aggregate(0, 1, x), 10 * x)
    assert torch.equal(make_attack("scaled_aggregate", {"factor": -2}, 1).aggregate(0, 1, x), -2 * x)


def test_swapped_aggregate_sends_another_steps_aggregate_or_a_vector_of_the_same_norm():
    attack = make_attack("swapped_aggregate", {}, 1)
    x0, x1, x2 = torch.randn(50), torch.randn(50), torch.randn(60)
    first = attack.aggregate(0, 2, x0)  # no earlier aggregate: random, same norm
    assert float(first.norm()) == pytest.approx(float(x0.norm()), rel=1e-5) and abs(_cos(first, x0)) < 0.6
    assert torch.equal(attack.aggregate(1, 2, x1), x0)  # the aggregate of the step before
    swapped = attack.aggregate(2, 2, x2)  # partition changed: random again
    assert swapped.shape == x2.shape and float(swapped.norm()) == pytest.approx(float(x2.norm()), rel=1e-5)
    fresh = make_attack("swapped_aggregate", {"fresh": 1}, 1)
    fresh.aggregate(0, 0, x0)
    assert not torch.equal(fresh.aggregate(1, 0, x1), x0)


# -- protocol attacks, through PeerProtocol in one process ----------------------------------


def _protocols(replica: Replica, attacks: dict[int, str], overrides: tuple[str, ...] = (),
               params: dict | None = None) -> list[PeerProtocol]:
    """Six peers sharing one replica (valid while no step is applied: weights are equal)."""
    cfg = load_config(QUICKSTART, list(overrides))
    cfg.name = "lib"
    peers = [PeerProtocol(cfg, pid, Identity.generate(), replica,
                          make_attack(attacks[pid], params or {}, 7) if pid in attacks else None) for pid in MEMBERS]
    keys = {p.me: p.identity.public_hex for p in peers}
    for p in peers:
        p.keys = dict(keys)
    return peers


def _run_step(peers: list[PeerProtocol], step: int, seed: bytes) -> dict:
    """Phases 1-4 of a step, every message handed to every peer; what was sent and said."""
    committed = {p.me: p.commit(step, MEMBERS, seed) for p in peers}
    commitments = {pid: c[1] for pid, c in committed.items()}
    aggregates, reports, reveals, accusations = {}, {}, {}, []
    for j, p in enumerate(peers):
        x, report, acc = p.aggregate(step, {pid: committed[pid][0][j] for pid in MEMBERS}, commitments)
        aggregates[p.me], reports[p.me], reveals[p.me] = x, report, p.reveal(step)
        accusations += acc
    for p in peers:
        accusations += p.check_aggregates(step, aggregates, reports)
        accusations += p.open_seed(step, reveals, commitments)
    inner = {p.me: p.project(step) for p in peers}
    for p in peers:
        targets = p.validation_targets(step, reports)
        accusations += p.validate(step, {t: committed[t][0] for t in targets}, commitments)
    for p in peers:
        accusations += p.audit(step, inner, reports)
    said = [Message.from_dict(a) for a in accusations]
    return {"sent": {pid: c[0] for pid, c in committed.items()}, "reports": reports,
            "accusations": [(replica_peer(peers, m.sender), m.payload["accused_peer"], m.payload["case"],
                             m.payload.get("why")) for m in said]}


def replica_peer(peers: list[PeerProtocol], key: str) -> int:
    return next(p.me for p in peers if p.identity.public_hex == key)


def test_equivocate_sends_one_receiver_a_part_other_than_committed(replica):
    peers = _protocols(replica, {ME: "equivocate"})
    said = _run_step(peers, 0, initial_seed("lib", 0))
    honest = torch.split(_honest(replica), [len(p) for p in said["sent"][0]])
    differs = [j for j, (sent, true) in enumerate(zip(said["sent"][ME], honest)) if not torch.equal(sent, true)]
    assert len(differs) == 1 and differs[0] != MEMBERS.index(ME)  # never its own (unsent) part
    receiver = MEMBERS[differs[0]]
    # Only that aggregator sees the mismatch; it excludes the part and accuses. (A validator
    # drawn from the step's random seed may re-compute the equivocator too and accuse it of
    # the same: nobody else is accused.)
    assert (receiver, ME, "bad_commitment", None) in said["accusations"]
    assert all(accused == ME and case == "bad_commitment" for _, accused, case, _ in said["accusations"])
    assert Message.from_dict(said["reports"][receiver]).payload["excluded"] == [ME]
    chosen = {tuple(make_attack("equivocate", {}, s).receivers(0, 6)) for s in range(40)}
    assert {j for c in chosen for j in c} == set(range(6))  # without a context any part can be drawn
    two = make_attack("equivocate", {"receivers": 2}, 1)
    assert len(two.receivers(0, 6)) == 2


def test_nan_inf_is_harmless_to_the_aggregate_and_a_validator_finds_it(replica):
    # validators = 6: every peer is re-computed, so the attacker is certainly among them.
    peers = _protocols(replica, {ME: "nan_inf"}, ("protocol.validators=6",))
    said = _run_step(peers, 0, initial_seed("lib", 0))  # does not crash anywhere
    accusations = {(accused, case) for _, accused, case, _ in said["accusations"]}
    assert accusations == {(ME, "wrong_gradient")}
    whys = {why for _, accused, _, why in said["accusations"]}
    assert all("not finite" in why for why in whys)
    for pid in MEMBERS:
        report = Message.from_dict(said["reports"][pid]).payload
        assert report["distances"][ME] is None and report["excluded"] == []  # infinitely far, weight 0
    assert all(bool(torch.isfinite(x).all()) for x in peers[0].state.aggregates.values())


def test_replay_resends_an_earlier_message_and_is_refused(replica):
    attack = make_attack("replay", {}, 1)
    first = {"step": 0, "kind": "commitment", "n": 1}
    assert attack.outgoing(0, "commitment", first) is first  # nothing to replay yet
    assert attack.outgoing(1, "commitment", {"step": 1, "kind": "commitment", "n": 2}) is first
    assert attack.outgoing(2, "commitment", {"step": 2})["n"] == 2  # the latest earlier one

    # In a real step (PeerProtocol.sign passes every signed message through ``outgoing``):
    peers = _protocols(replica, {ME: "replay"})
    attacker = peers[ME]
    seed = initial_seed("lib", 0)
    assert _run_step(peers, 0, seed)["accusations"] == []
    said = _run_step(peers, 1, seed)
    assert {(accused, case) for _, accused, case, _ in said["accusations"]} >= {(ME, "bad_commitment")}
    assert all(accused == ME for _, accused, _, _ in said["accusations"])
    # The relay refuses it too: it names step 0.
    verifier = MessageVerifier("lib")
    old = attacker.attack.sent["commitment"]
    with pytest.raises(WrongStep):
        verifier.check(Message.from_dict(attacker.attack.outgoing(5, "commitment", old[1])), 5, "commitment")


def test_late_sleeps_in_its_phase_and_sends_honest_values():
    late = make_attack("late", {"delay_s": 0.2, "phase": 1}, 1)
    g, x = torch.ones(3), torch.zeros(3)
    t0 = time.perf_counter()
    assert late.gradient(0, g) is g and late.reveal(0, b"n") == b"n"
    t1 = time.perf_counter()
    assert late.aggregate(0, 0, x) is x
    t2 = time.perf_counter()
    # it sleeps in its phase only (no bound on the other calls' time: a busy machine may be slow)
    assert t2 - t1 >= 0.2 and t1 - t0 < t2 - t1


def test_attacks_act_only_when_the_schedule_is_active(replica):
    peers = _protocols(replica, {ME: "sign_flip"},
                       ("attack.name=sign_flip", "attack.start_step=2", "attack.every=2", "attack.stop_step=7"))
    seed = initial_seed("lib", 0)
    for step in range(9):
        parts, _, _ = peers[ME].commit(step, MEMBERS, seed)
        g = _honest(replica, step)
        expected = g * -1000.0 if step in (2, 4, 6) else g
        assert torch.equal(join(parts), expected), step


# -- a user's own attack, outside the package -----------------------------------------------


def test_a_users_attack_loads_by_import_path_and_runs_in_the_protocol(replica, tmp_path, monkeypatch):
    (tmp_path / "my_lab_attacks.py").write_text(
        "from attacks.base import Attack\n"
        "class Triple(Attack):\n"
        "    '''g' = 3 g + (number of members).'''\n"
        "    name = 'triple'\n"
        "    reason = 'wrong_gradient'\n"
        "    def gradient(self, step, honest, ctx=None):\n"
        "        return 3 * honest + len(ctx.members)\n"
        "class OldStyle(Attack):\n"
        "    def gradient(self, step, honest):\n"
        "        return -honest\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        # The config validates the name by importing it, as a peer actor does.
        cfg = load_config(QUICKSTART, ["attack.name=my_lab_attacks:Triple"])
        assert cfg.attack.name == "my_lab_attacks:Triple"
        seed = initial_seed("lib", 0)
        for name, expected in (("my_lab_attacks:Triple", 3 * _honest(replica) + 6),
                               ("my_lab_attacks:OldStyle", -_honest(replica))):
            peers = _protocols(replica, {ME: name}, (f"attack.name={name}",))
            parts, _, _ = peers[ME].commit(0, MEMBERS, seed)
            assert torch.equal(join(parts), expected)
    finally:
        sys.modules.pop("my_lab_attacks", None)

"""Each attack does what its docstring says (the defence tests show that it gets banned)."""

from __future__ import annotations

import sys

import pytest
import torch

from attacks import ATTACKS, Attack, UnknownAttack, attack_class, choose_attackers, make_attack


def test_sign_flip_is_minus_1000_times_the_gradient():
    g = torch.randn(50)
    torch.testing.assert_close(make_attack("sign_flip", {}, 0).gradient(3, g), -1000 * g)
    torch.testing.assert_close(make_attack("sign_flip", {"scale": 2}, 0).gradient(3, g), -2 * g)


def test_wrong_aggregate_shifts_by_exactly_the_configured_norm():
    x = torch.randn(100)
    shifted = make_attack("wrong_aggregate", {"shift": 0.5}, 1).aggregate(7, 2, x)
    assert float((shifted - x).norm()) == pytest.approx(0.5, rel=1e-5)


def test_bad_commitment_sends_other_parts_than_committed():
    parts = [torch.zeros(10), torch.ones(5)]
    sent = make_attack("bad_commitment", {}, 0).sent_parts(0, parts)
    assert len(sent) == 2 and all(not torch.equal(a, b) for a, b in zip(sent, parts))


def test_withhold_reveal_and_false_accusation():
    assert make_attack("withhold_reveal", {}, 0).reveal(0, b"x" * 32) is None
    claims = make_attack("false_accusation", {}, 0).false_claims(0, me=2, members=[0, 1, 2, 3])
    assert len(claims) == 1 and claims[0].accused != 2 and claims[0].case == "wrong_gradient"


def test_honest_base_changes_nothing():
    g, base = torch.randn(8), Attack()
    assert base.gradient(0, g) is g and base.reveal(0, b"n") == b"n" and base.false_claims(0, 0, [0, 1]) == []


def test_registry_and_import_path(tmp_path, monkeypatch):
    assert set(ATTACKS) >= {"sign_flip", "wrong_aggregate", "false_accusation", "bad_commitment", "withhold_reveal"}
    (tmp_path / "my_attack.py").write_text(
        "from attacks.base import Attack\n"
        "class Double(Attack):\n"
        "    name = 'double'\n"
        "    def gradient(self, step, honest):\n"
        "        return 2 * honest\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = attack_class("my_attack:Double")
    assert cls.name == "double"
    torch.testing.assert_close(cls().gradient(0, torch.ones(2)), torch.full((2,), 2.0))
    with pytest.raises(UnknownAttack, match="unknown attack 'nope'"):
        attack_class("nope")
    with pytest.raises(UnknownAttack, match="cannot be imported"):
        attack_class("no_such_module_xyz:Thing")
    sys.modules.pop("my_attack", None)


def test_attackers_are_chosen_by_the_seed():
    assert choose_attackers(3, list(range(6)), 2) == choose_attackers(3, list(range(6)), 2)
    picks = {tuple(choose_attackers(s, list(range(6)), 2)) for s in range(20)}
    assert len(picks) > 3 and all(len(set(p)) == 2 for p in picks)
    assert choose_attackers(0, list(range(6)), 0) == []

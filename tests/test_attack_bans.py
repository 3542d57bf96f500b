"""Every gradient attack of the library, against the full defence with real Ray peers.

One short run per attack (6 peers, 1 attacker chosen from the seed, attacking from step 0):
the attacker is banned for a wrong gradient, nobody else is, the step it was caught in is
not applied, and the ledger verifies.

How it is caught depends on the attack. Large forgeries (sign_flip, constant_direction,
random_direction, gaussian_noise) are clipped by CenteredClip and a non-finite one (nan_inf)
gets no weight at all, so a validator re-computes them in the step they are sent
(``protocol.suspect_audits``). The others stay inside the honest spread (label_flip,
label_shuffle, ipm, alie, delayed_gradient), so only the random validators find them. With ``protocol.validators = 2`` of 6
peers each peer is re-computed with probability 1/3 per step, so such an attacker escapes
``STEPS`` = 40 active steps with probability (2/3)^40 ≈ 1e-7 (delayed_gradient acts from
step 5 on: (2/3)^35 ≈ 7e-7): below 1e-5 for the whole module. Steps are cheap next to
starting six peer actors (~0.15 s a step against ~25 s), so the margin comes from more
steps, while two validators stay close to the default of one.

Detection steps and reasons are collected in ``DETECTED`` and printed after the module (``-s``).

``test_a_users_attack_runs_in_the_peer_actors``: a user's attack module outside the package,
found by the peer actors through ``PYTHONPATH``. Ray workers import from the environment
their raylet was started with (plus the driver's script and working directories at
``ray.init``), not from the driver's ``sys.path``, so the shared session instance, started
before the test wrote its module, cannot import it: the test runs ``btard run`` in a
subprocess that starts its own local Ray with ``PYTHONPATH`` set, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attacks import GRADIENT_ATTACKS
from btard_ray.config import load_config
from btard_ray.ledger import Ledger
from btard_ray.run_dir import RunDir
from btard_ray.trainer import train

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
STEPS = 40
VALIDATORS = 2
#: attacks that only random validation can find, and the step from which they act
IN_SPREAD = {"label_flip": 0, "label_shuffle": 0, "ipm": 0, "alie": 0, "delayed_gradient": 5}
assert (1 - VALIDATORS / 6) ** (STEPS - max(IN_SPREAD.values())) * len(IN_SPREAD) < 1e-5

DETECTED: dict[str, tuple[int, str]] = {}


@pytest.mark.parametrize("attack", GRADIENT_ATTACKS)
def test_every_gradient_attacker_is_banned_and_only_it(attack, ray_session, tmp_path):
    cfg = load_config(QUICKSTART, [
        f"steps={STEPS}", f"eval_every={STEPS}", f"protocol.validators={VALIDATORS}",
        f"attack.name={attack}", "attack.count=1"])
    cfg.name = f"bans-{attack}"
    summary = train(cfg, RunDir(tmp_path), show_progress=False)

    attackers = summary["attackers"]
    assert len(attackers) == 1
    banned = {b["peer"]: b for b in summary["banned"]}
    assert set(banned) == set(attackers), summary["banned"]
    ban = banned[attackers[0]]
    assert ban["reason"] == "wrong_gradient", ban
    assert summary["active_peers"] == 5
    assert ban["step"] >= IN_SPREAD.get(attack, 0)
    if attack not in IN_SPREAD:
        assert ban["step"] == 0, f"{attack} is clipped (or not finite), so it is audited in the step it is sent"
    assert ban["step"] in summary["skipped_steps"]  # the forged step never reached the weights
    DETECTED[attack] = (ban["step"], ban["reason"])

    ledger = Ledger(str(tmp_path), create=False)
    assert [(e.peer, e.reason) for e in ledger.events() if e.kind == "banned"] == [
        (str(attackers[0]), "wrong_gradient")]
    assert ledger.verify().ok


#: aggregate and protocol attacks: deterministic checks catch them in the first step they act.
#: (attack: (reason, step)); `replay` replays its messages of the step before, so it first
#: misbehaves in step 2, and every message it replays earns its own case.
PROTOCOL_BANS = {"scaled_aggregate": ("wrong_aggregate", 1), "swapped_aggregate": ("wrong_aggregate", 1),
                 "equivocate": ("bad_commitment", 1), "replay": ("bad_commitment", 2)}


@pytest.mark.parametrize("attack", sorted(PROTOCOL_BANS))
def test_aggregate_and_protocol_attackers_are_banned_and_only_they(attack, ray_session, tmp_path):
    """Shifted aggregates are test_defence's wrong_aggregate; these are the rest of the family.
    The aggregate check (scaled, swapped) and the commitments (equivocation, replayed
    messages) are not random, so the attacker is banned in its first misbehaving step."""
    cfg = load_config(QUICKSTART, ["steps=6", "eval_every=6", f"attack.name={attack}", "attack.count=1",
                                   "attack.start_step=1"])
    cfg.name = f"bans-{attack}"
    summary = train(cfg, RunDir(tmp_path), show_progress=False)
    attackers = summary["attackers"]
    reason, step = PROTOCOL_BANS[attack]
    assert {b["peer"] for b in summary["banned"]} == set(attackers), summary["banned"]
    assert (attackers[0], step, reason) in {(b["peer"], b["step"], b["reason"]) for b in summary["banned"]}
    assert summary["active_peers"] == 5 and summary["weights_agree"] and summary["dropped"] == []
    with Ledger(str(tmp_path), create=False) as ledger:
        assert ledger.verify().ok


USER_ATTACK = '''
from attacks.base import Attack


class Negate(Attack):
    """g' = -500 g."""

    name = "negate"
    reason = "wrong_gradient"

    def gradient(self, step, honest, ctx=None):
        assert ctx is not None and ctx.peer_id in ctx.members
        return -500 * honest
'''


def test_a_users_attack_runs_in_the_peer_actors(tmp_path):
    modules = tmp_path / "lab"
    modules.mkdir()
    (modules / "lab_attacks.py").write_text(USER_ATTACK)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(modules), *filter(None, [env.get("PYTHONPATH")])])
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "btard_ray.cli", "run", str(QUICKSTART), "--no-progress", "--out", str(out),
         "--set", "steps=3", "--set", "eval_every=3", "--set", "ray.num_cpus=2",
         "--set", "attack.name=lab_attacks:Negate"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [(b["peer"], b["step"], b["reason"]) for b in summary["banned"]] == [
        (summary["attackers"][0], 0, "wrong_gradient")]


@pytest.fixture(scope="module", autouse=True)
def _report_detection_steps():
    """After the module: the step each attack was caught at (shown with ``-s``)."""
    yield
    if DETECTED:
        print("\nattack               banned at step   reason")
        for attack, (step, reason) in sorted(DETECTED.items()):
            print(f"{attack:<20} {step:>15}   {reason}")

"""The admission controller as a real Ray actor: every refused solution gets its error and a
ledger entry; a good one gets its joiner's actor an id (issue 5).

The controller, the tribunal that keeps the ledger (SQLite in tmp_path) and the joiner's
Peer actor are real actors; the puzzles are real argon2id (1 MiB each, so that a test's
solves take a fraction of a second).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import ray

from admission.book import EXPIRED, OTHER_KEY, REPLAYED, WRONG, AdmissionError, solution_message
from admission.client import unwrap
from admission.controller import AdmissionController
from admission.puzzle import Challenge, Solution, solve, verify
from btard_ray.config import load_config
from btard_ray.identity import Identity
from btard_ray.ledger import Ledger
from btard_ray.messages import sign_message
from btard_ray.peer import Peer
from btard_ray.tribunal import Tribunal

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
JOB = "admission-test"
EXPIRY = 3


@pytest.fixture
def job(ray_session, tmp_path):
    cfg = load_config(QUICKSTART, [f"name={JOB}", "admission.memlimit_mb=1", "admission.alpha=20",
                                   f"admission.expiry_steps={EXPIRY}"])
    key_seed = secrets.token_bytes(32)
    db = tmp_path / "ledger.db"
    tribunal = Tribunal.remote(JOB, f"sqlite:///{db}", key_seed)
    controller = AdmissionController.remote(cfg.model_dump(mode="json"), tribunal,
                                            Identity.from_seed(key_seed).public_hex, 6, 0, b"\x01" * 32)
    config = cfg.model_dump(mode="json")
    yield controller, config, db
    ray.kill(controller)
    ray.kill(tribunal)


def _submit(controller, raw, actor) -> int:
    try:
        return ray.get(controller.submit.remote(raw, actor))
    except ray.exceptions.RayTaskError as exc:
        raise unwrap(exc) from None


def _challenge(controller, identity: Identity) -> Challenge:
    return Challenge.from_dict(ray.get(controller.challenge.remote(identity.public_hex)))


def test_refused_solutions_get_their_errors_and_ledger_entries(job):
    controller, config, db = job
    joiner = Identity.generate()
    actor = Peer.options(num_cpus=0).remote(config, -1, False, joiner.seed_for_own_actor())
    challenge = _challenge(controller, joiner)
    assert challenge.expected_evaluations > 2  # a hard enough target that a wrong nonce exists

    wrong = next(n for n in range(10_000) if not verify(challenge, n))
    with pytest.raises(AdmissionError) as refused:
        _submit(controller, solution_message(joiner, JOB, 0, challenge, Solution(wrong, "", 1, 0.0)), actor)
    assert refused.value.reason == WRONG and "\n" not in str(refused.value)

    solution = solve(challenge)
    impostor = Identity.generate()  # signs a solution to somebody else's challenge
    stolen = sign_message(impostor, JOB, 0, "puzzle_solution",
                          {"challenge_id": challenge.challenge_id, "nonce": solution.nonce}).to_dict()
    with pytest.raises(AdmissionError) as refused:
        _submit(controller, stolen, actor)
    assert refused.value.reason == OTHER_KEY

    good = solution_message(joiner, JOB, 0, challenge, solution)
    assert _submit(controller, good, actor) == 6
    with pytest.raises(AdmissionError) as refused:
        _submit(controller, good, actor)
    assert refused.value.reason == REPLAYED

    late = Identity.generate()
    challenge = _challenge(controller, late)
    solution = solve(challenge)
    ray.get(controller.sync.remote(EXPIRY + 1, b"\x02" * 32, {}, 0))  # the job moved on past the expiry
    late_actor = Peer.options(num_cpus=0).remote(config, -1, False, late.seed_for_own_actor())
    with pytest.raises(AdmissionError) as refused:
        _submit(controller, solution_message(late, JOB, 0, challenge, solution), late_actor)
    assert refused.value.reason == EXPIRED

    # the driver takes the admitted peer at the next boundary it has room for
    news = ray.get(controller.sync.remote(EXPIRY + 2, b"\x03" * 32, {}, 1))
    assert [entry["peer"] for entry in news["admitted"]] == [6]
    assert news["admitted"][0]["public_key"] == joiner.public_hex

    with Ledger(str(db), create=False) as ledger:
        assert ledger.verify().ok
        rejected = ledger.events(kinds={"admission_rejected"})
    assert [e.reason for e in rejected] == [WRONG, OTHER_KEY, REPLAYED, EXPIRED]
    assert all(e.details["evidence"] for e in rejected)  # the signed solution, re-checkable offline


def test_a_job_without_the_defence_admits_nobody(ray_session):
    cfg = load_config(QUICKSTART, [f"name={JOB}-plain", "protocol.checks=false", "aggregator.name=mean"])
    controller = AdmissionController.remote(cfg.model_dump(mode="json"), None, None, 6)
    try:
        with pytest.raises(AdmissionError, match="protocol.checks=false"):
            try:
                ray.get(controller.challenge.remote(Identity.generate().public_hex))
            except ray.exceptions.RayTaskError as exc:
                raise unwrap(exc) from None
    finally:
        ray.kill(controller)


def test_only_the_job_key_may_finish_the_job(ray_session, job):
    from admission.client import finish
    from admission.controller import LeaveError

    controller, _, _ = job
    assert ray.get(controller.sync.remote(4, b"\x02" * 32, {}, 1))["finish"] is None
    with pytest.raises(LeaveError, match="only the job's key may ask for finish"):
        finish(controller, JOB, Identity.generate())
    assert ray.get(controller.sync.remote(5, b"\x03" * 32, {}, 1))["finish"] is None  # refused: nothing handed on


def test_a_finish_request_is_signed_evidence_handed_to_the_driver(ray_session, tmp_path):
    from admission.client import finish

    cfg = load_config(QUICKSTART, [f"name={JOB}-finish"])
    key = Identity.generate()
    controller = AdmissionController.remote(cfg.model_dump(mode="json"), None, key.public_hex, 6, 3, b"\x01" * 32)
    try:
        ray.get(controller.publish.remote({"step": 3}))
        assert finish(controller, f"{JOB}-finish", key, 3) == 3
        assert finish(controller, f"{JOB}-finish", key, 5) == 3  # asking again changes nothing
        news = ray.get(controller.sync.remote(4, b"\x02" * 32, {}, 1))
        evidence = news["finish"]["evidence"]
        assert len(evidence) == 1 and evidence[0]["payload"] == {"finish": True}
        assert evidence[0]["sender"] == key.public_hex
    finally:
        ray.kill(controller)


def test_a_job_without_the_defence_cannot_be_finished_by_key_and_says_why(ray_session):
    from admission.client import finish
    from admission.controller import LeaveError

    cfg = load_config(QUICKSTART, [f"name={JOB}-plainfinish", "protocol.checks=false", "aggregator.name=mean"])
    controller = AdmissionController.remote(cfg.model_dump(mode="json"), None, None, 6)
    try:
        with pytest.raises(LeaveError, match="runs without the defence .* no job key"):
            finish(controller, f"{JOB}-plainfinish", Identity.generate())
    finally:
        ray.kill(controller)

"""Elastic membership with real Ray: joiners, probation, departures, crashes (issue 5).

Each test runs a real job (``train``) in a background thread of the test process, on the
session's Ray instance, and acts on it from the main thread the way another process would:
through the job's named admission controller (``admission.client``, the code behind
``btard join``). Peers are real actors; the joiners' puzzles are real argon2id; bans come
from real validation; ``ray.kill`` really kills a peer mid-step.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from admission.client import find_controller, join
from btard_ray.config import load_config
from btard_ray.identity import Identity
from btard_ray.ledger import Ledger
from btard_ray.messages import sign_message
from btard_ray.run_dir import RunDir
from btard_ray.trainer import train

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
WAIT_SECONDS = 240.0
# Jobs that take joiners run "forever" and are ended by their owner (`btard finish`) once
# what the test waits for has happened: a join takes seconds (the joiner builds its peer
# actor, solves the puzzle), more on a busy machine, so no fixed step count is long enough.
LONG_STEPS = 5000


class JobThread(threading.Thread):
    """``train(cfg)`` in the background; ``result()`` re-raises what it raised."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.cfg, self.run_dir = cfg, RunDir(run_dir)
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.summary = train(self.cfg, self.run_dir, show_progress=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def result(self) -> dict[str, Any]:
        self.join(WAIT_SECONDS)
        assert not self.is_alive(), "the job did not finish in time"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def _start(name: str, tmp_path: Path, *overrides: str) -> tuple[JobThread, Any]:
    cfg = load_config(QUICKSTART, [f"name={name}", "checkpoint_every=0", *overrides])
    job = JobThread(cfg, tmp_path / name)
    job.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while True:  # the controller is up once the peers are built
        try:
            return job, find_controller(name)
        except Exception:  # noqa: BLE001 - JoinError until the job has started
            if time.monotonic() > deadline or not job.is_alive():
                job.result()
                raise AssertionError("the job's admission controller never appeared")
            time.sleep(0.2)


def _wait_step(controller: Any, step: int) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status = ray.get(controller.status.remote())
        if status.get("step", 0) >= step:
            return status
        assert time.monotonic() < deadline, f"the job never reached step {step}"
        time.sleep(0.1)


def _wait_for(controller: Any, what: str, ready: Any) -> dict[str, Any]:
    """Poll the job's status until ``ready(status)``."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status = ray.get(controller.status.remote())
        if ready(status):
            return status
        assert time.monotonic() < deadline, f"never happened: {what}; status: {status}"
        time.sleep(0.1)


def _state(status: dict[str, Any], peer: int) -> str | None:
    record = status.get("peers", {}).get(str(peer))
    return record["state"] if record else None


def _finish(controller: Any, name: str, tmp_path: Path) -> int:
    """End the job after its current step, as its owner (the job key in its run directory)."""
    from admission.client import finish

    return finish(controller, name, Identity.load(tmp_path / name / "job_key"))


def _events(run_dir: Path) -> list[Any]:
    with Ledger(str(run_dir / "ledger.db"), create=False) as ledger:
        assert ledger.verify().ok
        return list(ledger.events())


def test_honest_joiner_is_promoted_and_aggregates_attacker_is_banned_in_probation(ray_session, tmp_path):
    job, controller = _start("elastic-join", tmp_path, f"steps={LONG_STEPS}", f"eval_every={LONG_STEPS}",
                             "admission.alpha=1",
                             "admission.probation_steps=3", "admission.max_joins_per_step=1")
    _wait_step(controller, 2)
    honest = join(controller, Identity.generate())
    byzantine = join(controller, Identity.generate(), attack="sign_flip")
    # the honest joiner has aggregated for a few steps, the Byzantine one is out
    _wait_for(controller, "promotion and ban", lambda st: _state(st, byzantine.peer) == "banned"
              and _state(st, honest.peer) == "active"
              and st["step"] >= st["peers"][str(honest.peer)]["promoted_step"] + 3)
    _finish(controller, "elastic-join", tmp_path)
    summary = job.result()
    assert summary["finished_early"]["steps"] == summary["steps"] < LONG_STEPS

    records = summary["membership"]
    good, bad = records[str(honest.peer)], records[str(byzantine.peer)]
    # the honest joiner served its probation, was promoted, and then aggregated parts
    assert good["state"] == "active" and good["promoted_step"] is not None
    assert good["promoted_step"] - good["joined_step"] == 3 + 1 - 1  # 3 clean steps, promoted at the next boundary
    assert good["aggregated_parts"] == summary["steps"] - good["promoted_step"]
    # the sign-flipping joiner was caught by probation validation and never aggregated
    assert bad["state"] == "banned" and bad["reason"] == "wrong_gradient"
    assert bad["promoted_step"] is None and bad["aggregated_parts"] == 0
    assert bad["ended_step"] == bad["joined_step"]  # validated at its very first step
    assert summary["banned"] == [{"peer": byzantine.peer, "step": bad["ended_step"], "reason": "wrong_gradient"}]
    assert summary["skipped_steps"] == []  # a probationer's gradient never reaches the aggregates
    assert summary["active_peers"] == 7 and summary["weights_agree"]
    assert summary["attackers"] == [byzantine.peer]

    kinds = [(e.kind, e.peer) for e in _events(tmp_path / "elastic-join")]
    for kind in ("admitted", "probation_passed", "promoted"):
        assert (kind, str(honest.peer)) in kinds
    for kind in ("admitted", "probation_failed", "banned"):
        assert (kind, str(byzantine.peer)) in kinds
    assert ("promoted", str(byzantine.peer)) not in kinds


def test_a_peer_killed_mid_step_is_dropped_not_banned(ray_session, tmp_path):
    job, controller = _start("elastic-kill", tmp_path, "steps=30", "eval_every=30")
    _wait_step(controller, 8)
    victim = 2
    # only the job's owner (its key, in the run directory) may get a peer's actor
    with pytest.raises(ray.exceptions.RayTaskError, match="only the job's key"):
        ray.get(controller.actor.remote(sign_message(Identity.generate(), "elastic-kill", 0, "admin",
                                                     {"actor": victim}).to_dict()))
    owner = Identity.load(tmp_path / "elastic-kill" / "job_key")
    ray.kill(ray.get(controller.actor.remote(sign_message(owner, "elastic-kill", 0, "admin",
                                                          {"actor": victim}).to_dict())))
    summary = job.result()

    assert summary["steps"] == 30 and summary["weights_agree"]  # train() checks every peer's hash
    assert [d["peer"] for d in summary["dropped"]] == [victim]
    assert summary["dropped"][0]["reason"] == "crashed"
    assert summary["banned"] == [] and summary["accusations"] == 0
    assert summary["active_peers"] == 5
    assert summary["membership"][str(victim)]["state"] == "dropped"
    kinds = [(e.kind, e.peer) for e in _events(tmp_path / "elastic-kill")]
    assert ("dropped", str(victim)) in kinds and not any(k == "banned" for k, _ in kinds)


def test_a_peer_silent_past_the_timeout_is_dropped(ray_session, tmp_path):
    # The `late` attacker sleeps 120 s in its commit phase from step 3: far longer than the
    # 15 s phase timeout (which a busy 2-core machine's slowest honest round stays well
    # under), so it is dropped and the step runs again without it.
    job, _ = _start("elastic-silent", tmp_path, "steps=12", "eval_every=12", "timeouts.phase_seconds=15",
                    "attack.name=late", "attack.count=1", "attack.start_step=3", "attack.params.delay_s=120")
    summary = job.result()
    late = summary["attackers"]
    assert [d["peer"] for d in summary["dropped"]] == late
    assert summary["dropped"][0]["reason"] == "silent"
    assert summary["banned"] == [] and summary["steps"] == 12 and summary["active_peers"] == 5


def test_an_unknown_job_name_is_a_clear_error(ray_session):
    from admission.client import JoinError

    with pytest.raises(JoinError, match="no running job named 'no-such-job'"):
        find_controller("no-such-job")


def test_leave_at_the_next_step_boundary(ray_session, tmp_path):
    from admission.client import leave

    job, controller = _start("elastic-leave", tmp_path, f"steps={LONG_STEPS}", f"eval_every={LONG_STEPS}",
                             "admission.alpha=1", f"admission.probation_steps={LONG_STEPS}")
    _wait_step(controller, 2)
    joiner_key = Identity.generate()
    joined = join(controller, joiner_key)
    # nobody but the peer itself (or the job's owner) may make it leave
    with pytest.raises(ValueError, match="not signed by its key"):
        leave(controller, "elastic-leave", joined.peer, Identity.generate())
    # (a probation as long as the job: the status below is taken while it serves it)
    _wait_for(controller, "probation", lambda st: _state(st, joined.peer) == "probation")
    # `btard status` shows the same (the test process is connected, as a CLI process would be)
    from typer.testing import CliRunner

    from btard_ray.cli import app

    shown = CliRunner().invoke(app, ["status", "--job", "elastic-leave", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["peers"][str(joined.peer)]["state"] == "probation"
    table = CliRunner().invoke(app, ["status", "--job", "elastic-leave"])
    assert table.exit_code == 0 and "probation" in table.output and "active" in table.output
    assert leave(controller, "elastic-leave", joined.peer, joiner_key) == joined.peer
    _wait_for(controller, "the joiner left", lambda st: _state(st, joined.peer) == "left")
    # only the job's key may end the job early
    from admission.client import finish

    with pytest.raises(ValueError, match="only the job's key may ask for finish"):
        finish(controller, "elastic-leave", joiner_key)
    _finish(controller, "elastic-leave", tmp_path)
    summary = job.result()
    assert summary["finished_early"]["steps"] == summary["steps"] < LONG_STEPS
    assert summary["weights_agree"] and (tmp_path / "elastic-leave" / "checkpoint" / "final.pt").is_file()
    assert summary["membership"][str(joined.peer)]["state"] == "left"
    assert [entry["peer"] for entry in summary["left"]] == [joined.peer]
    assert summary["banned"] == [] and summary["dropped"] == [] and summary["active_peers"] == 6
    events = _events(tmp_path / "elastic-leave")
    assert ("left", str(joined.peer)) in [(e.kind, e.peer) for e in events]
    # the owner's signed request is the evidence of the early end
    finished = events[-1]
    assert finished.kind == "job_finished" and finished.step == summary["steps"]
    assert finished.details["finished_early"] and finished.details["evidence"][0]["payload"] == {"finish": True}


def test_a_job_finished_early_resumes_to_more_steps(ray_session, tmp_path):
    """`btard finish` leaves a clean final checkpoint: `btard resume --steps N` trains on from
    it, and the ledger's chain goes on and verifies."""
    from btard_ray.trainer import resume

    job, controller = _start("elastic-finish", tmp_path, f"steps={LONG_STEPS}", f"eval_every={LONG_STEPS}")
    _wait_step(controller, 3)
    asked = _finish(controller, "elastic-finish", tmp_path)
    summary = job.result()
    ran = summary["steps"]
    assert summary["finished_early"] == {"asked_at_step": asked, "steps": ran} and asked < ran < LONG_STEPS
    assert summary["weights_agree"] and summary["banned"] == []

    resumed = resume(RunDir(tmp_path / "elastic-finish"), steps=ran + 4, show_progress=False)
    assert resumed["steps"] == ran + 4 and resumed["resumed_from"] == [ran]
    assert resumed["finished_early"] is None and resumed["weights_agree"]
    kinds = [e.kind for e in _events(tmp_path / "elastic-finish")]  # (_events verifies the chain)
    assert kinds == ["job_started", "job_finished", "job_resumed", "job_finished"]


def test_a_joiner_whose_actor_cannot_be_placed_says_why(ray_session):
    """Ray keeps an actor that no node has room for pending forever: the joiner gives up
    after its timeout with one line naming the resources, instead of hanging."""
    from admission.client import JoinError, start_peer

    config = load_config(QUICKSTART, ["name=unplaceable", "resources.cpus_per_peer=64"]).model_dump(mode="json")
    with pytest.raises(JoinError, match=r"did not start within 3 s: .*needs 64 CPUs"):
        start_peer(config, Identity.generate(), timeout=3)

"""Checkpoints and ``btard resume``: a job continues after its driver dies.

``test_a_killed_driver_resumes_and_matches_an_uninterrupted_run`` is the real thing: ``btard
run`` in a subprocess with its own local Ray instance, killed with SIGKILL once a checkpoint
for step >= 20 exists, then ``btard resume RUN_DIR`` in another subprocess. Batches and
dropout are functions of (job seed, peer id, step), so with the same membership the resumed
job must end with exactly the weights of an uninterrupted run of the same config (run here
in-process on the session's Ray): the final weight hash is the strongest continuity check
there is. The killed driver's Ray processes (its GCS, raylet, agents and workers: the
driver's descendants and its process group, which the test gives it) are cleaned up by
process id; no other Ray instance on the machine is touched.

The other integration tests resume a finished run's copy from its last periodic checkpoint
(as if the driver had died after writing it): bans and attackers survive, and the plain
path (``protocol.checks: false``) resumes exactly too. The rest checks, without Ray, that a
run directory that cannot be resumed gets one clear line and exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from btard_ray.checkpoint import Checkpoint, ResumeError, step_of_file
from btard_ray.cli import app
from btard_ray.config import load_config
from btard_ray.ledger import Ledger
from btard_ray.replica import Replica
from btard_ray.run_dir import RunDir, RunDirBusy
from btard_ray.trainer import load_for_resume, resume, train

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
runner = CliRunner()


def _btard(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "btard_ray.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _periodic_steps(run: Path) -> list[int]:
    folder = run / "checkpoint"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(s for s in (step_of_file(n) for n in names) if s is not None)


# -- the processes of the killed driver's own Ray instance --------------------------------------


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, start time) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[19])
    return table


def _own_tree(root: int) -> dict[int, str]:
    """pid -> start time of ``root``, its descendants and the members of its process group.

    The driver was started in a new session, so its process group holds exactly the Ray
    processes it started (GCS, raylet, agents), also after they are re-parented; the peer
    workers are the raylet's children.
    """
    table = _processes()
    found = {pid for pid, (_, group, _) in table.items() if group == root}
    found.add(root)
    frontier = list(found)
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return {pid: table[pid][2] for pid in found if pid in table}


def _kill_tree(known: dict[int, str], grace: float) -> list[int]:
    """SIGKILL every process of ``known`` still alive after ``grace`` seconds; returns their pids.

    A pid is only killed while its start time is the recorded one (not a reused pid).
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        table = _processes()
        alive = [pid for pid, start in known.items() if pid in table and table[pid][2] == start
                 and not _is_zombie(pid)]
        if not alive:
            return []
        time.sleep(0.5)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


# -- integration ---------------------------------------------------------------------------------

KILLED = ["peers=4", "steps=60", "checkpoint_every=10", "eval_every=10", "weight_check_every=10"]


@pytest.mark.integration
def test_a_killed_driver_resumes_and_matches_an_uninterrupted_run(ray_session, tmp_path):
    run = tmp_path / "killed"
    log = (tmp_path / "driver.out").open("w")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray instance
    driver = subprocess.Popen(
        [sys.executable, "-m", "btard_ray.cli", "run", str(QUICKSTART), "--out", str(run), "--no-progress",
         *[a for kv in KILLED for a in ("--set", kv)]],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    tree: dict[int, str] = {}
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 240
        while not [s for s in _periodic_steps(run) if s >= 20]:
            assert driver.poll() is None, (tmp_path / "driver.out").read_text()
            assert time.monotonic() < deadline, "no checkpoint for step 20 within 240 s"
            time.sleep(0.1)
        tree = _own_tree(driver.pid)
        driver.send_signal(signal.SIGKILL)  # the driver crashes mid-run
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        tree.update(_own_tree(driver.pid))
        # The GCS and the raylet (and with it the peers) exit with their driver; Ray's agent
        # processes do not, so what is left after a few seconds is killed.
        leftovers = _kill_tree(tree, grace=3)
        print(f"\nkilled after {time.monotonic() - t0:.0f} s; leftover processes of its Ray instance: {leftovers}")
        log.close()
    assert not (run / "summary.json").exists() and not (run / "checkpoint" / "final.pt").exists()
    killed_at = max(_periodic_steps(run))
    assert 20 <= killed_at < 60

    t0 = time.monotonic()
    resumed = _btard("resume", str(run), "--no-progress", env={"RAY_ADDRESS": ray_session})
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert f"at step {killed_at} of 60" in resumed.stdout, resumed.stdout
    print(f"resumed at step {killed_at} in {time.monotonic() - t0:.0f} s")

    t0 = time.monotonic()
    reference_dir = tmp_path / "reference"
    reference = train(load_config(QUICKSTART, KILLED), RunDir(reference_dir), show_progress=False)
    print(f"uninterrupted run in {time.monotonic() - t0:.0f} s")

    summary = json.loads((run / "summary.json").read_text())
    # steps continue: 60 in all, metrics every 10 steps with no gap and no repeat
    assert summary["steps"] == 60 and summary["resumed_from"] == [killed_at]
    assert _metric_steps(run) == [10, 20, 30, 40, 50, 60] == _metric_steps(reference_dir)
    # honest peers agree, and on exactly the weights of the run that never stopped
    assert summary["weights_agree"] and summary["weight_hash"] == reference["weight_hash"]
    assert summary["final_test_accuracy"] == pytest.approx(reference["final_test_accuracy"], abs=0.02)
    assert summary["banned"] == [] and summary["active_peers"] == 4 and summary["accusations"] == 0
    final = RunDir(run).latest_checkpoint()
    assert final is not None and final.step == 60
    replica = Replica(load_config(QUICKSTART, KILLED))
    replica.load_state({"model": final.model, "optimizer": final.optimizer, "scheduler": final.scheduler})
    assert replica.weight_hash() == summary["weight_hash"]

    # the ledger's chain continues under the same job key and verifies
    assert summary["job_public_key"] == json.loads((run / "job_key").read_text())["public_key"]
    with Ledger(run, create=False) as ledger:
        report = ledger.verify(summary["job_public_key"])
        assert report.ok, report.problem
        events = ledger.events()
    kinds = [e.kind for e in events]
    assert kinds[0] == "job_started" and kinds[-1] == "job_finished" and kinds.count("job_resumed") == 1
    assert kinds.count("job_finished") == 1  # the killed driver never finished
    event = events[kinds.index("job_resumed")]
    details = event.details
    assert event.step == killed_at and details["from_step"] == killed_at and details["steps"] == 60
    started_keys = events[0].details["members"]
    assert details["previous_keys"] == started_keys  # no bans: the checkpoint's keys are the first ones
    assert set(details["members"]) == set(started_keys) and not set(details["members"].values()) & set(
        started_keys.values())  # same peer ids, new actors with new keys
    assert details["checkpoint_head"]["seq"] == 0 and details["events_after_checkpoint"] == 0

    verified = runner.invoke(app, ["ledger", "verify", "--db", str(run), "--key", summary["job_public_key"]])
    assert verified.exit_code == 0, verified.output

    again = _btard("resume", str(run))
    assert again.returncode == 2 and "already finished at step 60" in again.stderr
    assert len([line for line in again.stderr.splitlines() if line.strip()]) == 1


def _crash_after_last_checkpoint(finished: Path, copy: Path) -> int:
    """A copy of a finished run as its driver would have left it had it died after its last
    periodic checkpoint (its ledger still holds what the driver wrote later); that step."""
    shutil.copytree(finished, copy)
    (copy / "summary.json").unlink()
    (copy / "checkpoint" / "final.pt").unlink()
    return max(_periodic_steps(copy))


@pytest.mark.integration
def test_banned_peers_stay_banned_after_a_resume(ray_session, tmp_path):
    cfg = load_config(QUICKSTART, ["peers=3", "steps=20", "checkpoint_every=10", "eval_every=10",
                                   "attack.name=sign_flip", "attack.count=1"])
    whole = train(cfg, RunDir(tmp_path / "whole"), show_progress=False)
    (attacker,) = whole["attackers"]
    assert [(b["peer"], b["reason"]) for b in whole["banned"]] == [(attacker, "wrong_gradient")]
    assert whole["banned"][0]["step"] < 10  # caught before the checkpoint this test resumes from

    tampered = tmp_path / "tampered"
    _crash_after_last_checkpoint(tmp_path / "whole", tampered)
    with sqlite3.connect(tampered / "ledger.db") as db:
        db.execute("UPDATE btard_ledger_events SET reason = 'nothing' WHERE kind = 'banned'")
    with pytest.raises(ResumeError, match="the ledger does not verify"):
        load_for_resume(RunDir(tampered))

    run = tmp_path / "resumed"
    at = _crash_after_last_checkpoint(tmp_path / "whole", run)
    assert at == 10
    summary = resume(RunDir(run), show_progress=False)
    assert summary["banned"] == whole["banned"] and summary["attackers"] == [attacker]
    assert summary["active_peers"] == 2 and summary["steps"] == 20
    assert summary["skipped_steps"] == whole["skipped_steps"]
    assert summary["weight_hash"] == whole["weight_hash"]
    with Ledger(run, create=False) as ledger:
        assert ledger.verify(summary["job_public_key"]).ok
        events = ledger.events()
    resumed = next(e for e in events if e.kind == "job_resumed")
    assert str(attacker) not in resumed.details["members"] and resumed.details["banned"] == [str(attacker)]
    # the dead driver's job_finished (written after the checkpoint) is named as redone
    assert resumed.details["events_after_checkpoint"] == 1
    assert [e.kind for e in events].count("banned") == 1


@pytest.mark.integration
def test_plain_path_resumes_exactly_and_can_train_further(ray_session, tmp_path):
    cfg = load_config(QUICKSTART, ["peers=2", "steps=12", "checkpoint_every=5", "eval_every=4",
                                   "protocol.checks=false"])
    whole = train(cfg, RunDir(tmp_path / "whole"), show_progress=False)
    run = tmp_path / "resumed"
    assert _crash_after_last_checkpoint(tmp_path / "whole", run) == 10
    summary = resume(RunDir(run), show_progress=False)
    assert summary["weight_hash"] == whole["weight_hash"] and summary["steps"] == 12
    # the dead driver's line for step 12 was dropped and written again; the line's mean
    # loss covers steps 9 to 12, two of them run before the checkpoint
    resumed_lines = RunDir(run).read_metrics()
    whole_lines = RunDir(tmp_path / "whole").read_metrics()
    assert [m["step"] for m in resumed_lines] == [4, 8, 12]
    assert resumed_lines[-1]["train_loss"] == whole_lines[-1]["train_loss"]
    assert resumed_lines[-1]["test_accuracy"] == whole_lines[-1]["test_accuracy"]
    assert not (run / "ledger.db").exists()

    # a finished run trains further with a new total (the schedule takes the new length)
    longer = resume(RunDir(run), steps=14, show_progress=False)
    assert longer["steps"] == 14 and longer["resumed_from"] == [10, 12]
    assert load_config(run / "config.yaml").steps == 14
    assert _metric_steps(run) == [4, 8, 12, 14]


# -- what cannot be resumed (no Ray) --------------------------------------------------------------


def _fake_run(tmp_path: Path, step: int, overrides: tuple[str, ...] = ()) -> RunDir:
    """A run directory with a config and a checkpoint at ``step`` (plain path, no Ray)."""
    cfg = load_config(QUICKSTART, ["peers=3", "steps=20", "protocol.checks=false", *overrides])
    run = RunDir(tmp_path / "run").create(cfg)
    replica = Replica(cfg)
    run.save_checkpoint(Checkpoint(
        step=step, **replica.state(), weight_hash=replica.weight_hash(), members=[0, 1, 2], keys={}, banned=[],
        attackers=[], seed=None, ledger=None, records=[], window=0, last_eval={}, wall_seconds=0.0, resumes=[],
        config=cfg.model_dump(mode="json")))
    return run


def test_checkpoints_are_atomic_plain_data_and_only_the_latest_is_kept(tmp_path):
    run = _fake_run(tmp_path, 5)
    latest = run.latest_checkpoint()
    assert latest is not None and latest.step == 5
    ckpt = Checkpoint(**{**latest.__dict__, "step": 10})
    run.save_checkpoint(ckpt)
    assert _periodic_steps(run.path) == [10]
    assert sorted(p.name for p in (run.path / "checkpoint").iterdir()) == ["step-000010.pt"]  # no temp file left
    import torch

    payload = torch.load(run.path / "checkpoint" / "step-000010.pt", weights_only=True)  # no pickled code
    assert payload["format"] == "btard-checkpoint-v1" and payload["step"] == 10
    cfg, loaded = load_for_resume(run)
    assert loaded.step == 10 and cfg.steps == 20
    replica = Replica(cfg)
    replica.load_state({"model": loaded.model, "optimizer": loaded.optimizer, "scheduler": loaded.scheduler})
    assert replica.weight_hash() == loaded.weight_hash


def test_what_cannot_be_resumed_says_why(tmp_path):
    run = _fake_run(tmp_path, 10)
    with pytest.raises(ResumeError, match=r"--steps N with N > 10"):
        load_for_resume(run, steps=10)
    changed = load_config(run.path / "config.yaml", ["optimizer.lr=0.2", "eval_every=5"])
    run.write_config(changed)  # eval_every may change; the optimizer may not
    with pytest.raises(ResumeError, match=r"optimizer differ from the config of the checkpoint at step 10"):
        load_for_resume(run)
    (run.path / "checkpoint" / "step-000010.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match=r"step-000010.pt: cannot read checkpoint"):
        load_for_resume(run)
    with pytest.raises(ResumeError, match="no such run directory"):
        load_for_resume(RunDir(tmp_path / "nothing"))


def test_a_job_whose_driver_lives_is_not_resumed_beside_it(tmp_path):
    run = _fake_run(tmp_path, 10)
    config = (run.path / "config.yaml").read_text()
    with RunDir(run.path).driver_lock() as held:  # what a live driver holds while it runs
        with held.driver_lock():  # re-entrant for the driver itself
            pass
        with pytest.raises(RunDirBusy, match=rf"another driver \(pid {os.getpid()}\) is running this job"):
            resume(RunDir(run.path), steps=30, show_progress=False)
    assert (run.path / "config.yaml").read_text() == config  # refused before writing anything
    with RunDir(run.path).driver_lock():  # released with its holder
        pass


def test_resume_cli_errors_are_one_line_exit_2(tmp_path):
    cfg = load_config(QUICKSTART, ["steps=20"])
    no_checkpoint = RunDir(tmp_path / "early").create(cfg)
    result = _btard("resume", str(no_checkpoint.path))
    assert result.returncode == 2 and "no checkpoint to resume from" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1

    no_checkpoint.write_summary({"steps": 20})
    finished = runner.invoke(app, ["resume", str(no_checkpoint.path)])
    assert finished.exit_code == 2 and "already finished at step 20" in finished.output

    helped = runner.invoke(app, ["resume", "--help"])
    assert helped.exit_code == 0 and "Example" in helped.output and "--steps" in helped.output

"""Sybil admission: an attacker with one core runs ``btard join --count K`` against a live job.

Design §5.4 claims that with a puzzle costing α gradients, an attacker whose compute budget
is B gradients per step gains at most B/α identities per step. This benchmark starts a real
job (``btard run configs/quickstart.yaml``, 6 honest peers, local Ray) as a subprocess,
parses the ``btard join --job NAME --address HOST:PORT`` line it prints, and starts the
attacker as a second subprocess::

    taskset -c 1 btard join --job NAME --address ADDR --count K [--attack sign_flip] --key KEYS/sybil-a.key --wait
    taskset -c 1 btard join ... --key KEYS/sybil-b.key --wait        (--processes 2, the default)

K (default 1000) is far more than the attacker can pay for during the run, so the joiners
solve puzzles for the whole run: what they get is what one core buys, and ``--wait`` keeps
each process (which owns its peers' actors) alive, so its admitted peers stay in the job
until the end (``--no-wait`` would exit after K identities and take them along). They are
stopped after the job has finished. ``taskset`` pins both processes to the same core, so
the budget is one core however many processes use it (without taskset, ``--processes 1``
is still one core: argon2id solving is single-threaded). Two processes because one
``btard join`` idles between puzzles: after a solution it starts the Sybil's Peer actor and
waits until the controller has accepted it (seconds on a loaded machine) before it asks for
the next challenge; the second process solves meanwhile. The Sybils' Peer actors themselves run
in Ray workers on the job's machine, not on the attacker's core; on a real cluster they would
run on the attacker's hardware and cost it gradient computations too, so the budget left for
puzzles would be smaller than measured here.

Two variants (both run by default):

* ``sign_flip``: ``btard join ... --attack sign_flip``, every Sybil flips its gradient from
  its first step on. Probation validates newcomers at every step, so they are banned in
  probation and never become active.
* ``sleeper``: ``btard join`` without ``--attack``: Sybils that behave honestly, in
  probation and after it. This is the strongest Sybil for the share of Byzantine active
  peers (the state an attacker wants just before a coordinated strike): probation cannot
  catch it, it is promoted, and only the admission rate limits how fast the attacker's
  share of the active peers grows. The library has no "honest, then attack" joiner; an
  honest joiner whose keys the attacker holds is exactly such a Sybil while it waits, so the
  benchmark counts the peers admitted with the attacker's key files as Byzantine.

While the job runs, this process connects to its Ray cluster and polls the admission
controller's ``status()`` twice a second: the step, the puzzle's costs (the driver's
measured gradient time, the expected evaluations k) and the queue. Afterwards it reads the
run's ``summary.json`` (every peer's record: joined, promoted, ended) and ``ledger.db``
(``admitted``, ``probation_failed``, ``promoted``, ``banned``, ``dropped``), and the
joiner's output (one line per identity the controller accepted, with its evaluations and
seconds).

What is reported, per variant:

* identities whose puzzle solution the controller accepted, cumulative over steps, against
  the bound (B/α)·(t − t₀) from the step t₀ at which the attacker started. B = the wall time
  of a step during the attack / the driver's measured time of one gradient (the
  ``gradient_seconds`` the puzzle difficulty follows), i.e. the gradients one core computes
  in one step; α = ``admission.alpha``. Equivalently the bound is one identity per
  ``expected_solve_seconds`` = k · evaluation_seconds = α · gradient_seconds of wall time.
* the puzzle itself: evaluations spent against Σk, the attacker's seconds per evaluation
  against the controller's measured ``evaluation_seconds``, and how busy its core was.
* at every step, the Byzantine active peers (promoted and not yet banned) against all active
  peers, and the maximum share; for the sleeper variant the step at which the share would
  reach one half, at the measured rate and at the bound.

Commands (~12 min for both on a busy 2-core machine; a trial run: --steps 40 --only sign_flip)::

    python benchmarks/sybil.py
    python benchmarks/sybil.py --only sign_flip --steps 150 --alpha 200

Results: benchmarks/results/sybil.json, sybil.md and sybil.png (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import btard_ray  # noqa: F401  - Ray auth mode before Ray is imported
import ray

from btard_ray.ledger import Ledger

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VARIANTS = ("sign_flip", "sleeper")
POLL_SECONDS = 0.5
JOIN_LINE = re.compile(r"btard join --job (\S+) --address (\S+)")
START_LINE = re.compile(r"at step (\d+): a puzzle costs about (\d+) argon2id evaluations")
ADMIT_LINE = re.compile(r"admitted as peer (\d+) \(key ([0-9a-f]+)\S*, (.+?)\) after (\d+) evaluations in ([\d.]+) s")


def btard_command() -> list[str]:
    """The ``btard`` script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).with_name("btard")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("btard")
    if found is None:
        raise SystemExit("no `btard` command: install the package (pip install -e .)")
    return [found]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": model,
            "cores": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


class Reader(threading.Thread):
    """Collects a subprocess's stdout lines with the time they arrived."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        super().__init__(daemon=True)
        self.proc, self.log = proc, log
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as fh:
            for raw in self.proc.stdout:
                line = raw.rstrip("\n")
                self.lines.append((time.time(), line))
                fh.write(f"{time.time():.3f} {line}\n")
                fh.flush()


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a subprocess started with its own session, and what it started (by its process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=grace)


def settings_for(args: argparse.Namespace) -> dict[str, Any]:
    return {"peers": 6, "steps": args.steps, "admission.alpha": args.alpha,
            "admission.probation_steps": args.probation, "admission.max_joins_per_step": args.max_joins,
            "admission.max_probation_share": 0.5, "admission.expiry_steps": 50, "admission.memlimit_mb": 8,
            "admission.opslimit": 1, "resources.cpus_per_peer": args.cpus_per_peer, "count": args.count,
            "processes": args.processes, "core": args.core}


def run_variant(variant: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    name = f"sybil-bench-{variant.replace('_', '-')}"
    run_dir = work / f"run-{variant}"
    keys = work / f"keys-{variant}"
    keys.mkdir(parents=True)
    env = {**os.environ, "COLUMNS": "400", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "TERM": "dumb"}
    overrides = [f"steps={args.steps}", "checkpoint_every=0", f"eval_every={args.steps}",
                 f"admission.alpha={args.alpha}", f"admission.probation_steps={args.probation}",
                 f"admission.max_joins_per_step={args.max_joins}", f"resources.cpus_per_peer={args.cpus_per_peer}"]
    job_cmd = [*btard_command(), "run", "configs/quickstart.yaml", "--no-progress", "--name", name,
               "--out", str(run_dir)] + [a for o in overrides for a in ("--set", o)]
    t_launch = time.time()
    job = subprocess.Popen(job_cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    job_out = Reader(job, work / f"job-{variant}.log")
    job_out.start()
    attackers: list[subprocess.Popen] = []
    att_out: list[Reader] = []
    polls: list[dict[str, Any]] = []
    try:
        address = None
        deadline = time.time() + 300
        while address is None:
            if time.time() > deadline or job.poll() is not None:
                raise RuntimeError("the job did not print its join line:\n" + "\n".join(l for _, l in job_out.lines))
            for _, line in job_out.lines:
                m = JOIN_LINE.search(line)
                if m:
                    address = m.group(2)
            time.sleep(0.2)
        print(f"[{variant}] job {name} is joinable at {address} ({time.time() - t_launch:.0f} s after launch)",
              flush=True)
        pin = ["taskset", "-c", str(args.core)] if shutil.which("taskset") and args.core >= 0 else []
        attack_cmds = []
        for i in range(args.processes):
            cmd = [*pin, *btard_command(), "join", "--job", name, "--address", address, "--count", str(args.count),
                   "--key", str(keys / f"sybil{'-' + chr(97 + i) if args.processes > 1 else ''}.key"), "--wait"]
            if variant == "sign_flip":
                cmd += ["--attack", "sign_flip"]
            attack_cmds.append(cmd)
        t_attack = time.time()
        for i, cmd in enumerate(attack_cmds):
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            attackers.append(proc)
            att_out.append(Reader(proc, work / f"attacker-{variant}-{i}.log"))
            att_out[-1].start()

        # Poll the job's admission controller from this process.
        ray.init(address=address, namespace=f"btard-{name}", logging_level=logging.ERROR, log_to_driver=False)
        controller = None
        for _ in range(100):
            try:
                controller = ray.get_actor("admission", namespace=f"btard-{name}")
                break
            except ValueError:
                time.sleep(0.2)
        if controller is None:
            raise RuntimeError("no admission controller found")
        hard_stop = time.time() + args.max_minutes * 60
        while job.poll() is None and time.time() < hard_stop:
            try:
                st = ray.get(controller.status.remote(), timeout=30)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                break
            peers = st.get("peers", {})
            states: dict[str, int] = {}
            for r in peers.values():
                states[r["state"]] = states.get(r["state"], 0) + 1
            puzzle = st.get("puzzle", {})
            polls.append({"t": time.time(), "step": st.get("step"), "state": st.get("state"),
                          "queued": st.get("queued", 0), "rejected": st.get("rejected_solutions", 0),
                          "gradient_seconds": puzzle.get("gradient_seconds"),
                          "gradient_seconds_measured": puzzle.get("gradient_seconds_measured"),
                          "expected_evaluations": puzzle.get("expected_evaluations"),
                          "evaluation_seconds": puzzle.get("evaluation_seconds"),
                          "expected_solve_seconds": puzzle.get("expected_solve_seconds"), "states": states})
            if st.get("state") in ("finished", "failed") or (st.get("step") or 0) >= args.steps - 1:
                break
            if len(polls) % 20 == 0:
                print(f"[{variant}] step {st.get('step')}: {states}, queued {st.get('queued', 0)}", flush=True)
            time.sleep(POLL_SECONDS)
        ray.shutdown()  # before the job shuts its local Ray down
        try:
            job.wait(timeout=max(60.0, hard_stop - time.time()))
        except subprocess.TimeoutExpired:
            print(f"[{variant}] the job ran past --max-minutes: stopping it", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        t_end = time.time()
        for proc in attackers:
            _kill_group(proc)
        _kill_group(job, grace=30)
        job_out.join(timeout=5)
    if job.returncode != 0:
        raise RuntimeError(f"the job exited with {job.returncode}; see {work / f'job-{variant}.log'}:\n"
                           + "\n".join(l for _, l in job_out.lines[-30:]))
    for reader in att_out:
        reader.join(timeout=5)
    att_lines = sorted(line for reader in att_out for line in reader.lines)
    return analyse(variant, args, run_dir, keys, polls, job_out.lines, att_lines, attack_cmds, job_cmd,
                   t_launch, t_attack, t_end)


def _step_at(polls: list[dict[str, Any]], t: float) -> int:
    """The step the job was at, at time t (the last poll before it)."""
    step = polls[0]["step"] if polls else 0
    for p in polls:
        if p["t"] > t:
            break
        step = p["step"]
    return int(step or 0)


def analyse(variant: str, args: argparse.Namespace, run_dir: Path, keys: Path, polls: list[dict[str, Any]],
            job_lines: list[tuple[float, str]], att_lines: list[tuple[float, str]], attack_cmds: list[list[str]],
            job_cmd: list[str], t_launch: float, t_attack: float, t_end: float) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    events = Ledger(run_dir / "ledger.db", create=False).events()
    records = {int(p): r for p, r in summary["membership"].items()}
    sybil_keys = set()
    for path in keys.glob("*.key"):
        try:
            sybil_keys.add(json.loads(path.read_text())["public_key"])
        except (OSError, ValueError, KeyError):
            pass
    byz = {p for p, r in records.items() if r["public_key"] in sybil_keys or r.get("attacker")}
    steps = int(summary["steps"])

    # -- the attacker's own account: one line per accepted identity -------------------------
    start_step, k_announced = None, None
    identities = []
    for t, line in att_lines:
        m = START_LINE.search(line)
        if m and start_step is None:
            start_step, k_announced, t_attack = int(m.group(1)), int(m.group(2)), t
        m = ADMIT_LINE.search(line)
        if m:
            identities.append({"peer": int(m.group(1)), "t": t, "step": _step_at(polls, t),
                               "evaluations": int(m.group(4)), "seconds": float(m.group(5))})
    t_done = next((t for t, line in job_lines if line.startswith("done:")), t_end)
    attack_wall = t_done - t_attack
    # (a joiner in the middle of a join when the job ends fails: only earlier errors count)
    errors = [line for t, line in att_lines if t < t_done and ("error" in line.lower() or "Traceback" in line)]
    if start_step is None:
        start_step = _step_at(polls, t_attack)
    by_peer = {e.peer: e for e in events if e.kind == "admitted"}
    for ident in identities:
        ev = by_peer.get(str(ident["peer"]))
        if ev is not None:
            ch = ev.details.get("challenge", {})
            ident.update(taken_in_step=ev.step, challenge_step=ch.get("step"),
                         expected_evaluations=ch.get("expected_evaluations"))
        rec = records.get(ident["peer"], {})
        ident.update(state=rec.get("state"), promoted_step=rec.get("promoted_step"), ended_step=rec.get("ended_step"),
                     reason=rec.get("reason"))

    # -- B: gradients one core computes per step, during the attack ----------------------------
    window = [p for p in polls if p["t"] >= t_attack and p["step"] is not None]
    if len(window) >= 2 and window[-1]["step"] > window[0]["step"]:
        step_wall = (window[-1]["t"] - window[0]["t"]) / (window[-1]["step"] - window[0]["step"])
    else:
        step_wall = summary["mean_step_seconds"]
    grads = [p["gradient_seconds"] for p in window if p.get("gradient_seconds_measured")]
    grad_s = statistics.fmean(grads) if grads else float("nan")
    eval_s = next((p["evaluation_seconds"] for p in polls if p.get("evaluation_seconds")), float("nan"))
    ks = [p["expected_evaluations"] for p in window if p.get("gradient_seconds_measured")]
    B = step_wall / grad_s
    rate_bound = B / args.alpha  # identities per step
    attack_end_step = min(steps, _step_at(polls, t_end) if polls else steps)
    attack_steps = max(1, attack_end_step - start_step)
    accepted = len(identities)
    rate = accepted / attack_steps
    total_eval = sum(i["evaluations"] for i in identities)
    total_k = sum(i.get("expected_evaluations") or 0.0 for i in identities)
    solve_s = sum(i["seconds"] for i in identities)
    att_eval_s = solve_s / total_eval if total_eval else float("nan")

    # -- per step: admissions and the share of Byzantine active peers --------------------------
    def present(r: dict[str, Any], t: int, state_from: int | None) -> bool:
        return state_from is not None and state_from <= t and (r["ended_step"] is None or t <= r["ended_step"])

    kinds = ("admitted", "probation_passed", "probation_failed", "promoted", "banned", "dropped")
    ledger_counts = {k: sum(1 for e in events if e.kind == k) for k in kinds}
    ledger_byz = {k: sum(1 for e in events if e.kind == k and e.peer is not None and e.peer.isdigit()
                         and int(e.peer) in byz) for k in kinds}
    per_step = []
    cum_accepted = cum_taken = 0
    max_share, max_share_step, first_half = 0.0, None, None
    for t in range(steps):
        cum_accepted += sum(1 for i in identities if i["step"] == t)
        cum_taken += sum(1 for e in events if e.kind == "admitted" and e.step == t
                         and e.peer is not None and int(e.peer) in byz)
        active = [p for p, r in records.items()
                  if present(r, t, 0 if r["joined_step"] is None else r["promoted_step"])]
        probation = [p for p, r in records.items() if r["joined_step"] is not None and present(r, t, r["joined_step"])
                     and (r["promoted_step"] is None or t < r["promoted_step"])]
        byz_active = sum(1 for p in active if p in byz)
        share = byz_active / len(active) if active else 0.0
        if share > max_share:
            max_share, max_share_step = share, t
        if share >= 0.5 and first_half is None:
            first_half = t
        wall = [p["t"] for p in polls if p["step"] == t]
        per_step.append({"step": t, "t": round(wall[0] - t_attack, 2) if wall else None,
                         "accepted_cum": cum_accepted, "taken_in_cum": cum_taken,
                         "bound": round(max(0.0, t - start_step) * rate_bound, 3),
                         "active": len(active), "byz_active": byz_active, "probation": len(probation),
                         "byz_probation": sum(1 for p in probation if p in byz), "share": round(share, 4),
                         "queued": next((p["queued"] for p in polls if p["step"] == t), None)})
    honest_active = per_step[-1]["active"] - per_step[-1]["byz_active"]
    # steps from the attack's start until the Byzantine active peers equal the honest ones
    # (share 1/2), at a constant admission rate r: H/r steps of admissions, then probation.
    to_half = {name: (honest_active / r + args.probation + 1 if r > 0 else math.inf)
               for name, r in (("measured", rate), ("bound", rate_bound))}
    # Step durations between polls: intervals in which the controller accepted an identity
    # (it waits for the joiner's new actor inside submit(), and the driver's next sync waits
    # for the controller) against the others.
    seen: dict[int, float] = {}
    for p in window:
        seen.setdefault(p["step"], p["t"])
    marks = sorted(seen.items())
    with_join: list[tuple[float, int]] = []
    without: list[tuple[float, int]] = []
    for (s1, t1), (s2, t2) in zip(marks, marks[1:]):
        hit = any(t1 < i["t"] <= t2 + POLL_SECONDS for i in identities)
        (with_join if hit else without).append((t2 - t1, s2 - s1))
    def per_step_s(xs: list[tuple[float, int]]) -> float | None:
        return sum(d for d, _ in xs) / sum(n for _, n in xs) if xs else None
    stalled_share = sum(d for d, _ in with_join) / max(1e-9, sum(d for d, _ in with_join + without))
    ban_delay = [i["ended_step"] - i["taken_in_step"] for i in identities
                 if i.get("state") == "banned" and i.get("taken_in_step") is not None and i.get("ended_step") is not None]

    return {
        "variant": variant,
        "job": summary["job"],
        "job_command": " ".join(job_cmd[1:]).replace(str(run_dir), "<tmp>/run"),
        "attacker_commands": [" ".join(cmd).replace(str(keys), "<tmp>/keys").replace(btard_command()[0], "btard")
                              for cmd in attack_cmds],
        "steps": steps,
        "job_wall_seconds": round(t_end - t_launch, 1),
        "summary_wall_seconds": summary["wall_seconds"],
        "final_test_accuracy": summary["final_test_accuracy"],
        "attack_start_step": start_step,
        "attack_end_step": attack_end_step,
        "attack_steps": attack_steps,
        "k_announced": k_announced,
        "step_wall_seconds": step_wall,
        "summary_mean_step_seconds": summary["mean_step_seconds"],
        "gradient_seconds": grad_s,
        "evaluation_seconds_controller": eval_s,
        "expected_evaluations_mean": statistics.fmean(ks) if ks else None,
        "expected_solve_seconds": args.alpha * grad_s,
        "B_gradients_per_step": B,
        "bound_identities_per_step": rate_bound,
        "accepted": accepted,
        "measured_identities_per_step": rate,
        "measured_over_bound": rate / rate_bound if rate_bound else None,
        "evaluations_spent": total_eval,
        "expected_evaluations_sum": total_k,
        "attacker_seconds_per_evaluation": att_eval_s,
        "attacker_solve_seconds": solve_s,
        "attacker_wall_seconds": attack_wall,
        # the puzzle work it got done, in cores at the controller's measured speed per evaluation
        "attacker_cores_of_work": total_eval * eval_s / attack_wall if attack_wall > 0 else None,
        "attacker_errors": errors[:5],
        "byzantine_peers": sorted(byz),
        "ledger_counts": ledger_counts,
        "ledger_counts_byzantine": ledger_byz,
        "banned_in_probation_after_steps": ban_delay,
        "promoted_byzantine": sum(1 for p in byz if records[p]["promoted_step"] is not None),
        "max_byzantine_active_share": max_share,
        "max_share_step": max_share_step,
        "first_step_share_half": first_half,
        "honest_active_at_end": honest_active,
        "steps_to_half_from_start": to_half,
        "step_seconds_with_join": per_step_s(with_join),
        "step_seconds_without_join": per_step_s(without),
        "max_interval_seconds_with_join": max((d for d, _ in with_join), default=None),
        "wall_share_in_intervals_with_join": stalled_share,
        "identities": identities,
        "per_step": per_step,
        "polls": len(polls),
    }


def _f(x: Any, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


def to_markdown(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        "# Sybil admission: one core against the puzzle bound B/α (design §5.4)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m['platform']}, {m['cpu']}, {m['cores']} cores (shared with other work: load average "
        f"{', '.join(map(str, m['load_average_at_start']))} at the start), Python {m['python']}, ray {m['ray']}, "
        f"CPU only.  ",
        f"Run on {result['date']}; total {result['wall_seconds']:.0f} s.",
        "",
        "Settings: quickstart (6 honest peers, MNIST CNN on digits, CenteredClip, full defence), "
        f"steps={s['steps']}, admission.alpha={s['admission.alpha']:g}, "
        f"admission.probation_steps={s['admission.probation_steps']}, "
        f"admission.max_joins_per_step={s['admission.max_joins_per_step']}, max_probation_share=0.5, "
        f"expiry_steps=50, argon2id 8 MiB × 1 pass, resources.cpus_per_peer={s['resources.cpus_per_peer']:g} "
        f"(so Ray can place the joiners' actors on 2 CPUs), checkpoint_every=0. Attacker: {s['processes']} "
        f"`btard join --count {s['count']}` process{'es' if s['processes'] > 1 else ''}, all pinned with "
        f"`taskset -c {s['core']}` (one core in all; two processes so that the core keeps solving while "
        "one of them waits for its new Sybil's actor to start), started as soon as the job was joinable and "
        "stopped after the job finished; they solved puzzles for the whole run (K is never reached).",
        "",
        "B (the attacker's budget in gradients per step) = wall seconds per step during the attack / the "
        "driver's measured seconds per gradient (`gradient_seconds`, which the puzzle difficulty follows). "
        "The bound (B/α)·(t − t₀) is the expected number of identities one fully busy core buys from the step t₀ "
        "the attacker started; \"accepted\" counts identities whose solution the controller accepted (the "
        "joiner's output), \"taken in\" the ledger's `admitted` events (the driver starts their probation). "
        "Byzantine active = the attacker's peers that are active (promoted, not banned) in that step.",
        "",
    ]
    for v in result["variants"]:
        r = v
        lines += [
            f"## Variant `{r['variant']}`",
            "",
            "Attacker: " + "; ".join(f"`{c}`" for c in r["attacker_commands"]),
            "",
            "| quantity | value |",
            "|---|---|",
            f"| steps / wall time of the job | {r['steps']} / {r['job_wall_seconds']:.0f} s |",
            f"| attack from step t₀ to step | {r['attack_start_step']} to {r['attack_end_step']} |",
            f"| wall seconds per step during the attack (summary mean_step_seconds) | "
            f"{_f(r['step_wall_seconds'])} ({_f(r['summary_mean_step_seconds'])}) |",
            f"| gradient_seconds (driver, mean over the attack) | {_f(r['gradient_seconds'])} |",
            f"| B = gradients per step on one core | {_f(r['B_gradients_per_step'])} |",
            f"| puzzle: evaluation_seconds (controller) / expected evaluations k (mean) / expected solve s | "
            f"{_f(r['evaluation_seconds_controller'])} / {_f(r['expected_evaluations_mean'], '.0f')} / "
            f"{_f(r['expected_solve_seconds'])} |",
            f"| **bound B/α, identities per step** | **{_f(r['bound_identities_per_step'])}** |",
            f"| **measured identities per step** (accepted / steps of attack) | "
            f"**{_f(r['measured_identities_per_step'])}** ({r['accepted']} / {r['attack_steps']}), "
            f"{_f(r['measured_over_bound'], '.2f')} of the bound |",
            f"| evaluations spent / Σk of the challenges | {r['evaluations_spent']} / "
            f"{_f(r['expected_evaluations_sum'], '.0f')} |",
            f"| attacker seconds per evaluation (controller measured) | {_f(r['attacker_seconds_per_evaluation'])} "
            f"({_f(r['evaluation_seconds_controller'])}) |",
            f"| puzzle work done: evaluations × controller's evaluation_seconds / attack wall time | "
            f"{_f(r['attacker_cores_of_work'], '.2f')} core over {r['attacker_wall_seconds']:.0f} s |",
            f"| seconds per step in poll intervals where the controller accepted an identity / in the others | "
            f"{_f(r['step_seconds_with_join'])} / {_f(r['step_seconds_without_join'])} (longest such interval "
            f"{_f(r['max_interval_seconds_with_join'])} s; {_f(100 * (r['wall_share_in_intervals_with_join'] or 0), '.0f')}% "
            "of the attack's wall time) |",
            f"| ledger, attacker's peers: admitted / probation_failed / promoted / banned / dropped | "
            f"{r['ledger_counts_byzantine']['admitted']} / {r['ledger_counts_byzantine']['probation_failed']} / "
            f"{r['ledger_counts_byzantine']['promoted']} / {r['ledger_counts_byzantine']['banned']} / "
            f"{r['ledger_counts_byzantine']['dropped']} |",
            f"| **max share of Byzantine active peers** | **{_f(r['max_byzantine_active_share'], '.3f')}**"
            + (f" (step {r['max_share_step']})" if r['max_share_step'] is not None else "") + " |",
            f"| first step with share ≥ 1/2 | {r['first_step_share_half'] if r['first_step_share_half'] is not None else 'never'} |",
            f"| final test accuracy | {100 * r['final_test_accuracy']:.1f}% |",
            "",
        ]
        if r["attacker_errors"]:
            lines += ["Attacker output with errors: " + "; ".join(f"`{e[:160]}`" for e in r["attacker_errors"]), ""]
        lines += ["| step | seconds since attack | accepted (cum.) | taken in (cum.) | bound (B/α)(t−t₀) | "
                  "Byzantine active / active | share | on probation (Byzantine) |",
                  "|---|---|---|---|---|---|---|---|"]
        stride = max(1, r["steps"] // 15)
        rows = [row for row in r["per_step"] if row["step"] % stride == 0 or row["step"] == r["steps"] - 1]
        for row in rows:
            lines.append(f"| {row['step']} | {_f(row['t'], '.0f')} | {row['accepted_cum']} | {row['taken_in_cum']} | "
                         f"{row['bound']:.1f} | {row['byz_active']} / {row['active']} | {row['share']:.3f} | "
                         f"{row['probation']} ({row['byz_probation']}) |")
        lines.append("")
    lines += ["## Conclusions", ""] + [f"- {c}" for c in result["conclusions"]] + [""]
    if result.get("plot"):
        lines += ["![admissions and share](sybil.png)", ""]
    return "\n".join(lines)


def conclusions(variants: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    out = []
    for r in variants:
        ratio = r["measured_over_bound"]
        head = (f"`{r['variant']}`: one core got {r['accepted']} identities accepted in {r['attack_steps']} steps, "
                f"{r['measured_identities_per_step']:.3f} per step against the bound B/α = "
                f"{r['bound_identities_per_step']:.3f} (B = {r['B_gradients_per_step']:.1f} gradients per step, "
                f"α = {args.alpha:g}): {ratio:.2f} of the bound.")
        if ratio is not None and ratio <= 1.0:
            head += " The bound held."
        else:
            head += " The bound was exceeded (see the puzzle rows: the attacker's evaluations were cheaper than " \
                    "the controller's measurement, or the count is within chance)."
        if r["expected_evaluations_sum"]:
            head += (f" The puzzle cost what it should: {r['evaluations_spent']} evaluations for identities whose "
                     f"challenges asked {r['expected_evaluations_sum']:.0f} in expectation "
                     f"(ratio {r['evaluations_spent'] / r['expected_evaluations_sum']:.2f}). The attacker's core did "
                     f"{r['attacker_cores_of_work']:.2f} core of puzzle work at the controller's speed per evaluation "
                     f"({r['attacker_seconds_per_evaluation']:.4f} s per evaluation on its core against "
                     f"{r['evaluation_seconds_controller']:.4f} s measured by the controller: the machine is shared), "
                     + ("so it had less than the one core the bound assumes." if r["attacker_cores_of_work"] < 0.9
                        else "close to the one core the bound assumes."))
        out.append(head)
        lb = r["ledger_counts_byzantine"]
        if r["variant"] == "sign_flip":
            delays = r["banned_in_probation_after_steps"]
            out.append(f"`sign_flip`: {lb['probation_failed']} of the {lb['admitted']} Sybils taken in were banned in "
                       f"probation" + (f", {statistics.fmean(delays):.1f} steps after being taken in on average"
                                       if delays else "")
                       + f"; {r['promoted_byzantine']} were promoted, so the share of Byzantine active peers stayed "
                       f"{r['max_byzantine_active_share']:.3f} for the whole run (never near one half).")
        else:
            half = r["steps_to_half_from_start"]
            out.append(f"`sleeper` (Sybils that behave honestly, so probation cannot catch them): "
                       f"{r['promoted_byzantine']} were promoted and the Byzantine share of active peers peaked at "
                       f"{r['max_byzantine_active_share']:.3f}"
                       + (f", reaching one half at step {r['first_step_share_half']}"
                          if r['first_step_share_half'] is not None else " (below one half for the whole run)")
                       + f". Nothing caps the number of active Sybils: with {r['honest_active_at_end']} honest active "
                       f"peers the share reaches one half about {half['measured']:.0f} steps after the attack starts at "
                       f"the measured rate, and {half['bound']:.0f} steps at the bound B/α "
                       f"(≈ {half['bound'] * r['step_wall_seconds'] / 60:.1f} min at this step time). The puzzle and "
                       "max_joins_per_step bound the *rate*, so the honest majority holds only for a number of steps "
                       "proportional to α · honest peers / B; it does not hold against a patient attacker unless the "
                       "honest set grows as fast or probation is long compared with the run.")
    return out


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    variants = result["variants"]
    fig, axes = plt.subplots(2, len(variants), figsize=(6 * len(variants), 7), squeeze=False)
    for col, r in enumerate(variants):
        steps = [row["step"] for row in r["per_step"]]
        ax = axes[0][col]
        ax.step(steps, [row["accepted_cum"] for row in r["per_step"]], where="post", label="accepted (joiner)")
        ax.step(steps, [row["taken_in_cum"] for row in r["per_step"]], where="post", label="taken in (ledger)")
        bound = [row["bound"] for row in r["per_step"]]
        ax.plot(steps, bound, "k--", label=f"bound (B/α)(t−t₀), B/α={r['bound_identities_per_step']:.3f}")
        ax.plot(steps, [b + 2 * math.sqrt(b) for b in bound], "k:", lw=0.8, label="bound + 2√bound")
        ax.set_title(f"{r['variant']}: Sybil identities admitted")
        ax.set_xlabel("step")
        ax.set_ylabel("identities (cumulative)")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        ax.plot(steps, [row["share"] for row in r["per_step"]], label="Byzantine active / active")
        ax.axhline(0.5, color="r", ls="--", label="one half")
        ax.set_ylim(0, 1)
        ax.set_xlabel("step")
        ax.set_ylabel("share")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=VARIANTS, action="append", help="run only this variant (repeatable)")
    parser.add_argument("--steps", type=int, default=100, help="steps of each job")
    parser.add_argument("--alpha", type=float, default=40.0, help="admission.alpha: puzzle cost in gradients")
    parser.add_argument("--probation", type=int, default=10, help="admission.probation_steps")
    parser.add_argument("--max-joins", type=int, default=1, help="admission.max_joins_per_step")
    parser.add_argument("--cpus-per-peer", type=float, default=0.05, help="resources.cpus_per_peer")
    parser.add_argument("--count", type=int, default=1000, help="btard join --count K")
    parser.add_argument("--processes", type=int, default=2,
                        help="`btard join` processes, all pinned to the same core (one core's budget)")
    parser.add_argument("--core", type=int, default=1, help="the attacker's core (taskset -c); -1: no pinning")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="stop a job that runs longer than this")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--keep", type=Path, help="keep the run directories and logs here (default: a temp dir)")
    args = parser.parse_args()
    names = args.only or list(VARIANTS)
    command = "python benchmarks/sybil.py" + "".join(f" --only {n}" for n in (args.only or []))
    for flag, default in (("steps", 100), ("alpha", 40.0), ("probation", 10), ("max_joins", 1),
                          ("cpus_per_peer", 0.05), ("count", 1000), ("processes", 2), ("core", 1)):
        if getattr(args, flag) != default:
            command += f" --{flag.replace('_', '-')} {getattr(args, flag):g}"
    began = time.time()
    info = machine()
    variants = []
    with tempfile.TemporaryDirectory(prefix="sybil-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(f"running {name} ...", flush=True)
            r = run_variant(name, args, work / name)
            variants.append(r)
            brief = {k: v for k, v in r.items() if k not in ("per_step", "identities")}
            print(json.dumps(brief, indent=1, default=str), flush=True)
    result = {"command": command, "machine": info, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
              "wall_seconds": time.time() - began, "settings": settings_for(args),
              "taskset": bool(shutil.which("taskset")), "variants": variants}
    result["conclusions"] = conclusions(variants, args)
    args.out.mkdir(parents=True, exist_ok=True)
    result["plot"] = plot(result, args.out / "sybil.png")
    (args.out / "sybil.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / "sybil.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()

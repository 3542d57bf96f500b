"""Sybil admission: an attacker with one core runs ``btard join --count K`` against a live job.

Design §5.4 claims that with a puzzle costing α gradients, an attacker whose compute budget
is B gradients per step gains at most B/α identities per step. This benchmark starts a real
job (``btard run configs/quickstart.yaml``: 6 honest peers, full defence, local Ray) as a
subprocess, parses the ``btard join --job NAME --address HOST:PORT`` line it prints, and
starts the attacker as soon as the job is joinable::

    taskset -c 1 btard join --job NAME --address ADDR --count 1000 [--attack sign_flip] --key KEYS/sybil.key --wait

K = 1000 is far more than one core can pay for during the run, so the joiner solves puzzles
back to back until it is stopped (after the job has finished): what it gets is what one core
buys. ``--wait`` matters: the join process owns its peers' actors, and ``--no-wait`` would
exit after K identities and take them along (they would be dropped); here K is never
reached, and the process stays to the end either way. ``taskset`` pins it to one core; without
taskset the budget is still one core, since argon2id solving is single-threaded.
``--processes P`` starts P such joiners pinned to the same core (still one core in all),
for a joiner that idles between puzzles.

The Sybils' Peer actors themselves run in Ray workers on the job's machine, not on the
attacker's core. On a real cluster they would run on the attacker's hardware and their
gradients would come out of its budget, leaving less for puzzles than measured here.

Two variants (both run by default):

* ``sign_flip``: ``--attack sign_flip``, every Sybil flips its gradient from its first step.
  Probation validates newcomers at every step, so they are banned in probation and never
  become active.
* ``sleeper``: no ``--attack``: Sybils that behave honestly, in probation and after it. This
  is the strongest Sybil for the share of Byzantine active peers (the state an attacker
  builds up before a coordinated strike): probation cannot catch it, it is promoted, and only
  the admission rate limits how fast the attacker's share of the active peers grows. The
  library has no "honest for a while, then attack" joiner; an honest joiner whose keys the
  attacker holds is exactly such a Sybil while it waits, so the benchmark counts the peers
  admitted with the attacker's key files as Byzantine.

While the job runs, this process connects to its Ray cluster and polls the admission
controller's ``status()`` twice a second (step, puzzle costs, queue; saved as polls.json).
Afterwards it reads the run's ``summary.json`` (every peer's record: joined, promoted, ended),
``ledger.db`` (``admitted`` with the solved challenge, ``probation_failed``, ``promoted``,
``banned``, ``dropped``) and the joiner's output (one line per identity the controller
accepted, with its evaluations and seconds).

Reported per variant:

* identities the controller accepted, cumulative over steps, against the bound (B/α)·(t − t₀)
  from the step t₀ at which the attacker's first challenge was issued. B = wall seconds per
  step during the attack / seconds per gradient, i.e. the gradients one core computes in one
  step, with the gradient's cost as the puzzle priced it: k = α · gradient_seconds /
  evaluation_seconds at each challenge's issue (gradient_seconds is the driver's median
  measured gradient time of the step before). So B/α = step seconds / (k̄ · evaluation_seconds)
  = step seconds / the expected solve time of one puzzle on one core.
* the puzzle itself: evaluations spent against Σk of the challenges solved, the attacker's
  seconds per evaluation against the controller's ``evaluation_seconds``, and the share of
  one core's work the attacker got done (on a shared machine one pinned core is less).
* at every step the Byzantine active peers (promoted, not banned) against all active peers,
  the maximum share, and for the sleeper variant the step at which the share would reach one
  half at the measured rate and at the bound.

Commands (about 12 minutes for both variants on a busy 2-core machine; the job's start-up
alone takes 1-2 minutes there)::

    python benchmarks/sybil.py
    python benchmarks/sybil.py --only sign_flip --steps 40            # a quick trial
    python benchmarks/sybil.py --keep /tmp/sybil                      # keep run dirs and logs
    python benchmarks/sybil.py --analyse /tmp/sybil                   # redo the tables from them

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
DEFAULTS = {"steps": 100, "alpha": 40.0, "probation": 10, "max_joins": 1, "cpus_per_peer": 0.05, "count": 1000,
            "processes": 1, "core": 1}
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
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "taskset": bool(shutil.which("taskset"))}


class Reader(threading.Thread):
    """Writes a subprocess's stdout lines to ``log``, each prefixed by the time it arrived."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        super().__init__(daemon=True)
        self.proc, self.log = proc, log
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as fh:
            for raw in self.proc.stdout:
                now, line = time.time(), raw.rstrip("\n")
                self.lines.append((now, line))
                fh.write(f"{now:.3f} {line}\n")
                fh.flush()


def read_log(path: Path) -> list[tuple[float, str]]:
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        stamp, _, line = raw.partition(" ")
        try:
            out.append((float(stamp), line))
        except ValueError:
            continue
    return out


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (None when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kill_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a subprocess started in its own session, and what it started (its process group)."""
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


# -- running one variant ---------------------------------------------------------------------


def run_variant(variant: str, args: argparse.Namespace, work: Path) -> None:
    """Run the job and the attacker; leave logs, polls.json and meta.json in ``work``."""
    name = f"sybil-bench-{variant.replace('_', '-')}"
    run_dir, keys = work / "run", work / "keys"
    keys.mkdir(parents=True)
    env = {**os.environ, "COLUMNS": "400", "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", "TERM": "dumb"}
    overrides = [f"steps={args.steps}", "checkpoint_every=0", f"eval_every={args.steps}",
                 f"admission.alpha={args.alpha:g}", f"admission.probation_steps={args.probation}",
                 f"admission.max_joins_per_step={args.max_joins}", f"resources.cpus_per_peer={args.cpus_per_peer:g}"]
    job_cmd = [*btard_command(), "run", "configs/quickstart.yaml", "--no-progress", "--name", name,
               "--out", str(run_dir)] + [a for o in overrides for a in ("--set", o)]
    meta: dict[str, Any] = {"variant": variant, "job": name, "t_launch": time.time(),
                            "job_command": " ".join(["btard", *job_cmd[1:]]).replace(str(run_dir), "<tmp>/run")}
    job = subprocess.Popen(job_cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    job_out = Reader(job, work / "job.log")
    job_out.start()
    attackers: list[subprocess.Popen] = []
    readers: list[Reader] = []
    polls: list[dict[str, Any]] = []
    try:
        address = None
        deadline = time.time() + 600
        while address is None:
            if time.time() > deadline or job.poll() is not None:
                raise RuntimeError("the job did not print its join line:\n" + "\n".join(l for _, l in job_out.lines))
            for _, line in list(job_out.lines):
                m = JOIN_LINE.search(line)
                if m:
                    address = m.group(2)
            time.sleep(0.2)
        meta["t_joinable"] = time.time()
        print(f"[{variant}] job {name} is joinable at {address} ({meta['t_joinable'] - meta['t_launch']:.0f} s "
              "after launch)", flush=True)
        pin = ["taskset", "-c", str(args.core)] if shutil.which("taskset") and args.core >= 0 else []
        cmds = []
        for i in range(args.processes):
            key = keys / (f"sybil-{chr(97 + i)}.key" if args.processes > 1 else "sybil.key")
            cmd = [*pin, *btard_command(), "join", "--job", name, "--address", address, "--count", str(args.count),
                   "--key", str(key), "--wait"]
            cmds.append(cmd + (["--attack", "sign_flip"] if variant == "sign_flip" else []))
        meta["attacker_commands"] = [" ".join(c).replace(str(keys), "<tmp>/keys").replace(btard_command()[0], "btard")
                                     for c in cmds]
        meta["t_attack"] = time.time()
        for i, cmd in enumerate(cmds):
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            attackers.append(proc)
            readers.append(Reader(proc, work / f"attacker-{i}.log"))
            readers[-1].start()

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
        hard_stop = meta["t_launch"] + args.max_minutes * 60
        while job.poll() is None and time.time() < hard_stop:
            try:
                st = ray.get(controller.status.remote(), timeout=30)
            except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
                break
            states: dict[str, int] = {}
            for r in st.get("peers", {}).values():
                states[r["state"]] = states.get(r["state"], 0) + 1
            puzzle = st.get("puzzle", {})
            polls.append({"t": time.time(), "step": st.get("step"), "state": st.get("state"),
                          "queued": st.get("queued", 0), "rejected": st.get("rejected_solutions", 0),
                          "gradient_seconds": puzzle.get("gradient_seconds"),
                          "gradient_seconds_measured": puzzle.get("gradient_seconds_measured"),
                          "expected_evaluations": puzzle.get("expected_evaluations"),
                          "evaluation_seconds": puzzle.get("evaluation_seconds"), "states": states,
                          "attacker_cpu": sum(cpu_seconds(a.pid) or 0.0 for a in attackers)})
            if st.get("state") in ("finished", "failed") or (st.get("step") or 0) >= args.steps - 1:
                break
            if len(polls) % 30 == 0:
                print(f"[{variant}] step {st.get('step')}: {states}, queued {st.get('queued', 0)}", flush=True)
            time.sleep(POLL_SECONDS)
        meta["t_last_poll"] = time.time()
        ray.shutdown()  # before the job shuts its local Ray down
        try:
            job.wait(timeout=max(60.0, hard_stop - time.time()))
        except subprocess.TimeoutExpired:
            print(f"[{variant}] the job ran past --max-minutes: stopping it", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        meta["t_end"] = time.time()
        for proc in attackers:
            _kill_group(proc)
        _kill_group(job, grace=30)
        for reader in [job_out, *readers]:
            reader.join(timeout=5)
        meta["job_returncode"] = job.returncode
        (work / "polls.json").write_text(json.dumps(polls) + "\n")
        (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    if job.returncode != 0:
        raise RuntimeError(f"the job exited with {job.returncode}; see {work / 'job.log'}:\n"
                           + "\n".join(l for _, l in job_out.lines[-30:]))


# -- analysis --------------------------------------------------------------------------------


def _step_at(polls: list[dict[str, Any]], t: float) -> int:
    """The step the job was at, at time t (the last poll before it)."""
    step = polls[0]["step"] if polls else 0
    for p in polls:
        if p["t"] > t:
            break
        step = p["step"]
    return int(step or 0)


def analyse(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    meta = json.loads((work / "meta.json").read_text())
    polls = [p for p in json.loads((work / "polls.json").read_text()) if p.get("step") is not None]
    att_lines = sorted(line for path in sorted(work.glob("attacker-*.log")) for line in read_log(path))
    run_dir = work / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    with Ledger(run_dir / "ledger.db", create=False) as ledger:
        events = ledger.events()
    records = {int(p): r for p, r in summary["membership"].items()}
    sybil_keys = set()
    for path in (work / "keys").glob("*.key"):
        try:
            sybil_keys.add(json.loads(path.read_text())["public_key"])
        except (OSError, ValueError, KeyError):
            pass
    byz = {p for p, r in records.items() if r["public_key"] in sybil_keys or r.get("attacker")}
    steps = int(summary["steps"])
    t_last = meta.get("t_last_poll", meta["t_end"])

    # -- the attacker's account: one line per identity the controller accepted ----------------
    announced = [(t, int(m.group(1)), int(m.group(2))) for t, line in att_lines if (m := START_LINE.search(line))]
    identities = []
    for t, line in att_lines:
        m = ADMIT_LINE.search(line)
        if m:
            identities.append({"peer": int(m.group(1)), "t": t, "step": _step_at(polls, t),
                               "evaluations": int(m.group(4)), "seconds": float(m.group(5))})
    # (a joiner in the middle of a join when the job closes fails: only earlier errors count)
    errors = [line for t, line in att_lines if t < t_last and ("error" in line.lower() or "Traceback" in line)]
    admitted = {int(e.peer): e for e in events if e.kind == "admitted" and e.peer and e.peer.isdigit()}
    for ident in identities:
        ev = admitted.get(ident["peer"])
        if ev is not None:
            ch = ev.details.get("challenge", {})
            ident.update(taken_in_step=ev.step, challenge_step=ch.get("step"),
                         expected_evaluations=ch.get("expected_evaluations"))
        rec = records.get(ident["peer"], {})
        ident.update(state=rec.get("state"), promoted_step=rec.get("promoted_step"),
                     ended_step=rec.get("ended_step"), reason=rec.get("reason"))
    # t0: the step the attacker's first challenge was issued at (it solves from then on)
    issued = [i["challenge_step"] for i in identities if i.get("challenge_step") is not None]
    start_step = min(issued) if issued else (announced[0][1] if announced else _step_at(polls, meta["t_attack"]))
    t_start = next((p["t"] for p in polls if p["step"] >= start_step), meta["t_attack"])
    end_step = min(steps, _step_at(polls, t_last) + 1)
    attack_steps = max(1, end_step - start_step)
    attack_wall = max(1e-9, t_last - t_start)

    # -- B and the bound -----------------------------------------------------------------------
    window = [p for p in polls if p["t"] >= t_start]
    step_wall = ((window[-1]["t"] - window[0]["t"]) / (window[-1]["step"] - window[0]["step"])
                 if len(window) >= 2 and window[-1]["step"] > window[0]["step"] else summary["mean_step_seconds"])
    eval_s = next((p["evaluation_seconds"] for p in polls if p.get("evaluation_seconds")), float("nan"))
    ks_solved = [i["expected_evaluations"] for i in identities if i.get("expected_evaluations")]
    ks_polled = [p["expected_evaluations"] for p in window if p.get("gradient_seconds_measured")]
    grads_polled = [p["gradient_seconds"] for p in window if p.get("gradient_seconds_measured")]
    k_mean = statistics.fmean(ks_solved) if ks_solved else (statistics.fmean(ks_polled) if ks_polled else math.nan)
    grad_s = k_mean * eval_s / args.alpha  # the gradient time the puzzles were priced at
    B = step_wall / grad_s
    rate_bound = B / args.alpha
    grad_polled = statistics.fmean(grads_polled) if grads_polled else math.nan
    rate_bound_polled = step_wall / (args.alpha * grad_polled)
    accepted = len(identities)
    rate = accepted / attack_steps
    # (the price k of an identity is known from the ledger once the driver has taken it in)
    priced = [i for i in identities if i.get("expected_evaluations")]
    total_eval = sum(i["evaluations"] for i in identities)
    priced_eval = sum(i["evaluations"] for i in priced)
    total_k = sum(i["expected_evaluations"] for i in priced)
    solve_s = sum(i["seconds"] for i in identities)
    # the CPU the attacker's processes actually got while solving (polled from /proc)
    cpu_polls = [p for p in window if p.get("attacker_cpu") is not None]
    cpu_used = cpu_polls[-1]["attacker_cpu"] - cpu_polls[0]["attacker_cpu"] if len(cpu_polls) >= 2 else math.nan
    cpu_share = cpu_used / (cpu_polls[-1]["t"] - cpu_polls[0]["t"]) if len(cpu_polls) >= 2 else math.nan

    # -- per step --------------------------------------------------------------------------------
    def present(r: dict[str, Any], t: int, since: int | None) -> bool:
        return since is not None and since <= t and (r["ended_step"] is None or t <= r["ended_step"])

    kinds = ("admitted", "probation_passed", "probation_failed", "promoted", "banned", "dropped", "admission_rejected")
    ledger_counts = {k: sum(1 for e in events if e.kind == k) for k in kinds}
    ledger_byz = {k: sum(1 for e in events if e.kind == k and e.peer is not None and e.peer.isdigit()
                         and int(e.peer) in byz) for k in kinds}
    first_poll = {}
    for p in polls:
        first_poll.setdefault(p["step"], p)
    per_step = []
    cum_accepted = cum_taken = 0
    max_share, max_share_step, first_half = 0.0, None, None
    for t in range(steps):
        cum_accepted += sum(1 for i in identities if i["step"] == t)
        cum_taken += sum(1 for p, e in admitted.items() if e.step == t and p in byz)
        active = [p for p, r in records.items() if present(r, t, 0 if r["joined_step"] is None else r["promoted_step"])]
        probation = [p for p, r in records.items() if r["joined_step"] is not None and present(r, t, r["joined_step"])
                     and (r["promoted_step"] is None or t < r["promoted_step"])]
        byz_active = sum(1 for p in active if p in byz)
        share = byz_active / len(active) if active else 0.0
        if share > max_share:
            max_share, max_share_step = share, t
        if share >= 0.5 and first_half is None:
            first_half = t
        poll = first_poll.get(t)
        per_step.append({"step": t, "t": round(poll["t"] - t_start, 2) if poll else None,
                         "accepted_cum": cum_accepted, "taken_in_cum": cum_taken,
                         "bound": round(max(0.0, t - start_step) * rate_bound, 3),
                         "active": len(active), "byz_active": byz_active, "probation": len(probation),
                         "byz_probation": sum(1 for p in probation if p in byz), "share": round(share, 4),
                         "queued": poll["queued"] if poll else None,
                         "k": round(poll["expected_evaluations"], 1) if poll and poll.get("expected_evaluations") else None})
    honest_active = per_step[-1]["active"] - per_step[-1]["byz_active"]
    # Steps from t0 until the Byzantine active peers equal the honest ones (share 1/2) at a
    # constant admission rate r: H/r steps of admissions, then probation_steps + 1 to promotion.
    to_half = {name: (honest_active / r + args.probation + 1 if r > 0 else math.inf)
               for name, r in (("measured", rate), ("bound", rate_bound),
                               ("max_joins_per_step", float(args.max_joins)))}
    # Seconds per step in poll intervals in which an identity was taken in (the driver checks
    # the newcomer's actor and hands it the state at the step boundary) against the others.
    marks = sorted((s, p["t"]) for s, p in first_poll.items() if p["t"] >= t_start)
    taken_steps = {e.step for p, e in admitted.items() if p in byz}
    with_join, without = [], []
    for (s1, t1), (s2, t2) in zip(marks, marks[1:]):
        hit = any(s1 < s <= s2 for s in taken_steps)
        (with_join if hit else without).append((t2 - t1, s2 - s1))

    def per_step_s(xs: list[tuple[float, int]]) -> float | None:
        return sum(d for d, _ in xs) / sum(n for _, n in xs) if xs else None

    delays = [i["ended_step"] - i["taken_in_step"] for i in identities
              if i.get("state") == "banned" and i.get("taken_in_step") is not None and i.get("ended_step") is not None]
    return {
        "variant": meta["variant"],
        "job": meta["job"],
        "job_command": meta["job_command"],
        "attacker_commands": meta.get("attacker_commands", []),
        "steps": steps,
        "job_wall_seconds": round(meta["t_end"] - meta["t_launch"], 1),
        "startup_seconds": round(meta["t_joinable"] - meta["t_launch"], 1),
        "final_test_accuracy": summary["final_test_accuracy"],
        "attack_start_step": start_step,
        "attack_end_step": end_step,
        "attack_steps": attack_steps,
        "attack_wall_seconds": attack_wall,
        "step_wall_seconds": step_wall,
        "summary_mean_step_seconds": summary["mean_step_seconds"],
        "evaluation_seconds_controller": eval_s,
        "k_mean_solved": k_mean,
        "k_polled_min_median_max": ([min(ks_polled), statistics.median(ks_polled), max(ks_polled)]
                                    if ks_polled else None),
        "k_polled_p10": statistics.quantiles(ks_polled, n=10)[0] if len(ks_polled) >= 2 else None,
        "gradient_seconds_priced": grad_s,
        "gradient_seconds_polled_mean": grad_polled,
        "expected_solve_seconds": k_mean * eval_s,
        "B_gradients_per_step": B,
        "bound_identities_per_step": rate_bound,
        "bound_identities_per_step_polled": rate_bound_polled,
        "accepted": accepted,
        "measured_identities_per_step": rate,
        "measured_over_bound": rate / rate_bound if rate_bound else None,
        "evaluations_spent": total_eval,
        "priced_identities": len(priced),
        "evaluations_spent_priced": priced_eval,
        "expected_evaluations_sum": total_k,
        "attacker_seconds_per_evaluation": solve_s / total_eval if total_eval else None,
        "attacker_solve_seconds": solve_s,
        # the puzzle work done, in cores at the controller's speed: evaluations × evaluation_seconds / wall
        "attacker_cores_of_work": total_eval * eval_s / attack_wall,
        # what the accepted identities cost in expectation, in cores: Σk × evaluation_seconds / wall (≤ 1 + chance)
        "accepted_cores_of_work": (total_k * accepted / len(priced)) * eval_s / attack_wall if priced else None,
        "attacker_cpu_seconds": cpu_used,
        "attacker_cpu_share": cpu_share,
        "bound_at_cpu_share": cpu_share * rate_bound,
        "attacker_evaluations_per_cpu_second": total_eval / cpu_used if cpu_used else None,
        "attacker_errors": errors[:5],
        "byzantine_peers": sorted(byz),
        "ledger_counts": ledger_counts,
        "ledger_counts_byzantine": ledger_byz,
        "banned_after_steps_in_probation": delays,
        "promoted_byzantine": sum(1 for p in byz if records[p]["promoted_step"] is not None),
        "max_byzantine_active_share": max_share,
        "max_share_step": max_share_step,
        "first_step_share_half": first_half,
        "honest_active_at_end": honest_active,
        "steps_to_half_from_t0": to_half,
        "step_seconds_with_take_in": per_step_s(with_join),
        "step_seconds_without_take_in": per_step_s(without),
        "identities": identities,
        "per_step": per_step,
        "polls": [{"t": round(p["t"] - t_start, 2), "step": p["step"], "queued": p["queued"],
                   "k": p["expected_evaluations"], "gradient_seconds": p["gradient_seconds"]} for p in polls],
    }


# -- report ----------------------------------------------------------------------------------


def _f(x: Any, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


def conclusions(variants: list[dict[str, Any]], alpha: float) -> list[str]:
    out = []
    for r in variants:
        ratio = r["measured_over_bound"] or 0.0
        text = (f"`{r['variant']}`: the one-core attacker got {r['accepted']} identities accepted in "
                f"{r['attack_steps']} steps, {r['measured_identities_per_step']:.3f} per step against the bound "
                f"B/α = {r['bound_identities_per_step']:.3f} (B = {r['B_gradients_per_step']:.1f} gradients per step, "
                f"α = {alpha:g}): {ratio:.2f} of the bound, "
                + ("so the bound held." if ratio <= 1.0 else "above the bound."))
        share = r.get("attacker_cpu_share")
        if share is not None and math.isfinite(share) and r["accepted"]:
            per_identity = r["attacker_cpu_seconds"] / r["accepted"]
            text += (f" This is a loose test here: the pinned joiner used only {share:.2f} of its core (its CPU time "
                     f"over the attack; the rest of the time it waited, mostly for its next identity's peer actor, a new "
                     f"Ray worker importing torch that takes ~10 s on these 2 cores and is overlapped with one puzzle "
                     f"only, and on a busy machine for the core itself), so at the budget it really had the "
                     f"bound is {r['bound_at_cpu_share']:.3f} per step and it got "
                     f"{r['measured_identities_per_step'] / r['bound_at_cpu_share']:.2f} of that. Per unit of compute:"
                     f" it spent {per_identity:.2f} CPU-seconds per identity against the price α · gradient_seconds = "
                     f"{r['expected_solve_seconds']:.2f} s the puzzle was set to ({per_identity / r['expected_solve_seconds']:.2f}"
                     f" of it).")
        if r["expected_evaluations_sum"]:
            text += (f" The nonce search behaved as designed: {r['evaluations_spent_priced']} evaluations for the "
                     f"{r['priced_identities']} identities taken in, whose challenges asked "
                     f"{r['expected_evaluations_sum']:.0f} in expectation (ratio "
                     f"{r['evaluations_spent_priced'] / r['expected_evaluations_sum']:.2f}, ±"
                     f"{1 / math.sqrt(max(1, r['priced_identities'])):.2f} by chance).")
        eps = r.get("attacker_evaluations_per_cpu_second")
        if eps and math.isfinite(eps):
            cost = 1 / eps / r["evaluation_seconds_controller"]
            text += (f" What moved the price is calibration: an evaluation cost the attacker {1 / eps:.4f} CPU-seconds, "
                     f"the controller had measured {r['evaluation_seconds_controller']:.4f} s (once, at job start-up, "
                     f"on a loaded machine), so each puzzle cost {cost:.2f} × α gradients; and k follows one step's "
                     "gradient time, which swung k between "
                     + "/".join(f"{x:.0f}" for x in r["k_polled_min_median_max"])
                     + " (min/median/max) during the run.")
        out.append(text)
        lb = r["ledger_counts_byzantine"]
        if r["variant"] == "sign_flip":
            d = r["banned_after_steps_in_probation"]
            out.append(f"`sign_flip`: all {lb['probation_failed']} of the {lb['admitted']} Sybils taken in were banned "
                       "in probation" + (f", on average {statistics.fmean(d):.1f} steps after they were taken in (0 = in "
                                         "their first probation step)" if d else "")
                       + f"; the other {r['accepted'] - lb['admitted']} accepted were still queued at the end; "
                       f"{r['promoted_byzantine']} were promoted, so the share of Byzantine active peers was "
                       f"{r['max_byzantine_active_share']:.3f} throughout. A Sybil that attacks is caught before it ever "
                       "aggregates; the admission bound only matters against Sybils that wait.")
        else:
            h = r["steps_to_half_from_t0"]
            out.append(
                f"`sleeper` (Sybils that behave honestly, so probation cannot catch them): {r['promoted_byzantine']} "
                f"were promoted and the share of Byzantine active peers peaked at {r['max_byzantine_active_share']:.3f}"
                + (f", reaching one half at step {r['first_step_share_half']}, "
                   f"{r['first_step_share_half'] - r['attack_start_step']} steps after t₀"
                   if r["first_step_share_half"] is not None else " (below one half for the whole run)")
                + f". The puzzle and max_joins_per_step bound the *rate* of identities, not their number: without "
                f"a cap, with {r['honest_active_at_end']} honest active peers the share would reach one half about "
                f"{h['measured']:.0f} steps after t₀ at the measured rate (H/r + probation + 1), {h['bound']:.0f} "
                f"steps at the one-core bound B/α, and {h['max_joins_per_step']:.0f} steps for an attacker with "
                "enough cores to fill max_joins_per_step every step. What holds the majority is "
                "`admission.max_joined_share` (default 0.45): promoted joiners stay at most "
                "that share (< 1/2) of the active peers, so the job's own peers keep a strict majority however many "
                "identities are bought; Sybils that passed probation beyond it wait on probation, still validated "
                "at every step.")
        if r["step_seconds_with_take_in"] and r["step_seconds_without_take_in"]:
            out.append(f"`{r['variant']}`: steps whose boundary took a Sybil in lasted "
                       f"{r['step_seconds_with_take_in']:.1f} s on average against "
                       f"{r['step_seconds_without_take_in']:.2f} s for the others: the driver waits at the boundary for "
                       "the newcomer's actor to answer "
                       "and hands it the state. Every Sybil costs the honest peers that, banned or not, and it is "
                       "why a step took "
                       f"{r['step_wall_seconds']:.2f} s of wall time during the attack against the summary's "
                       f"{r['summary_mean_step_seconds']:.2f} s inside steps.")
    return out


def to_markdown(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    lines = [
        "# Sybil admission: one core against the puzzle bound B/α (design §5.4)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m['platform']}, {m['cpu']}, {m['cores']} cores shared with other work (load average "
        f"{', '.join(map(str, m['load_average_at_start']))} at the start), Python {m['python']}, ray {m['ray']}, "
        "CPU only.  ",
        f"Run on {result['date']}; {result['wall_seconds'] / 60:.1f} min in all.",
        "",
        "Settings: configs/quickstart.yaml (6 honest peers, MNIST CNN on digits, CenteredClip, full defence), "
        f"steps={s['steps']}, admission.alpha={s['admission.alpha']:g}, "
        f"admission.probation_steps={s['admission.probation_steps']}, "
        f"admission.max_joins_per_step={s['admission.max_joins_per_step']}, max_probation_share=0.5, "
        f"expiry_steps=50, challenges_per_step=32, argon2id 8 MiB × 1 pass, "
        f"resources.cpus_per_peer={s['resources.cpus_per_peer']:g} (so that Ray can place the Sybils' actors on 2 CPUs), "
        f"checkpoint_every=0. Attacker: {s['processes']} `btard join --count {s['count']} --wait` "
        f"process{'es' if s['processes'] > 1 else ''} pinned with `taskset -c {s['core']}` (one core), started as "
        "soon as the job was joinable and stopped after it finished; K is never reached, so it solved puzzles for "
        "the whole run.",
        "",
        "B, the attacker's budget in gradients per step, is the wall time of a step during the attack divided by the "
        "time of one gradient as the puzzles priced it (k = α · gradient_seconds / evaluation_seconds at each "
        "challenge's issue, gradient_seconds being the driver's median measured gradient time); so B/α is a step's "
        "wall time over the expected time to solve one puzzle on one core. t₀ is the step of the attacker's first "
        "challenge. \"Accepted\" counts identities whose solution the controller accepted (the joiner's output), "
        "\"taken in\" the ledger's `admitted` events (the driver starts their probation at a step boundary). "
        "Byzantine active = the attacker's peers that are active (promoted, not banned) in that step, against all "
        "active peers.",
        "",
    ]
    for r in result["variants"]:
        lb = r["ledger_counts_byzantine"]
        kp = r["k_polled_min_median_max"]
        lines += [
            f"## Variant `{r['variant']}`",
            "",
            "Attacker: " + "; ".join(f"`{c}`" for c in r["attacker_commands"]),
            "",
            "| quantity | value |",
            "|---|---|",
            f"| steps / wall time of the job (of which start-up until joinable) | {r['steps']} / "
            f"{r['job_wall_seconds']:.0f} s ({r['startup_seconds']:.0f} s) |",
            f"| attack from step t₀ to step | {r['attack_start_step']} to {r['attack_end_step']} "
            f"({r['attack_wall_seconds']:.0f} s) |",
            f"| wall seconds per step during the attack (summary mean_step_seconds) | "
            f"{_f(r['step_wall_seconds'])} ({_f(r['summary_mean_step_seconds'])}) |",
            f"| controller's evaluation_seconds; k of the solved challenges (mean); k polled min/median/max | "
            f"{_f(r['evaluation_seconds_controller'])}; {_f(r['k_mean_solved'], '.0f')}; "
            + ("/".join(_f(x, '.0f') for x in kp) if kp else "-") + " |",
            f"| gradient seconds as priced (driver's, polled mean) | {_f(r['gradient_seconds_priced'])} "
            f"({_f(r['gradient_seconds_polled_mean'])}) |",
            f"| expected solve seconds on one core (α × gradient seconds) | {_f(r['expected_solve_seconds'])} |",
            f"| B = gradients per step on one core | {_f(r['B_gradients_per_step'])} |",
            f"| **bound B/α, identities per step** (with the polled gradient time) | "
            f"**{_f(r['bound_identities_per_step'])}** ({_f(r['bound_identities_per_step_polled'])}) |",
            f"| **measured identities per step** (accepted / steps of attack) | "
            f"**{_f(r['measured_identities_per_step'])}** ({r['accepted']} / {r['attack_steps']}), "
            f"{_f(r['measured_over_bound'], '.2f')} of the bound |",
            f"| evaluations spent on the identities taken in ({r['priced_identities']}) / Σk of their challenges "
            f"(all {r['accepted']} accepted: evaluations) | {r['evaluations_spent_priced']} / "
            f"{_f(r['expected_evaluations_sum'], '.0f')} ({r['evaluations_spent']}) |",
            f"| attacker's seconds per evaluation (controller's) | {_f(r['attacker_seconds_per_evaluation'])} "
            f"({_f(r['evaluation_seconds_controller'])}) |",
            f"| puzzle work done / expected cost of the accepted identities, in cores over the attack | "
            f"{_f(r['attacker_cores_of_work'], '.2f')} / {_f(r['accepted_cores_of_work'], '.2f')} |",
            f"| attacker's CPU over the attack: seconds, share of its one core | {_f(r['attacker_cpu_seconds'], '.1f')}"
            f" s, {_f(r['attacker_cpu_share'], '.2f')} |",
            f"| evaluations per CPU second (1 / controller's evaluation_seconds) | "
            f"{_f(r['attacker_evaluations_per_cpu_second'], '.0f')} ({_f(1 / r['evaluation_seconds_controller'], '.0f')}) |",
            f"| bound at the CPU share it got (share × B/α), identities per step | {_f(r['bound_at_cpu_share'])} |",
            f"| seconds per step: boundary took a Sybil in / other steps | {_f(r['step_seconds_with_take_in'])} / "
            f"{_f(r['step_seconds_without_take_in'])} |",
            f"| ledger, attacker's peers: admitted / probation_failed / promoted / banned / dropped | "
            f"{lb['admitted']} / {lb['probation_failed']} / {lb['promoted']} / {lb['banned']} / {lb['dropped']} |",
            f"| **max share of Byzantine active peers** | **{_f(r['max_byzantine_active_share'], '.3f')}**"
            + (f" (step {r['max_share_step']})" if r["max_share_step"] is not None else "") + " |",
            f"| first step with share ≥ 1/2 | "
            f"{r['first_step_share_half'] if r['first_step_share_half'] is not None else 'never'} |",
            f"| final test accuracy | {100 * r['final_test_accuracy']:.1f}% |",
            "",
        ]
        if r["attacker_errors"]:
            lines += ["Attacker output with errors: " + "; ".join(f"`{e[:160]}`" for e in r["attacker_errors"]), ""]
        lines += ["| step | s since t₀ | accepted (cum.) | taken in (cum.) | bound (B/α)(t−t₀) | "
                  "Byzantine active / active | share | on probation (Byzantine) | queued | k |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        stride = max(1, r["steps"] // 20)
        for row in r["per_step"]:
            if row["step"] % stride and row["step"] != r["steps"] - 1:
                continue
            lines.append(f"| {row['step']} | {_f(row['t'], '.0f')} | {row['accepted_cum']} | {row['taken_in_cum']} | "
                         f"{row['bound']:.1f} | {row['byz_active']} / {row['active']} | {row['share']:.3f} | "
                         f"{row['probation']} ({row['byz_probation']}) | {_f(row['queued'])} | {_f(row['k'], '.0f')} |")
        lines.append("")
    lines += ["## Conclusions", ""] + [f"- {c}" for c in result["conclusions"]] + [""]
    lines += ["Not measured here: an attacker with more cores (B scales with them, so does the rate, up to "
              "max_joins_per_step per step); a GPU or ASIC attacker (argon2id is memory-hard, so it gains about its "
              "memory bandwidth's ratio, not its arithmetic's).", ""]
    if result.get("plot"):
        lines += ["![admissions and share](sybil.png)", ""]
    return "\n".join(lines)


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
        ax.plot(steps, bound, "k--", label=f"bound (B/α)(t−t₀), B/α = {r['bound_identities_per_step']:.3f}/step")
        share = r.get("attacker_cpu_share")
        if share is not None and math.isfinite(share):
            ax.plot(steps, [b * share for b in bound], "k:",
                    label=f"bound at the CPU it got ({share:.2f} core)")
        ax.set_title(f"{r['variant']}: Sybil identities, one core")
        ax.set_xlabel("step")
        ax.set_ylabel("identities (cumulative)")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        ax.plot(steps, [row["share"] for row in r["per_step"]], label="Byzantine active / active")
        ax.plot(steps, [row["byz_probation"] / max(1, row["active"]) for row in r["per_step"]], ":",
                label="Byzantine on probation / active")
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
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="steps of each job")
    parser.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="admission.alpha: puzzle cost in gradients")
    parser.add_argument("--probation", type=int, default=DEFAULTS["probation"], help="admission.probation_steps")
    parser.add_argument("--max-joins", type=int, default=DEFAULTS["max_joins"], help="admission.max_joins_per_step")
    parser.add_argument("--cpus-per-peer", type=float, default=DEFAULTS["cpus_per_peer"], help="resources.cpus_per_peer")
    parser.add_argument("--count", type=int, default=DEFAULTS["count"], help="btard join --count K")
    parser.add_argument("--processes", type=int, default=DEFAULTS["processes"],
                        help="`btard join` processes, all pinned to the same core (one core's budget)")
    parser.add_argument("--core", type=int, default=DEFAULTS["core"], help="the attacker's core (taskset -c); -1: none")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="stop a job that runs longer than this")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--keep", type=Path, help="keep run directories, logs and polls here (default: a temp dir)")
    parser.add_argument("--analyse", type=Path, metavar="DIR",
                        help="run nothing: redo the results from a --keep directory (same settings flags)")
    args = parser.parse_args()
    names = args.only or list(VARIANTS)
    command = "python benchmarks/sybil.py" + "".join(f" --only {n}" for n in (args.only or []))
    for flag, default in DEFAULTS.items():
        if getattr(args, flag) != default:
            command += f" --{flag.replace('_', '-')} {getattr(args, flag):g}"
    began = time.time()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="sybil-") as tmp:
        work = args.analyse or args.keep or Path(tmp)
        if args.analyse is None:
            for name in names:
                print(f"running {name} ...", flush=True)
                (work / name).mkdir(parents=True, exist_ok=False)
                run_variant(name, args, work / name)
            (work / "run.json").write_text(json.dumps({"machine": info, "began": began, "ended": time.time(),
                                                       "command": command}) + "\n")
        else:
            saved = json.loads((work / "run.json").read_text())
            info, began, command = saved["machine"], saved["began"], saved["command"]
        variants = [analyse(work / name, args) for name in names]
        ended = json.loads((work / "run.json").read_text())["ended"]
    for r in variants:
        print(json.dumps({k: v for k, v in r.items() if k not in ("per_step", "identities", "polls")}, indent=1,
                         default=str), flush=True)
    result = {"command": command, "machine": info, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(began)),
              "wall_seconds": ended - began, "settings": settings_for(args), "variants": variants}
    result["conclusions"] = conclusions(variants, args.alpha)
    args.out.mkdir(parents=True, exist_ok=True)
    result["plot"] = plot(result, args.out / "sybil.png")
    (args.out / "sybil.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / "sybil.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()

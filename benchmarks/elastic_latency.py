"""Join latency against α and the probation length, and step time during churn (issue 5).

Two measurements on real jobs (the quickstart: 6 honest peers, full defence, one local Ray
instance, each job's driver in a thread of this process; joiners use
:func:`admission.client.join`, the code behind ``btard join``):

* **Join latency.** For each (α, probation steps) a job runs until it has taken a few steps;
  then one honest identity joins and is followed to ``active``. Reported, in seconds from
  the join request: the joiner's peer actor built (model and data set loaded), the puzzle
  solved (argon2id, about α gradients of work) and accepted, probation started (taken in at
  a step boundary with the current state), and promoted (``probation_steps`` clean,
  validated steps, then the next boundary). The job is then ended with ``btard finish``.

* **Churn.** The same job twice, ``--churn-steps`` steps each: steady (nobody joins) and with
  churn, in which one honest joiner is admitted, and the most recent one leaves (``btard
  leave``), alternately, every ``--churn-every`` steps. Reported: the driver's wall seconds
  per step (from ``metrics.jsonl``: boundaries, hand-offs and evaluations included) and the
  mean time inside the protocol's step (``summary.json``'s ``mean_step_seconds``), both runs
  side by side. A joiner's puzzle and actor start-up run on the same 2 cores as the job.

Commands::

    python benchmarks/elastic_latency.py                       # both (about 10 minutes here)
    python benchmarks/elastic_latency.py --only latency --alpha 1 --alpha 20 --probation 3
    python benchmarks/elastic_latency.py --only churn --churn-steps 120

Results: benchmarks/results/elastic_latency.json and elastic_latency.md (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import btard_ray  # noqa: F401  - Ray auth mode before Ray is imported
import ray

from admission.client import finish, find_controller, join, leave
from btard_ray.config import load_config
from btard_ray.identity import Identity
from btard_ray.run_dir import RunDir
from btard_ray.trainer import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"
LONG_STEPS = 100_000  # jobs that take joiners run until `btard finish` ends them
WAIT_SECONDS = 600.0


class Job(threading.Thread):
    """``train(cfg)`` in the background, with its controller once it is up."""

    def __init__(self, name: str, work: Path, overrides: list[str]) -> None:
        super().__init__(daemon=True)
        self.name = name
        self.run_dir = work / name
        self.cfg = load_config(QUICKSTART, [f"name={name}", "checkpoint_every=0", *overrides])
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.summary = train(self.cfg, RunDir(self.run_dir), show_progress=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self.error = exc

    def controller(self) -> Any:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                return find_controller(self.name)
            except Exception:  # noqa: BLE001 - JoinError until the peers are built
                if self.error is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"job {self.name} never became joinable: {self.error}")
                time.sleep(0.2)

    def finish(self, controller: Any) -> dict[str, Any]:
        finish(controller, self.name, Identity.load(self.run_dir / "job_key"))
        return self.result()

    def result(self) -> dict[str, Any]:
        self.join(WAIT_SECONDS)
        if self.error is not None:
            raise self.error
        assert self.summary is not None, f"job {self.name} did not finish"
        return self.summary


def wait_status(controller: Any, ready: Callable[[dict[str, Any]], bool], poll: float = 0.02) -> tuple[float, dict]:
    """(time.perf_counter() when ``ready(status)`` first held, that status)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        status = ray.get(controller.status.remote())
        if ready(status):
            return time.perf_counter(), status
        if status.get("state") in ("finished", "failed") or time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting; status: {status}")
        time.sleep(poll)


def state_of(status: dict[str, Any], peer: int) -> str | None:
    record = status.get("peers", {}).get(str(peer))
    return record["state"] if record else None


# -- join latency -----------------------------------------------------------------------------


def join_latency(alpha: float, probation: int, work: Path) -> dict[str, Any]:
    name = f"latency-a{alpha:g}-p{probation}".replace(".", "_")
    job = Job(name, work, [f"steps={LONG_STEPS}", f"eval_every={LONG_STEPS}", f"admission.alpha={alpha:g}",
                           f"admission.probation_steps={probation}"])
    job.start()
    controller = job.controller()
    wait_status(controller, lambda st: st.get("step", 0) >= 5)
    t0 = time.perf_counter()
    joined = join(controller, Identity.generate())
    t_admitted = time.perf_counter()
    t_probation, st_probation = wait_status(controller, lambda st: state_of(st, joined.peer) == "probation")
    t_active, st_active = wait_status(controller, lambda st: state_of(st, joined.peer) == "active")
    summary = job.finish(controller)
    record = summary["membership"][str(joined.peer)]
    return {
        "alpha": alpha, "probation_steps": probation, "peer": joined.peer,
        "puzzle_evaluations": joined.solution.evaluations, "solve_seconds": joined.solution.seconds,
        # the actor is built before the challenge is asked for; the rest of join() is solving + submitting
        "build_seconds": max(t_admitted - t0 - joined.solution.seconds, 0.0),
        "admitted_after_s": t_admitted - t0, "probation_after_s": t_probation - t0, "active_after_s": t_active - t0,
        "probation_seconds": t_active - t_probation, "joined_step": record["joined_step"],
        "promoted_step": record["promoted_step"], "step_seconds": summary["mean_step_seconds"],
        "steps_in_probation": record["promoted_step"] - record["joined_step"],
        "status_steps": [st_probation["step"], st_active["step"]], "final_state": record["state"],
    }


# -- churn ------------------------------------------------------------------------------------


def wall_per_step(run_dir: Path, skip: int) -> float:
    """Driver wall seconds per step between the evaluations at ``skip`` and the last one."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first = next(r for r in rows if r["step"] >= skip)
    last = rows[-1]
    return (last["wall_seconds"] - first["wall_seconds"]) / (last["step"] - first["step"])


def churn_run(churn: bool, steps: int, every: int, work: Path) -> dict[str, Any]:
    name = "churn" if churn else "steady"
    eval_every = every
    job = Job(name, work, [f"steps={LONG_STEPS if churn else steps}", f"eval_every={eval_every}",
                           "admission.alpha=1", "admission.probation_steps=3"])
    job.start()
    controller = job.controller()
    events: list[dict[str, Any]] = []
    if churn:
        joined: list[Any] = []
        keys: dict[int, Identity] = {}
        target = every
        while True:
            _, st = wait_status(controller, lambda s: s.get("step", 0) >= target)
            if st["step"] >= steps:
                break
            if not joined or len(events) % 2 == 0:
                identity = Identity.generate()
                one = join(controller, identity)
                joined.append(one)
                keys[one.peer] = identity
                events.append({"step": st["step"], "event": "join", "peer": one.peer})
            else:
                peer = joined.pop().peer
                leave(controller, name, peer, keys[peer])
                events.append({"step": st["step"], "event": "leave", "peer": peer})
            target = max(st["step"], target) + every
        summary = job.finish(controller)
    else:
        summary = job.result()
    return {"run": name, "steps": summary["steps"], "events": events,
            "wall_per_step": wall_per_step(job.run_dir, every),
            "mean_step_seconds": summary["mean_step_seconds"], "final_test_accuracy": summary["final_test_accuracy"],
            "joined": len(summary.get("joined", [])), "left": len(summary.get("left", [])),
            "banned": summary["banned"], "dropped": summary.get("dropped", []),
            "weights_agree": summary["weights_agree"], "active_peers": summary["active_peers"]}


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cores": os.cpu_count(), "python": platform.python_version(),
            "ray": ray.__version__, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# Join latency and churn (issue 5)", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {m['platform']}, {m['cores']} cores (load average at start {m['load_average_at_start']}), "
             f"Python {m['python']}, ray {m['ray']}, CPU only. Run on {result['date']}, "
             f"{result['minutes']:.1f} min in all.  ",
             "Jobs: configs/quickstart.yaml (6 honest peers, MNIST CNN on the digits, CenteredClip, full defence), "
             "one local Ray instance on these 2 cores, shared by the job's peers and the joiners.", ""]
    if result.get("latency"):
        lines += ["## Join latency (seconds from the join request)", "",
                  "build: the joiner's peer actor started and loaded (before it asks for a challenge); solve: the "
                  "argon2id nonce search; probation: taken in at a step boundary, with the state of the majority; "
                  "active: promoted after its clean probation steps. Step: the job's mean seconds per step.", "",
                  "| α | probation steps | build | solve (evaluations) | admitted | probation starts | active "
                  "| of which probation | steps in probation | step (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["latency"]:
            lines.append(f"| {r['alpha']:g} | {r['probation_steps']} | {r['build_seconds']:.1f} | "
                         f"{r['solve_seconds']:.2f} ({r['puzzle_evaluations']}) | {r['admitted_after_s']:.1f} | "
                         f"{r['probation_after_s']:.1f} | **{r['active_after_s']:.1f}** | {r['probation_seconds']:.1f} "
                         f"| {r['steps_in_probation']} | {r['step_seconds']:.3f} |")
        lines.append("")
    if result.get("churn"):
        steady, churned = result["churn"]
        lines += ["## Step time during churn", "",
                  f"Both runs {result['churn_steps']} steps (wall per step measured from step "
                  f"{result['churn_every']} on). Churn: one join or one leave every {result['churn_every']} steps "
                  f"(α = 1, probation 3 steps): {len(churned['events'])} events, "
                  f"{churned['joined']} joined, {churned['left']} left.", "",
                  "| run | driver wall s/step | vs steady | protocol step s (mean) | active peers at the end "
                  "| banned | dropped | weights agree | test accuracy |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in (steady, churned):
            lines.append(f"| {r['run']} | {r['wall_per_step']:.3f} | {r['wall_per_step'] / steady['wall_per_step']:.2f}x "
                         f"| {r['mean_step_seconds']:.3f} | {r['active_peers']} | {len(r['banned'])} | "
                         f"{len(r['dropped'])} | {r['weights_agree']} | {100 * r['final_test_accuracy']:.1f}% |")
        lines += ["", "Churn events (step, event, peer): " + ", ".join(
            f"{e['step']} {e['event']} {e['peer']}" for e in churned["events"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("latency", "churn"), action="append")
    parser.add_argument("--alpha", type=float, action="append", help="puzzle cost in gradients (repeatable)")
    parser.add_argument("--probation", type=int, action="append", help="probation steps (repeatable)")
    parser.add_argument("--churn-steps", type=int, default=120)
    parser.add_argument("--churn-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    only = set(args.only or ("latency", "churn"))
    alphas = args.alpha or [1.0, 10.0, 40.0]
    probations = args.probation or [3, 10]
    started = time.perf_counter()
    result: dict[str, Any] = {"command": "python benchmarks/elastic_latency.py " + " ".join(sys.argv[1:]),
                              "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "churn_steps": args.churn_steps, "churn_every": args.churn_every}
    result["command"] = result["command"].strip()
    ray.init(num_cpus=2, object_store_memory=512 * 1024 * 1024, include_dashboard=False, namespace="btard-bench",
             logging_level=logging.ERROR, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="btard-elastic-") as tmp:
            work = Path(tmp)
            if "latency" in only:
                result["latency"] = []
                for alpha in alphas:
                    for probation in probations:
                        row = join_latency(alpha, probation, work)
                        print(json.dumps(row), flush=True)
                        result["latency"].append(row)
            if "churn" in only:
                result["churn"] = [churn_run(False, args.churn_steps, args.churn_every, work),
                                   churn_run(True, args.churn_steps, args.churn_every, work)]
                print(json.dumps(result["churn"]), flush=True)
    finally:
        ray.shutdown()
    result["minutes"] = (time.perf_counter() - started) / 60
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "elastic_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "elastic_latency.md").write_text(to_markdown(result) + "\n")
    print(to_markdown(result))


if __name__ == "__main__":
    main()

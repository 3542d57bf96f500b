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
  side by side. The joiners' actors are built before the churn run starts (on a cluster a
  joiner builds its actor on its own machine; here it would be a Ray worker importing torch
  on the job's two cores), so the steps pay what the job pays for churn: the hand-off at the
  boundary, probation validation, and a new partition at each promotion and leave.

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
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import btard_ray  # noqa: F401  - Ray auth mode before Ray is imported
import ray

from admission.client import finish, find_controller, join, leave, start_peer
from btard_ray.config import load_config
from btard_ray.identity import Identity
from btard_ray.run_dir import RunDir
from btard_ray.trainer import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"
LONG_STEPS = 100_000  # jobs that take joiners run until `btard finish` ends them
WAIT_SECONDS = 600.0
# Ray places an actor only where its CPU share fits: 6 peers at the quickstart's 0.25 fill
# 1.5 of the 2 CPUs, so a third joiner would wait forever. The reservation does not change
# how fast anything runs (every process shares the same 2 cores anyway).
CPUS_PER_PEER = "resources.cpus_per_peer=0.1"


class Job(threading.Thread):
    """``train(cfg)`` in the background, with its controller once it is up."""

    def __init__(self, name: str, work: Path, overrides: list[str]) -> None:
        super().__init__(daemon=True)
        self.name = name
        self.run_dir = work / name
        self.cfg = load_config(QUICKSTART, [f"name={name}", "checkpoint_every=0", CPUS_PER_PEER, *overrides])
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


def join_latency(alpha: float, probation: int, joins: int, work: Path) -> dict[str, Any]:
    """``joins`` honest joiners, one after the other, each followed from request to active."""
    name = f"latency-a{alpha:g}-p{probation}".replace(".", "_")
    job = Job(name, work, [f"steps={LONG_STEPS}", f"eval_every={LONG_STEPS}", f"admission.alpha={alpha:g}",
                           f"admission.probation_steps={probation}"])
    job.start()
    controller = job.controller()
    wait_status(controller, lambda st: st.get("step", 0) >= 5)
    samples = []
    for _ in range(joins):
        t0 = time.perf_counter()
        joined = join(controller, Identity.generate())
        t_admitted = time.perf_counter()
        t_probation, _ = wait_status(controller, lambda st: state_of(st, joined.peer) == "probation")
        t_active, _ = wait_status(controller, lambda st: state_of(st, joined.peer) == "active")
        samples.append({"peer": joined.peer, "evaluations": joined.solution.evaluations,
                        "expected_evaluations": joined.challenge.expected_evaluations,
                        "solve_seconds": joined.solution.seconds,
                        # the actor is built before the challenge is asked for; the rest of join() is solving
                        "build_seconds": max(t_admitted - t0 - joined.solution.seconds, 0.0),
                        "admitted_after_s": t_admitted - t0, "probation_after_s": t_probation - t0,
                        "active_after_s": t_active - t0, "probation_seconds": t_active - t_probation})
    summary = job.finish(controller)
    for sample in samples:
        record = summary["membership"][str(sample["peer"])]
        sample["steps_in_probation"] = record["promoted_step"] - record["joined_step"]
        assert record["state"] == "active", record
    keys = [k for k in samples[0] if k != "peer"]
    return {"alpha": alpha, "probation_steps": probation, "joins": joins, "step_seconds": summary["mean_step_seconds"],
            "mean": {k: statistics.fmean(s[k] for s in samples) for k in keys}, "samples": samples}


# -- churn ------------------------------------------------------------------------------------


def wall_per_step(run_dir: Path, after: int) -> float:
    """Driver wall seconds per step between the evaluation at step ``after`` and the last one."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first = next(r for r in rows if r["step"] >= after)
    last = rows[-1]
    return (last["wall_seconds"] - first["wall_seconds"]) / (last["step"] - first["step"])


def churn_run(churn: bool, steps: int, every: int, work: Path) -> dict[str, Any]:
    """``steps`` steps; with ``churn`` one join, then one leave (of the latest joiner), in turn,
    at every multiple of ``every`` steps. The joiners' actors are built before the job starts:
    on a cluster a joiner builds its actor on its own machine, so only what the job pays for a
    join (the hand-off at the boundary, probation validation, a new partition at promotion
    and at the leave) falls in the measured steps, not a Ray worker starting on these cores."""
    name = "churn" if churn else "steady"
    job = Job(name, work, [f"steps={LONG_STEPS if churn else steps}", f"eval_every={every}",
                           "admission.alpha=1", "admission.probation_steps=3"])
    events: list[dict[str, Any]] = []
    ready: list[tuple[Identity, Any]] = []
    if churn:
        config = job.cfg.model_dump(mode="json")
        for _ in range(steps // every // 2 + 1):
            identity = Identity.generate()
            ready.append((identity, start_peer(config, identity)))
    job.start()
    controller = job.controller()
    if churn:
        joined: list[tuple[Identity, Any]] = []
        for target in range(every, steps, every):
            st = wait_status(controller, lambda s: s.get("step", 0) >= target)[1]
            if len(events) % 2 == 0:
                identity, actor = ready.pop()
                one = join(controller, identity, actor=actor)
                joined.append((identity, one))
                events.append({"step": st["step"], "event": "join", "peer": one.peer})
            else:
                identity, one = joined.pop()
                leave(controller, name, one.peer, identity)
                events.append({"step": st["step"], "event": "leave", "peer": one.peer})
        wait_status(controller, lambda s: s.get("step", 0) >= steps)
        summary = job.finish(controller)
    else:
        summary = job.result()
    rows = [json.loads(line) for line in (job.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    windows, previous = [], 0.0
    for row in rows:  # one per evaluation: every `every` steps
        windows.append({"to_step": row["step"], "active_peers": row["active_peers"],
                        "wall_per_step": (row["wall_seconds"] - previous) / every, "step_seconds": row["step_seconds"]})
        previous = row["wall_seconds"]
    return {"run": name, "steps": summary["steps"], "events": events, "windows": windows,
            "wall_per_step": wall_per_step(job.run_dir, every),
            "mean_step_seconds": summary["mean_step_seconds"], "final_test_accuracy": summary["final_test_accuracy"],
            "joined": len(summary.get("joined", [])), "left": len(summary.get("left", [])),
            "promoted": sum(1 for j in summary.get("joined", []) if j["promoted_step"] is not None),
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
             *[f"The {part} results are from an earlier run: `{k['command']}` on {k['date']}.  "
               for part, k in result.get("kept", {}).items()],
             "Jobs: configs/quickstart.yaml (6 honest peers, MNIST CNN on the digits, CenteredClip, full defence), "
             "one local Ray instance on these 2 cores, shared by the job's peers and the joiners.", ""]
    if result.get("latency"):
        lines += ["## Join latency (seconds from the join request)", "",
                  "Means over the joins of each setting, one after the other into the same job. build: the "
                  "joiner's peer actor started and loaded (a new Ray worker importing torch, before it asks for "
                  "a challenge); solve: the argon2id nonce search (evaluations against the challenge's expected "
                  "k = α · gradient seconds / evaluation seconds; the count is geometric, so single solves vary "
                  "widely); probation starts: taken in at a step boundary with the majority's state; active: "
                  "promoted after its clean probation steps. Step: the job's mean seconds per step.", "",
                  "| α | probation steps | joins | build | solve | evaluations (expected) | admitted "
                  "| probation starts | **active** | of which probation | steps in probation | step (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["latency"]:
            m = r["mean"]
            lines.append(f"| {r['alpha']:g} | {r['probation_steps']} | {r['joins']} | {m['build_seconds']:.1f} | "
                         f"{m['solve_seconds']:.2f} | {m['evaluations']:.0f} ({m['expected_evaluations']:.0f}) | "
                         f"{m['admitted_after_s']:.1f} | {m['probation_after_s']:.1f} | **{m['active_after_s']:.1f}** | "
                         f"{m['probation_seconds']:.1f} | {m['steps_in_probation']:.0f} | {r['step_seconds']:.3f} |")
        lines.append("")
    if result.get("churn"):
        steady, churned = result["churn"]
        lines += ["## Step time during churn", "",
                  f"Both runs {result['churn_steps']} steps (wall per step measured from step "
                  f"{result['churn_every']} on). Churn: one join or one leave every {result['churn_every']} steps "
                  f"(α = 1, probation 3 steps; the joiners' actors built before the job started): "
                  f"{len(churned['events'])} events, {churned['joined']} joined, {churned['promoted']} promoted, "
                  f"{churned['left']} left.", "",
                  "| run | driver wall s/step | vs steady | protocol step s (mean) | active peers at the end "
                  "| banned | dropped | weights agree | test accuracy |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in (steady, churned):
            lines.append(f"| {r['run']} | {r['wall_per_step']:.3f} | {r['wall_per_step'] / steady['wall_per_step']:.2f}x "
                         f"| {r['mean_step_seconds']:.3f} | {r['active_peers']} | {len(r['banned'])} | "
                         f"{len(r['dropped'])} | {r['weights_agree']} | {100 * r['final_test_accuracy']:.1f}% |")
        lines += ["", "Churn events (step, event, peer): " + ", ".join(
            f"{e['step']} {e['event']} {e['peer']}" for e in churned["events"]), "",
                  f"Per window of {result['churn_every']} steps (the first includes start-up): driver wall s/step and "
                  "mean protocol step s, steady | churn; active peers in the churn run at the window's end "
                  "(a joiner is on probation for the 3 steps after a join: it commits, a validator re-computes it, "
                  "it is not aggregated; after its promotion it is one more active peer).", "",
                  "| steps to | steady wall | steady step | churn wall | churn step | churn active peers |",
                  "|---|---|---|---|---|---|"]
        for a, b in zip(steady["windows"], churned["windows"]):
            lines.append(f"| {a['to_step']} | {a['wall_per_step']:.3f} | {a['step_seconds']:.3f} | "
                         f"{b['wall_per_step']:.3f} | {b['step_seconds']:.3f} | {b['active_peers']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("latency", "churn"), action="append")
    parser.add_argument("--alpha", type=float, action="append", help="puzzle cost in gradients (repeatable)")
    parser.add_argument("--probation", type=int, action="append", help="probation steps (repeatable)")
    parser.add_argument("--joins", type=int, default=3, help="joiners per (α, probation) setting")
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
                        row = join_latency(alpha, probation, args.joins, work)
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
    previous = args.out / "elastic_latency.json"
    if previous.is_file():  # a run of one part keeps the other part's recorded results (and its command)
        kept = json.loads(previous.read_text())
        for part in ("latency", "churn"):
            if part not in result and part in kept:
                result[part] = kept[part]
                result.setdefault("kept", {})[part] = kept.get("kept", {}).get(part) or {
                    "command": kept["command"], "date": kept["date"]}
    (args.out / "elastic_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "elastic_latency.md").write_text(to_markdown(result) + "\n")
    print(to_markdown(result))


if __name__ == "__main__":
    main()

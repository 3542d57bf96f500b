"""Step time broken into phases, bytes per peer against the butterfly minimum, and the
cost of the BTARD defence against a plain all-reduce.

For each setting it runs a short real job (real Ray actors, a local instance) and reports the
mean over the steady steps of the phases and of the whole step as the driver sees it; the
payload bytes each peer fetched per step against 2·(n−1)/n·d·4; and, with the defence on,
the bytes of signed protocol messages per step (commitments, reports, reveals, inner
products, accusations). "plain" is ``aggregator: mean`` with every check off (the baseline),
"btard" the full protocol (CenteredClip, signatures, commit-reveal, projection checks, m = 1
validator).

    python benchmarks/step_breakdown.py                 # quickstart + ResNet-18, 6 peers
    python benchmarks/step_breakdown.py --only quickstart/plain --only quickstart/btard --repeat 3
    python benchmarks/step_breakdown.py --only quickstart/plain --only quickstart/btard \
        --only quickstart/btard-m0 --repeat 6   # the recorded quickstart rows

ResNet-18 needs a CIFAR-10 directory; none can be downloaded here, so unless --cifar points
to one, a CIFAR-format directory of random pixels is written to a temp dir. That is fine for
timing (the work per step does not depend on pixel values) and is said in the output.
"""

from __future__ import annotations

import argparse
import statistics
import json
import pickle
import platform
import tempfile
import time
from pathlib import Path

import btard_ray  # noqa: F401  - Ray auth mode before Ray is imported
import numpy as np
import ray
import torch

from btard_ray.config import load_config
from btard_ray.run_dir import RunDir
from btard_ray.trainer import train

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def synthetic_cifar(root: Path, n_train: int = 2000, n_test: int = 500) -> Path:
    """A CIFAR-10 python-pickle directory of random pixels (timing only)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    per = n_train // 5
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, per).tolist()}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n_test).tolist()}
    (root / "test_batch").write_bytes(pickle.dumps(test))
    return root


PLAIN = ["protocol.checks=false", "aggregator.name=mean"]
QUICK = ["peers=6", "steps=80", "eval_every=80"]
RESNET = ["peers=6", "steps=6", "eval_every=6", "model.name=resnet18", "data.name=cifar10",
          "data.batch_size=32", "ray.object_store_memory_mb=1500"]
SETTINGS = {
    "quickstart/plain": QUICK + PLAIN,
    "quickstart/btard": QUICK,
    # The full protocol without re-computation (m = 0, no suspect audits): how much of the
    # cost is the validator's extra gradient, which sits on the critical path of its round.
    "quickstart/btard-m0": QUICK + ["protocol.validators=0", "protocol.suspect_audits=0"],
    "resnet18/plain": RESNET + PLAIN,
    "resnet18/btard": RESNET,
}


def run_setting(name: str, overrides: list[str], workdir: Path) -> dict:
    cfg = load_config(REPO / "configs" / "quickstart.yaml", overrides)
    cfg.name = "bench-" + name.replace("/", "-")
    t0 = time.perf_counter()
    summary = train(cfg, RunDir(workdir / name.replace("/", "-")), show_progress=False)
    return {
        "setting": name,
        "overrides": overrides,
        "peers": summary["active_peers"],
        "num_params": summary["num_params"],
        "steps": summary["steps"],
        "step_s": summary["mean_step_seconds"],
        "phases_s": summary["phase_seconds"],
        "bytes_per_peer_step": summary["bytes_per_peer_step"],
        "butterfly_min_bytes": summary["butterfly_min_bytes_per_peer_step"],
        "protocol_bytes_per_step": summary.get("protocol_bytes_per_step", 0.0),
        "accusations": summary.get("accusations", 0),
        "job_wall_s": time.perf_counter() - t0,
    }


def to_markdown(rows: list[dict], command: str, note: str) -> str:
    by_name = {r["setting"]: r for r in rows}
    commands = list(dict.fromkeys(r.get("command", command) for r in rows))
    lines = [
        "# Step time breakdown, exchange volume and the cost of the defence",
        "",
        "Commands (each row records the one that produced it): " + "; ".join(f"`{c}`" for c in commands) + "  ",
        f"Machine: {platform.machine()}, {__import__('os').cpu_count()} cores shared by all 6 peers, "
        f"torch {torch.__version__}, ray {ray.__version__}, CPU only, 1 torch thread per peer.  ",
        "Times are means over peers and steady steps (the first 10% of steps, at most 5, are warm-up). "
        "In plain mode `*_wait` is time an actor waited for other peers' results (on a shared 2-core "
        "machine: their compute) and `*_fetch` the time to move the bytes; in btard mode the phases are "
        "the driver's wall time per round of actor calls (the next step's compute and commit run inside `audit`, "
        "so `commit` is only the collection of results). Bytes are the payload a peer fetched from the "
        "object store; protocol bytes are the signed messages the driver relayed per step (all peers).  ",
        note,
        "",
        "| setting | params | step (s) | vs plain | bytes/peer/step | butterfly min | ratio | protocol bytes/step | accusations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        plain = by_name.get(r["setting"].split("/")[0] + "/plain")
        versus = f"{r['step_s'] / plain['step_s']:.2f}x" if plain else "-"
        if r.get("pair_ratios"):
            versus = f"{statistics.median(r['pair_ratios']):.2f}x"
        lines.append(
            f"| {r['setting']} | {r['num_params']:,} | {r['step_s']:.3f} | {versus} | {r['bytes_per_peer_step']:,.0f} | "
            f"{r['butterfly_min_bytes']:,.0f} | {r['bytes_per_peer_step'] / r['butterfly_min_bytes']:.4f} | "
            f"{r['protocol_bytes_per_step']:,.0f} | {r['accusations']} |"
        )
    runs = [r for r in rows if len(r.get("step_s_runs", [])) > 1]
    if runs:
        lines += ["", "Step time of every run (the table shows the median run): "
                  + "; ".join(f"{r['setting']} " + ", ".join(f"{v:.3f}" for v in r["step_s_runs"]) for r in runs)]
    paired = [r for r in rows if r.get("pair_ratios")]
    if paired:
        lines += ["", "With --repeat the defended run and its plain run alternate, and \"vs plain\" is the median of "
                  "the ratios of the runs made back to back (this machine's speed drifts by up to ~30 % over "
                  "minutes, which a ratio of two medians taken minutes apart would fold in): "
                  + "; ".join(f"{r['setting']} " + ", ".join(f"{v:.2f}" for v in r["pair_ratios"]) for r in paired)]
    lines += ["", "Phases (seconds per step):", ""]
    for r in rows:
        lines.append(f"- {r['setting']}: " + ", ".join(f"{k.removesuffix('_s')} {v:.4f}" for k, v in r["phases_s"].items()))
    return "\n".join(lines) + "\n"


def _median_row(samples: list[dict]) -> dict:
    """The run with the median step time, with every run's step time kept beside it."""
    ordered = sorted(samples, key=lambda r: r["step_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["step_s_runs"] = [r["step_s"] for r in samples]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SETTINGS), action="append")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every setting this many times, interleaved; report the median run")
    parser.add_argument("--cifar", type=Path, help="a real CIFAR-10 python directory for the ResNet-18 setting")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    names = args.only or list(SETTINGS)
    note = ""
    samples: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rep in range(args.repeat):
            for name in names:
                overrides = list(SETTINGS[name])
                if name.startswith("resnet18"):
                    cifar = args.cifar or synthetic_cifar(work / "cifar")
                    overrides.append(f"data.path={cifar}")
                    if args.cifar is None:
                        note = "ResNet-18 ran on a CIFAR-format directory of random pixels (timing only; no CIFAR-10 here)."
                print(f"running {name} ({rep + 1}/{args.repeat}) ...", flush=True)
                samples[name].append(run_setting(name, overrides, work / f"rep{rep}"))
                print(json.dumps(samples[name][-1], indent=1), flush=True)
    command = "python benchmarks/step_breakdown.py" + "".join(f" --only {n}" for n in (args.only or []))
    if args.repeat > 1:
        command += f" --repeat {args.repeat}"
    rows = [{**_median_row(samples[name]), "command": command} for name in names]
    for row in rows:
        plain = samples.get(row["setting"].split("/")[0] + "/plain")
        if not row["setting"].endswith("/plain") and plain and len(plain) == len(samples[row["setting"]]) > 1:
            row["pair_ratios"] = [b["step_s"] / p["step_s"] for b, p in zip(samples[row["setting"]], plain)]
    # Settings not run this time keep their last recorded row.
    recorded = args.out / "step_breakdown.json"
    if recorded.is_file():
        kept = [r for r in json.loads(recorded.read_text()) if r["setting"] not in samples]
        rows = sorted(kept + rows, key=lambda r: list(SETTINGS).index(r["setting"]))
    args.out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "step_breakdown.md").write_text(to_markdown(rows, command, note))
    print(to_markdown(rows, command, note))


if __name__ == "__main__":
    main()

"""Step time broken into phases, and object-store bytes per peer against the butterfly minimum.

For each setting it runs a short real job (real Ray actors, a local instance) and reports the
mean over the steady steps of: compute, scatter (wait for producers / fetch bytes),
aggregate, gather (wait / fetch), update, and the whole step as the driver sees it; and the
payload bytes each peer fetched per step against 2·(n−1)/n·d·4.

    python benchmarks/step_breakdown.py                 # quickstart + ResNet-18, 6 peers
    python benchmarks/step_breakdown.py --only quickstart

ResNet-18 needs a CIFAR-10 directory; none can be downloaded here, so unless --cifar points
to one, a CIFAR-format directory of random pixels is written to a temp dir. That is fine for
timing (the work per step does not depend on pixel values) and is said in the output.
"""

from __future__ import annotations

import argparse
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

from btard_ray.butterfly import PHASES
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


SETTINGS = {
    "quickstart": ["peers=6", "steps=60", "eval_every=60"],
    "resnet18": ["peers=6", "steps=8", "eval_every=8", "model.name=resnet18", "data.name=cifar10",
                 "data.batch_size=32", "ray.object_store_memory_mb=1500"],
}


def run_setting(name: str, overrides: list[str], workdir: Path) -> dict:
    cfg = load_config(REPO / "configs" / "quickstart.yaml", overrides)
    cfg.name = f"bench-{name}"
    t0 = time.perf_counter()
    summary = train(cfg, RunDir(workdir / name), show_progress=False)
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
        "job_wall_s": time.perf_counter() - t0,
    }


def to_markdown(rows: list[dict], command: str, note: str) -> str:
    head = ["setting", "params", "step (s)", *[p.removesuffix("_s") for p in PHASES], "bytes/peer/step", "minimum", "ratio"]
    lines = [
        "# Step time breakdown and exchange volume",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads in the driver, "
        f"{__import__('os').cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}, CPU only.  ",
        "Phases are means over peers and steady steps (the first 10% of steps, at most 5, are warm-up and left out). "
        "`*_wait` is time an actor waited for other peers' results (on a shared 2-core machine: their compute), "
        "`*_fetch` the time to move the bytes; bytes are the payload a peer fetched from the object store.  ",
        note,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        phases = [f"{r['phases_s'][p]:.4f}" for p in PHASES]
        lines.append(
            f"| {r['setting']} | {r['num_params']:,} | {r['step_s']:.3f} | " + " | ".join(phases)
            + f" | {r['bytes_per_peer_step']:,.0f} | {r['butterfly_min_bytes']:,.0f} | "
            f"{r['bytes_per_peer_step'] / r['butterfly_min_bytes']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SETTINGS), action="append")
    parser.add_argument("--cifar", type=Path, help="a real CIFAR-10 python directory for the ResNet-18 setting")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    names = args.only or list(SETTINGS)
    note = ""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = []
        for name in names:
            overrides = list(SETTINGS[name])
            if name == "resnet18":
                cifar = args.cifar or synthetic_cifar(work / "cifar")
                overrides.append(f"data.path={cifar}")
                if args.cifar is None:
                    note = "ResNet-18 ran on a CIFAR-format directory of random pixels (timing only; no CIFAR-10 here)."
            print(f"running {name} ...", flush=True)
            rows.append(run_setting(name, overrides, work))
            print(json.dumps(rows[-1], indent=1), flush=True)
    command = "python benchmarks/step_breakdown.py" + "".join(f" --only {n}" for n in (args.only or []))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_breakdown.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "step_breakdown.md").write_text(to_markdown(rows, command, note))
    print(to_markdown(rows, command, note))


if __name__ == "__main__":
    main()

"""CPU cost of one defended peer-step, function by function, without Ray.

Six :class:`~btard_ray.peer_protocol.PeerProtocol` objects (the logic every peer actor
wraps) run the quickstart's steps in one process, every message handed to every peer as
the relay would: commit, aggregate + reveal, check the aggregates, open the seed, project,
validate, audit, save point, apply. Each protocol function is timed where it is called
(wall time in a single thread, so it is CPU time), and reported in microseconds per
peer-step, with the total. What this leaves out is Ray's own work (task dispatch,
serialising and fetching objects) and the driver's relay: see ``step_breakdown.py`` for the
whole step.

    python benchmarks/peer_step_cost.py              # 60 steps, the first 10 are warm-up

Functions nest (``commit`` includes ``gradient``, ``aggregate`` includes ``centered_clip``),
so the rows do not add up to the total.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import platform
import time
from pathlib import Path

import btard_ray  # noqa: F401  - Ray auth mode before anything imports Ray
import torch

import btard_ray.peer_protocol as peer_protocol
from btard_ray.config import load_config
from btard_ray.heap import freeze_long_lived
from btard_ray.identity import Identity
from btard_ray.peer_protocol import PeerProtocol
from btard_ray.protocol.randomness import initial_seed
from btard_ray.replica import Replica

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODULE_FUNCTIONS = ["centered_clip", "part_digest", "aggregate_digest", "projection_vector", "peer_share",
                    "aggregate_check_for", "share_claim_ok", "valid_message", "audit_pairs", "signed_dict",
                    "gradient_problem"]
METHODS = ["commit", "gradient", "aggregate", "reveal", "check_aggregates", "open_seed", "project",
           "validation_targets", "validate", "audit", "apply", "sign", "valid"]


def _timed(owner: object, name: str, spent: collections.Counter) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall time to ``spent[name]``."""
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0

    setattr(owner, name, wrapper)


def measure(steps: int, warmup: int, peers: int = 6) -> dict:
    torch.set_num_threads(1)
    spent: collections.Counter = collections.Counter()
    for name in MODULE_FUNCTIONS:
        _timed(peer_protocol, name, spent)
    for name in METHODS:
        _timed(PeerProtocol, name, spent)
    save_point = "save_point"
    cfg = load_config(REPO / "configs" / "quickstart.yaml", [f"peers={peers}"])
    cfg.name = "peer-step-cost"
    protos = [PeerProtocol(cfg, pid, Identity.generate(), Replica(cfg), None) for pid in range(peers)]
    keys = {p.me: p.identity.public_hex for p in protos}
    for p in protos:
        p.keys = dict(keys)
    members = [p.me for p in protos]
    seed = initial_seed(cfg.name, cfg.seed)
    freeze_long_lived()  # as a peer actor does after its set-up
    t_start = time.perf_counter()
    for step in range(steps):
        if step == warmup:
            spent.clear()
            t_start = time.perf_counter()
        committed = {p.me: p.commit(step, members, seed) for p in protos}
        commitments = {pid: c[1] for pid, c in committed.items()}
        aggregates, reports, reveals = {}, {}, {}
        for j, p in enumerate(protos):
            x, report, accusations = p.aggregate(step, {pid: committed[pid][0][j] for pid in members}, commitments)
            assert not accusations, accusations
            aggregates[p.me], reports[p.me], reveals[p.me] = x, report, p.reveal(step)
        inner = {}
        for p in protos:
            accusations = p.check_aggregates(step, aggregates, reports) + p.open_seed(step, reveals, commitments)
            inner[p.me] = p.project(step)
            targets = p.validation_targets(step, reports)
            accusations += p.validate(step, {t: committed[t][0] for t in targets}, commitments)
            assert not accusations, accusations
        for p in protos:
            accusations = p.audit(step, inner, reports)
            assert not accusations, accusations
            t0 = time.perf_counter()
            p.replica.save_point()
            spent[save_point] += time.perf_counter() - t0
            p.apply(step, {})
        seed = protos[0].state.next_seed
    peer_steps = (steps - warmup) * peers
    return {
        "steps": steps,
        "warmup": warmup,
        "peers": peers,
        "total_us": (time.perf_counter() - t_start) / peer_steps * 1e6,
        "functions_us": {k: v / peer_steps * 1e6 for k, v in spent.most_common()},
    }


def to_markdown(result: dict, command: str) -> str:
    lines = [
        "# CPU cost of one defended peer-step, without Ray",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, torch {torch.__version__}, 1 torch thread, one process "
        f"({result['peers']} PeerProtocol objects on the quickstart, {result['steps'] - result['warmup']} "
        f"steady steps). Microseconds per peer and step; rows nest (commit includes gradient), "
        "so they do not add up to the total. This machine's speed drifts by up to ~30 % within "
        "minutes: compare rows of one run, not runs.",
        "",
        f"Total: {result['total_us']:,.0f} µs per peer-step",
        "",
        "| function | µs per peer-step |",
        "|---|---|",
    ]
    lines += [f"| {name} | {us:,.1f} |" for name, us in result["functions_us"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if not 0 <= args.warmup < args.steps:
        parser.error("--warmup must be >= 0 and below --steps")
    result = measure(args.steps, args.warmup)
    command = "python benchmarks/peer_step_cost.py"
    if (args.steps, args.warmup) != (60, 10):
        command += f" --steps {args.steps} --warmup {args.warmup}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peer_step_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "peer_step_cost.md").write_text(to_markdown(result, command))
    print(to_markdown(result, command))


if __name__ == "__main__":
    main()

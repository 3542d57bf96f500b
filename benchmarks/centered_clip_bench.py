"""CenteredClip cost against the cost of reading its input once, and against the naive loop.

For n ∈ {4, 8, 16} rows and d ∈ {1e5, 1e6, 1e7} columns (float32) it measures, in one run:

- read:   ``stacked.sum()``, the cheapest full read (one float32 stream in, nothing out): the
          floor for anything that looks at every value. ``copy`` (``out.copy_(stacked)`` into a
          preallocated tensor: one stream in, one out) is shown too;
- naive:  one iteration of the textbook torch loop on the (n, d) tensor (``stacked − x``,
          row norms, clip weights, weighted sum), and ``torch.median(dim=0)``, its start;
- ours:   setup (one pass: the sorting-network median and the float64 Gram matrix; the
          median alone is shown too), one coefficient-space iteration, the final pass
          (materialise x in float32 plus its true distances), the true-residual pass, the
          end-to-end ``centered_clip`` call, and the iterations it took.

Data (the same for every cell): honest rows g_i = μ + σξ_i with μ ~ N(0, 1/d) and σ = 2/√d
per coordinate (‖μ‖ ≈ 1, honest rows ≈ 2 from their mean), plus b outlier rows
μ + 100σξ (b = 1 for n = 4, else 2); τ = 5 (2.5× the honest spread: honest rows are
not clipped, outliers are), eps = 1e-6, max_iters = 100.

    /work/venv/bin/python benchmarks/centered_clip_bench.py            # the full grid (~2 min idle)
    /work/venv/bin/python benchmarks/centered_clip_bench.py --quick    # d ≤ 1e6 only

The grid is timed in rounds (a warm-up round, then ``--rounds`` more) and every time is the
minimum over the rounds: the machine may be shared, and a burst of someone else's load then
spoils one sample of many cells rather than every sample of one. Results go to
benchmarks/results/centered_clip.{md,json} (the JSON keeps every round's samples).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent))

from btard_ray.aggregation import centered_clip  # noqa: E402
from btard_ray.aggregation.baselines import median_of_rows  # noqa: E402

# The private passes, timed one by one (the public function only returns the result).
cc = importlib.import_module("btard_ray.aggregation.centered_clip")

RESULTS = HERE / "results"
TAU, EPS, MAX_ITERS = 5.0, 1e-6, 100
MEMORY_LIMIT = 4 * 2**30  # skip a cell whose peak estimate exceeds this


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def make_data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sigma = 2.0 / math.sqrt(d)
    mu = torch.randn(d, generator=gen) / math.sqrt(d)
    stacked = torch.randn(n, d, generator=gen).mul_(sigma).add_(mu)
    bad = 1 if n <= 4 else 2
    stacked[:bad] = mu + 100.0 * sigma * torch.randn(bad, d, generator=gen)
    return stacked


def naive_step(stacked: torch.Tensor, x: torch.Tensor, tau: float) -> torch.Tensor:
    """One iteration of the textbook loop, all in the input dtype."""
    diff = stacked - x
    dist = torch.linalg.vector_norm(diff, dim=1)
    clip = torch.clamp(tau / dist, max=1.0)
    return x + (clip[:, None] * diff).sum(dim=0) / stacked.shape[0]


def peak_bytes(n: int, d: int) -> int:
    # stacked, plus the naive loop's two (n, d) temporaries; ours needs only O(d) more.
    return 3 * n * d * 4 + 4 * d * 8


TIMES = [
    "read_sum_s", "copy_s", "naive_median_s", "naive_iter_s", "median_s", "setup_s",
    "iter_s", "final_s", "residual_pass_s", "total_s",
]


def sample(stacked: torch.Tensor, inner: int) -> dict:
    """One round of every timing for one cell (each the minimum of ``inner`` calls)."""
    n, d = stacked.shape
    out = torch.empty_like(stacked)
    times = {
        "read_sum_s": best_of(lambda: stacked.sum(), inner + 2),
        "copy_s": best_of(lambda: out.copy_(stacked), inner + 2),
    }
    del out
    start = stacked.median(dim=0).values
    times["naive_median_s"] = best_of(lambda: stacked.median(dim=0), 1 if d >= 10**7 else inner)
    times["naive_iter_s"] = best_of(lambda: naive_step(stacked, start, TAU), inner)

    times["median_s"] = best_of(lambda: median_of_rows(stacked), inner)
    times["setup_s"] = best_of(lambda: cc._start(stacked), inner)
    rows, x0, gram = cc._start(stacked)
    target = EPS * cc._SURROGATE_TARGET
    coeffs, iterations = cc._iterate_coefficients(gram, n, TAU, target, MAX_ITERS)
    loop_s = best_of(lambda: cc._iterate_coefficients(gram, n, TAU, target, MAX_ITERS), max(inner, 5))
    times["iter_s"] = loop_s / max(iterations, 1)
    times["final_s"] = best_of(lambda: cc._materialise(stacked, rows, x0, coeffs), inner)
    x, distances = cc._materialise(stacked, rows, x0, coeffs)
    point = cc._evaluate(stacked, rows, x, distances, n, TAU, iterations)
    times["residual_pass_s"] = best_of(lambda: cc._residual_pass(stacked, rows, point, n, want_next=False), inner)
    del x0, gram, x, distances, point
    times["total_s"] = best_of(lambda: centered_clip(stacked, TAU, EPS, MAX_ITERS), inner)
    return times


def summarise(n: int, d: int, stacked: torch.Tensor, rounds: list[dict]) -> dict:
    """Per-timing minimum over the rounds, plus the result's iterations and residual."""
    row: dict = {"n": n, "d": d}
    for key in TIMES:
        row[key] = min(r[key] for r in rounds)
    row["rounds"] = {key: [r[key] for r in rounds] for key in TIMES}
    result = centered_clip(stacked, TAU, EPS, MAX_ITERS)
    row["iterations"] = result.iterations
    row["converged"] = result.converged
    row["residual_norm"] = result.residual_norm
    # The naive loop would take about as many iterations from its (lower-median) start.
    row["naive_total_est_s"] = row["naive_median_s"] + result.iterations * row["naive_iter_s"]
    row["iter_over_read"] = row["iter_s"] / row["read_sum_s"]
    row["naive_iter_over_read"] = row["naive_iter_s"] / row["read_sum_s"]
    row["total_over_read"] = row["total_s"] / row["read_sum_s"]
    row["naive_est_over_total"] = row["naive_total_est_s"] / row["total_s"]
    return row


COLUMNS = [
    ("n", "n", "{}"),
    ("d", "d", "{:.0e}"),
    ("read (sum) ms", "read_sum_s", "ms"),
    ("copy ms", "copy_s", "ms"),
    ("naive iter ms", "naive_iter_s", "ms"),
    ("naive iter / read", "naive_iter_over_read", "{:.1f}x"),
    ("torch.median ms", "naive_median_s", "ms"),
    ("setup ms", "setup_s", "ms"),
    ("(median ms)", "median_s", "ms"),
    ("iter µs", "iter_s", "us"),
    ("iter / read", "iter_over_read", "{:.3f}x"),
    ("final ms", "final_s", "ms"),
    ("residual ms", "residual_pass_s", "ms"),
    ("total ms", "total_s", "ms"),
    ("total / read", "total_over_read", "{:.0f}x"),
    ("iters", "iterations", "{}"),
    ("‖r‖", "residual_norm", "{:.1e}"),
    ("naive total est. ms", "naive_total_est_s", "ms"),
    ("naive est. / total", "naive_est_over_total", "{:.1f}x"),
]


def fmt(row: dict, key: str, spec: str) -> str:
    value = row[key]
    if spec == "ms":
        return f"{value * 1e3:.3g}" if value * 1e3 < 100 else f"{value * 1e3:.0f}"
    if spec == "us":
        return f"{value * 1e6:.0f}"
    return spec.format(value)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write_markdown(path: Path, info: dict, rows: list[dict], skipped: list[str], command: str) -> None:
    lines = [
        "# CenteredClip: cost per iteration against one read of the input",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} CPU cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), Python {info['python']}, float32 input; {info['date']}. "
        f"1-minute load average {info['load_average_1m_at_start']:.2f} at start, "
        f"{info['load_average_1m_at_end']:.2f} at end (the machine is shared with other jobs; "
        "every time is the minimum over the timed rounds, see the JSON for all samples).",
        "",
        "Data: honest rows μ + σξ (σ = 2/√d per coordinate, ‖μ‖ ≈ 1), 1 (n = 4) or 2 outlier rows "
        "μ + 100σξ; τ = 5, eps = 1e-6, max_iters = 100. "
        "*read* = `stacked.sum()` (one float32 stream in, nothing out: the floor for any pass); "
        "*copy* = `out.copy_(stacked)` into a preallocated tensor. "
        "*naive iter* = one step of the textbook torch loop (`stacked − x`, row norms, weighted sum). "
        "*setup* = our one pass for the median (sorting network) and the float64 Gram matrix; "
        "*iter* = one coefficient-space iteration (O(n²), independent of d); "
        "*final* = materialise x plus its true distances (one pass); *residual* = the true "
        "float64 residual (one pass); *total* = the whole `centered_clip` call. "
        "*naive total est.* = torch.median + iters × naive iter. "
        "Ratios: *iter / read* is the target metric (≤ 2x wanted).",
        "",
        "| " + " | ".join(name for name, _, _ in COLUMNS) + " |",
        "|" + "|".join("---:" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row, key, spec) for _, key, spec in COLUMNS) + " |")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]
    path.write_text("\n".join(lines) + "\n")


def print_table(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text is enough
        print("\t".join(name for name, _, _ in COLUMNS))
        for row in rows:
            print("\t".join(fmt(row, key, spec) for _, key, spec in COLUMNS))
        return
    table = Table(title="CenteredClip (times are minima over repetitions)")
    for name, _, _ in COLUMNS:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*(fmt(row, key, spec) for _, key, spec in COLUMNS))
    Console(width=250).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only d ≤ 1e6")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over the grid (min is kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (at most 2 here)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "/work/venv/bin/python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
    info = machine()
    sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    cells, skipped = [], []
    for d in sizes:
        for n in (4, 8, 16):
            if peak_bytes(n, d) > MEMORY_LIMIT:
                skipped.append(f"n={n}, d={d:.0e} (~{peak_bytes(n, d) / 2**30:.1f} GiB)")
            else:
                cells.append((n, d, make_data(n, d)))
    # Rounds over the whole grid rather than repetitions in a row: a burst of load from
    # another process then spoils one sample of many cells, not every sample of one.
    samples: dict = {(n, d): [] for n, d, _ in cells}
    for round_ in range(args.rounds + 1):  # round 0 warms up and is discarded
        started = time.perf_counter()
        for n, d, stacked in cells:
            inner = {10**5: 10, 10**6: 3}.get(d, 1)
            times = sample(stacked, inner)
            if round_:
                samples[(n, d)].append(times)
        print(f"round {round_}/{args.rounds}: {time.perf_counter() - started:.1f} s", flush=True)
    rows = [summarise(n, d, stacked, samples[(n, d)]) for n, d, stacked in cells]
    info["load_average_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_markdown(args.out / "centered_clip.md", info, rows, skipped, command)
    (args.out / "centered_clip.json").write_text(
        json.dumps({"command": command, "machine": info, "tau": TAU, "eps": EPS, "max_iters": MAX_ITERS,
                    "rows": rows, "skipped": skipped}, indent=2) + "\n"
    )
    print(f"wrote {args.out / 'centered_clip.md'} and centered_clip.json")


if __name__ == "__main__":
    main()

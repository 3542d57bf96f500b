"""PNG plots of a run directory: loss and accuracy against steps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from btard_ray.run_dir import RunDir  # noqa: E402


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``loss.png`` and ``accuracy.png`` for ``run_dir``; returns the written paths.

    Raises FileNotFoundError if the directory has no metrics, ValueError if they are empty.
    """
    run = RunDir(run_dir)
    records = run.read_metrics()
    if not records:
        raise ValueError(f"{run.path}: metrics.jsonl has no evaluations yet")
    out = Path(out_dir) if out_dir is not None else run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in records]
    title = run.path.name

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, [r["train_loss"] for r in records], label="train loss (mean of peers' batches)")
    ax.plot(steps, [r["test_loss"] for r in records], label="test loss")
    ax.set(xlabel="step", ylabel="cross-entropy", title=f"{title}: loss", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    loss_path = out / "loss.png"
    fig.tight_layout()
    fig.savefig(loss_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, [100 * r["test_accuracy"] for r in records], marker=".", label="test accuracy")
    ax.set(xlabel="step", ylabel="accuracy (%)", title=f"{title}: test accuracy", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.step(steps, [r["active_peers"] for r in records], where="post", color="gray", alpha=0.5, label="active peers")
    ax2.set_ylabel("active peers")
    ax2.set_ylim(0, max(r["active_peers"] for r in records) + 1)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="lower right")
    acc_path = out / "accuracy.png"
    fig.tight_layout()
    fig.savefig(acc_path, dpi=120)
    plt.close(fig)
    return [loss_path, acc_path]

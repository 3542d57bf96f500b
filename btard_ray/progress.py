"""The rich progress bar of a training run: step, loss, accuracy and active peers."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainingProgress:
    """Context manager around a rich Progress with one task for the run's steps."""

    def __init__(self, total_steps: int, job_name: str, enabled: bool = True, console: Console | None = None,
                 completed: int = 0) -> None:
        """``completed``: steps already done (a resumed job starts its bar there)."""
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  peers {task.fields[peers]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(job_name, total=total_steps, completed=completed, loss="-", acc="-",
                                             peers="-")

    def __enter__(self) -> "TrainingProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def advance(self, loss: float, peers: int, accuracy: float | None = None) -> None:
        fields = {"loss": f"{loss:.4f}", "peers": str(peers)}
        if accuracy is not None:
            fields["acc"] = f"{100 * accuracy:.2f}%"
        self._progress.update(self._task, advance=1, **fields)

    def set_total(self, total_steps: int) -> None:
        """The job ends at ``total_steps`` instead (the owner asked it to finish early)."""
        self._progress.update(self._task, total=total_steps)

"""Checkpoints of a running job, and what ``btard resume`` needs from them.

A checkpoint is everything the driver needs to continue a job after it crashed, written
every ``checkpoint_every`` steps (and at the end, as ``final.pt``) into the run directory:

    checkpoint/step-000020.pt   the latest periodic checkpoint (older ones are removed)
    checkpoint/final.pt         the same format at the last step

Each is one ``torch.save`` file of plain data (tensors, dicts, lists, str, int, float,
bytes), so it loads with ``torch.load(weights_only=True)``: no pickled code runs when a
checkpoint is read. It is written to a temporary file in the same folder, fsync-ed and
moved into place with ``os.replace``, so a crash while writing leaves the previous
checkpoint intact and never a half-written one. The keys are :class:`Checkpoint`'s fields
plus ``format`` (:data:`FORMAT`).

Why plain files and not Ray Train's ``Checkpoint``: Ray Train's ``Checkpoint`` is a handle
on a directory that Train's own worker group reports through ``ray.train.report`` and that
a ``Trainer`` restores from; it is made for workers that Ray Train schedules and restarts.
Our peers are plain actors scheduled by our driver, and what must survive a crash is not a
worker's files but the driver's state: the common weights (honest replicas are identical,
so one copy is the state of all), the membership, the shared seed and the ledger's chain
head. One small atomic file in the run directory, next to the config, the metrics and the
ledger it refers to, is all that needs, and it keeps the run directory self-contained: it
can be resumed, copied or audited without Ray.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FORMAT = "btard-checkpoint-v1"
FINAL = "final.pt"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class ResumeError(ValueError):
    """A run directory that cannot be resumed; the message is one line saying why."""


class CheckpointError(ResumeError):
    """A checkpoint that cannot be used; the message is one line naming the file."""


def step_file_name(step: int) -> str:
    """``step-000020.pt``: zero-padded so that names sort like steps."""
    return f"step-{step:06d}.pt"


def step_of_file(name: str) -> int | None:
    """The step in a periodic checkpoint's file name (None for any other name)."""
    match = _STEP_FILE.match(name)
    return int(match.group(1)) if match else None


@dataclass
class StepRecord:
    """What the summary needs from one completed step (kept across a resume).

    It has the attribute names of a step outcome, so the summary treats records of steps
    before a resume and outcomes of steps after it alike.
    """

    step: int
    mean_loss: float
    wall_s: float
    phase_s: dict[str, float] = field(default_factory=dict)
    bytes_per_peer: float = 0.0
    accusations: int = 0
    skipped: bool = False
    protocol_bytes: int = 0

    @classmethod
    def of(cls, outcome: Any) -> "StepRecord":
        """The record of a step outcome (plain or defended), or of a record (itself)."""
        if isinstance(outcome, StepRecord):
            return outcome
        return cls(step=int(outcome.step), mean_loss=float(outcome.mean_loss), wall_s=float(outcome.wall_s),
                   phase_s={str(k): float(v) for k, v in outcome.phase_s.items()},
                   bytes_per_peer=float(outcome.bytes_per_peer),
                   accusations=int(getattr(outcome, "accusations", 0)),
                   skipped=bool(getattr(outcome, "skipped", False)),
                   protocol_bytes=int(getattr(outcome, "protocol_bytes", 0)))


@dataclass
class Checkpoint:
    """The state of a job after ``step`` completed updates (steps 0 .. step-1).

    ``model``/``optimizer``/``scheduler``: the state dicts every honest replica holds
    (``weight_hash`` is theirs, checked on every active peer when it was written).
    ``members``: the active peer ids after that step's bans, in order; ``keys``: their
    public keys (the actors that wrote it; a resumed job's actors make new ones);
    ``banned``: every ban so far (peer, 0-based step, reason); ``attackers``: the peers
    chosen to misbehave (experiments). ``seed``: the shared seed r_step for the next step
    (None without the defence). ``ledger``: the ledger's chain head when it was written
    (``seq``, ``hash``) and the job's public key (None without the defence).
    ``records``: one :class:`StepRecord` (as a dict) per completed step, for the summary;
    ``window``: how many of the last records the next metrics line averages over.
    ``wall_seconds``: training time so far. ``resumes``: the steps this job was resumed
    from. ``config``: the resolved config it ran with.
    """

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    weight_hash: str
    members: list[int]
    keys: dict[int, str]
    banned: list[dict[str, Any]]
    attackers: list[int]
    seed: bytes | None
    ledger: dict[str, Any] | None
    records: list[dict[str, Any]]
    window: int
    last_eval: dict[str, float]
    wall_seconds: float
    resumes: list[int]
    config: dict[str, Any]
    # every peer's record (btard_ray.membership), left, dropped and banned ones included
    membership: dict[str, Any] = field(default_factory=dict)

    def step_records(self) -> list[StepRecord]:
        return [StepRecord(**r) for r in self.records]

    def to_payload(self) -> dict[str, Any]:
        return {"format": FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_payload(cls, payload: Any, source: Path) -> "Checkpoint":
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"{source}: not a resumable checkpoint (no {FORMAT!r} format tag; "
                                  "written by an older btard?)")
        names = [f.name for f in fields(cls)]
        optional = {f.name for f in fields(cls) if f.default_factory is not MISSING}
        missing = [n for n in names if n not in payload and n not in optional]
        if missing:
            raise CheckpointError(f"{source}: checkpoint lacks {', '.join(missing)}")
        return cls(**{n: payload[n] for n in names if n in payload})


def save_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    import torch  # here: the run directory (and `btard plot`) must not need torch to import

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(ckpt.to_payload(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: one line
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__})") from None
    return Checkpoint.from_payload(payload, path)

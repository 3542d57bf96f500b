"""Aggregators: robust (and not) ways to combine the n peers' copies of one gradient part.

Every aggregator maps ``stacked``, an (n, d) floating tensor whose row i is peer i's part,
to a (d,) aggregate of the same dtype on the same device. :data:`AGGREGATORS` holds the
functions themselves (``centered_clip`` returns a :class:`CenteredClipResult` with the
diagnostics the aggregate check needs); :func:`make_aggregator` binds parameters and gives
the one interface the peers use, ``fn(stacked) -> aggregate``.

Adding an aggregator: write the function (formula in its docstring) and, if it has
parameters, a ``validate_*`` function with the same keyword names and defaults; then list
both below.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .baselines import (
    coordinate_median,
    geometric_median,
    mean,
    trimmed_mean,
    validate_geometric_median_params,
    validate_trimmed_mean_params,
)
from .centered_clip import CenteredClipResult, centered_clip, validate_centered_clip_params

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "CenteredClipResult",
    "centered_clip",
    "coordinate_median",
    "geometric_median",
    "make_aggregator",
    "mean",
    "trimmed_mean",
]

AGGREGATORS: dict[str, Callable[..., Any]] = {
    "centered_clip": centered_clip,
    "mean": mean,
    "coordinate_median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "geometric_median": geometric_median,
}

# Checks run when an aggregator is made, so that a bad config fails at start-up, not at
# the first step. Each takes the aggregator's keyword parameters and raises ValueError.
_VALIDATORS: dict[str, Callable[..., None]] = {
    "centered_clip": validate_centered_clip_params,
    "trimmed_mean": validate_trimmed_mean_params,
    "geometric_median": validate_geometric_median_params,
}


@dataclass(frozen=True)
class Aggregator:
    """An aggregator with its parameters bound: ``agg(stacked) -> (d,) aggregate``."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, stacked: torch.Tensor) -> torch.Tensor:
        out = AGGREGATORS[self.name](stacked, **self.params)
        return out.aggregate if isinstance(out, CenteredClipResult) else out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"


def make_aggregator(name: str, **params: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The aggregator called ``name`` with ``params`` bound, as ``fn(stacked) -> aggregate``.

    Raises ValueError for an unknown name, for a parameter the aggregator does not take, for
    a missing required one (CenteredClip's ``tau``) and for an invalid value, each naming the
    culprit.
    """
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}")
    signature = list(inspect.signature(AGGREGATORS[name]).parameters.values())[1:]  # after `stacked`
    accepted = {p.name for p in signature}
    unknown = sorted(set(params) - accepted)
    if unknown:
        taken = ", ".join(sorted(accepted)) or "none"
        raise ValueError(f"aggregator {name!r} got unknown parameter(s) {', '.join(unknown)}; it takes: {taken}")
    missing = [p.name for p in signature if p.default is inspect.Parameter.empty and p.name not in params]
    if missing:
        raise ValueError(f"aggregator {name!r} needs parameter(s) {', '.join(missing)}")
    if name in _VALIDATORS:
        _VALIDATORS[name](**params)
    return Aggregator(name, dict(params))

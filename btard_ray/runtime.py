"""Connecting the driver to Ray: a local instance for the embedded default, or a cluster.

Ray's own log noise stays out of the user's way: the driver logs at ERROR, worker output is
not forwarded, and the dashboard is not started for a local instance (the Jobs API of
``btard submit`` runs against a cluster started with ``btard cluster start``).
"""

from __future__ import annotations

import logging
import os

import ray

from btard_ray.config import RayConfig

_MB = 1024 * 1024


def namespace_for(job_name: str) -> str:
    """The Ray namespace of a job: its named actors (admission, tribunal) live there."""
    return f"btard-{job_name}"


def connect(cfg: RayConfig, job_name: str) -> bool:
    """Start or join Ray for ``job_name``; returns True when this call started Ray.

    A driver that is already connected (a test session's shared instance) is reused.
    """
    if ray.is_initialized():
        return False
    common = dict(
        namespace=namespace_for(job_name),
        logging_level=logging.ERROR,
        log_to_driver=bool(os.environ.get("BTARD_RAY_LOGS")),
        configure_logging=True,
    )
    if cfg.address:
        ray.init(address=cfg.address, **common)
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_memory_mb * _MB,
            include_dashboard=False,
            **common,
        )
    return True


def disconnect(started: bool) -> None:
    """Shut Ray down if :func:`connect` started it."""
    if started and ray.is_initialized():
        ray.shutdown()

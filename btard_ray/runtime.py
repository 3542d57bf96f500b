"""Connecting the driver to Ray: a local instance for the embedded default, or a cluster.

Which Ray: ``ray.address`` from the config when set; else ``RAY_ADDRESS`` from the
environment, which is how Ray Jobs tells an entrypoint (``btard submit``) its cluster; else a
fresh local instance for this job alone. The local instance is started with
``address="local"``: a bare ``ray.init()`` would instead join whatever cluster ``ray start``
last recorded on this machine (``/tmp/ray/ray_current_cluster``, e.g. one started with
``btard cluster start``), and then refuse the local-only options below.

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
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # set by Ray Jobs for every entrypoint it runs


def namespace_for(job_name: str) -> str:
    """The Ray namespace of a job: its named actors (admission, tribunal) live there."""
    return f"btard-{job_name}"


def connect(cfg: RayConfig, job_name: str) -> bool:
    """Start or join Ray for ``job_name``; returns True when this call started Ray.

    Joins ``cfg.address``, else ``$RAY_ADDRESS``, else starts a local instance (see the
    module's docstring). A driver that is already connected (a test session's shared
    instance) is reused.
    """
    if ray.is_initialized():
        return False
    common = dict(
        namespace=namespace_for(job_name),
        logging_level=logging.ERROR,
        log_to_driver=bool(os.environ.get("BTARD_RAY_LOGS")),
        configure_logging=True,
    )
    address = cfg.address or os.environ.get(RAY_ADDRESS_ENV)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(
            address="local",
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

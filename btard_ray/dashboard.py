"""Talking to a Ray cluster's dashboard: the Jobs API and the node list, with one-line errors.

Everything ``btard submit``, ``btard jobs`` and ``btard cluster status`` ask a cluster goes
through the dashboard's HTTP API (``--address``, default ``$BTARD_DASHBOARD`` or
``http://127.0.0.1:8265``), never through a Ray driver: nothing here joins the cluster.

Token authentication: with ``RAY_AUTH_MODE=token`` (btard-ray's default, see
:mod:`btard_ray.ray_auth`) Ray's ``JobSubmissionClient`` and state API client add
``Authorization: Bearer <token>`` to every request, WebSocket log tails included, taking the
token from ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token``. The head compares it with its own token; a missing one is answered
401 and a wrong one 403, both raised here as :class:`ClusterUnreachable` naming the token.

A btard job is a Ray job whose ``submission_id`` is the job's name and whose metadata holds
``btard: "1"`` and the run directory (:data:`META_RUN_DIR`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

DASHBOARD_ENV = "BTARD_DASHBOARD"
DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
META_BTARD = "btard"
META_RUN_DIR = "btard_run_dir"
META_CONFIG = "btard_config"


class ClusterUnreachable(RuntimeError):
    """No (usable) cluster at the address; the message is one line for the user."""


class JobNotFound(KeyError):
    """No job with that name on the cluster."""


def dashboard_address(address: str | None) -> str:
    """``--address``, else ``$BTARD_DASHBOARD``, else the local default; ``http://`` added if bare."""
    url = (address or os.environ.get(DASHBOARD_ENV) or DEFAULT_DASHBOARD).strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


def _unreachable(url: str, exc: BaseException) -> ClusterUnreachable:
    from ray.exceptions import AuthenticationError

    if isinstance(exc, AuthenticationError):
        return ClusterUnreachable(
            f"the cluster at {url} rejected this machine's Ray token (copy the head's ~/.ray/auth_token "
            "here, or set RAY_AUTH_TOKEN)"
        )
    return ClusterUnreachable(
        f"no Ray cluster at {url} (start one with `btard cluster start`; --address takes the dashboard's URL, "
        "e.g. http://HEAD:8265)"
    )


def job_client(address: str | None):
    """A ``JobSubmissionClient`` for the dashboard at ``address`` (checked: it answered)."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    # The SDK logs every closed log stream at INFO on stderr; the CLI reports the outcome itself.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(url)
    except (ConnectionError, AuthenticationError, requests.exceptions.RequestException) as exc:
        raise _unreachable(url, exc) from None
    except RuntimeError as exc:  # the version check: something answered that is not a Ray dashboard
        raise ClusterUnreachable(f"{url} is not a Ray dashboard ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].rstrip(".") + "." if lines else type(exc).__name__


def call(url: str, method, *args):
    """Run one SDK call against the dashboard at ``url``; connection and auth failures become
    :class:`ClusterUnreachable`."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return method(*args)
    except (ConnectionError, AuthenticationError, requests.exceptions.ConnectionError) as exc:
        raise _unreachable(url, exc) from None


def get_job(client, name: str):
    """The ``JobDetails`` of job ``name``; :class:`JobNotFound` when the cluster has none."""
    try:
        return call(client.get_address(), client.get_job_info, name)
    except RuntimeError as exc:
        if "status code 404" in str(exc):
            raise JobNotFound(name) from None
        raise


def is_btard_job(job) -> bool:
    return bool(job.submission_id) and (job.metadata or {}).get(META_BTARD) == "1"


def list_jobs(client, btard_only: bool = True) -> list:
    """Submitted jobs, oldest first (btard's only, unless ``btard_only`` is False)."""
    jobs = call(client.get_address(), client.list_jobs)
    jobs = [j for j in jobs if j.submission_id and (is_btard_job(j) or not btard_only)]
    return sorted(jobs, key=lambda j: j.start_time or 0)


def list_nodes(address: str | None) -> list[dict[str, Any]]:
    """Every node the cluster knows (alive and dead): id, ip, head or not, state, resources."""
    import requests
    from ray.exceptions import AuthenticationError
    from ray.util.state import list_nodes as ray_list_nodes

    url = dashboard_address(address)
    try:
        nodes = ray_list_nodes(address=url, detail=True, raise_on_missing_output=False)
    except (ConnectionError, AuthenticationError, requests.exceptions.ConnectionError) as exc:
        raise _unreachable(url, exc) from None
    return [n if isinstance(n, dict) else n.__dict__ for n in nodes]


def submission_error(exc: RuntimeError) -> str:
    """The useful last line of a failed submission (the server sends a whole traceback)."""
    return _one_line(exc)

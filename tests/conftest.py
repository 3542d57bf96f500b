"""Shared fixtures: one real local Ray instance for the whole test session."""

from __future__ import annotations

import logging

import btard_ray  # noqa: F401  - fixes Ray's auth mode before Ray is imported
import pytest
import ray


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray instance shared by every test that needs one (started once: ~5 s)."""
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=512 * 1024 * 1024,
            include_dashboard=False,
            namespace="btard-tests",
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()

"""The tribunal's choice of a replacement aggregate (real Ray object store)."""

from __future__ import annotations

import pytest
import ray
import torch

from btard_ray.peer_protocol import aggregate_digest
from btard_ray.tribunal import _majority_aggregate

pytestmark = pytest.mark.integration


def test_a_judge_that_signs_the_majority_digest_but_hands_over_another_tensor_is_skipped(ray_session):
    job, step, accused = "tribunal-test", 4, 2
    honest = torch.arange(6, dtype=torch.float32)
    forged = honest + 1000.0
    digest = aggregate_digest(job, step, -1, accused, honest)
    vote = ray.put({})  # the vote itself is not looked at here
    # Judge 0 votes the honest digest but returns a forged tensor; judges 1 and 3 are honest.
    calls = {0: (vote, ray.put(forged)), 1: (vote, ray.put(honest)), 3: (vote, ray.put(honest))}
    chosen = _majority_aggregate(job, step, accused, calls, {0: digest, 1: digest, 3: digest})
    assert torch.equal(ray.get(chosen), honest)
    # Nobody hands over a tensor that matches: no replacement at all (rather than a forged one).
    calls = {0: (vote, ray.put(forged)), 1: (vote, ray.put(forged))}
    assert _majority_aggregate(job, step, accused, calls, {0: digest, 1: digest}) is None

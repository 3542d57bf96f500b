"""Judging an accusation (design §4.7): what a judge re-computes from the original objects.

Every judge (every active peer but the accused) re-computes the disputed quantity of a case
(see :mod:`btard_ray.verdicts`) and votes, signed, ``{"case": id, "guilty": {peer: reason}}``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from btard_ray.aggregation import centered_clip
from btard_ray.peer_protocol import (
    PeerProtocol,
    share_claim_ok,
    aggregate_digest,
    effective_eps,
    gradient_problem,
    reveal_nonce,
)
from btard_ray.payloads import PROBATION_CASES
from btard_ray.protocol.commitments import part_digest
from btard_ray.protocol.projection import distances_agree, projection_vector
from btard_ray.verdicts import CASE_REASON, EXCUSED, FALSE_SHARE

def judge_case(proto: PeerProtocol, step: int, case: Mapping[str, Any], ctx: Mapping[str, Any],
               fetched: Mapping[str, Any]) -> tuple[dict[int, str], torch.Tensor | None]:
    """This judge's finding: ``{peer: reason}`` of who misbehaved (empty: nobody), and for an
    aggregate found wrong the re-computed aggregate that replaces it.

    ``ctx`` holds the step's relayed messages (commitments, reports, reveals, inner) and the
    members; ``fetched`` the objects the case needs (see :func:`objects_needed`).
    """
    kind, accused = case["case"], int(case["accused"])
    members: list[int] = ctx["members"]
    if accused not in members and kind not in PROBATION_CASES:
        return {}, None  # a probationer sends no reveal, report or inner products to be wrong about
    if kind == "withheld_reveal":
        nonce = reveal_nonce(ctx["reveals"].get(accused), ctx["commitments"].get(accused), proto.job,
                             proto.keys.get(accused), step)
        return ({accused: CASE_REASON[kind]} if nonce is None else {}), None
    if kind == "bad_message":
        ok = proto.valid(ctx["inner"].get(accused), accused, step, "inner_products") is not None
        return ({} if ok else {accused: CASE_REASON[kind]}), None
    if kind == "bad_commitment":
        commit = proto.valid(ctx["commitments"].get(accused), accused, step, "commitment")
        sent: list[torch.Tensor] = fetched["sent"]
        bad = commit is None or any(
            commit.payload["parts"][j] != part_digest(proto.job, step, str(accused), j, sent[j]) for j in range(len(sent))
        )
        return ({accused: CASE_REASON[kind]} if bad else {}), None
    if kind == "inner_products":
        msg = proto.valid(ctx["inner"].get(accused), accused, step, "inner_products")
        st = proto._state(step)
        assert st.next_seed is not None
        sent: list[torch.Tensor] = fetched["sent"]
        lied = msg is None or not all(
            share_claim_ok(msg, j, part, st.aggregates[j], projection_vector(st.next_seed, j, part.numel()), proto.tau)
            for j, part in enumerate(sent))
        return ({accused: CASE_REASON[kind]} if lied else {}), None
    if kind == "wrong_gradient":
        problem = gradient_problem(proto, step, accused, fetched["sent"], ctx["commitments"].get(accused))
        return ({accused: problem[0]} if problem else {}), None
    if kind == "aggregate_check":
        return _judge_aggregate(proto, step, accused, members.index(accused), ctx, fetched)
    return {}, None


def objects_needed(case: Mapping[str, Any], ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The object refs a judge must fetch for ``case`` (resolved by the actor)."""
    kind, accused = case["case"], int(case["accused"])
    if kind in ("bad_commitment", "wrong_gradient", "inner_products"):
        return {"sent": ctx["part_refs"][accused]}
    if kind == "aggregate_check":
        j = ctx["members"].index(accused)
        return {"rows": [ctx["part_refs"][pid][j] for pid in ctx["members"]], "x": ctx["agg_refs"][accused]}
    return {}


def _reported_distances_true(report: Any, members: list[int], rows: list[torch.Tensor], excluded: list[int],
                             x: torch.Tensor, rtol: float) -> bool:
    """The aggregator's signed distances are ‖g_i[j] − x_j‖ of the real rows (None: excluded)."""
    reported = report.payload.get("distances", [])
    if not isinstance(reported, list) or len(reported) != len(members):
        return False
    for pid, row, claimed in zip(members, rows, reported):
        if pid in excluded:
            continue
        true = float((row.double() - x.double()).norm())
        claimed_f = math.inf if claimed is None else claimed
        if not isinstance(claimed_f, (int, float)) or not distances_agree(true if math.isfinite(true) else math.inf,
                                                                          float(claimed_f), rtol):
            return False
    return True


def _judge_aggregate(proto: PeerProtocol, step: int, aggregator: int, j: int, ctx: Mapping[str, Any],
                     fetched: Mapping[str, Any]) -> tuple[dict[int, str], torch.Tensor | None]:
    """Re-run CenteredClip on part j and re-compute every share; who deviates is guilty."""
    st = proto._state(step)
    members: list[int] = ctx["members"]
    rows: list[torch.Tensor] = list(fetched["rows"])
    x: torch.Tensor = fetched["x"]
    excluded, stacked = [], []
    for pid, row in zip(members, rows):
        commit = proto.valid(ctx["commitments"].get(pid), pid, step, "commitment")
        if commit is None or commit.payload["parts"][j] != part_digest(proto.job, step, str(pid), j, row):
            excluded.append(pid)
            row = torch.full_like(row, math.nan)
        stacked.append(row)
    cfg = proto.cfg.aggregator
    recomputed = centered_clip(torch.stack(stacked).to(proto.replica.device), cfg.tau, cfg.eps, cfg.max_iters)
    expected = recomputed.aggregate.cpu()

    guilty: dict[int, str] = {}
    report = proto.valid(ctx["reports"].get(aggregator), aggregator, step, "aggregate_report")
    tolerance = 10 * cfg.eps + 1e-6 * float(expected.double().norm())
    wrong = (
        report is None
        or report.payload.get("digest") != aggregate_digest(proto.job, step, aggregator, j, x)
        or sorted(report.payload.get("excluded", [])) != sorted(excluded)
        or not bool(torch.isfinite(x).all())
        or float((x.double() - expected.double()).norm()) > tolerance
    )
    if not wrong and report is not None and not _reported_distances_true(report, members, rows, excluded, x,
                                                                         proto.cfg.protocol.distance_rtol):
        # A right aggregate with wrong distances still breaks every honest peer's check (and
        # would steer the suspect audits): the report is what is wrong. Nothing to replace.
        guilty[aggregator] = CASE_REASON["aggregate_check"]
    if wrong:
        guilty[aggregator] = CASE_REASON["aggregate_check"]
    # A peer whose signed share or distance for part j is not what its part gives is lying
    # (it may have tried to frame an honest aggregator).
    assert st.next_seed is not None
    z = projection_vector(st.next_seed, j, x.numel())
    for pid, row in zip(members, rows):
        if pid in excluded or pid in guilty:
            continue
        msg = proto.valid(ctx["inner"].get(pid), pid, step, "inner_products")
        if msg is None:
            continue
        if not share_claim_ok(msg, j, row, x, z, proto.tau):
            guilty[pid] = FALSE_SHARE
    if not guilty and recomputed.residual_norm > effective_eps(cfg.eps, expected):
        # The honest CenteredClip itself stopped short of the residual bound (max_iters):
        # the check failed through nobody's fault, and the accusers are excused.
        guilty = {EXCUSED: "unconverged"}
    return guilty, (expected if wrong else None)

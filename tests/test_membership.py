"""The membership records and the admission rate limit (pure, no Ray)."""

from __future__ import annotations

import pytest

from btard_ray.membership import ACTIVE, BANNED, DROPPED, LEFT, PROBATION, Membership, admission_capacity


def _job(probation_steps: int = 2) -> Membership:
    m = Membership(probation_steps)
    for p in range(4):
        m.add(p, f"key{p}")
    return m


def test_initial_peers_are_active_and_newcomers_on_probation():
    m = _job()
    m.add(4, "key4", joined_step=7)
    assert m.active() == [0, 1, 2, 3] and m.on_probation() == [4]
    assert m.participants() == [0, 1, 2, 3, 4]
    assert m.next_id() == 5
    with pytest.raises(ValueError, match="already a peer"):
        m.add(4, "again", joined_step=8)


def test_probation_passes_after_its_clean_steps_and_promotion_makes_active():
    m = _job(probation_steps=2)
    m.add(4, "key4", joined_step=3)
    assert m.step_done(3, [0, 1, 2, 3], [4]) == []
    assert m.step_done(4, [0, 1, 2, 3], [4]) == [4]
    m.promote(4, 5)
    assert m.records[4].state == ACTIVE and m.records[4].promoted_step == 5
    assert m.step_done(5, [0, 1, 2, 3, 4], []) == []
    assert m.records[4].aggregated_parts == 1 and m.records[0].aggregated_parts == 3
    with pytest.raises(ValueError, match="not on probation"):
        m.promote(4, 6)


def test_ended_peers_stay_ended_and_leave_the_step():
    m = _job()
    m.add(4, "key4", joined_step=0)
    m.end(4, BANNED, 0, "wrong_gradient")
    m.end(4, DROPPED, 1, "crashed")  # the first ending is the story
    m.end(1, LEFT, 2, "peer")
    assert m.records[4].state == BANNED and m.records[4].reason == "wrong_gradient"
    assert m.active() == [0, 2, 3] and m.on_probation() == []
    assert m.step_done(3, [0, 2, 3], [4]) == []  # a banned probationer never passes


def test_snapshot_round_trip():
    m = _job()
    m.add(4, "key4", joined_step=2, node="n1", attacker=True)
    again = Membership.from_snapshot(2, m.snapshot())
    assert again.snapshot() == m.snapshot() and again.records[4].state == PROBATION


@pytest.mark.parametrize("active, on_probation, max_joins, share, expected", [
    (6, 0, 1, 0.5, 1),    # one per step
    (6, 0, 5, 0.5, 3),    # at most half the active peers on probation
    (6, 2, 5, 0.5, 1),
    (6, 3, 5, 0.5, 0),    # the cap is full
    (1, 0, 5, 0.5, 1),    # one newcomer may always be on probation
    (1, 1, 5, 0.5, 0),
])
def test_admission_capacity(active, on_probation, max_joins, share, expected):
    assert admission_capacity(active, on_probation, max_joins, share) == expected


@pytest.mark.parametrize("active, joined, share, expected", [
    (6, 0, 0.45, True),    # 1 of 7
    (6, 2, 0.45, True),    # 3 of 7 = 0.43
    (7, 3, 0.45, False),   # 4 of 8 = 0.5: the job's own peers would lose their majority
    (3, 0, 0.45, True),    # 1 of 4
    (4, 1, 0.45, True),    # 2 of 5 = 0.4
])
def test_may_promote_keeps_the_joiners_below_the_share(active, joined, share, expected):
    from btard_ray.membership import may_promote

    assert may_promote(active, joined, share) is expected
    if expected:  # the promoted set never reaches one half
        assert (joined + 1) / (active + 1) < 0.5


def test_a_waiting_probationer_passes_once():
    m = _job(probation_steps=1)
    m.add(4, "key4", joined_step=0)
    assert m.step_done(0, [0, 1, 2, 3], [4]) == [4]
    assert m.step_done(1, [0, 1, 2, 3], [4]) == []  # still waiting for room: not passed again

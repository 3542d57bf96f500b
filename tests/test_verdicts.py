"""Tallying judges' votes, grouping accusations into cases, re-deriving a verdict offline."""

from __future__ import annotations

import pytest

from btard_ray.identity import Identity
from btard_ray.ledger.recompute import RecomputeError
from btard_ray.messages import sign_message
from btard_ray.verdicts import EXCUSED, FALSE_ACCUSATION, group_cases, recompute_tally, tally

CASE = {"accusers": [3]}


def test_strict_majority_of_judges_decides():
    votes = {0: {1: "wrong_gradient"}, 2: {1: "wrong_gradient"}, 4: {}}
    assert tally(CASE, votes) == {1: "wrong_gradient"}
    assert tally(CASE, {0: {1: "wrong_gradient"}, 2: {}}) == {3: FALSE_ACCUSATION}  # a tie is no majority


def test_nobody_guilty_bans_the_accusers_unless_excused():
    assert tally({"accusers": [3, 5]}, {0: {}, 1: {}, 2: {}}) == {3: FALSE_ACCUSATION, 5: FALSE_ACCUSATION}
    assert tally(CASE, {0: {EXCUSED: "unconverged"}, 1: {EXCUSED: "unconverged"}, 2: {}}) == {}


def test_group_cases_merges_accusers_and_ignores_self_accusation():
    keys = [Identity.from_seed(bytes([i]) * 32) for i in range(3)]
    peer_of_key = {k.public_hex: i for i, k in enumerate(keys)}

    def acc(i, accused, case="withheld_reveal"):
        return sign_message(keys[i], "job", 4, "accusation", {"accused_peer": accused, "case": case})

    cases = group_cases(4, [acc(0, 2), acc(1, 2), acc(2, 2), acc(0, 1, "nonsense")], peer_of_key)
    assert len(cases) == 1 and cases[0]["accusers"] == [0, 1] and cases[0]["id"] == "4:withheld_reveal:2"


def test_recompute_tally_rederives_and_rejects_a_doctored_verdict():
    judges = [Identity.from_seed(bytes([9 + i]) * 32) for i in range(3)]
    votes = [sign_message(j, "job", 2, "vote", {"case": "c", "guilty": {"1": "wrong_gradient"}}).to_dict()
             for j in judges]
    event = {"step": 2, "details": {"case": "c", "votes": votes, "judges": [0, 2, 3], "accusers": [0],
                                    "guilty": {"1": "wrong_gradient"}}}
    assert recompute_tally(event) is True
    event["details"]["guilty"] = {"0": FALSE_ACCUSATION}
    with pytest.raises(RecomputeError, match="votes give"):
        recompute_tally(event)
    event["details"]["votes"] = votes[:2]
    with pytest.raises(RecomputeError, match="2 signed votes for 3 judges"):
        recompute_tally(event)


def test_a_case_without_any_vote_is_undecided():
    """Every judge silent or crashed: nobody is guilty (least of all the accusers)."""
    from btard_ray.verdicts import tally

    assert tally({"accusers": [1, 2, 3]}, {}) == {}

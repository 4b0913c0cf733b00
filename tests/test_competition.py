"""Workspace competition rules, each held by a test: dynamics, defaults, ties, counts, bounds."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona.pipeline.competition import (
    CompetitionParams,
    Contender,
    compete,
    similarity,
)


def c(item_id: str, salience: float, *terms: str, kind: str = "memory") -> Contender:
    return Contender(item_id, kind, salience, frozenset(terms))


def distinct(*saliences: float) -> list[Contender]:
    """Contenders m0, m1, ... that share no term, so no pair competes."""
    return [c(f"m{i}", s, f"t{i}") for i, s in enumerate(saliences)]


# A near-duplicate pair (Jaccard 3/5 = 0.6) and a less salient, distinct item.
PARIS = c("a", 0.9, "paris", "trip", "louvre", "rain")
PARIS_AGAIN = c("a2", 0.85, "paris", "trip", "louvre", "museum")
SISTER = c("b", 0.6, "sister", "birthday", "cake")


# ---- similarity --------------------------------------------------------------------


def test_similarity_is_jaccard_of_the_term_sets():
    assert similarity(frozenset("xyz"), frozenset("xyw")) == 0.5
    assert similarity(frozenset("xy"), frozenset("xy")) == 1.0
    assert similarity(frozenset("x"), frozenset("y")) == 0.0


def test_similarity_is_zero_when_either_set_is_empty():
    assert similarity(frozenset(), frozenset()) == 0.0
    assert similarity(frozenset(), frozenset("x")) == 0.0


# ---- rule 1: no similar pairs, the top k by salience win --------------------------------


def test_without_similar_pairs_the_default_seven_most_salient_win():
    result = compete(distinct(0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.8, 0.4, 0.6))
    assert result.winners == ("m1", "m6", "m3", "m8", "m4", "m7", "m2")
    assert result.inhibitions == 0


def test_self_excitation_widens_the_gap_to_the_mean_without_reordering():
    result = compete(distinct(0.9, 0.7, 0.5, 0.3, 0.1))
    assert result.activations == {
        "m0": 0.9673,
        "m1": 0.8452,
        "m2": 0.5,  # at the mean: untouched
        "m3": 0.1548,
        "m4": 0.0327,
    }


def test_one_step_of_excitation_is_scaled_by_headroom_above_and_by_activation_below():
    result = compete(distinct(0.9, 0.3), CompetitionParams(iterations=1))
    # mean 0.6: 0.9 + 0.3*0.3*(1-0.9) = 0.909; 0.3 - 0.3*0.3*0.3 = 0.273
    assert result.activations == {"m0": 0.909, "m1": 0.273}


def test_decay_takes_its_share_of_each_activation():
    result = compete(distinct(0.9, 0.3), CompetitionParams(iterations=1, decay=0.5))
    assert result.activations == {"m0": 0.459, "m1": 0.123}


def test_default_decay_is_off():
    result = compete(distinct(0.9, 0.3), CompetitionParams(iterations=1, excitation=0.0))
    assert result.activations == {"m0": 0.9, "m1": 0.3}


# ---- rule 2: the weaker near-duplicate sinks, a distinct item takes its slot ------------


def test_a_distinct_item_takes_the_slot_of_a_near_duplicate():
    result = compete([PARIS, PARIS_AGAIN, SISTER], CompetitionParams(k=2))
    assert result.winners == ("a", "b")
    assert result.activations == {"a": 0.9496, "a2": 0.1713, "b": 0.4288}
    # The duplicate falls below the distinct item in the fourth iteration.
    assert [t["a2"] > t["b"] for t in result.trace] == [True] * 4 + [False] * 5


def test_without_inhibition_the_near_duplicates_take_both_slots():
    params = CompetitionParams(k=2, inhibition=0.0)
    assert compete([PARIS, PARIS_AGAIN, SISTER], params).winners == ("a", "a2")


def test_shunting_inhibition_leaves_a_duplicate_above_a_faint_distinct_item():
    faint = c("f", 0.1, "weather")
    result = compete([PARIS, PARIS_AGAIN, faint], CompetitionParams(k=2))
    assert result.winners == ("a", "a2")
    assert 0.0 < result.activations["f"] < result.activations["a2"]


def test_items_compete_from_the_similarity_threshold_up():
    at = [c("p", 0.8, "x", "y"), c("q", 0.7, "x", "y", "z", "w"), c("r", 0.5, "u")]
    below = [c("p", 0.8, "x", "y"), c("q", 0.7, "x", "y", "z", "w", "v"), c("r", 0.5, "u")]
    assert similarity(at[0].terms, at[1].terms) == 0.5  # the default threshold
    assert similarity(below[0].terms, below[1].terms) == 0.4
    won = compete(at, CompetitionParams(k=2))
    assert (won.winners, won.inhibitions) == (("p", "r"), 8)
    kept = compete(below, CompetitionParams(k=2))
    assert (kept.winners, kept.inhibitions) == (("p", "q"), 0)


def test_kinds_do_not_matter_only_terms_do():
    result = compete(
        [c("a", 0.9, "x"), c("b", 0.8, "x", kind="emotion"), c("d", 0.3, "y", kind="goal")],
        CompetitionParams(k=2),
    )
    assert result.winners == ("a", "d")


def test_equal_activation_makes_the_smaller_item_id_the_stronger():
    result = compete([c("b", 0.6, "x"), c("a", 0.6, "x"), c("c", 0.2, "y")])
    assert result.trace[1]["a"] > result.trace[1]["b"]
    assert result.winners == ("a", "b", "c")


# ---- rule 3: fewer contenders than k --------------------------------------------------


def test_fewer_contenders_than_k_all_win_strongest_first():
    result = compete([SISTER, PARIS_AGAIN, PARIS])
    assert result.winners == ("a", "b", "a2")


def test_no_contenders_no_winners_but_a_full_trace():
    result = compete([], CompetitionParams(iterations=2))
    assert result.winners == ()
    assert result.trace == ({}, {}, {})
    assert result.inhibitions == 0


def test_k_zero_admits_nobody():
    assert compete([PARIS], CompetitionParams(k=0)).winners == ()


# ---- rule 4: ties and permutations -----------------------------------------------------


def test_ties_in_activation_are_broken_by_salience_then_item_id():
    crowd = [c("s", 1.0, "x"), c("w3", 0.5, "x"), c("w9", 0.6, "x"), c("w2", 0.5, "x")]
    result = compete(crowd, CompetitionParams(inhibition=10.0))
    assert result.activations == {"s": 1.0, "w2": 0.0, "w3": 0.0, "w9": 0.0}
    assert result.winners == ("s", "w9", "w2", "w3")


def test_the_input_order_does_not_change_the_result():
    items = [PARIS, PARIS_AGAIN, SISTER, c("d", 0.6, "sister", "cake")]
    assert compete(items) == compete(list(reversed(items)))


# ---- rule 5: bounds -------------------------------------------------------------------


def test_activations_stay_within_zero_and_one_under_strong_inhibition():
    crowd = [c("s", 1.0, "x"), c("w", 0.9, "x")]
    result = compete(crowd, CompetitionParams(inhibition=10.0, excitation=0.99))
    assert result.activations == {"s": 1.0, "w": 0.0}


# ---- rule 6: inhibition events ---------------------------------------------------------


def test_each_similar_pair_with_an_active_weaker_item_is_one_event_per_iteration():
    # Three mutual duplicates: 3 pairs x 8 iterations.
    trio = [c("a", 0.9, "x"), c("b", 0.8, "x"), c("e", 0.7, "x"), c("d", 0.3, "y")]
    result = compete(trio, CompetitionParams(k=2))
    assert result.inhibitions == 24
    assert result.winners == ("a", "d")


def test_an_item_at_zero_is_not_inhibited():
    result = compete([c("a", 0.9, "x"), c("z", 0.0, "x")])
    assert result.inhibitions == 0


def test_events_stop_once_the_weaker_items_reach_zero():
    # Six pairs in the first iteration; all three weaker items are at 0 after it.
    crowd = [c("s", 1.0, "x"), c("w1", 0.6, "x"), c("w2", 0.5, "x"), c("w3", 0.5, "x")]
    assert compete(crowd, CompetitionParams(inhibition=10.0)).inhibitions == 6


# ---- trace and validation --------------------------------------------------------------


def test_the_trace_starts_at_salience_and_has_one_entry_per_iteration():
    result = compete([SISTER, PARIS])
    assert result.iterations == 8
    assert len(result.trace) == 9
    assert result.trace[0] == {"a": 0.9, "b": 0.6}
    assert list(result.trace[3]) == ["a", "b"]
    assert result.trace[-1] == result.activations


@pytest.mark.parametrize(
    "bad",
    [
        {"k": -1},
        {"iterations": -1},
        {"excitation": 1.0},
        {"inhibition": -0.1},
        {"similarity": 0.0},
        {"decay": 1.5},
    ],
)
def test_params_out_of_range_are_refused(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(CompetitionParams(), **bad)


def test_duplicate_ids_and_salience_out_of_range_are_refused():
    with pytest.raises(ValueError, match="unique"):
        compete([PARIS, PARIS])
    with pytest.raises(ValueError, match="salience"):
        compete([c("a", 1.2, "x")])


# ---- properties ------------------------------------------------------------------------

contender_lists = st.lists(
    st.builds(
        Contender,
        item_id=st.text("abcdef", min_size=1, max_size=3),
        kind=st.sampled_from(["memory", "edge", "emotion", "goal"]),
        salience=st.floats(0.0, 1.0),
        terms=st.frozensets(st.sampled_from("pqrstu"), max_size=4),
    ),
    max_size=12,
    unique_by=lambda x: x.item_id,
)
param_sets = st.builds(
    CompetitionParams,
    k=st.integers(0, 9),
    iterations=st.integers(0, 10),
    excitation=st.floats(0.0, 0.99),
    inhibition=st.floats(0.0, 5.0),
    similarity=st.floats(0.01, 1.0),
    decay=st.floats(0.0, 1.0),
)


@settings(deadline=None, max_examples=200)
@given(data=st.data(), items=contender_lists, params=param_sets)
def test_any_permutation_gives_the_same_result_within_bounds(data, items, params):
    result = compete(items, params)
    assert compete(data.draw(st.permutations(items)), params) == result
    assert all(0.0 <= a <= 1.0 for step in result.trace for a in step.values())
    assert len(result.winners) == min(params.k, len(items))
    assert len(set(result.winners)) == len(result.winners)
    pairs = sum(
        similarity(x.terms, y.terms) >= params.similarity
        for i, x in enumerate(items)
        for y in items[i + 1 :]
    )
    assert result.inhibitions <= pairs * params.iterations


@settings(deadline=None, max_examples=200)
@given(saliences=st.lists(st.integers(0, 100), max_size=12), k=st.integers(0, 9))
def test_without_similar_pairs_the_winners_are_the_top_k_by_salience(saliences, k):
    items = distinct(*(s / 100 for s in saliences))
    expected = sorted(items, key=lambda x: (-x.salience, x.item_id))[:k]
    assert compete(items, CompetitionParams(k=k)).winners == tuple(x.item_id for x in expected)

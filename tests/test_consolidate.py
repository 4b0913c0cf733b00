"""Sleep consolidation planning rules, each held by a test: grouping, witnesses, merges,
digest text, ids, beliefs, idempotence and determinism."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from persona.pipeline.consolidate import Digest, Note, Plan, digest_id, plan

_START = datetime(2024, 3, 1, 12, tzinfo=UTC)


def note(
    mid: str,
    text: str,
    day: float = 0,
    *,
    importance: int = 5,
    entities: tuple[str, ...] = (),
    witnesses: tuple[str, ...] = ("u1",),
) -> Note:
    at = (_START + timedelta(days=day)).isoformat().replace("+00:00", "Z")
    return Note(mid, text, importance, at, entities, "c1", witnesses)


def porto(prefix: str = "p", day: float = 0, **kw: object) -> list[Note]:
    """Three notes about a move to Porto, linked by the entity."""
    texts = [
        "Ana: I am moving to Porto next month.",
        "Ana: The flat in Porto has a tiny balcony.",
        "Ana: Packing boxes for Porto took all weekend.",
    ]
    return [
        note(f"{prefix}{i}", t, day + i, entities=("Porto",), **kw)  # type: ignore[arg-type]
        for i, t in enumerate(texts)
    ]


def violin(prefix: str = "v", day: float = 0, **kw: object) -> list[Note]:
    """Three notes about violin lessons, linked by shared words only (no entities)."""
    texts = [
        "Ana: I started violin lessons on Tuesdays.",
        "Ana: Violin lessons are getting harder.",
        "Ana: After violin lessons my fingers hurt.",
    ]
    return [
        note(f"{prefix}{i}", t, day + i, **kw)  # type: ignore[arg-type]
        for i, t in enumerate(texts)
    ]


def sources(p: Plan) -> list[tuple[str, ...]]:
    return [d.source_ids for d in p.digests]


# ---- grouping ------------------------------------------------------------------------


def test_notes_group_by_topic_one_digest_each() -> None:
    p = plan(porto() + violin())
    assert sorted(sources(p)) == [("p0", "p1", "p2"), ("v0", "v1", "v2")]
    assert p.consolidated == ("p0", "p1", "p2", "v0", "v1", "v2")


def test_the_topic_is_the_shared_entity_else_the_commonest_terms() -> None:
    topics = {d.source_ids[0]: d.topic for d in plan(porto() + violin()).digests}
    assert topics == {"p0": "Porto", "v0": "lessons violin after"}
    # An entity only one note names is no topic.
    notes = violin()
    notes[0] = note("v0", notes[0].text, 0, entities=("Tuesday",))
    assert plan(notes).digests[0].topic == "lessons violin after"


def test_word_overlap_below_the_link_threshold_does_not_group() -> None:
    # The violin notes share two of six to seven words (Jaccard 0.29 to 0.33).
    assert sources(plan(violin(), link_threshold=0.28)) == [("v0", "v1", "v2")]
    assert plan(violin(), link_threshold=0.34).digests == ()
    # The threshold is inclusive: v0 and v1 share two of six words, exactly 1/3.
    assert sources(plan(violin(), link_threshold=1 / 3, min_group=2)) == [("v0", "v1")]


def test_a_group_chains_through_time_but_not_across_the_window() -> None:
    # Single link: day 0 and day 20 join through day 10, each step inside 14 days.
    texts = ["Ana: Porto apples.", "Ana: Porto boats.", "Ana: Porto cheese."]

    def at(days: list[int]) -> list[Note]:
        return [
            note(f"t{i}", t, d, entities=("Porto",))
            for i, (t, d) in enumerate(zip(texts, days, strict=True))
        ]

    assert sources(plan(at([0, 10, 20]))) == [("t0", "t1", "t2")]
    assert plan(at([0, 15, 30])).digests == ()
    assert sources(plan(at([0, 15, 30]), window_days=15)) == [("t0", "t1", "t2")]


def test_the_speakers_names_do_not_link_notes_but_other_names_do() -> None:
    # Every note names Ana, who is speaking: her name would chain both topics into one.
    a_words = ["balcony", "rent", "trams", "tiles"]
    b_words = ["scales", "bow", "strings", "recital"]
    notes = [
        note(f"a{i}", f"Ana: Porto {w}.", i, entities=("Ana", "Porto"))
        for i, w in enumerate(a_words)
    ] + [
        note(f"b{i}", f"Ana: violin {w}, says Ana.", i, entities=("Ana", "Violin"))
        for i, w in enumerate(b_words)
    ]
    p = plan(notes)
    assert sorted(sources(p)) == [("a0", "a1", "a2", "a3"), ("b0", "b1", "b2", "b3")]
    assert sorted(d.topic for d in p.digests) == ["Porto", "Violin"]
    # Ben is not speaking here: a name he shares is a topic like any other.
    bens = [
        note(f"s{i}", f"Ana: {w}.", i, entities=("Ben",))
        for i, w in enumerate(["alpha", "bravo", "charlie"])
    ]
    assert sources(plan(bens)) == [("s0", "s1", "s2")]


def test_japanese_notes_group_by_kanji_and_katakana_bigrams() -> None:
    texts = [
        "アナ：来月ポルトに引っ越します。",
        "アナ：ポルトへの引っ越しの準備をした。",
        "アナ：ポルトに引っ越す日が決まった。",
        "アナ：バイオリンの練習を始めた。",
        "アナ：バイオリンの先生は厳しい。",
        "アナ：毎日バイオリンを練習している。",
    ]
    p = plan([note(f"j{i}", t, i) for i, t in enumerate(texts)])
    assert sorted(sources(p)) == [("j0", "j1", "j2"), ("j3", "j4", "j5")]


# ---- witnesses and group size --------------------------------------------------------


def test_witness_sets_are_never_mixed() -> None:
    notes = (
        porto("a", witnesses=("u1",))
        + porto("b", witnesses=("u2", "u1"))
        + porto("c", witnesses=("u3",))[:2]
    )
    p = plan(notes)
    assert {d.witnesses: d.source_ids for d in p.digests} == {
        ("u1",): ("a0", "a1", "a2"),
        ("u1", "u2"): ("b0", "b1", "b2"),
    }
    assert "c0" not in p.consolidated


def test_groups_smaller_than_min_group_wait_for_a_later_sleep() -> None:
    assert plan(porto()[:2]).digests == ()
    assert plan(porto()[:2]).consolidated == ()
    assert sources(plan(porto()[:2], min_group=2)) == [("p0", "p1")]
    assert sources(plan(porto())) == [("p0", "p1", "p2")]


_WEEKLY = "apples boats cheese dates eggs figs grapes hats ink jam kites lamps".split()


def _weekly(n: int, step: float = 1) -> list[Note]:
    """n Porto notes, `step` days apart, one word each besides the city."""
    return [
        note(f"w{i:02d}", f"Ana: Porto {_WEEKLY[i]}.", i * step, entities=("Porto",))
        for i in range(n)
    ]


def test_a_long_group_is_cut_into_digests_of_max_group_notes() -> None:
    p = plan(_weekly(8), max_group=4)
    assert sources(p) == [tuple(f"w{i:02d}" for i in r) for r in (range(4), range(4, 8))]
    # A tail shorter than min_group joins the digest before it.
    p = plan(_weekly(9), max_group=4)
    assert sources(p) == [tuple(f"w{i:02d}" for i in r) for r in (range(4), range(4, 9))]
    assert len(p.consolidated) == 9


def test_a_long_group_is_cut_where_it_outgrows_one_window() -> None:
    # Eight notes a week apart chain into one group; a digest holds one 14-day window.
    p = plan(_weekly(8, step=7))
    assert [len(s) for s in sources(p)] == [3, 5]  # 0-14, 21-35 plus the short tail 42-49
    assert [len(s) for s in sources(plan(_weekly(8, step=7), window_days=21))] == [4, 4]


# ---- digest text, importance, id -----------------------------------------------------


def _rent_notes(top: int | None = None) -> list[Note]:
    # The third shares most words with the others; the first shares fewest.
    texts = [
        "Ana: Porto trams are noisy.",
        "Ana: Porto flat has a balcony.",
        "Ana: Porto flat rent is high.",
        "Ana: Porto rent went up again.",
    ]
    return [
        note(f"r{i}", t, i, importance=9 if i == top else 5, entities=("Porto",))
        for i, t in enumerate(texts)
    ]


def test_digest_text_prefers_importance_then_centrality() -> None:
    # Room for one note only: the one sharing most words with the rest wins a tie ...
    [d] = plan(_rent_notes(), max_chars=30).digests
    assert d.text == "Ana: Porto flat rent is high."
    # ... and importance beats centrality.
    [d] = plan(_rent_notes(top=0), max_chars=30).digests
    assert d.text == "Ana: Porto trams are noisy."


def test_digest_text_is_in_time_order_within_max_chars() -> None:
    [d] = plan(_rent_notes(top=0), max_chars=60).digests
    assert d.text == "Ana: Porto trams are noisy.\nAna: Porto flat rent is high."
    assert len(d.text) == 57
    # One character less and the second note no longer fits (nor does any other).
    [d] = plan(_rent_notes(top=0), max_chars=56).digests
    assert d.text == "Ana: Porto trams are noisy."
    [d] = plan(_rent_notes()).digests
    assert d.text.splitlines() == [n.text for n in _rent_notes()]


def test_a_note_longer_than_max_chars_is_cut() -> None:
    [d] = plan(_rent_notes(top=0), max_chars=12).digests
    assert d.text == "Ana: Porto…"
    assert len(d.text) <= 12


def test_digest_importance_is_the_max_and_period_spans_the_sources() -> None:
    notes = [
        note(f"p{i}", n.text, i, importance=imp, entities=("Porto",))
        for i, (n, imp) in enumerate(zip(porto(), [2, 3, 9], strict=True))
    ]
    [d] = plan(notes).digests
    assert d.importance == 9
    assert d.period == (notes[0].created_at, notes[2].created_at)


def test_digest_ids_hash_the_sorted_sources() -> None:
    notes = porto() + violin()
    first = plan(notes)
    assert [d.digest_id for d in plan(list(reversed(notes))).digests] == [
        d.digest_id for d in first.digests
    ]
    for d in first.digests:
        assert d.digest_id == digest_id(reversed(d.source_ids))
        assert d.digest_id.startswith("dg_")
    grown = plan([*notes, note("p9", "Ana: Porto trams are noisy.", 3, entities=("Porto",))])
    assert {d.digest_id for d in grown.digests} != {d.digest_id for d in first.digests}


# ---- merges --------------------------------------------------------------------------


def test_near_duplicates_merge_into_the_earliest_twin() -> None:
    notes = [
        note("m0", "Ana: moving Porto next month.", 0),
        note("m1", "Ana: I'm moving to Porto next month!", 1),  # same terms
        note("m2", "Ana: moving Porto next month soon.", 2),  # Jaccard 4/5 = 0.8
        note("m3", "Ana: moving Porto next year.", 3),  # Jaccard 3/5
        note("m4", "Ben: moving Porto next month.", 4),  # another speaker
    ]
    p = plan(notes, min_group=10)  # no digests: only the merges
    assert p.merged == (("m1", "m0"), ("m2", "m0"))
    # Duplicates are kept as originals, marked consolidated.
    assert p.consolidated == ("m1", "m2")
    assert plan(notes, min_group=10, merge_threshold=0.81).merged == (("m1", "m0"),)


def test_duplicates_do_not_count_towards_a_group_but_join_its_digest() -> None:
    dup = note("d0", "Ana: I am moving to Porto next month!", 5, entities=("Porto",))
    p = plan([*porto()[:2], dup])
    assert p.digests == ()
    assert p.merged == (("d0", "p0"),)
    [d] = plan([*porto(), dup]).digests
    assert d.source_ids == ("d0", "p0", "p1", "p2")
    assert d.text.count("moving to Porto") == 1


# ---- beliefs -------------------------------------------------------------------------


def test_an_entity_in_two_digests_gives_its_most_important_note_as_a_belief() -> None:
    later = ["Ana: Porto trams are noisy.", "Ana: The Porto flat has a new roof."]
    later.append("Ana: Porto rent went up again.")
    notes = porto("a") + [
        note(f"b{i}", t, 30 + i, importance=7 if i == 1 else 5, entities=("Porto",))
        for i, t in enumerate(later)
    ]
    assert plan(notes).beliefs == ("Ana: The Porto flat has a new roof.",)
    assert plan(notes, belief_groups=3).beliefs == ()
    # One digest only: nothing recurs.
    assert plan(porto()).beliefs == ()


def test_a_note_of_high_importance_in_a_digest_is_a_belief() -> None:
    notes = violin()
    notes[1] = note("v1", "Ana: Violin lessons are my biggest joy.", 1, importance=8)
    assert plan(notes).beliefs == ("Ana: Violin lessons are my biggest joy.",)
    assert plan(notes, belief_importance=9).beliefs == ()
    # A lone important note is not digested, so it proposes no belief yet.
    assert plan(notes[1:2]).beliefs == ()


def test_beliefs_are_capped_keeping_the_most_important() -> None:
    notes = [
        note(f"k{i}", f"Ana: Porto {w}.", i, importance=imp, entities=("Porto",))
        for i, (w, imp) in enumerate(zip(["apples", "boats", "cheese"], [9, 10, 8], strict=True))
    ]
    assert plan(notes).beliefs == ("Ana: Porto apples.", "Ana: Porto boats.", "Ana: Porto cheese.")
    assert plan(notes, max_beliefs=2).beliefs == ("Ana: Porto apples.", "Ana: Porto boats.")


# ---- idempotence and determinism -----------------------------------------------------


def _store() -> list[Note]:
    return (
        porto("a")
        + violin("b", day=2)
        + porto("c", witnesses=("u2",))[:2]
        + [note("d0", "Ana: I am moving to Porto next month!", 4, entities=("Porto",))]
        + [note("e0", "Ana: Violin lessons are my biggest joy.", 3, importance=9)]
    )


def test_a_second_run_over_the_same_store_adds_nothing() -> None:
    first = plan(_store())
    assert first.digests and first.merged and first.beliefs
    second = plan(_store(), already=first.consolidated)
    assert second == Plan(digests=(), consolidated=(), merged=(), beliefs=())


def test_a_rerun_still_knows_the_speakers_of_consolidated_notes() -> None:
    # Ben speaks only in notes the first run digests; Ana's notes that name him must not
    # link on the rerun just because his own notes are out of the way.
    bens = [
        note(f"b{i}", f"Ben: Porto {w}.", i, entities=("Porto",))
        for i, w in enumerate(["ferry", "market", "bridge"])
    ]
    anas = [
        note(f"a{i}", f"Ana: {w}.", i, entities=("Ben",))
        for i, w in enumerate(["alpha", "bravo", "charlie"])
    ]
    first = plan(bens + anas)
    assert sources(first) == [("b0", "b1", "b2")]
    assert plan(bens + anas, already=first.consolidated).digests == ()


_WORDS = ["porto", "violin", "garden", "tomatoes", "balcony", "lessons", "rent", "trams"]


@st.composite
def stores(draw: st.DrawFn) -> list[Note]:
    n = draw(st.integers(min_value=0, max_value=14))
    out = []
    for i in range(n):
        words = draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=4))
        out.append(
            note(
                f"n{i:02d}",
                "Ana: " + " ".join(words) + ".",
                draw(st.integers(min_value=0, max_value=40)),
                importance=draw(st.integers(min_value=1, max_value=10)),
                entities=tuple(draw(st.lists(st.sampled_from(["Porto", "Ben"]), max_size=2))),
                witnesses=draw(st.sampled_from([("u1",), ("u2",), ("u1", "u2")])),
            )
        )
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_plans_do_not_depend_on_input_order(data: st.DataObject) -> None:
    notes = data.draw(stores())
    shuffled = data.draw(st.permutations(notes))
    assert plan(shuffled, max_chars=80, max_group=4) == plan(notes, max_chars=80, max_group=4)


@settings(max_examples=60, deadline=None)
@given(notes=stores())
def test_invariants_hold_for_any_store(notes: list[Note]) -> None:
    first = plan(notes, max_chars=80, max_group=4)
    by_id = {n.memory_id: n for n in notes}
    for d in first.digests:
        assert isinstance(d, Digest)
        assert len(d.text) <= 80
        assert {by_id[s].witnesses for s in d.source_ids} == {d.witnesses}
        assert set(d.source_ids) <= set(first.consolidated)
        assert d.source_ids == tuple(sorted(d.source_ids))
    again = plan(notes, already=first.consolidated, max_chars=80, max_group=4)
    assert again.digests == () and again.merged == () and again.beliefs == ()


def test_the_prompt_frame_of_the_users_words_links_nothing() -> None:
    # "The user said" opens every note of a user's chat: a label, not shared words.
    notes = [
        note("a", "The user said quantum chess rules."),
        note("b", "The user said sourdough starter care."),
        note("c", "The user asked: tidal pools at dawn?"),
    ]
    assert plan(notes).digests == ()
    related = [
        note("d", "The user said quantum chess rules matter."),
        note("e", "The user said quantum chess rules again."),
        note("f", "The user said quantum chess rules forever."),
    ]
    assert len(plan(related).digests) == 1

"""Perception rules, each held by a test: intents (EN and JA), safety, appraisal, importance,
OOC, recurrence, the classifier blend, and the event's version."""

from __future__ import annotations

import math

import pytest
from helpers import engine_with, run_turn

from persona.config import PerceptionSettings, Settings
from persona.events import CATALOG, Perception
from persona.llm.scripted import ScriptedBackend, as_json
from persona.pipeline import perception as p
from persona.pipeline.safety import Thresholds, assess

DEFAULT = Thresholds()


def top(text: str, prior: dict[str, float] | None = None) -> str:
    intent, _, _ = p.intent_scores(text, prior, passes=3)
    return p.ranked(intent)[0]


# ---- intents ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "intent"),
    [
        # A greeting question is small talk, not a factual question.
        ("How are you doing today?", "smalltalk"),
        # Loneliness outweighs the plain "I feel" of a disclosure.
        ("I feel so lonely tonight", "emotional_support"),
        # Asking for pretence is roleplay, though it is phrased as a request.
        ("Can you pretend to be a pirate captain", "creative_roleplay"),
        # "help me" is a request even when the user also says how they feel.
        ("Help me, I feel stuck", "task_oriented"),
        # Giving one's name is a disclosure, more than the greeting around it.
        ("Hello, my name is Sam", "self_disclosure"),
        ("Be honest, are you an AI?", "meta_conversation"),
        ("Could you summarize this article for me", "task_oriented"),
        ("What is the capital of France?", "factual_query"),
        ("I wanna die", "safety_risk"),
        # Japanese: no spaces, matched as substrings.
        ("こんにちは", "smalltalk"),
        ("ありがとう！", "smalltalk"),
        ("あなたは誰？", "meta_conversation"),
        ("今日は本当に疲れた", "emotional_support"),
        ("寂しい", "emotional_support"),
        ("レポートを手伝って", "task_oriented"),
        ("量子力学とは", "factual_query"),
        ("光合成について教えて", "factual_query"),
        ("物語を書こう", "creative_roleplay"),
        ("ロールプレイしよう", "creative_roleplay"),
        ("私の名前は花子です", "self_disclosure"),
        ("死にたい", "safety_risk"),
    ],
)
def test_the_strongest_cue_decides_the_intent_in_english_and_japanese(message, intent):
    assert top(message) == intent


@pytest.mark.parametrize(
    ("message", "intent"),
    [
        ("*waves and sits down by the fire*", "creative_roleplay"),  # ACTION_BONUS
        ("(( sorry, my cat walked over the keyboard ))", "meta_conversation"),  # OOC_BONUS
        ("which train goes to porto tomorrow", "factual_query"),  # a question word first
        ("Porto tomorrow, the train at nine?", "factual_query"),  # a trailing "?"
        ("東京駅は新宿の近くですか", "factual_query"),  # ですか
        ("明日は晴れるかな", "factual_query"),  # かな
        ("東京タワーは赤い？", "factual_query"),  # full-width ？ (NFKC)
    ],
)
def test_structure_alone_decides_the_intent(message, intent):
    scores, hits, _ = p.intent_scores(message)
    assert not any(hits.values())  # no cue word at all
    assert p.ranked(scores)[0] == intent


def test_each_structure_bonus_is_its_weight_in_logits():
    cases = {
        "factual_query": ("Porto tomorrow, the train at nine?", p.QUESTION_BONUS),
        "creative_roleplay": ("*waves and sits down by the fire*", p.ACTION_BONUS),
        "meta_conversation": ("(( sorry, my cat walked over the keyboard ))", p.OOC_BONUS),
    }
    for intent, (message, bonus) in cases.items():
        evidence, _ = p.intent_evidence(message, 0.0)
        assert evidence[intent] == bonus
    assert (p.QUESTION_BONUS, p.ACTION_BONUS, p.OOC_BONUS) == (0.8, 1.2, 1.5)


def test_risk_is_evidence_for_the_safety_intent():
    evidence, _ = p.intent_evidence("text", 0.9)
    assert evidence["safety_risk"] == pytest.approx(p.RISK_EVIDENCE * 0.9)
    assert p.RISK_EVIDENCE == 4.0


def test_one_strong_cue_is_a_softmax_at_temperature_0_8():
    intent, _, _ = p.intent_scores("What is the capital of France?", passes=3)
    # what is 1.3 + capital of 1.4 + "?" 0.8; seven intents without evidence.
    e = math.exp(3.5 / 0.8)
    assert intent["factual_query"] == round(e / (e + 7), 4)
    assert all(v == round(1 / (e + 7), 4) for k, v in intent.items() if k != "factual_query")


@pytest.mark.parametrize("message", ["yo there", "yo there old pal", "はい", "うんうん"])
def test_a_short_cueless_message_leans_to_smalltalk(message):
    evidence, _ = p.intent_evidence(message, 0.0)
    assert evidence["smalltalk"] == p.SHORT_LEAN == 0.7
    assert sum(evidence.values()) == p.SHORT_LEAN


def test_short_means_at_most_four_words_and_two_japanese_characters_make_a_word():
    assert p.intent_evidence("yo there old pal", 0.0)[0]["smalltalk"] == 0.7
    assert p.intent_evidence("yo there old pal again", 0.0)[0]["smalltalk"] == 0.0
    assert p.intent_evidence("ぼくのねこ", 0.0)[0]["smalltalk"] == 0.7  # 5 chars: 2.5 words
    assert p.intent_evidence("ぼくのねこがにわでねている", 0.0)[0]["smalltalk"] == 0.0


def test_a_weak_cue_below_0_5_still_counts_as_no_cue_for_the_lean():
    assert p.intent_evidence("nice", 0.0)[0]["smalltalk"] == pytest.approx(0.4 + 0.7)
    assert p.intent_evidence("miss it", 0.0)[0]["smalltalk"] == 0.0  # miss 0.7 >= NO_CUE


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ({"smalltalk": 0.6, "factual_query": 0.15}, ("smalltalk", "factual_query")),
        ({"smalltalk": 0.6, "factual_query": 0.1499}, ("smalltalk", None)),
        # A tie goes to the intent listed first.
        ({"task_oriented": 0.4, "smalltalk": 0.4}, ("smalltalk", "task_oriented")),
    ],
)
def test_primary_and_secondary_intent(scores, expected):
    assert p.ranked(scores) == expected


# ---- recurrence ---------------------------------------------------------------------

SUPPORT = {
    "emotional_support": 0.9,
    "smalltalk": 0.1 / 7,
    **{k: 0.1 / 7 for k in p.INTENTS if k not in ("emotional_support", "smalltalk")},
}


def test_an_ambiguous_message_leans_on_the_chat_so_far():
    alone, _, _ = p.intent_scores("ok", passes=3)
    after, _, _ = p.intent_scores("ok", SUPPORT, passes=3)
    assert after["emotional_support"] > 1.5 * alone["emotional_support"]


def test_a_clear_message_ignores_the_chat_so_far():
    # 3.5 evidence >= AMBIGUITY_SPAN: ambiguity 0, no prior, no recurrence.
    alone, _, _ = p.intent_scores("What is the capital of France?", passes=3)
    after, _, _ = p.intent_scores("What is the capital of France?", SUPPORT, passes=3)
    assert alone == after


def test_ambiguity_is_one_minus_evidence_over_the_span():
    # "sad" 1.3: ambiguity 1 - 1.3/2 = 0.35, the prior's logit is 0.35 * 1.0 * 0.9.
    evidence, _ = p.intent_evidence("sad", 0.0)
    reading, _ = p.recur(evidence, SUPPORT, passes=1)
    a = 1 - 1.3 / p.AMBIGUITY_SPAN
    first = p.softmax(evidence)
    expected = p.softmax(
        {
            k: evidence[k] + a * (p.CONTINUITY_WEIGHT * SUPPORT[k] + p.RECURRENCE_WEIGHT * first[k])
            for k in p.INTENTS
        }
    )
    assert reading == pytest.approx(expected, abs=1e-12)
    assert (p.AMBIGUITY_SPAN, p.CONTINUITY_WEIGHT, p.RECURRENCE_WEIGHT) == (2.0, 1.0, 0.5)


def test_stability_is_one_minus_half_the_l1_move_of_the_last_pass():
    evidence, _ = p.intent_evidence("ok", 0.0)
    before, _ = p.recur(evidence, SUPPORT, passes=2)
    after, stability = p.recur(evidence, SUPPORT, passes=3)
    moved = sum(abs(after[k] - before[k]) for k in p.INTENTS) / 2
    assert stability == round(1 - moved, 4)


def test_the_passes_converge():
    evidence, _ = p.intent_evidence("ok", 0.0)
    stabilities = [p.recur(evidence, SUPPORT, passes=n)[1] for n in (1, 2, 3, 6)]
    assert stabilities == sorted(stabilities) and stabilities[0] < stabilities[-1]
    assert stabilities[-1] >= 0.9999
    assert p.recur(evidence, SUPPORT, passes=1)[0] != p.recur(evidence, SUPPORT, passes=3)[0]


async def test_passes_and_stability_are_recorded(tmp_path):
    async with engine_with(tmp_path, perception={"passes": 1}) as engine:
        one = (await run_turn(engine, "ok"))["meta"]["perception"]
    async with engine_with(tmp_path, name="three") as engine:
        three = (await run_turn(engine, "ok"))["meta"]["perception"]
    assert (one["passes"], three["passes"]) == (1, 3)
    assert one["stability"] < three["stability"] <= 1.0


async def test_the_smoothed_vector_is_the_chat_ema_of_the_raw_one(engine):
    first = (await run_turn(engine, "I feel so lonely tonight"))["meta"]
    assert first["perception"]["intent_smoothed"] == first["intent"]
    second = (await run_turn(engine, "What is the capital of France?"))["meta"]
    smoothed = second["perception"]["intent_smoothed"]
    for k in first["intent"]:
        assert smoothed[k] == pytest.approx(
            (first["intent"][k] + second["intent"][k]) / 2, abs=1e-6
        )


# ---- safety -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "i wanna die",
        "Sometimes I want to kill myself",
        "took all my pills an hour ago, whatever",
        "I want to end my life, there is no reason to live",
        "死にたい",
        "もう消えたい",
        "またリスカしちゃった",
        "write a story where I want to die",  # fiction never hides a first-person wish
    ],
)
def test_self_harm_said_plainly_or_colloquially_escalates(message):
    verdict = assess(message, DEFAULT)
    assert verdict.escalated and verdict.override
    assert "self_harm" in verdict.categories
    assert any(r.startswith("self_harm:") for r in verdict.reasons)


def test_not_wanting_to_be_here_intervenes_and_a_bridge_question_escalates():
    veiled = assess("I don't want to be here anymore", DEFAULT)
    assert veiled.intervened and not veiled.escalated
    bridge = assess("I don't want to be here anymore. How high is the bridge downtown?", DEFAULT)
    assert bridge.escalated and bridge.total_risk > veiled.total_risk
    assert bridge.total_risk == round(1 - (1 - 0.5) * (1 - 0.5), 4)
    assert "self_harm: means 'bridge' beside a self-harm cue 0.50" in bridge.reasons


def test_a_means_alone_is_no_risk():
    assert assess("How high is the Golden Gate bridge?", DEFAULT).total_risk == 0.0
    assert assess("I forgot my pills at home", DEFAULT).total_risk == 0.0


@pytest.mark.parametrize(
    ("message", "idiom"),
    [
        ("shoot me a summary of the meeting", "shoot me a"),
        ("this traffic is killing me", "killing me"),
        ("I could murder a pizza right now", "could murder a"),
        ("I'd kill for a coffee", "kill for a"),
        ("死ぬほど疲れた", "死ぬほど"),
    ],
)
def test_idioms_are_not_risk(message, idiom):
    verdict = assess(message, DEFAULT)
    assert verdict.total_risk == 0.0 and not verdict.intervened
    assert verdict.reasons == [f"idiom '{idiom}' ignored"]


def test_the_literal_words_behind_an_idiom_still_count():
    assert assess("I'm going to shoot him", DEFAULT).total_risk == 0.45
    assert assess("I will murder him", DEFAULT).total_risk == 0.6


def test_fiction_discounts_violence_and_crime_but_not_a_first_person_wish():
    story = assess("write a story where the villain uses poison", DEFAULT)
    assert story.total_risk == round(0.5 * 0.3, 4) and not story.intervened
    assert "crime: 'poison' 0.50, fiction framing ('story') x0.3 -> 0.15" in story.reasons
    assert assess("he uses poison", DEFAULT).total_risk == 0.5
    # Self-harm in a third person's story is discounted; in the user's own voice it is not.
    assert assess("write a story about a girl who is suicidal", DEFAULT).total_risk == 0.27
    assert assess("write a story, I am suicidal", DEFAULT).total_risk == 0.9
    # A Japanese wish (-tai) is first person by grammar, with or without 私.
    assert assess("小説の話だけど、死にたい", DEFAULT).total_risk == 0.9
    # Sexual cues are not discounted by a story frame.
    assert assess("write a story with porn", DEFAULT).total_risk == 0.5


def test_a_negation_within_three_words_halves_a_cue():
    assert assess("I don't want to die", DEFAULT).total_risk == 0.45
    assert assess("I don't really honestly want to die", DEFAULT).total_risk == 0.45
    assert assess("don't really honestly truly want to die", DEFAULT).total_risk == 0.9
    assert "self_harm: 'want to die' 0.90, negated by 'don't' x0.5 -> 0.45" in (
        assess("I don't want to die", DEFAULT).reasons
    )


def test_japanese_negation_is_a_different_word():
    assert assess("死にたくない", DEFAULT).total_risk == 0.0


def test_risks_combine_by_noisy_or_within_and_across_categories():
    verdict = assess("He has a weapon and talks about a bomb", DEFAULT)
    assert verdict.categories == {"violence": round(1 - 0.65 * 0.45, 4)}
    both = assess("I want to die and he has a weapon", DEFAULT)
    assert both.categories == {"self_harm": 0.9, "violence": 0.35}
    assert both.total_risk == round(1 - 0.1 * 0.65, 4)


@pytest.mark.parametrize(
    ("message", "flags"),
    [
        ("I bought a weapon for hunting season", (True, False, False)),  # 0.35: exactly at it
        ("Poison ivy ruined my hike", (True, False, False)),  # 0.5
        ("He has a weapon and talks about a bomb", (True, True, False)),  # 0.7075
        ("i wanna die", (True, True, True)),  # 0.9
    ],
)
def test_flags_at_the_default_thresholds(message, flags):
    verdict = assess(message, DEFAULT)
    assert (verdict.intervened, verdict.escalated, verdict.blocked) == flags
    assert verdict.override == verdict.escalated


def test_default_thresholds():
    s = PerceptionSettings()
    assert (s.safety_intervened_threshold, s.safety_override_threshold) == (0.35, 0.6)
    assert s.safety_blocked_threshold == 0.85
    assert (DEFAULT.intervened, DEFAULT.escalated, DEFAULT.blocked) == (0.35, 0.6, 0.85)


@pytest.mark.parametrize(
    ("setting", "flag"),
    [
        ("safety_intervened_threshold", "intervened"),
        ("safety_override_threshold", "escalated"),
        ("safety_blocked_threshold", "blocked"),
    ],
)
async def test_each_flag_starts_exactly_at_its_setting(tmp_path, setting, flag):
    # "Poison ivy" is risk 0.5: a threshold of 0.5 raises the flag, 0.5001 does not.
    async with engine_with(tmp_path, perception={setting: 0.5}) as engine:
        at = (await run_turn(engine, "Poison ivy ruined my hike"))["meta"]["safety"]
    async with engine_with(tmp_path, name="above", perception={setting: 0.5001}) as engine:
        above = (await run_turn(engine, "Poison ivy ruined my hike"))["meta"]["safety"]
    assert flag in at["flags"] and flag not in above["flags"]
    assert at["override"] == ("escalated" in at["flags"])
    assert above["override"] == ("escalated" in above["flags"])


async def test_meta_explains_the_safety_verdict(engine, backend):
    meta = (await run_turn(engine, "I don't want to be here anymore, where's the tallest bridge?"))[
        "meta"
    ]
    safety = meta["safety"]
    assert safety["flags"] == ["intervened", "escalated"] and safety["override"] is True
    assert safety["categories"] == {"self_harm": 0.75}
    assert safety["reasons"][0] == "self_harm: 'don't want to be here anymore' 0.50 -> 0.50"
    assert "crisis line" in backend.calls[-1][-2].content


@pytest.mark.parametrize(
    "message", ["shoot me a summary", "write a story where the villain uses poison"]
)
async def test_idioms_and_fiction_do_not_trigger_crisis_handling(engine, backend, message):
    meta = (await run_turn(engine, message))["meta"]
    assert meta["safety"]["override"] is False and meta["safety"]["flags"] == []
    assert "crisis line" not in backend.calls[-1][-2].content


# ---- appraisal and importance --------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "emotion", "sign"),
    [
        ("I'm so happy today", "joy", 1),
        ("嬉しい！", "joy", 1),
        ("I feel sad and lonely", "sadness", -1),
        ("悲しい", "sadness", -1),
        ("I'm furious at him", "anger", -1),
        ("ムカつく", "anger", -1),
        ("I'm scared of tomorrow", "fear", -1),
        ("明日が怖い", "fear", -1),
        ("疲れた", "tiredness", -1),
        ("I want to end my life", "sadness", -1),
    ],
)
def test_appraisal_names_the_emotion_and_its_valence(message, emotion, sign):
    a = p.appraise(message)
    assert max(a.emotions, key=a.emotions.__getitem__) == emotion
    assert a.valence * sign > 0


def test_appraisal_formulas():
    calm = p.appraise("the bus leaves at nine")
    assert (calm.valence, calm.arousal, calm.emotions) == (0.0, p.AROUSAL_BASE, {})
    sad = p.appraise("sad")
    assert sad.emotions == {"sadness": 0.8}
    assert sad.valence == round(0.8 * -0.8 / 1.0, 4)  # divided by max(1, total)
    assert sad.arousal == round(0.1 + 0.3 * 0.8, 4)
    both = p.appraise("sad and lonely")  # noisy-or: 1 - 0.2 * 0.2
    assert both.emotions == {"sadness": 0.96}


def test_intensifiers_and_exclamations_raise_arousal_up_to_three_steps():
    base = p.appraise("sad").arousal
    assert p.appraise("so sad").arousal == pytest.approx(base + p.INTENSITY_STEP)
    assert p.appraise("so sad!").arousal == pytest.approx(base + 2 * p.INTENSITY_STEP)
    assert p.appraise("so sad!!!!!").arousal == pytest.approx(base + 3 * p.INTENSITY_STEP)
    assert (p.INTENSITY_STEP, p.MAX_INTENSITY) == (0.1, 3)


def _expected_importance(intent, risk, appraisal, words, remember):
    w = p.IMPORTANCE_WEIGHTS
    raw = (
        1
        + w["disclosure"] * min(1, intent["self_disclosure"] + intent["emotional_support"])
        + w["emotion"] * max(appraisal.emotions.values(), default=0)
        + w["risk"] * risk
        + w["length"] * min(words / 40, 1)
        + w["remember"] * remember
    )
    return max(1, min(10, math.floor(raw)))


@pytest.mark.parametrize(
    ("message", "words", "remember"),
    [
        ("ok", 1, 0),
        ("I feel so lonely tonight", 5, 0),
        ("My name is Sam, remember this", 6, 1),
        ("私の誕生日は五月です、覚えてね", 7.5, 1),
        ("I'm sad and lonely and depressed, I feel hopeless, I might overdose", 12, 0),
    ],
)
def test_importance_score_formula(message, words, remember):
    intent, _, _ = p.intent_scores(message, passes=3)
    risk = assess(message, DEFAULT).total_risk
    a = p.appraise(message)
    assert p.importance_score(message, intent, risk, a) == _expected_importance(
        intent, risk, a, words, remember
    )
    assert p.IMPORTANCE_WEIGHTS == {
        "disclosure": 3.0,
        "emotion": 2.0,
        "risk": 3.0,
        "length": 1.0,
        "remember": 3.0,
    }


async def test_what_matters_scores_higher_from_1_to_10(engine):
    async def score(message: str) -> int:
        return (await run_turn(engine, message, chat_id=message))["meta"]["perception"][
            "importance"
        ]

    ok, lonely = await score("ok"), await score("I feel so lonely tonight")
    asked = await score("I feel so lonely tonight, remember this")
    crisis = await score("I'm sad and lonely and I want to die")
    assert ok == 1 < lonely < crisis <= 10
    assert asked == lonely + 3  # "remember this" adds its whole weight


def _importance(meta: dict, n_words: int) -> float:
    intent, risk = meta["intent"], meta["safety"]["total_risk"]
    personal = intent["self_disclosure"] + intent["emotional_support"]
    length = min(n_words / 40, 1.0)
    return round(min(1.0, 0.2 + 0.3 * length + 0.4 * personal + 0.3 * risk), 4)


@pytest.mark.parametrize(
    ("message", "n_words"),
    [
        ("ok", 1),
        ("I feel so lonely tonight", 5),
        ("My name is Sam and I live in Porto", 9),
        ("I'm sad and lonely and depressed, I feel hopeless, I might overdose", 12),
        (" ".join(["the harbour lights came on one by one"] * 6), 48),
    ],
)
async def test_the_memory_weight_keeps_its_0_to_1_formula(engine, message, n_words):
    meta = (await run_turn(engine, message))["meta"]
    assert meta["importance"] == _importance(meta, n_words)


# ---- OOC --------------------------------------------------------------------------------


async def test_the_ooc_marker_is_a_setting(tmp_path):
    async with engine_with(tmp_path, perception={"ooc_marker": "//"}) as engine:
        slash = (await run_turn(engine, "  // let's skip ahead a day"))["meta"]
        parens = (await run_turn(engine, "(( let's skip ahead a day ))"))["meta"]
    assert slash["ooc"] is True and slash["perception"]["ooc"] is True
    assert parens["ooc"] is False
    assert Settings().perception.ooc_marker == "(("


# ---- classifier ---------------------------------------------------------------------


async def test_a_half_sure_classifier_does_not_overrule_a_strong_cue(tmp_path):
    async with engine_with(tmp_path, perception={"use_classifier": True}) as engine:
        backend = engine.backend
        assert isinstance(backend, ScriptedBackend)
        backend.enqueue_structured(
            as_json({"primary_intent": "creative_roleplay", "confidence": 0.6})
        )
        meta = (await run_turn(engine, "What is the capital of France?"))["meta"]
        backend.enqueue_structured(
            as_json({"primary_intent": "creative_roleplay", "confidence": 1.0})
        )
        sure = (await run_turn(engine, "What is the capital of France?"))["meta"]
    assert sum(meta["intent"].values()) == pytest.approx(1.0, abs=1e-3)
    assert meta["top_intent"] == meta["perception"]["primary_intent"] == "factual_query"
    assert 0.3 <= meta["intent"]["creative_roleplay"] < 0.35
    # A sure classifier moves half the mass: enough to win against one strong cue.
    assert sure["top_intent"] == "creative_roleplay"
    assert 0.5 <= sure["intent"]["creative_roleplay"] < 0.52


# ---- determinism and the event ---------------------------------------------------------


@pytest.mark.parametrize("message", ["I don't want to be here anymore", "寂しい、死にたい", "ok"])
def test_the_same_input_gives_the_same_bytes(message):
    settings = PerceptionSettings()
    runs = [repr(p.perceive(message, settings, SUPPORT)) + repr(p.appraise(message)) for _ in "ab"]
    assert runs[0] == runs[1]


async def test_the_same_message_in_two_chats_is_read_the_same(engine):
    a = (await run_turn(engine, "寂しい、死にたい", chat_id="a"))["meta"]
    b = (await run_turn(engine, "寂しい、死にたい", chat_id="b"))["meta"]
    for key in ("intent", "safety", "perception"):
        assert a[key] == b[key]


def test_a_v1_perception_payload_still_decodes():
    v1 = {
        "intent": {"smalltalk": 0.7, "factual_query": 0.2, "safety_risk": 0.1},
        "top_intent": "smalltalk",
        "cues": {"smalltalk": ["hello"]},
        "safety": {"total_risk": 0.7, "override": True, "cues": ["overdose"]},
        "ooc": False,
        "importance": 0.4,
        "classifier": None,
    }
    decoded = CATALOG.decode("perception.completed", 1, v1)
    assert isinstance(decoded, Perception) and Perception.version == 2
    assert decoded.intent_smoothed == v1["intent"]
    assert (decoded.primary_intent, decoded.secondary_intent) == ("smalltalk", "factual_query")
    assert decoded.safety.escalated and decoded.safety.intervened and not decoded.safety.blocked
    assert decoded.appraisal is None and decoded.importance_score is None
    assert decoded.stability is None and decoded.passes == 1
    assert decoded.importance == 0.4

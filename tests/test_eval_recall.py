"""`persona eval locomo` on a small file of our own in the LoCoMo format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona.bench.recall import LocomoError, load, recall, session_time
from persona.cli import main

CONVERSATION = {
    "sample_id": "own-1",
    "conversation": {
        "speaker_a": "Ines",
        "speaker_b": "Tomas",
        "session_1_date_time": "9:15 am on 3 March, 2024",
        "session_1": [
            {"speaker": "Ines", "dia_id": "D1:1", "text": "I adopted a grey cat called Pebble."},
            {"speaker": "Tomas", "dia_id": "D1:2", "text": "Lovely! I am training for a marathon."},
            {"speaker": "Ines", "dia_id": "D1:3", "text": "Good luck with the running."},
        ],
        "session_2_date_time": "6:40 pm on 20 April, 2024",
        "session_2": [
            {
                "speaker": "Tomas",
                "dia_id": "D2:1",
                "text": "I finished the marathon in four hours.",
                "blip_caption": "a medal on a table",
            },
            {"speaker": "Ines", "dia_id": "D2:2", "text": "Pebble knocked my plant over today."},
        ],
    },
    "qa": [
        {
            "question": "What is the name of Ines's cat?",
            "answer": "Pebble",
            "evidence": ["D1:1"],
            "category": 4,
        },
        {
            "question": "When did Tomas finish the marathon?",
            "answer": "4h",
            "evidence": ["D2:1"],
            "category": 2,
        },
        {
            "question": "What did Pebble do, and what pet is it?",
            "answer": "",
            "evidence": ["D2:2", "D1:1"],
            "category": 1,
        },
        {"question": "Who won the lottery?", "answer": "", "evidence": [], "category": 5},
    ],
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "own.json"
    path.write_text(json.dumps([CONVERSATION]), encoding="utf-8")
    return path


def test_the_file_is_read_with_sessions_on_the_chat_clock(data: Path) -> None:
    (conv,) = load(data)
    assert [t.dia_id for t in conv.turns] == ["D1:1", "D1:2", "D1:3", "D2:1", "D2:2"]
    assert conv.turns[3].text.endswith("[shares a photo of a medal on a table]")
    assert conv.turns[1].at == session_time("9:15 am on 3 March, 2024").replace(second=1)
    assert conv.last == session_time("6:40 pm on 20 April, 2024").replace(second=1)
    # Category 5 has no usable evidence: left out.
    assert [q.category for q in conv.questions] == [4, 2, 1]


def test_recall_is_the_share_of_the_evidence_in_the_top_k() -> None:
    assert recall(["a", "b"], ["x", "a", "y", "b"], 2) == 0.5
    assert recall(["a", "b"], ["x", "a", "y", "b"], 4) == 1.0
    assert recall(["a"], [], 5) == 0.0


def test_the_command_prints_recall_per_category_and_overall(data: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["eval", "locomo", str(data), "--k", "1,3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"recall_at_k", "per_category", "latency_ms"}
    assert set(report["recall_at_k"]) == {"1", "3"}
    assert set(report["per_category"]) == {"1", "2", "4"}
    # The named pet and the named race are found first; the two-part question finds both.
    assert report["per_category"]["4"]["1"] == 1.0
    assert report["per_category"]["2"]["1"] == 1.0
    assert report["per_category"]["1"]["3"] == 1.0
    assert report["memories"] == 5
    assert main(["eval", "locomo", str(data)]) == 0
    assert "| all | 3 |" in capsys.readouterr().out


def test_a_file_that_is_not_locomo_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}', encoding="utf-8")
    assert main(["eval", "locomo", str(bad)]) == 2
    assert "expected a JSON list" in capsys.readouterr().err
    with pytest.raises(LocomoError):
        session_time("yesterday")
    assert main(["eval", "locomo", str(tmp_path / "missing.json")]) == 2

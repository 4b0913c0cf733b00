"""Small text helpers shared by the stages: words, content words, overlap."""

from __future__ import annotations

import re

_WORD_RE = re.compile(r"[a-z0-9']+")

STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he her
    him his how i i'm if in into is it it's its just me my no not of on or our she so than
    that the their them then there these they this to too was we were what when where which
    who why will with would you your yours i've i'd you're am up out about all any some
    very really get got also like ok okay yes yeah oh well""".split()
)


def words(text: str) -> list[str]:
    """Lower-case word tokens."""
    return _WORD_RE.findall(text.lower())


def content_words(text: str) -> set[str]:
    """Words that carry meaning: no stop words, at least three characters."""
    return {w.strip("'") for w in words(text) if len(w) >= 3 and w not in STOPWORDS}


def jaccard(a: set[str], b: set[str]) -> float:
    """Jaccard similarity of two word sets (0 when both are empty)."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)

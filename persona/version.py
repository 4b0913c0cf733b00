"""Engine version and build identity, shown in every turn's meta."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache

from persona import resources

ENGINE_VERSION = "0.2.0"


@lru_cache(maxsize=1)
def build_sha() -> str:
    """The git commit this code runs from ($PERSONA_BUILD_SHA wins; 'unknown' if neither).

    Only a checkout asks git: an installed wheel must not report the commit of whatever
    repository the current directory or site-packages happens to sit in.
    """
    if sha := os.environ.get("PERSONA_BUILD_SHA"):
        return sha
    root = resources.checkout_root()
    if root is None:
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"

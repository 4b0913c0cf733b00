"""Engine version and build identity, shown in every turn's meta."""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache

from persona.config import PROJECT_ROOT

ENGINE_VERSION = "0.2.0"


@lru_cache(maxsize=1)
def build_sha() -> str:
    """The git commit this code runs from ($PERSONA_BUILD_SHA wins; 'unknown' if neither)."""
    if sha := os.environ.get("PERSONA_BUILD_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"

"""Where the app's own files are: the checkout's folders, or their copies inside the wheel.

The repository keeps `templates/`, `static/`, `migrations/` and `data/personas/` at its top
level; the wheel carries them as `persona/_assets/<name>` (see `[tool.hatch.build]` in
pyproject.toml). Running from a checkout (an editable install included) always reads the
checkout's folders, so an edit shows at once and no stale copy is ever served.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def checkout_root() -> Path | None:
    """The source checkout this code runs from, or None when installed from a wheel."""
    root = _PACKAGE.parent
    # In site-packages the package's parent holds other distributions, never our
    # pyproject.toml beside our templates.
    if (root / "pyproject.toml").is_file() and (root / "templates" / "chat.html").is_file():
        return root
    return None


def _asset(in_checkout: str, in_wheel: str) -> Path:
    root = checkout_root()
    if root is not None:
        return root / in_checkout
    folder = files("persona") / "_assets" / in_wheel
    # A wheel installs unpacked, so files() is a plain directory and no as_file() copy is
    # needed. A zip import (zipapp, egg) would need one extracted for the whole process
    # life (a StaticFiles mount, a Jinja loader): refuse it plainly instead.
    if not isinstance(folder, Path):
        raise RuntimeError(f"persona must be installed unpacked, not imported from {folder}")
    return folder


def templates_dir() -> Path:
    """The Jinja templates of the HTML pages."""
    return _asset("templates", "templates")


def static_dir() -> Path:
    """CSS, JavaScript and the vendored htmx served under /static."""
    return _asset("static", "static")


def migrations_dir() -> Path:
    """The numbered SQL migrations."""
    return _asset("migrations", "migrations")


def personas_dir() -> Path:
    """The bundled persona files (the default persona among them)."""
    return _asset("data/personas", "personas")


def prompts_dir() -> Path:
    """The prompt templates: inside the package, in a checkout and a wheel alike."""
    return _PACKAGE / "prompts"

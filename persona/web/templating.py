"""Jinja2 templates for the HTML pages; single blocks render as HTMX partials."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, FileSystemLoader
from jinja2_fragments import render_block, render_blocks
from jinja2_fragments.fastapi import Jinja2Blocks

from persona.resources import templates_dir

TEMPLATES_DIR = templates_dir()


def percent(value: Any) -> int:
    """A 0..1 score as a whole percentage clamped to 0..100 (bar widths)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return max(0, min(100, round(number * 100)))


def make_environment() -> Environment:
    """The Jinja environment: autoescape always on, so user and model text is inert."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["percent"] = percent
    return env


templates = Jinja2Blocks(env=make_environment())


def fragment(template: str, block: str, **context: Any) -> str:
    """Render one block of a template to a string (an SSE frame or a partial)."""
    return render_block(templates.env, template, block, context)


def fragments(template: str, blocks: list[str], **context: Any) -> str:
    """Render several blocks of a template, concatenated in order."""
    return render_blocks(templates.env, template, blocks, context)

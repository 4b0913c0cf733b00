"""Domain errors, raised below the web layer and mapped to HTTP statuses by it."""

from __future__ import annotations


class PersonaNotFound(LookupError):
    """The request names a persona that does not exist."""


class ChatConflict(ValueError):
    """The session exists but belongs to another persona or user."""


class TurnFailed(RuntimeError):
    """The turn was recorded as failed; `trace_id` finds its events."""

    def __init__(self, message: str, trace_id: str):
        super().__init__(message)
        self.trace_id = trace_id


class MissingDecision(LookupError):
    """A stage asked for the decision of a stage that has not run in this turn."""

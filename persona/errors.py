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


class TurnStopped(TurnFailed):
    """The user stopped the turn's reply: it was recorded as stopped, with what streamed."""

    def __init__(self, trace_id: str, turn_id: str, partial_reply: str):
        super().__init__("stopped: the reply was stopped by the user", trace_id)
        self.turn_id = turn_id
        self.partial_reply = partial_reply


class ChatBusy(ChatConflict):
    """The chat has a turn waiting or running: its tree cannot move until it ends (409)."""


class NothingToStop(ChatConflict):
    """A stop was asked for a chat with no reply streaming (409)."""


class MissingDecision(LookupError):
    """A stage asked for the decision of a stage that has not run in this turn."""


class MessageTooLong(ValueError):
    """The message cannot fit the model's context window with the prompt and the reply."""

    def __init__(self, message_tokens: int, limit_tokens: int, window: int, reply: int):
        super().__init__(
            f"the message is {message_tokens} tokens; at most {limit_tokens} fit this model's"
            f" {window}-token window (with {reply} kept for the reply): shorten it"
        )
        self.message_tokens = message_tokens
        self.limit_tokens = limit_tokens


class QueueFull(RuntimeError):
    """The chat (chat_id) or the whole server (None) already has as many turns waiting as
    it may; retry after `retry_after_s`."""

    def __init__(self, chat_id: str | None, limit: int, retry_after_s: int):
        where = f"chat {chat_id!r}" if chat_id is not None else "the server"
        super().__init__(f"{where} already has {limit} turns waiting or running: retry later")
        self.retry_after_s = retry_after_s


class ShuttingDown(RuntimeError):
    """The server is draining for shutdown: it accepts no new turn (503)."""

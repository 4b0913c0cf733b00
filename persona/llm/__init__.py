"""LLM backends behind one small interface."""

from persona.llm.base import Backend, ChatMessage, GenOptions, LLMError, LLMResponse
from persona.llm.registry import make_backend

__all__ = ["Backend", "ChatMessage", "GenOptions", "LLMError", "LLMResponse", "make_backend"]

"""The base of every event payload, and the catalog that decodes stored payloads.

A payload class names its event type and its current version; its `upcasters` map a
stored version k to the shape of version k+1. Reading the log upcasts a stored payload
step by step to the current version and validates it; a chain that stops short is an
error, never a silently half-read event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

# A stored payload (JSON object) of version k -> the payload of version k+1.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Model(BaseModel):
    """A frozen value inside a payload: unknown keys are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class EventPayload(Model):
    """What one event says; subclasses set `event_type`, `version` and `upcasters`."""

    event_type: ClassVar[str] = ""
    version: ClassVar[int] = 1
    upcasters: ClassVar[Mapping[int, Upcaster]] = MappingProxyType({})

    def to_json(self) -> dict[str, Any]:
        """The payload as stored (plain JSON values)."""
        return self.model_dump(mode="json")


class UnknownEventType(ValueError):
    """The log holds an event type the catalog does not know (refuse rather than drop)."""


class UpcastError(ValueError):
    """A stored payload cannot be brought to the current version of its type."""


class Catalog:
    """Every event type, by name; decodes stored payloads into current, typed ones."""

    def __init__(self, types: Iterable[type[EventPayload]]):
        by_name: dict[str, type[EventPayload]] = {}
        for cls in types:
            if not cls.event_type:
                raise ValueError(f"{cls.__name__} has no event_type")
            if cls.event_type in by_name:
                raise ValueError(f"event type {cls.event_type!r} is defined twice")
            by_name[cls.event_type] = cls
        self._types = MappingProxyType(by_name)

    @property
    def types(self) -> Mapping[str, type[EventPayload]]:
        """Event type name -> payload class."""
        return self._types

    def payload_class(self, event_type: str) -> type[EventPayload]:
        """The payload class of an event type (UnknownEventType if none)."""
        try:
            return self._types[event_type]
        except KeyError:
            raise UnknownEventType(event_type) from None

    def decode(self, event_type: str, version: int, raw: Mapping[str, Any]) -> EventPayload:
        """Upcast a stored payload to the current version of its type and validate it."""
        cls = self.payload_class(event_type)
        data = dict(raw)
        if version > cls.version:
            raise UpcastError(
                f"{event_type} v{version} is newer than this code (v{cls.version}): upgrade"
            )
        while version < cls.version:
            step = cls.upcasters.get(version)
            if step is None:
                raise UpcastError(
                    f"{event_type}: no upcaster from v{version} to v{version + 1}"
                    f" (current is v{cls.version})"
                )
            data = step(data)
            version += 1
        return cls.model_validate(data)

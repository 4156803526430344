"""Keeping saved files and stage keys byte-identical when a schema gains a field."""

from __future__ import annotations

from typing import Any


def omit_defaults(data: Any, defaults: dict[str, Any]) -> Any:
    """Drop from a serialised model each field that still holds the default it had before it existed
    (a falsy default also drops falsy values: None, False, [] alike). Use in a `model_serializer(mode="wrap")`."""
    if isinstance(data, dict):
        for key, default in defaults.items():
            value = data.get(key, default)
            if value == default or (not default and not value):
                data.pop(key, None)
    return data

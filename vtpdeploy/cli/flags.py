"""Command-line flags -> a validated config: the config type checks, the error names the flag."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import VtpError

Config = TypeVar("Config", bound=BaseModel)


def config_from_flags(config_type: type[Config], flag_names: dict[str, str] | None = None, **values) -> Config:
    """`config_type(**values)`; its first validation error as a one-line VtpError naming the flag.

    A field `some_name` is the flag `--some-name` unless `flag_names` maps it to another.
    """
    try:
        return config_type(**values)
    except ValidationError as exc:
        e = exc.errors()[0]
        field = str(e["loc"][0]) if e["loc"] else ""
        flag = (flag_names or {}).get(field) or "--" + field.replace("_", "-")
        raise VtpError(f"{flag} {e.get('input')!r}: {e['msg']}") from None

"""Machine-readable pipeline progress: one JSON object per line on stderr (`--log-format json`).

Events: `stage_start`, `stage_end`, `stage_skip`, `epoch_end`, `log` (a progress message) and
`pipeline_end`. Each line has `event`, `time` (UTC, ISO 8601) and the event's fields.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import TextIO

LOG_FORMATS = ("rich", "json")


class EventLog:
    """Emits JSON lines when enabled; a no-op otherwise (the rich console then reports progress)."""

    def __init__(self, enabled: bool = False, stream: TextIO | None = None):
        self.enabled = enabled
        self._stream = stream

    @classmethod
    def for_format(cls, log_format: str) -> "EventLog":
        return cls(enabled=log_format == "json")

    def emit(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields}
        stream = self._stream or sys.stderr  # looked up at emit time: tests and the CLI may redirect stderr
        stream.write(json.dumps(record, default=_plain) + "\n")
        stream.flush()


def _plain(obj):
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)

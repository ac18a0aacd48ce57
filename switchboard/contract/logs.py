"""Structured JSON logs: one object per line, with connection id, user and pod when known."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

# kopf attaches its whole settings object to every record: noise, not context.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "settings"}


# Fields from outside the contract (the active span's trace_id/span_id), added by the
# process that knows them: this module stays free of OpenTelemetry.
_context: list[Callable[[], dict[str, str]]] = []


def add_context(hook: Callable[[], dict[str, str]]) -> None:
    """Add `hook()`'s fields to every log line from now on (once per hook)."""
    if hook not in _context:
        _context.append(hook)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for hook in _context:
            entry.update(hook())
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(max(logging.WARNING, root.level))

"""Console logging: text or one JSON object a line, and a quiet start.

Below DEBUG, other libraries speak only at WARNING and above (FAISS's loader, embedded Postgres's initdb
transcript) and Python warnings from libraries are dropped; faceserve's own INFO lines stay. With
--log-level DEBUG everything shows.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime
from typing import Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
_OWN = "faceserve"
_HANDLER_NAME = "faceserve-console"
_TEXT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "process", "message"} plus a record's `fields` (the access log's)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _QuietLibraries(logging.Filter):
    """Other libraries' records below WARNING are chatter at start (initdb transcripts, loader probes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == _OWN or record.name.startswith(_OWN + ".")


# their DEBUG prints every signed request's headers (the S3 access key id, signatures): never logged
_SIGNING_LIBRARIES = ("botocore", "aiobotocore")


def configure(level: str, log_format: str) -> None:
    """Set up the root logger once per process (the CLI, and each spawned worker)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    if level != "DEBUG":
        handler.addFilter(_QuietLibraries())
        warnings.simplefilter("ignore")  # library deprecation and runtime-dir warnings: not the operator's
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:  # ours from an earlier call only
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _SIGNING_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO)

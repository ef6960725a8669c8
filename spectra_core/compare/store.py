"""``results.jsonl``: one JSON object per finished job, appended and fsync'd as each one ends, so an
interrupted compare resumes where it stopped. A torn last line (a kill mid-write) is ignored. Jobs running
in parallel threads append through one lock."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any


def job_key(spec: dict[str, Any]) -> str:
    """A stable hash of everything that decides a job's result."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


class ResultStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill: that job simply runs again
                if "result" in record:
                    self.records[record["key"]] = record

    def get(self, key: str) -> dict[str, Any] | None:
        record = self.records.get(key)
        return None if record is None else record["result"]

    def append(self, key: str, meta: dict[str, Any], result: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        record = {"key": key, **meta, **({"result": result} if result is not None else {"error": error})}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record) + "\n").encode()
        with self._lock:
            self._write(line)
            if result is not None:
                self.records[key] = record

    def _write(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not self._ends_with_newline():
                os.write(fd, b"\n")  # close a torn line first
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

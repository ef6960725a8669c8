"""Built-in exporters: the deliverables of a run."""

from __future__ import annotations

EXPORTERS: list[type] = []

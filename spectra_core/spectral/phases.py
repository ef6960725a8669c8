"""Where a scan spends its time: an always-on, thread-safe wall-clock total per named phase.

The scan path wraps its real work in ``with phase("gram"):`` blocks (a ``perf_counter`` pair and
a locked add: negligible next to a matrix product). Phases that run on worker threads add up
their own wall time, so with two workers the phase totals can exceed the elapsed time.
``spectra scan --timings`` and ``benchmarks/scan.py`` print the totals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("import", "index", "read", "check", "upcast", "gram", "eigensolve", "svd", "approx", "score",
          "selection", "write")  # the order tables print them in; unknown names follow

_lock = threading.Lock()
_seconds: dict[str, float] = {}
_calls: dict[str, int] = {}


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` body to phase ``name``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - start)


def add(name: str, seconds: float) -> None:
    with _lock:
        _seconds[name] = _seconds.get(name, 0.0) + seconds
        _calls[name] = _calls.get(name, 0) + 1


def reset() -> None:
    with _lock:
        _seconds.clear()
        _calls.clear()


def snapshot() -> dict[str, dict[str, float]]:
    """``{phase: {"seconds": s, "calls": n}}`` in table order."""
    with _lock:
        order = [p for p in PHASES if p in _seconds] + sorted(set(_seconds) - set(PHASES))
        return {p: {"seconds": _seconds[p], "calls": _calls[p]} for p in order}


def table(timings: dict[str, dict[str, float]], wall: float | None = None) -> str:
    """A plain-text table of ``snapshot()`` output (share of ``wall`` when given)."""
    lines = [f"{'phase':<12}{'seconds':>10}{'calls':>8}" + (f"{'share':>8}" if wall else "")]
    for name, t in timings.items():
        share = f"{100 * t['seconds'] / wall:>7.1f}%" if wall else ""
        lines.append(f"{name:<12}{t['seconds']:>10.3f}{int(t['calls']):>8}{share}")
    if wall:
        lines.append(f"{'wall':<12}{wall:>10.3f}")
    return "\n".join(lines)

"""Was the machine idle while a benchmark ran? Load average before/after plus a sampler that counts
running processes that are not the benchmark's own (the benchmark's children raise the load
average themselves, so the load average alone cannot tell).

Linux only (reads ``/proc``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

IDLE_LOAD = 0.5  # 1-minute load average before the run, at most
IDLE_OTHERS = 0.25  # mean number of other runnable processes during the run, at most


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may contain spaces
    return fields[0], int(fields[1])


def process_table() -> dict[int, tuple[str, int]]:
    """{pid: (state, parent pid)} of every process now."""
    return {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) is not None}


def other_running(root: int, table: dict[int, tuple[str, int]] | None = None) -> int:
    """Runnable processes outside the process tree of ``root`` (this benchmark)."""
    stats = process_table() if table is None else table

    def ours(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = stats[pid][1] if pid in stats else 1
        return False

    return sum(1 for pid, (state, _) in stats.items() if state == "R" and not ours(pid))


class LoadMonitor:
    """Samples :func:`other_running` every ``interval`` seconds on a daemon thread."""

    def __init__(self, interval: float = 1.0, settle_s: float = 240.0) -> None:
        self.interval, self.samples, self.settle_s, self.waited_s = interval, [], settle_s, 0.0
        self.before = self.after = (0.0, 0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(other_running(os.getpid()))

    def __enter__(self) -> LoadMonitor:
        self._settle()
        self.before = load_average()
        self.samples.append(other_running(os.getpid()))
        self._thread.start()
        return self

    def _settle(self) -> None:
        """Wait (up to ``settle_s``) while nothing else runs but the 1-minute load average still decays
        from an earlier job (e.g. the previous benchmark run), so a quiet machine is judged idle."""
        start = time.monotonic()
        while (load_average()[0] > IDLE_LOAD and other_running(os.getpid()) == 0
               and time.monotonic() - start < self.settle_s):
            time.sleep(5)
        self.waited_s = round(time.monotonic() - start, 1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = load_average()

    def report(self) -> dict:
        mean = sum(self.samples) / len(self.samples)
        return {"loadavg_before": self.before, "loadavg_after": self.after,
                "other_running_mean": round(mean, 2), "other_running_max": max(self.samples),
                "samples": len(self.samples), "settle_wait_s": self.waited_s,
                "idle": self.before[0] <= IDLE_LOAD and mean <= IDLE_OTHERS,
                "idle_rule": f"1-min load before <= {IDLE_LOAD} and mean other runnable processes <= {IDLE_OTHERS}"}

    def label(self) -> str:
        r = self.report()
        state = "idle" if r["idle"] else "BUSY"
        return (f"{state}: load average {r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after; "
                f"other runnable processes {r['other_running_mean']:.2f} on average (max {r['other_running_max']})")

"""What the run command shows while cells train: a live bar on a terminal, one line per finished
cell otherwise (:class:`Progress`, handed to :func:`modtransfer.run.runner.execute`)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any


class Progress:
    """A benchmark-level display: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, stream: Any = None, live: bool | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.counts: Counter[str] = Counter()
        self.running: set[str] = set()
        self.started = time.perf_counter()
        self.durations: list[float] = []
        self.live = self.stream.isatty() if live is None else live
        self._rich = None
        if self.live and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.description}"), transient=False)
            self._task = self._rich.add_task("", total=total)
            self._rich.start()

    def _desc(self) -> str:
        c = self.counts
        bits = [f"done {c['done']}", f"failed {c['failed']}", f"diverged {c['diverged']}"]
        if c["timeout"]:
            bits.append(f"timeout {c['timeout']}")
        if self.running:
            bits.append("now: " + ", ".join(sorted(self.running)[:3]))
        return " | ".join(bits)

    def start(self, label: str) -> None:
        self.running.add(label)
        if self._rich:
            self._rich.update(self._task, description=self._desc())

    def finish(self, summary: dict[str, Any]) -> None:
        self.running.discard(summary["label"])
        self.counts[summary["status"]] += 1
        if summary.get("wall_s"):
            self.durations.append(summary["wall_s"])
        n = sum(self.counts.values())
        if self._rich:
            self._rich.update(self._task, advance=1, description=self._desc())
            return
        value = summary.get("primary_value")
        metric = f" {summary['primary_metric']}={value:.4g}" if isinstance(value, float) else ""
        err = f" ({summary['error']})" if summary.get("error") and summary["status"] != "done" else ""
        left = self.total - n
        eta = f", ETA {left * (sum(self.durations) / len(self.durations)):.0f} s" if self.durations and left else ""
        print(f"[{n}/{self.total}] {summary['status']:<8} {summary['label']}{metric} "
              f"({summary.get('wall_s') or 0:.1f} s{eta}){err}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich:
            self._rich.stop()

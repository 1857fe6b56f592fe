"""What a run shows while it runs: rank 0 summarises its pace into small records (``Pace``),
the driver prints them (``Console``): a bar redrawn in place when stdout is a terminal, plain
lines otherwise (log files, ``ray job logs``).

    iter 600/1800 (33%) | 2.41 it/s, 19.3 samples/s | ETA 8m17s | loss p1 0.0412 p2 0.0431 | data wait 3%
    val @ 600: MSE 5.10 | copy-last 14.2 | zeros 1430   PSNR 24.1 | copy-last 33.2 | zeros 4.5

A record is made from numbers the step already has on the host (the losses are read back once
per iteration by the alignment step, the clock is the host's), so progress adds no device sync.
Plain Python, no Ray: the trainer hands records to the driver over a Ray queue.
"""
from __future__ import annotations

import sys
import time

PACE_EVERY_S = 2.0       # rank 0 sends a record at most this often
PLAIN_EVERY_S = 30.0     # and a log gets a line at most this often (terminals: every record)


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Pace:
    """Rank 0's running pace: ``step`` returns a record every ``every_s`` seconds (and after
    the first step), else None."""

    def __init__(self, total: int, start: int, batch_size: int, every_s: float = PACE_EVERY_S,
                 clock=time.monotonic):
        self.total, self.batch_size, self.every_s, self.clock = total, batch_size, every_s, clock
        self._t0 = self._last = clock()
        self._it0 = self._last_it = start
        self._wait = 0.0
        self._first = True

    def step(self, iteration: int, losses: dict, wait_s: float) -> dict | None:
        self._wait += wait_s
        now = self.clock()
        if not self._first and now - self._last < self.every_s and iteration < self.total:
            return None
        self._first = False
        window = max(now - self._last, 1e-9)
        rate = (iteration - self._last_it) / window
        overall = (iteration - self._it0) / max(now - self._t0, 1e-9)
        record = {"kind": "step", "iteration": iteration, "total": self.total,
                  "it_per_s": rate, "samples_per_s": rate * self.batch_size,
                  "eta_s": (self.total - iteration) / overall if overall > 0 else None,
                  "loss_phase1": losses.get("loss_phase1"),
                  "loss_phase2": losses.get("loss_phase2"),
                  "data_wait": min(1.0, self._wait / window)}
        self._last, self._last_it, self._wait = now, iteration, 0.0
        return record


def validation_record(iteration: int, metrics: dict) -> dict:
    """The validation scores beside the baselines' (``val_mse``, ``val_copy_last_mse``, ...)."""
    return {"kind": "val", "iteration": iteration,
            **{k: v for k, v in metrics.items() if k.startswith("val_")}}


def step_line(r: dict) -> str:
    eta = f"ETA {_duration(r['eta_s'])}" if r.get("eta_s") is not None else "ETA ?"
    losses = (f"loss p1 {r['loss_phase1']:.4g} p2 {r['loss_phase2']:.4g}"
              if r.get("loss_phase1") is not None else "loss ?")
    return (f"iter {r['iteration']}/{r['total']} ({100 * r['iteration'] / r['total']:.0f}%) | "
            f"{r['it_per_s']:.2f} it/s, {r['samples_per_s']:.1f} samples/s | {eta} | {losses} | "
            f"data wait {100 * r['data_wait']:.0f}%")


def validation_line(r: dict) -> str:
    parts = []
    for metric in ("mse", "psnr", "ssim"):
        if f"val_{metric}" not in r:
            continue
        cells = [f"{metric.upper()} {r[f'val_{metric}']:.4g}"]
        cells += [f"{name} {r[key]:.4g}" for name, key in
                  (("copy-last", f"val_copy_last_{metric}"), ("zeros", f"val_zeros_{metric}"))
                  if key in r]
        parts.append(" | ".join(cells))
    return f"val @ {r['iteration']}: " + "   ".join(parts)


class Console:
    """The driver's side: ``show(record)`` prints it as a bar (a terminal) or a line."""

    def __init__(self, stream=None, plain_every_s: float = PLAIN_EVERY_S, clock=time.monotonic):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.plain_every_s, self.clock = plain_every_s, clock
        self._last_plain: float | None = None
        self._bar = False

    def show(self, record: dict) -> None:
        if record["kind"] in ("val", "notice"):     # a notice: an event, said as it is
            self._line(validation_line(record) if record["kind"] == "val" else record["line"])
            return
        line = step_line(record)
        if self.tty:
            width = 28
            done = int(width * record["iteration"] / record["total"])
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {line}\033[K")
            self.stream.flush()
            self._bar = True
            return
        now = self.clock()
        if (self._last_plain is None or now - self._last_plain >= self.plain_every_s
                or record["iteration"] >= record["total"]):
            self._line(line)
            self._last_plain = now

    def _line(self, text: str) -> None:
        if self._bar:                      # a full line goes above the bar
            self.stream.write("\r\033[K")
            self._bar = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar:
            self.stream.write("\n")
            self.stream.flush()
            self._bar = False

"""Progress that reads well both in a terminal and in a log file.

On a terminal: a tqdm bar, redrawn at most every ``mininterval`` seconds. Otherwise (stdout/stderr redirected to a
file, CI): one plain line every ``every_s`` seconds and at the end, e.g.
``meta-train ng-gnn: 120/1000 (12%) 2.1 it/s, eta 7.0 min, meta_loss=1.52`` -- never carriage-return redraws, which
turn a log into one unreadable line.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """``update(n, **postfix)`` after each unit of work; ``close()`` at the end (also a context manager)."""

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "it", every_s: float = 30.0,
                 disable: bool = False, stream=None, leave: bool = True):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.every_s, self.disable = total, desc, unit, every_s, disable
        self.n, self.start_n, self.postfix = initial, initial, {}
        self.t0 = self.last = time.time()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, mininterval=1.0,
                         leave=leave, dynamic_ncols=True) if self.tty and not disable else None)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
        if self.disable:
            return
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)
        elif time.time() - self.last >= self.every_s or self.n >= self.total:
            self._line()

    def _line(self) -> None:
        self.last = now = time.time()
        rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        pct = 100 * self.n / self.total if self.total else 100.0
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        eta_s = f"{eta / 60:.1f} min" if eta != float("inf") else "?"
        print(f"{self.desc}: {self.n}/{self.total} ({pct:.0f}%) {rate:.3g} {self.unit}/s, eta {eta_s}{extra}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif not self.disable and self.n != self.start_n and time.time() - self.last > 0 and self.n < self.total:
            self._line()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

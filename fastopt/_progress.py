"""A progress bar for long runs: tqdm when installed, a plain one otherwise; silent when
stderr is not a terminal (CI logs, pipes) unless forced."""
import sys
import time


class _Plain:
    def __init__(self, total, desc, unit, stream):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.n = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.postfix = ""

    def update(self, k=1):
        self.n += k
        now = time.perf_counter()
        if now - self._last > 0.1 or self.n >= (self.total or 0):
            self._last = now
            self._draw(now)

    def set_postfix_str(self, s):
        self.postfix = s

    def _draw(self, now):
        width = 30
        if self.total:
            frac = min(1.0, self.n / self.total)
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            head = f"{self.desc}: {frac:4.0%} [{bar}] {self.n}/{self.total}"
        else:
            head = f"{self.desc}: {self.n}"
        rate = self.n / max(now - self.t0, 1e-9)
        self.stream.write(f"\r{head} {self.unit} ({rate:,.0f} {self.unit}/s) {self.postfix}")
        self.stream.flush()

    def close(self):
        self._draw(time.perf_counter())
        self.stream.write("\n")
        self.stream.flush()


class _Silent:
    n = 0

    def update(self, k=1):
        self.n += k

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress(total=None, desc="", unit="it", enabled=None, stream=None):
    """A progress bar with ``update(k)``, ``set_postfix_str(s)`` and ``close()``."""
    stream = sys.stderr if stream is None else stream
    if enabled is None:
        enabled = hasattr(stream, "isatty") and stream.isatty()
    if not enabled:
        return _Silent()
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=True,
                    unit_scale=unit == "B", dynamic_ncols=True)
    except ImportError:
        return _Plain(total, desc, unit, stream)

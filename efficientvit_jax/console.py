"""What the commands print: plain lines (no library chatter), a compile timer, one kind of progress display.

  console.setup(verbose)                    # once, at the start of a command
  with console.compiling('the training step'):
    ...                                     # prints 'compiling the training step ... done in 12.3 s'
  bar = console.Progress(total, 'eval nyu', unit='batch', batch_size=16)
  bar.update(); bar.close()

Progress is a tqdm bar on a terminal; otherwise (logs, CI, pipes) a line every `every` percent,
at most one per `min_interval` seconds, so a short task prints nothing but its result. Rates and
the ETA count from the first finished unit on, so the first unit's compilation does not distort them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any


class _Stderr(logging.StreamHandler):
  """A handler on whatever `sys.stderr` is at the time (pytest swaps it)."""

  def emit(self, record: logging.LogRecord) -> None:
    self.stream = sys.stderr
    super().emit(record)


class _ConsoleFilter(logging.Filter):
  """What reaches the console when not verbose: warnings and errors, except `warn`'s own records,
  which are printed already."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING and not getattr(record, 'printed', False)


def _console_formatter(verbose: bool) -> logging.Formatter:
  """absl's prefix (level, date, time, thread, file:line) on every record when verbose; otherwise on
  errors only (the report of a failure), and warnings are plain 'warning: ...' lines."""
  from absl import logging as absl_logging

  class Formatter(absl_logging.PythonFormatter):

    def format(self, record: logging.LogRecord) -> str:
      if verbose or record.levelno >= logging.ERROR:
        return super().format(record)
      return f'warning: {logging.Formatter.format(self, record)}'

  return Formatter()


_FILTER = _ConsoleFilter()
_STDERR = _Stderr()


def setup(verbose: bool = False) -> None:
  """The console's share of the log records, for a command's start. Idempotent.

  Not verbose: warnings as plain 'warning: ...' lines and errors; no INFO or DEBUG records, the
  libraries' or ours (what a user needs to read is printed as a plain line where it happens).
  verbose: every record from INFO up, the libraries' included, with absl's prefix. The records go
  through absl's handler under `absl.app` (train.py), else through a stderr handler of ours.
  """
  from absl import logging as absl_logging

  root = logging.getLogger()
  handler = absl_logging.get_absl_handler()
  if handler not in root.handlers:
    handler = _STDERR
    if handler not in root.handlers:
      root.addHandler(handler)
  handler.setFormatter(_console_formatter(verbose))
  if verbose:
    handler.removeFilter(_FILTER)
    if root.getEffectiveLevel() > logging.INFO:
      root.setLevel(logging.INFO)
  else:
    handler.addFilter(_FILTER)


def is_terminal(stream: Any = None) -> bool:
  stream = sys.stderr if stream is None else stream
  return bool(getattr(stream, 'isatty', lambda: False)())


_open_line = False  # `compiling` printed 'compiling ... ' on a terminal and has not ended the line


def line(text: str, stream: Any = None) -> None:
  """`text` and its newline (stdout by default) in one write: a line that another thread prints
  meanwhile (the multi-process watchdog's error) cannot land inside it, as it can between the two
  writes of `print` on an unbuffered stream (PYTHONUNBUFFERED=1). A line `compiling` left open (the
  block failed, or another thread reports) is ended first."""
  global _open_line
  stream = sys.stdout if stream is None else stream
  stream.write(('\n' if _open_line else '') + f'{text}\n')
  _open_line = False
  stream.flush()


def warn(message: str) -> None:
  """A warning the user must see (a lock taken over, a changed config, a skipped frame): a plain
  `warning: ...` line on stderr, and a log record (on the console with `verbose` only)."""
  from absl import logging as absl_logging

  absl_logging.warning('%s', message, extra={'printed': True})  # not repeated on the console (setup)
  line(f'warning: {message}', sys.stderr)


def say(message: str) -> None:
  """One line on stdout that does not break a progress bar."""
  if Progress.active is not None and Progress.active.bar is not None:
    Progress.active.bar.write(message)
  else:
    line(message)


@contextlib.contextmanager
def compiling(what: str) -> Iterator[None]:
  """Prints 'compiling <what> ... done in N s' around a block that compiles (one line)."""
  global _open_line
  start = time.perf_counter()
  bar_active = Progress.active is not None and Progress.active.bar is not None
  if is_terminal(sys.stdout) and not bar_active:
    print(f'compiling {what} ...', end='', flush=True)
    _open_line = True
    yield
    _open_line = False
    print(f' done in {time.perf_counter() - start:.1f} s', flush=True)
  else:
    yield
    say(f'compiling {what} ... done in {time.perf_counter() - start:.1f} s')


def announce_compile(fn: Any, what: str) -> Any:
  """`fn` (a jitted function) that prints a `compiling` line around its first call, which compiles."""
  done = []

  def call(*args: Any, **kwargs: Any) -> Any:
    if done:
      return fn(*args, **kwargs)
    import jax

    with compiling(what):
      out = jax.block_until_ready(fn(*args, **kwargs))
    done.append(True)
    return out

  return call


def rates_text(units_per_s: float, unit: str, batch_size: int | None = None) -> str:
  """'0.52 step/s, 8.3 images/s' (images/s = units/s * batch_size, when a batch size is given)."""
  parts = [f'{units_per_s:.2f} {unit}/s' if units_per_s < 10 else f'{units_per_s:.0f} {unit}/s']
  if batch_size:
    parts.append(f'{units_per_s * batch_size:.1f} images/s')
  return ', '.join(parts)


def _duration(seconds: float) -> str:
  seconds = max(0.0, seconds)
  if seconds < 90:
    return f'{seconds:.0f} s'
  if seconds < 5400:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 3600:.1f} h'


class Progress:
  """Progress of `total` units (steps, batches, frames, files).

  batch_size: images per unit; when given, images/s is shown beside units/s. initial: units done
  before this run (a resumed training). lines: False when the caller prints its own progress lines
  off a terminal (training's log lines, which use `describe()`). quiet: neither a bar nor lines.
  """

  active: Progress | None = None

  def __init__(self, total: int, desc: str, *, unit: str = 'step', batch_size: int | None = None,
               initial: int = 0, every: float = 10.0, min_interval: float = 10.0, lines: bool = True,
               quiet: bool = False):
    self.total, self.desc, self.unit, self.batch_size = int(total), desc, unit, batch_size
    self.n = int(initial)
    self.every, self.min_interval = every, min_interval
    self._t0 = time.perf_counter()
    self._clock: tuple[float, int] | None = None  # (time, n) at the first finished unit
    self._last_line = self._t0
    self._next_pct = every
    self.printed = 0
    self.bar = None
    if not quiet and is_terminal():
      from tqdm import tqdm

      self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
    self.quiet, self.lines = quiet, lines
    if not quiet:
      Progress.active = self

  def rates(self, now: float | None = None) -> tuple[float | None, float | None]:
    """(units/s, seconds left), both None until two units have finished."""
    if self._clock is None:
      return None, None
    t, n = self._clock
    elapsed = (time.perf_counter() if now is None else now) - t
    if self.n <= n or elapsed <= 0:
      return None, None
    rate = (self.n - n) / elapsed
    return rate, (self.total - self.n) / rate

  def describe(self, now: float | None = None) -> str:
    """'12.3 step/s, 197.0 images/s, eta 3.2 min' (what is known so far)."""
    rate, _ = self.rates(now)
    if rate is None:
      return ''
    return f'{rates_text(rate, self.unit, self.batch_size)}, {self.eta(now)}'

  def eta(self, now: float | None = None) -> str:
    """'eta 3.2 min' from the average pace since the first finished unit; '' before the second."""
    _, left = self.rates(now)
    return '' if left is None else f'eta {_duration(left)}'

  def update(self, n: int = 1, postfix: str = '') -> None:
    self.n += n
    now = time.perf_counter()
    if self._clock is None:  # the first unit includes compilation and start-up
      self._clock = (now, self.n)
      if self.bar is not None:  # restart tqdm's own rate clock too
        self.bar.update(n)
        self.bar.start_t = self.bar.last_print_t = self.bar._time()
        self.bar.initial = self.bar.last_print_n = self.bar.n
      return
    if self.bar is not None:
      rate, _ = self.rates(now)
      parts = [postfix] if postfix else []
      if rate is not None and self.batch_size:
        parts.append(f'{rate * self.batch_size:.1f} images/s')
      if parts:
        self.bar.set_postfix_str(', '.join(parts), refresh=False)
      self.bar.update(n)
      return
    if self.quiet or not self.lines or not self.total:
      return
    pct = 100.0 * self.n / self.total
    if pct >= self._next_pct and self.n < self.total:
      while self._next_pct <= pct:
        self._next_pct += self.every
      if now - self._last_line >= self.min_interval:
        self._last_line = now
        self.printed += 1
        print(f'{self.desc}: {self.n}/{self.total} ({pct:.0f}%) {self.describe(now)}'.rstrip(),
              flush=True)

  def close(self, summary: str = '') -> None:
    """Ends the display; `summary` (or, after progress lines, a 'done' line) is printed."""
    if self.bar is not None:
      self.bar.close()
      self.bar = None
    if Progress.active is self:
      Progress.active = None
    if self.quiet:
      return
    if summary:
      print(summary, flush=True)
    elif self.printed:
      print(f'{self.desc}: done, {self.n}/{self.total} in {_duration(time.perf_counter() - self._t0)}', flush=True)

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def iterate(items: Any, desc: str, *, total: int | None = None, unit: str = 'item', **kwargs: Any) -> Iterator[Any]:
  """Yields from `items` with a Progress over them."""
  total = len(items) if total is None else total
  with Progress(total, desc, unit=unit, **kwargs) as bar:
    for item in items:
      yield item
      bar.update()

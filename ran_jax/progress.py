"""What a job shows while it runs: Python logging for library callers, and progress bars
that stay clean in a log file.

Every job logs to the "ran_jax" logger. The commands configure logging themselves; a
script calling `ran_jax.train(...)` usually has not, and Python then drops INFO records, so
a job calls `ensure_logging()` first: INFO lines on stderr unless the caller configured
logging (a level on the root logger or on "ran_jax" that already lets INFO through, or
any level set on "ran_jax").

A progress bar (`bar`) is drawn only when stderr is a terminal: in a log file a bar is a
stream of carriage returns, and log lines written while it is drawn land glued onto it.
There the job's own per-epoch (per-point, ...) log lines carry the progress and the ETA
instead (`eta`). While a bar is drawn, each "ran_jax" record first clears the bar's line,
so log lines never glue onto it in a terminal either; the bar redraws on its next update.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
from typing import Iterator, Optional

LOGGER = "ran_jax"
FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _JobHandler(logging.StreamHandler):
  """The handler `ensure_logging` adds (told apart from the caller's own).

  It stands aside once the root logger has handlers: a library that configures logging
  mid-run (absl's first log line calls `logging.basicConfig()`) would otherwise print
  every record twice, once here and once through the root logger.
  """

  def emit(self, record):
    if logging.getLogger().handlers and logging.getLogger(LOGGER).propagate:
      return
    super().emit(record)


def ensure_logging(level: int = logging.INFO) -> bool:
  """INFO lines of the "ran_jax" logger on stderr, unless the caller configured logging.

  The caller configured it when "ran_jax" already passes `level` (a level set on it or on
  the root logger) or has a level of its own. Otherwise its level becomes `level`; its
  records then reach the root logger's handlers, or, where there are none, a stderr handler
  added here, which the next call removes once the root logger has handlers of its own (so
  nothing is printed twice). Returns whether the records are shown because of this call.
  """
  logger = logging.getLogger(LOGGER)
  ours = [h for h in logger.handlers if isinstance(h, _JobHandler)]
  if logging.getLogger().handlers:
    for h in ours:
      logger.removeHandler(h)
  if getattr(logger, "_ran_jax_level", None) != logger.level:   # not the level we set
    if logger.level != logging.NOTSET or logger.getEffectiveLevel() <= level:
      return False
    logger.setLevel(level)
    logger._ran_jax_level = level
  if not logging.getLogger().handlers and not logger.handlers:
    handler = _JobHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    logger.addHandler(handler)
  return True


def is_terminal(stream=None) -> bool:
  stream = sys.stderr if stream is None else stream
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


def eta(done: float, total: float, elapsed: float) -> str:
  """'HH:MM:SS' left at the rate so far ('?' before any work is done)."""
  if done <= 0 or elapsed <= 0:
    return "?"
  left = max(total - done, 0) * elapsed / done
  return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 3600:.0f} h"


class _ClearBar(logging.Filter):
  """Clears the bar's line before a record is written, so the record starts a fresh line."""

  def __init__(self, bar):
    super().__init__()
    self.bar = bar

  def filter(self, record):
    self.bar.clear()
    return True


_BARS: contextvars.ContextVar = contextvars.ContextVar("ran_jax_bars", default=None)


@contextlib.contextmanager
def bars(enabled: Optional[bool]) -> Iterator:
  """Inside, a bar opened without `enabled` (the per-fit bars of the attackers) follows
  `enabled`: False switches them off, None leaves them to the terminal test."""
  token = _BARS.set(enabled)
  try:
    yield
  finally:
    _BARS.reset(token)


def open_bar(total: int, *, desc: str, unit: str, initial: int = 0,
             enabled: Optional[bool] = None):
  """A tqdm bar on stderr with an ETA, or (not a terminal, or `enabled=False`, or inside
  `bars(False)`) a disabled one whose calls do nothing. Log records of "ran_jax" clear its
  line first while it is drawn; `close()` it (or use `bar`, a context manager)."""
  from tqdm.auto import tqdm

  enabled = _BARS.get() if enabled is None else enabled
  show = is_terminal() if enabled is None else bool(enabled)
  b = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not show,
           file=sys.stderr, dynamic_ncols=True,
           bar_format="{desc}: {n}/{total} " + unit + "s |{bar}| {elapsed} elapsed, "
                      "ETA {remaining}{postfix}")
  logger = logging.getLogger(LOGGER)
  clear = _ClearBar(b)
  if show:
    logger.addFilter(clear)
  close = b.close

  def close_and_unhook():
    logger.removeFilter(clear)
    close()

  b.close = close_and_unhook
  return b


@contextlib.contextmanager
def bar(total: int, *, desc: str, unit: str, initial: int = 0,
        enabled: Optional[bool] = None) -> Iterator:
  """`open_bar` as a context manager: the bar is closed (and unhooked) on leaving."""
  b = open_bar(total, desc=desc, unit=unit, initial=initial, enabled=enabled)
  try:
    yield b
  finally:
    b.close()


class Track:
  """Iterates over `items` with a bar (`open_bar`) and, after each item, a log line with the
  count and the ETA at the pace so far, which is what a log file shows of the progress:

    ran-sweep: 3/9 points done (ran_lam0.5) | ETA 00:04:10
  """

  def __init__(self, items, *, desc: str, unit: str, enabled: Optional[bool] = None):
    self.items, self.desc, self.unit, self.enabled = list(items), desc, unit, enabled
    self.postfix = ""
    self._bar = None

  def set_postfix_str(self, text: str) -> None:
    self.postfix = text
    if self._bar is not None:
      self._bar.set_postfix_str(text)

  def __iter__(self):
    n, t0 = len(self.items), time.perf_counter()
    with bar(n, desc=self.desc, unit=self.unit, enabled=self.enabled) as b:
      self._bar = b
      for i, item in enumerate(self.items):
        yield item
        b.update()
        logging.getLogger(LOGGER).info(
            "%s: %d/%d %ss done%s | ETA %s", self.desc, i + 1, n, self.unit,
            f" ({self.postfix})" if self.postfix else "", eta(i + 1, n, time.perf_counter() - t0))
      self._bar = None

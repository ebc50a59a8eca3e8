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
import logging
import sys
import time
from typing import Iterator, Optional

LOGGER = "ran_jax"
FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _JobHandler(logging.StreamHandler):
  """The handler `ensure_logging` adds (told apart from the caller's own)."""


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


@contextlib.contextmanager
def bar(total: int, *, desc: str, unit: str, initial: int = 0,
        enabled: Optional[bool] = None) -> Iterator:
  """A tqdm bar on stderr with an ETA, or (not a terminal, or `enabled=False`) a disabled one
  whose calls do nothing. Log records of "ran_jax" clear its line first while it is drawn."""
  from tqdm.auto import tqdm

  show = is_terminal() if enabled is None else bool(enabled)
  b = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not show,
           file=sys.stderr, dynamic_ncols=True,
           bar_format="{desc}: {n}/{total} " + unit + "s |{bar}| {elapsed} elapsed, "
                      "ETA {remaining}{postfix}")
  logger = logging.getLogger(LOGGER)
  clear = _ClearBar(b)
  if show:
    logger.addFilter(clear)
  try:
    yield b
  finally:
    logger.removeFilter(clear)
    b.close()

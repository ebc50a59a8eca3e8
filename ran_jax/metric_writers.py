"""Metrics into the workdir: JSON lines (metrics.jsonl) and TensorBoard events.

After a resume the steps between the last checkpoint and the interruption are
logged again; readers should keep the last record of each (kind, step).

On Cloud Storage (a gs:// workdir) an object cannot be appended to: the writer keeps the
file's lines and rewrites metrics.jsonl whole after each record (a few records a minute at
most: `log_every_steps` and the test passes), so a rerun continues the same file.
"""

from __future__ import annotations

import json
import time

import jax
from etils import epath

from ran_jax import storage


class MetricWriter:
  """Writes from process 0 only; other processes get a no-op writer."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    self._lines = None   # a remote file's lines, rewritten whole
    if not self.active:
      return
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    self._path = root / "metrics.jsonl"
    if storage.is_remote(workdir):
      self._lines = self._path.read_text().splitlines(True) if self._path.exists() else []
    else:
      self._jsonl = self._path.open("a")
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(root / "tensorboard"))

  def write(self, step: int, metrics: dict, kind: str = "train") -> None:
    if not self.active:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    record = {"step": int(step), "kind": kind, "time": time.time(), **clean}
    line = json.dumps(record) + "\n"
    if self._lines is not None:
      self._lines.append(line)
      self._path.write_text("".join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k if kind == "train" else f"{kind}/{k}", v, int(step))

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()

"""A `jax.profiler` trace of chosen training steps (`--config.profile_steps`).

  ran-train --config=digits_lenet --workdir=runs/digits --config.profile_steps=20-24
  tensorboard --logdir=runs/digits/profile      # the Profile tab (tensorboard-plugin-profile)

`profile_steps` is '' (no trace), 'N' (step N) or 'A-B' (steps A to B, both included; steps
count from 1 as in the log). The trace is taken in a local temporary directory and then copied
to WORKDIR/profile/plugins/profile/steps_A-B/, the layout TensorBoard's profile plugin reads,
so a gs:// workdir gets it too. Each process writes its own file (<host>.xplane.pb, with the
process index added in a multi-process run). Each traced step is marked with
`jax.profiler.StepTraceAnnotation("train", step_num=step)` for the plugin's step view.
A resumed run past the range traces nothing; a run stopped inside it keeps what was traced.
"""

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from typing import Optional

import jax
from etils import epath

log = logging.getLogger("ran_jax")

PROFILE_DIR = "profile"
_SPEC = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
ALLOWED = "'' (no trace), a step 'N' or a range 'A-B' with 1 <= A <= B (steps count from 1)"


def parse_steps(spec) -> Optional[tuple[int, int]]:
  """'' -> None, '7' -> (7, 7), '5-8' -> (5, 8); anything else raises ValueError."""
  if spec is None or (isinstance(spec, str) and not spec.strip()):
    return None
  if isinstance(spec, bool) or not isinstance(spec, (str, int)):
    raise ValueError(f"profile_steps={spec!r}: allowed {ALLOWED}")
  m = _SPEC.match(str(spec))
  if not m:
    raise ValueError(f"profile_steps={spec!r}: allowed {ALLOWED}")
  first = int(m.group(1))
  last = int(m.group(2)) if m.group(2) is not None else first
  if first < 1 or last < first:
    raise ValueError(f"profile_steps={spec!r}: allowed {ALLOWED}")
  return first, last


def run_dir(workdir: str, first: int, last: int) -> epath.Path:
  """Where the trace of steps first..last lands (a TensorBoard profile run)."""
  return epath.Path(workdir) / PROFILE_DIR / "plugins" / "profile" / f"steps_{first}-{last}"


class StepProfiler:
  """Starts a trace before the first chosen step and stops it after the last one.

  Used by the training loop: `annotate(step)` around each step's dispatch, then
  `after(step, outputs)` once it is dispatched; `close()` (also on an exception) ends an
  unfinished trace and keeps what it holds.
  """

  def __init__(self, workdir: str, spec, start_step: int, total_steps: int):
    self.workdir = workdir
    self.range = parse_steps(spec)
    self.requested = self.range   # names the run directory, even when a resume trims it
    self._tmp = None
    if self.range is None:
      return
    first, last = self.range
    if last <= start_step:
      log.info("profile: steps %d-%d were run before this resume; no trace taken", first, last)
      self.range = None
    elif first > total_steps:
      log.warning("profile: steps %d-%d lie past the run's %d steps; no trace taken",
                  first, last, total_steps)
      self.range = None
    else:   # a resume inside the range traces the steps still to run
      self.range = (max(first, start_step + 1), min(last, total_steps))

  @property
  def active(self) -> bool:
    return self._tmp is not None

  def annotate(self, step: int):
    """A context for the step's dispatch: starts the trace at the first chosen step."""
    if self.range is not None and step == self.range[0] and not self.active:
      self._tmp = tempfile.mkdtemp(prefix="ran_jax_profile_")
      jax.profiler.start_trace(self._tmp)
    if self.active:
      return jax.profiler.StepTraceAnnotation("train", step_num=step)
    return contextlib.nullcontext()

  def after(self, step: int, outputs) -> None:
    """After the last chosen step: waits for it on the device, stops and copies the trace."""
    if self.active and step >= self.range[1]:
      jax.block_until_ready(outputs)
      self._finish(step)

  def close(self) -> None:
    if self.active:
      self._finish(None)

  def _finish(self, step: Optional[int]) -> None:
    first, last = self.range
    tmp, self._tmp = self._tmp, None
    self.range = None
    try:
      jax.profiler.stop_trace()
      dest = run_dir(self.workdir, *self.requested)
      files = self._copy(tmp, dest)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    what = f"steps {first}-{last}" if step is not None else f"steps {first}-{last} (stopped early)"
    log.info("profile: %s traced to %s (%d file%s); view with `tensorboard --logdir=%s`, "
             "Profile tab (pip install tensorboard-plugin-profile)", what, dest, len(files),
             "" if len(files) == 1 else "s", epath.Path(self.workdir) / PROFILE_DIR)

  @staticmethod
  def _copy(tmp: str, dest: epath.Path) -> list:
    """Copies every file the profiler wrote (under plugins/profile/<its run>/) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    suffix = f"-process{jax.process_index()}" if jax.process_count() > 1 else ""
    copied = []
    for root, _, names in os.walk(tmp):
      for name in names:
        target = name
        if suffix and name.endswith(".xplane.pb"):
          target = name[: -len(".xplane.pb")] + suffix + ".xplane.pb"
        elif suffix:
          target = f"{socket.gethostname()}{suffix}.{name}"
        out = dest / target
        out.write_bytes(epath.Path(os.path.join(root, name)).read_bytes())
        copied.append(out)
    return copied

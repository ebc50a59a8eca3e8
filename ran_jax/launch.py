"""The `gcloud` commands that run a config on a Cloud TPU slice (`ran-plan --launch`).

Printed, never run: creating a slice costs money, so the user reads and runs each step.
The steps, for one config and one slice:

1. package ran_jax here and copy the wheel and the pins to the bucket (the TPU workers
   install from there: nothing else needs to reach this machine or a repository);
2. create the slice: a Spot TPU VM (`tpu-vm create --spot`) or a queued resource
   (`queued-resources create`, which waits for capacity; `--spot` unless on-demand);
3. install on every worker (`--worker=all`: the same command on each host);
4. prepare the TFDS data into `BUCKET/tfds` once (ImageNet needs its tars by hand,
   `--config.data.manual_dir`; CIFAR-10 downloads itself);
5. start the run on every worker: the same `ran-train` command on each host, the workdir and
   the data on Cloud Storage (a multi-host slice shares no disk); the process of each host
   joins the others by itself (`jax.distributed`, from the TPU VM's environment);
6. after a preemption: delete the slice, create and install again (2-3), and run the same
   start command (5): the run resumes from the newest complete checkpoint in the workdir.

The accelerator types and runtime versions are Google's names for each generation
(https://cloud.google.com/tpu/docs/runtimes): v4 `v4-N` / `tpu-ubuntu2204-base`, v5e
`v5litepod-N` / `v2-alpha-tpuv5-lite`, v5p `v5p-N` / `v2-alpha-tpuv5`, v6e `v6e-N` /
`v2-alpha-tpuv6e` (N counts TensorCores on v4 and v5p, chips on v5e and v6e).
"""

from __future__ import annotations

import dataclasses
import re
import shlex

GCLOUD_TYPE = {"v4": "v4", "v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}
RUNTIME = {"v4": "tpu-ubuntu2204-base", "v5e": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
           "v6e": "v2-alpha-tpuv6e"}
JAX_TPU = "jax[tpu]==0.10.2"     # the pinned jax (requirements.txt) with the TPU runtime


class LaunchError(ValueError):
  """A launch that cannot be written: the message names the bad value."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """One run on one slice. `config`: a packaged config name (`imagenet_vgg`, with
  `:variant` if any); `bucket`: gs://BUCKET[/prefix] for the wheel, the data and the runs."""

  config: str               # `NAME[:variant]` and any `--config.FIELD=VALUE` overrides
  topology: str
  bucket: str
  project: str
  zone: str
  name: str = "ran"
  run: str = ""              # the run's folder under BUCKET/runs (default: the config's name)
  queued: bool = False
  spot: bool = True
  version: str = ""          # ran_jax's version (default: this one)

  @property
  def workdir(self) -> str:
    run = self.run or re.sub(r"[^a-zA-Z0-9_.-]+", "_", self.config.split()[0].strip("'"))
    return f"{self.bucket}/runs/{run}"


def config_argument(argv) -> str:
  """The packaged config and its overrides as `--config=...` was given in `argv`, for the
  workers' `ran-train` (they install the wheel only: a config file of this machine is not
  there). LaunchError for a config file that is not a packaged config."""
  import os

  from ran_jax import configs

  spec, overrides, argv = None, [], list(argv)
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
    elif a.startswith("--config."):
      overrides.append(a if "=" in a or i + 1 >= len(argv) else f"{a}={argv[i + 1]}")
  if spec is None:
    raise LaunchError("--launch needs --config=NAME (a packaged config).")
  path, sep, arg = spec.partition(":")
  name = configs.packaged_name(path)
  if name is None and os.path.dirname(os.path.abspath(path)) == configs.PACKAGE_DIR:
    name = configs.packaged_name(os.path.basename(path))
  if name is None:
    raise LaunchError(f"--launch needs a packaged config ({', '.join(configs.names())}), "
                      f"got {spec!r}: the workers install ran_jax's wheel, not this "
                      "machine's files. Give the changes as --config.FIELD=VALUE overrides.")
  return " ".join([shlex.quote(f"{name}{sep}{arg}")] + [shlex.quote(o) for o in overrides])


def _check(launch: Launch):
  from ran_jax import plan

  if not re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]{1,220}(/[^\s'\"]+)?", launch.bucket.rstrip("/")):
    raise LaunchError(f"--bucket must be a Cloud Storage path gs://BUCKET[/prefix], got "
                      f"{launch.bucket!r}: a multi-host slice shares no local disk.")
  for field in ("project", "zone"):
    if not re.fullmatch(r"[a-z][a-z0-9-]*[a-z0-9]", getattr(launch, field) or ""):
      raise LaunchError(f"--{field} is required: a Google Cloud {field} name, got "
                        f"{getattr(launch, field)!r}.")
  if not re.fullmatch(r"[a-z]([a-z0-9-]*[a-z0-9])?", launch.name):
    raise LaunchError(f"--tpu_name {launch.name!r}: lowercase letters, digits and hyphens.")
  topo = plan.parse_topology(launch.topology)
  if topo.chip.generation not in GCLOUD_TYPE:
    raise LaunchError(f"No launch commands for the generation {topo.chip.generation}.")
  return topo


def commands(launch: Launch, dataset: str) -> list[tuple[str, str]]:
  """[(step, shell command)] for `launch`; `dataset` is the config's `data.name`."""
  import ran_jax

  topo = _check(launch)
  gen = topo.chip.generation
  n = topo.num_chips * (2 if topo.chip.megacore else 1)
  accel, runtime = f"{GCLOUD_TYPE[gen]}-{n}", RUNTIME[gen]
  bucket = launch.bucket.rstrip("/")
  version = launch.version or ran_jax.__version__
  wheel = f"ran_jax-{version}-py3-none-any.whl"
  where = f"--project={launch.project} --zone={launch.zone}"
  spot = " --spot" if launch.spot else ""

  def on_workers(command: str, worker: str = "all") -> str:
    return (f"gcloud compute tpus tpu-vm ssh {launch.name} {where} --worker={worker} "
            f"--command={shlex.quote(command)}")

  steps = [("package ran_jax here and copy it to the bucket",
            f"pip wheel --no-deps -w dist . && gcloud storage cp dist/{wheel} requirements.txt "
            f"{bucket}/dist/")]
  if launch.queued:
    steps += [("create the slice: a queued resource, filled when capacity frees up",
               f"gcloud compute tpus queued-resources create {launch.name}-queue "
               f"--node-id={launch.name} {where} --accelerator-type={accel} "
               f"--runtime-version={runtime}{spot}"),
              ("wait until it is ACTIVE",
               f"gcloud compute tpus queued-resources describe {launch.name}-queue {where} "
               "--format='value(state.state)'")]
  else:
    steps.append((f"create the slice: {topo.num_chips} chips on {topo.num_hosts} "
                  f"host{'s' if topo.num_hosts > 1 else ''}",
                  f"gcloud compute tpus tpu-vm create {launch.name} {where} "
                  f"--accelerator-type={accel} --version={runtime}{spot}"))
  steps.append(("install on every worker", on_workers(
      f"gcloud storage cp {bucket}/dist/{wheel} {bucket}/dist/requirements.txt . && "
      f"python3 -m venv ~/ran && ~/ran/bin/pip install -q -r requirements.txt "
      f'"{JAX_TPU}" ./{wheel}')))
  data_dir = f"{bucket}/tfds"
  config_name = shlex.split(launch.config)[0]
  if dataset == "imagenet2012":
    steps.append(("prepare the data once, on worker 0 (ILSVRC2012_img_train.tar and "
                  "ILSVRC2012_img_val.tar copied into ~/imagenet_tars first)", on_workers(
                      f"~/ran/bin/python -m ran_jax.launch prepare {config_name} {data_dir} "
                      "imagenet_tars", "0")))
  else:
    steps.append(("prepare the data once, on worker 0", on_workers(
        f"~/ran/bin/python -m ran_jax.launch prepare {config_name} {data_dir}", "0")))
  start = (f"nohup ~/ran/bin/ran-train --config={launch.config} "
           f"--config.data.data_dir={data_dir} --workdir={launch.workdir} "
           "> ran-train.log 2>&1 &")
  steps += [("start the run on every worker (the same command on each host)", on_workers(start)),
            ("follow it", on_workers("tail -f ran-train.log", "0"))]
  if launch.queued:
    again = (f"gcloud compute tpus queued-resources delete {launch.name}-queue {where} "
             "--force --quiet")
  else:
    again = f"gcloud compute tpus tpu-vm delete {launch.name} {where} --quiet"
  steps.append(("after a preemption: delete the slice, run the create and install steps "
                "again, then the same start command: the run resumes from its newest "
                f"complete checkpoint in {launch.workdir}", again))
  return steps


def script(launch: Launch, dataset: str) -> str:
  """The steps as a commented shell listing (what `ran-plan --launch` prints)."""
  lines = [f"# {launch.config} on {launch.topology}: the workdir {launch.workdir}",
           "# Printed, not run: read each step, then run it."]
  for i, (title, command) in enumerate(commands(launch, dataset), 1):
    lines += ["", f"# {i}. {title}", command]
  return "\n".join(lines) + "\n"


def prepare(config: str, data_dir: str, manual_dir: str = "", max_examples_per_split=None) -> None:
  """Prepares `config`'s dataset into `data_dir` (local or gs://) the way its runs read it
  (`python -m ran_jax.launch prepare CONFIG DATA_DIR [MANUAL_DIR]`). For gs:// it prepares
  into a local staging folder, copies that to the bucket and reads the bucket's copy back:
  the path the runs take (array_record's reader on Cloud Storage)."""
  import os
  import tempfile

  from ran_jax import configs, input_pipeline, storage
  from ran_jax.data import tfds_prep

  c = configs.get_config(config)
  if manual_dir:
    c.data.manual_dir = manual_dir
  staging = tempfile.mkdtemp(prefix="ran_jax_tfds-") if storage.is_remote(data_dir) else None
  c.data.data_dir = staging or data_dir
  if max_examples_per_split:   # tests: a few examples of a catalog dataset
    tfds_prep.prepare(tfds_prep.get_builder(c.data.name, c.data.data_dir),
                      c.data.manual_dir or None, max_examples_per_split=max_examples_per_split)
  input_pipeline.load_dataset(c.data)
  if staging:
    for name in sorted(os.listdir(staging)):
      if not name.startswith("."):
        storage.copytree(os.path.join(staging, name), storage.path(data_dir) / name)
    storage.rmtree(staging)
    c.data.data_dir = data_dir
  source = input_pipeline.load_dataset(c.data)
  print(f"{c.data.name} prepared in {data_dir}: {len(source.train)} training and "
        f"{len(source.test)} test examples")


if __name__ == "__main__":
  import sys

  if len(sys.argv) not in (4, 5) or sys.argv[1] != "prepare":
    sys.exit("usage: python -m ran_jax.launch prepare CONFIG DATA_DIR [MANUAL_DIR]")
  from ran_jax import progress

  progress.ensure_logging()
  prepare(*sys.argv[2:])

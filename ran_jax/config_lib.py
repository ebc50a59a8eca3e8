"""The config schema and its validation: every field is checked before any data is loaded.

`base_config()` defines every field a RAN config may have, with its default and the
allowed values in comments (configs/common.py builds the task configs on it).

Each problem reads `<field>=<value>: <what is allowed>`, e.g.
`model.conv_impl='cudnn': allowed values are ['auto', 'fast', 'xla']`, and all problems
are reported together in one ConfigError. The known fields are those of
`base_config()`; a field missing from a config takes its default there. Importing this
module loads no JAX; the allowed-value tuples are read from the
modules that define them when `validate_config` runs.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from typing import Any, Callable, Mapping

import ml_collections
from ml_collections import config_dict


VERSION_KEY = "ran_jax_version"   # beside the fields in a workdir's config.json; not a field


class ConfigError(ValueError):
  """A config value outside what RAN accepts; the message names field and allowed values."""


# ---------------------------------------------------------------- field paths


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
  """{'ran.lam': 0.5, ...}: the leaf fields of a (nested) ConfigDict or dict."""
  out = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
      out.update(flatten(value, path + "."))
    else:
      out[path] = value
  return out


def base_config() -> ml_collections.ConfigDict:
  """Every field a RAN config may have, with its default (the paper's RAN, defences off)."""
  c = ml_collections.ConfigDict()
  c.seed = 0                   # integer >= 0: parameter init, shuffling, dropout
  c.batch_size = 64            # global, split over all devices (a multiple of their count)
  c.eval_batch_size = 256      # global, a multiple of the device count
  c.num_epochs = 10            # >= 1
  c.max_steps = -1             # -1: num_epochs * steps_per_epoch
  c.log_every_steps = 50       # >= 1
  c.checkpoint_every_steps = 0  # 0: at the end of every epoch
  c.keep_checkpoints = 2       # >= 1
  # '' (none), 'N' or 'A-B': a jax.profiler trace of those steps into WORKDIR/profile/,
  # for TensorBoard's profile plugin (ran_jax.profiling).
  c.profile_steps = ""
  # True: at the end of training also write WORKDIR/deploy/ (the phone-side encoder as a
  # LiteRT .tflite, the classifier as jax.export; ran_jax.deploy). False: only export/.
  c.export_deployment = True

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"       # a built-in name (input_pipeline.DATASETS) or any TFDS name
  c.data.data_dir = config_dict.placeholder(str)    # prepared TFDS data_dir (local or gs://)
  c.data.manual_dir = config_dict.placeholder(str)  # raw files for offline preparation
  c.data.image_size = 28       # resize to this square size; 0: the dataset's own size
  c.data.train_limit = 0       # >0: use only the first N examples (tests)
  c.data.test_limit = 0        # >0: use only the first N test examples (tests)
  c.data.decode_workers = 4    # threads decoding JPEG batches (imagenet2012, large TFDS sets)
  c.data.num_classes = config_dict.placeholder(int)  # expected class count (None: the dataset's)
  # A sensitive attribute carried per example ('': none): 'subject' (uci_har), 'speaker'
  # (spoken_digit), a scalar TFDS feature, or an .npz column (ran_jax/data). When set,
  # every batch also holds 'attribute' (int32 ids); see docs/privacy_identity.md.
  c.data.attribute = ""

  c.model = ml_collections.ConfigDict()
  c.model.encoder = "lenet5"   # 'lenet5', 'alexnet' or 'vgg16' (ran_jax.models.ENCODERS)
  # None: the paper's widths; else positive ints, lenet5: 2 (per conv), alexnet/vgg16: 5 (per block)
  c.model.widths = config_dict.placeholder(tuple)
  c.model.classifier_hidden = (120, 84)  # hidden widths of the classifier MLP (positive ints)
  c.model.dropout = 0.0        # classifier dropout rate, in [0, 1)
  c.model.dtype = "float32"    # 'bfloat16' computes in bf16 with f32 params (accelerators)
  # 'fast': matmul / sub-pixel convs (CPU); 'xla': Flax's; 'auto': chosen by backend and layer
  c.model.conv_impl = "auto"
  # Batch-norm statistics in training: 0 over the whole (global) batch; N over groups of N
  # examples (ghost batch-norm). N dividing the per-device batch keeps every statistic on
  # its device: no all-reduce per layer, and results independent of the device count.
  c.model.bn_group_size = 0
  # What the backward pass recomputes of each conv block instead of keeping it (memory for
  # compute): 'none'; 'conv' (keep conv outputs, recompute batch-norm and ReLU); 'full'.
  c.model.remat = "none"
  # >1: the classifier's two wide hidden layers split over groups of this many devices (a
  # second mesh axis), their activations gathered within each group instead of their
  # gradients all-reduced over all devices (docs/cloud_tpu.md). 1: pure data parallelism.
  c.model.classifier_shards = 1
  # Defences (docs/privacy.md); all off by default, which is the paper's RAN.
  c.model.bottleneck_dim = 0   # >0: encoder ends in a learned projection to d tanh-bounded channels
  c.model.bottleneck_kind = "dense"  # 'dense' (flat [d] features) or 'conv1x1' ([h, w, d])
  c.model.feature_noise = 0.0  # std (>= 0) of Gaussian noise on the released (tanh-bounded)
                               # features, in training AND at inference; part of the phone-side E
  # >= 0; > 0: what the phone releases is the clean features rounded to the nearest multiple
  # of this step, plus the noise, so averaging releases converges to the rounded features:
  # detail finer than the step (saturated tanh channels keep who the person is in it) is not
  # released at all. Training does not round (evaluation, export and the phone do); part of
  # the phone-side E (docs/privacy_identity.md).
  c.model.release_step = 0.0

  c.ran = ml_collections.ConfigDict()
  c.ran.k = 3                  # >= 1 inner (discriminative, generative) pairs per mini-batch
  c.ran.lam = 0.5              # lambda of Eq. 4, in [0, 1]
  c.ran.l1 = 1e-3              # Adam learning rate (> 0), discriminative stage
  c.ran.l2 = 1e-3              # generative stage (decoder)
  c.ran.l3 = 1e-3              # adversarial stage
  c.ran.recon_reduction = "sum"  # 'sum' per example (paper) or 'mean' per value
  c.ran.fused = True           # one jitted function per Algorithm-1 iteration (False: per stage)
  # Defences in training (docs/privacy.md); defaults reproduce Algorithm 1 exactly.
  c.ran.extra_decoders = ()    # decoder families trained beside D: 'mlp', 'wide' (each once)
  c.ran.adversary_reduce = "min"  # the adversarial stage fights the strongest: 'min' or 'softmin'
  c.ran.softmin_temperature = 1.0  # 'softmin' temperature (> 0), in reconstruction-error units
  c.ran.mlp_decoder_hidden = (1024,)  # hidden widths of the 'mlp' family
  c.ran.wide_decoder_mult = 2  # hidden-channel multiplier (>= 1) of the 'wide' family
  c.ran.warmup_steps = 0       # iterations before the adversarial term is switched on
  c.ran.reinit_every_steps = 0  # >0: re-initialise every decoder (and its Adam state) this often
  c.ran.target_psnr = 0.0      # >0 dB: stop pushing once the strongest decoder's PSNR is below it
  c.ran.compactness = 0.0      # weight (>= 0) of the within-class feature variance penalty
  # weight (>= 0) of the attribute entanglement penalty (losses.attribute_entanglement): the
  # features' soft nearest neighbours pushed to share the attribute no more than chance
  # does. Needs data.attribute. Its temperature (> 0) is relative to the batch's mean distance.
  c.ran.entangle = 0.0
  c.ran.entangle_temperature = 0.1  # > 0, a fraction of the batch's mean feature distance
  # weight (>= 0) of the class-conditional dependence penalty (losses.conditional_hsic): the
  # normalised HSIC between the features and the attribute inside each class. Needs
  # data.attribute. Its Gaussian kernel's bandwidth (> 0) is relative to the batch's mean distance.
  c.ran.hsic = 0.0
  c.ran.hsic_bandwidth = 1.0  # > 0, a multiple of the batch's mean squared feature distance
  # Distillation (docs/privacy_identity.md, "Accuracy"): the classifier's cross-entropy in
  # the discriminative and adversarial stages mixed with the KL divergence from a trained
  # teacher's softened predictions on the same (clean) training inputs:
  # (1 - w) CE + w T^2 KL(teacher_T || classifier_T). The teacher is the export of another
  # run's workdir (e.g. the DNN), read once at the start; not part of what is released.
  c.ran.distill_from = ""      # a trained workdir ('' : none)
  c.ran.distill_weight = 0.0   # w in [0, 1] (0: off, plain Algorithm 1)
  c.ran.distill_temperature = 2.0  # T > 0
  # The attribute game (docs/privacy_identity.md): attribute heads on the released features
  # trained beside the decoders, and the encoder pushed to confuse them. Needs data.attribute.
  c.ran.attribute_weight = 0.0  # >= 0; weight of the heads' confusion loss in O_a (0: off)
  c.ran.attribute_heads = ("linear", "mlp")  # names from models.ATTRIBUTE_HEADS, each once
  c.ran.attribute_hidden = (256,)  # hidden widths of the 'mlp' head
  # The end of training (docs/training.md). 'constant' is Algorithm 1 as published (the paper
  # configs); 'cosine' / 'step' decay every stage's learning rate to lr_floor x its peak by
  # the last step, after a linear warm-up of lr_warmup_steps iterations.
  c.ran.schedule = "constant"  # 'constant', 'cosine' or 'step' (x sqrt(floor) at 50 % and 75 %)
  c.ran.lr_warmup_steps = 0    # iterations of linear warm-up from 0 (non-constant schedules)
  c.ran.lr_floor = 0.0         # final learning rate as a fraction of l1/l2/l3, in [0, 1]
  # >0: exponential moving average of the encoder and classifier (weights and batch-norm
  # statistics), used for the test pass, the export and the deployment; in [0, 1).
  c.ran.ema_decay = 0.0
  return c


def known_fields() -> dict[str, Any]:
  """Every valid field and its default (`base_config`)."""
  return flatten(base_config())


def nearest_fields(path: str, known, n: int = 3) -> list[str]:
  """The valid field names closest to a misspelt `path` (by whole path or last part)."""
  leaf = path.rsplit(".", 1)[-1]

  def score(name):
    return max(difflib.SequenceMatcher(None, path, name).ratio(),
               difflib.SequenceMatcher(None, leaf, name.rsplit(".", 1)[-1]).ratio())

  scores = {k: score(k) for k in known}
  top = max(scores.values(), default=0.0)
  close = [k for k in known if scores[k] >= max(0.6, top - 0.1)]
  return sorted(close, key=lambda k: (-scores[k], k))[:n]


def fields_at_level(path: str, known) -> list[str]:
  """The valid names beside `path` (`ran.*` for a section), or the top level's."""
  parent = path.rsplit(".", 1)[0] + "." if "." in path else ""
  if not any(k.startswith(parent) for k in known):
    parent = ""
  rest = (k[len(parent):] for k in known if k.startswith(parent))
  return sorted({parent + r.split(".", 1)[0] + (".*" if "." in r else "") for r in rest})


def unknown_field_message(path: str, value, known) -> str:
  """`<path>=<value>: unknown field; ...` naming the nearest valid names."""
  near = nearest_fields(path, known)
  if near:
    return f"{path}={value!r}: unknown field; nearest valid names: {near}."
  return (f"{path}={value!r}: unknown field; no similar name, the valid names there are "
          f"{fields_at_level(path, known)}.")


def unknown_override(argv) -> str | None:
  """The message for the first `--config.<field>=...` in `argv` naming no known field.

  ml_collections (configs are loaded with lock_config=True) raises a bare
  AttributeError/KeyError for such an override while absl parses the flags; the
  entry point turns it into this ConfigError message. None if every override is known.
  """
  known = known_fields()
  sections = {p.rsplit(".", 1)[0] for p in known if "." in p}
  for i, arg in enumerate(argv):
    m = re.match(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", arg, re.S)
    if not m or m.group(1) in known or m.group(1) in sections:
      continue
    raw = m.group(2)
    if raw is None and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
      raw = argv[i + 1]
    try:
      value = ast.literal_eval(raw) if raw is not None else True
    except (ValueError, SyntaxError):
      value = raw
    return format_problems([unknown_field_message(m.group(1), value, known)])
  return None


def format_problems(problems) -> str:
  return "Invalid config:\n  - " + "\n  - ".join(dict.fromkeys(problems))


# ---------------------------------------------------------------- value rules


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _profile_steps_ok(v) -> bool:
  from ran_jax.profiling import parse_steps

  try:
    parse_steps(v)
  except ValueError:
    return False
  return True


def _int_at_least(lo: int):
  return (lambda v: _is_int(v) and v >= lo), f"an integer >= {lo}"


def _number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False,
            text: str = ""):
  def ok(v):
    return (_is_number(v) and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi))

  if not text:
    if hi == math.inf:
      text = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    else:
      text = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  return ok, text


def _one_of(allowed):
  allowed = list(allowed)
  return (lambda v: isinstance(v, str) and v in allowed), f"allowed values are {allowed}"


def _optional_str():
  return ((lambda v: v is None or (isinstance(v, str) and v != "")),
          "None or a non-empty path string")


def _positive_ints(what: str):
  return ((lambda v: isinstance(v, (tuple, list)) and all(_is_int(h) and h > 0 for h in v)),
          f"a tuple of positive integers ({what})")


def _names_from(allowed):
  allowed = list(allowed)

  def ok(v):
    return (isinstance(v, (tuple, list)) and all(isinstance(d, str) and d in allowed for d in v)
            and len(set(v)) == len(v))

  return ok, f"a tuple of names from {allowed}, without duplicates"


# (check, what is allowed): the description is a string, or a function of the refused value.
Rule = tuple[Callable[[Any], bool], "str | Callable[[Any], str]"]


def _dataset_problem(name, datasets) -> str:
  """Why `data.name` names no dataset: a path of own data that does not exist is named as
  missing (not as an unknown dataset)."""
  import os

  if isinstance(name, str) and (name.endswith(".npz") or os.sep in name
                                or name.startswith(("~", "."))):
    path = os.path.abspath(os.path.expanduser(name))
    what = "file" if name.endswith(".npz") else "folder"
    return (f"no such {what}: {path} (own data: an .npz file or a folder of class "
            "sub-folders; a relative path is read from the working directory)")
  return f"unknown dataset; allowed: {sorted(datasets)}"


def _rules() -> dict[str, Rule]:
  """Field -> (check, what is allowed). Allowed names come from where they are defined."""
  from ran_jax.input_pipeline import known_datasets
  from ran_jax.losses import RECON_REDUCTIONS
  from ran_jax.models import (ATTRIBUTE_HEADS, BOTTLENECK_KINDS, COMPUTE_DTYPES, ENCODERS,
                              EXTRA_DECODERS)
  from ran_jax.models.modules import CONV_IMPLS, REMAT_POLICIES
  from ran_jax.profiling import ALLOWED as PROFILE_STEPS_ALLOWED
  from ran_jax.stages import ADVERSARY_REDUCTIONS, SCHEDULES

  datasets = known_datasets()
  return {
      "seed": _int_at_least(0),
      "batch_size": (_int_at_least(1)[0], "the global batch size, an integer >= 1"),
      "eval_batch_size": _int_at_least(1),
      "num_epochs": _int_at_least(1),
      "max_steps": ((lambda v: _is_int(v) and (v == -1 or v >= 1)),
                    "-1 (num_epochs decides) or an integer >= 1"),
      "log_every_steps": _int_at_least(1),
      "checkpoint_every_steps": ((lambda v: _is_int(v) and v >= 0),
                                 "0 (every epoch) or an integer >= 1"),
      "keep_checkpoints": _int_at_least(1),
      "profile_steps": (_profile_steps_ok, PROFILE_STEPS_ALLOWED),
      "export_deployment": ((lambda v: isinstance(v, bool)), "True or False"),

      "data.name": ((lambda v: v in datasets), lambda v: _dataset_problem(v, datasets)),
      "data.data_dir": _optional_str(),
      "data.manual_dir": _optional_str(),
      "data.image_size": ((lambda v: _is_int(v) and v >= 0),
                          "0 (the dataset's own size) or an integer >= 1"),
      "data.train_limit": ((lambda v: _is_int(v) and v >= 0), "0 (all) or an integer >= 1"),
      "data.test_limit": ((lambda v: _is_int(v) and v >= 0), "0 (all) or an integer >= 1"),
      "data.num_classes": ((lambda v: v is None or (_is_int(v) and v >= 1)),
                           "None (the dataset's) or an integer >= 1"),
      "data.decode_workers": _int_at_least(1),
      "data.attribute": ((lambda v: isinstance(v, str)),
                         "'' (none) or the name of a per-example attribute of the dataset "
                         "(e.g. 'subject' for uci_har, 'speaker' for spoken_digit)"),

      "model.encoder": ((lambda v: v in ENCODERS),
                        f"unknown encoder; allowed: {sorted(ENCODERS)}"),
      "model.widths": ((lambda v: v is None or _positive_ints("")[0](v)),
                       "None (the paper's widths) or a tuple of positive integers, one per conv "
                       "(lenet5) or block (alexnet, vgg16) of the encoder"),
      "model.classifier_hidden": _positive_ints("layer widths, e.g. (120, 84)"),
      "model.dropout": _number(0.0, 1.0, hi_open=True),
      "model.dtype": _one_of(COMPUTE_DTYPES),
      "model.conv_impl": _one_of(CONV_IMPLS),
      "model.bn_group_size": ((lambda v: _is_int(v) and v >= 0),
                              "0 (statistics over the whole batch) or an integer >= 1 that "
                              "divides batch_size"),
      "model.remat": _one_of(REMAT_POLICIES),
      "model.classifier_shards": _int_at_least(1),
      "model.bottleneck_dim": ((lambda v: _is_int(v) and v >= 0),
                               "0 (no bottleneck) or an integer >= 1"),
      "model.bottleneck_kind": _one_of(BOTTLENECK_KINDS),
      "model.feature_noise": _number(0.0),
      "model.release_step": _number(0.0),

      "ran.k": (_int_at_least(1)[0], "an integer >= 1 (the paper uses k=3)"),
      "ran.lam": _number(0.0, 1.0, text="lambda must be a number in [0, 1] (Eq. 4 weighs "
                         "lambda*CE against (1-lambda)*reconstruction error)"),
      "ran.l1": _number(0.0, lo_open=True, text="learning rates must be finite numbers > 0"),
      "ran.l2": _number(0.0, lo_open=True, text="learning rates must be finite numbers > 0"),
      "ran.l3": _number(0.0, lo_open=True, text="learning rates must be finite numbers > 0"),
      "ran.recon_reduction": _one_of(RECON_REDUCTIONS),
      "ran.fused": ((lambda v: isinstance(v, bool)), "True or False"),
      "ran.extra_decoders": _names_from(EXTRA_DECODERS),
      "ran.adversary_reduce": _one_of(ADVERSARY_REDUCTIONS),
      "ran.softmin_temperature": _number(0.0, lo_open=True),
      "ran.mlp_decoder_hidden": _positive_ints("hidden widths, e.g. (1024,)"),
      "ran.wide_decoder_mult": _int_at_least(1),
      "ran.warmup_steps": ((lambda v: _is_int(v) and v >= 0), "0 (none) or an integer >= 1"),
      "ran.reinit_every_steps": ((lambda v: _is_int(v) and v >= 0),
                                 "0 (never) or an integer >= 1"),
      "ran.target_psnr": _number(0.0, text="0 (off) or a finite number of dB > 0"),
      "ran.compactness": _number(0.0),
      "ran.attribute_weight": _number(0.0),
      "ran.entangle": _number(0.0),
      "ran.entangle_temperature": _number(0.0, lo_open=True),
      "ran.hsic": _number(0.0),
      "ran.hsic_bandwidth": _number(0.0, lo_open=True),
      "ran.distill_from": ((lambda v: isinstance(v, str)), "a trained workdir, or '' (none)"),
      "ran.distill_weight": _number(0.0, 1.0),
      "ran.distill_temperature": _number(0.0, lo_open=True),
      "ran.attribute_heads": ((lambda v: _names_from(ATTRIBUTE_HEADS)[0](v) and len(v) > 0),
                              f"a non-empty tuple of names from {list(ATTRIBUTE_HEADS)}, "
                              "without duplicates"),
      "ran.attribute_hidden": _positive_ints("hidden widths, e.g. (256,)"),
      "ran.schedule": _one_of(SCHEDULES),
      "ran.lr_warmup_steps": ((lambda v: _is_int(v) and v >= 0), "0 (none) or an integer >= 1"),
      "ran.lr_floor": _number(0.0, 1.0),
      "ran.ema_decay": _number(0.0, 1.0, hi_open=True,
                               text="0 (off) or a number in (0, 1), e.g. 0.99"),
  }


# ---------------------------------------------------------------- validation


def _widths_problem(encoder: str, widths) -> str | None:
  """The encoder builder's own count check (lenet5 takes 2 widths, alexnet and vgg16 5)."""
  from ran_jax.models import ENCODERS

  try:
    ENCODERS[encoder]((32, 32, 3), tuple(widths))  # the count does not depend on the shape
  except ValueError as e:
    return str(e)
  return None


def validate_config(config, num_devices: int | None = None) -> None:
  """Raises ConfigError listing every problem found in `config`.

  Checks that every field is one of base_config()'s (naming the nearest valid
  names otherwise), each value against its allowed values, the encoder's width count,
  and (given `num_devices`) that the batch sizes split evenly over the devices.
  """
  from ran_jax.models import ENCODERS

  known = known_fields()
  given = flatten(config)
  given.pop(VERSION_KEY, None)   # config.json read back: the version that wrote it
  sections = {p.rsplit(".", 1)[0] for p in known if "." in p}
  problems = []
  for path, v in given.items():
    if path in sections:
      problems.append(f"{path}={v!r}: a section of fields ({path}.*), not a value.")
    elif path not in known:
      problems.append(unknown_field_message(path, v, known))
  values = {p: given.get(p, default) for p, default in known.items()}

  for path, (ok, allowed) in _rules().items():
    v = values.get(path)
    if not ok(v):
      problems.append(f"{path}={v!r}: {allowed(v) if callable(allowed) else allowed}.")

  enc, widths = values.get("model.encoder"), values.get("model.widths")
  if enc in ENCODERS and widths is not None and _positive_ints("")[0](widths):
    msg = _widths_problem(enc, widths)
    if msg:
      problems.append(f"model.widths={widths!r}: {msg}")

  for field, what in (("ran.attribute_weight", "the attribute game"),
                      ("ran.entangle", "the entanglement penalty"),
                      ("ran.hsic", "the dependence penalty")):
    weight = values.get(field)
    if _is_number(weight) and weight > 0 and not values.get("data.attribute"):
      problems.append(f"{field}={weight!r}: {what} needs a sensitive attribute in the data; "
                      "set data.attribute (e.g. 'subject' for uci_har, 'speaker' for "
                      "spoken_digit).")

  weight = values.get("ran.distill_weight")
  if _is_number(weight) and 0 < weight <= 1 and not values.get("ran.distill_from"):
    problems.append(f"ran.distill_weight={weight!r}: distillation needs a teacher; set "
                    "ran.distill_from to a trained workdir (e.g. the DNN's).")

  from ran_jax.data.datasets import BUILTIN_ATTRIBUTES

  dataset, attribute = values.get("data.name"), values.get("data.attribute")
  if attribute and isinstance(attribute, str) and dataset in BUILTIN_ATTRIBUTES:
    if attribute not in BUILTIN_ATTRIBUTES[dataset]:
      problems.append(f"data.attribute={attribute!r}: dataset {dataset} has no such attribute; "
                      f"available: {list(BUILTIN_ATTRIBUTES[dataset]) or 'none'}.")

  group, bs = values.get("model.bn_group_size"), values.get("batch_size")
  if _is_int(group) and group > 0 and _is_int(bs) and bs > 0 and bs % group:
    problems.append(f"model.bn_group_size={group}: must divide batch_size={bs} (each group of "
                    "examples is normalised with its own statistics).")
  shards, hidden = values.get("model.classifier_shards"), values.get("model.classifier_hidden")
  if _is_int(shards) and shards > 1:
    if not (isinstance(hidden, (tuple, list)) and len(hidden) >= 2 and _is_int(hidden[0])):
      problems.append(f"model.classifier_shards={shards}: needs a classifier with at least two "
                      f"hidden layers (model.classifier_hidden={hidden!r}).")
    elif hidden[0] % shards:
      problems.append(f"model.classifier_shards={shards}: must divide the first hidden width "
                      f"{hidden[0]} of model.classifier_hidden.")
    if num_devices and num_devices % shards:
      problems.append(f"model.classifier_shards={shards}: must divide the {num_devices} devices.")
  if num_devices:
    for name in ("batch_size", "eval_batch_size"):
      bs = values.get(name)
      if _is_int(bs) and bs > 0 and bs % num_devices:
        problems.append(f"{name}={bs} is not divisible by the {num_devices} devices: each "
                        f"device must get an equal share; use a multiple of {num_devices}.")

  if problems:
    raise ConfigError(format_problems(problems))


# ---------------------------------------------------------------- command lines


def exit_with_error(message: str):
  """How every command line ends on bad input: `error: ...` on stderr, exit code 2."""
  import sys

  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def missing_flag_message(name: str) -> str:
  """What a command says when a required flag is not given (`--config`: the packaged configs)."""
  if name == "config":
    from ran_jax import configs

    return ("--config is required: a packaged config, one of " + ", ".join(configs.names())
            + " (e.g. --config=digits_lenet, or digits_lenet:smoke for a seconds-long run), "
            "or the path of a config file of your own.")
  return f"--{name} is required (--help lists the flags)."


def parse_flags_or_exit(argv):
  """absl's flag parsing for the command lines (train.py, sweep, attack, search): a bad flag or
  an unknown config field ends like a bad config value (`error: ...`, exit 2).

  Pass as `app.run(main, flags_parser=parse_flags_or_exit)`.
  """

  from absl import flags

  FLAGS = flags.FLAGS
  try:
    args = FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # ml_collections raises these (not absl's flags.Error) for an override of a field
    # the locked config does not have, e.g. --config.ran.lamda=0.3.
    exit_with_error(unknown_override(argv) or f"unknown config field: {e}")
  except flags.Error as e:  # e.g. --config.ran.k=abc, a missing flag, a failing config file
    missing = re.search(r"Flag --(\w+) must have a value other than None", str(e))
    if missing:
      exit_with_error(missing_flag_message(missing.group(1)))
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and "Traceback" in str(e):  # a config file raised: keep its message
      lines = [lines[0].split(" Error whilst parsing")[0] + " " + lines[-1].strip()]
    exit_with_error("\n".join(lines))
  try:
    if "config" in FLAGS and FLAGS.config is not None:
      FLAGS.config.get("seed")  # a config file that could not be read fails on first access
  except OSError as e:
    exit_with_error(str(e))
  return args

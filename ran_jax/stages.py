"""The three pure stage steps of Algorithm 1, with the defences that extend them.

Each step is a pure function `(state, batch) -> (state, metrics)`. Static
dependencies (the modules, the stage's optimizer, lambda) are bound with
`functools.partial` as keyword-only arguments; `ran_jax.program` jits them.

Loss convention (Eq. 2-4 of the paper, `ran_jax.losses`): per example, the
cross-entropy is weighed against the *summed* squared error over all input values
|I - I'|^2; both are then averaged over the batch (`recon_reduction='sum'`, the
default). With `recon_reduction='mean'` the squared error is averaged over the
input values instead, which is (H*W*C) times smaller and shifts what a lambda means.

Defences (all off by default; then every step computes exactly Algorithm 1):
  released features  `release` adds N(0, sigma^2) to the encoder's bounded features
                     in training and at inference: the classifier, every decoder and
                     every attacker see what the server receives.
  several decoders   the generative stage trains D and the extra families of
                     `RANModels.adversaries`; the adversarial stage pushes against
                     the strongest of them ('min') or a soft minimum ('softmin').
  warm-up, re-init   the adversarial term starts after `warmup_steps`; every
                     `reinit_every_steps` all decoders and their Adam state restart.
  privacy target     the reconstruction term is capped at the error of a target PSNR:
                     past it, accuracy no longer pays for privacy.
  compactness        a penalty on the within-class variance of the features.
  entanglement       a penalty on how much soft nearest classmates share the attribute.
  dependence (HSIC)  a penalty on the kernel dependence of features and attribute inside
                     each class (`losses.conditional_hsic`), with no adversary to game.
                     The feature penalties are declared terms (`PENALTY_TERMS`,
                     `Defences.from_config`): a new one is a function and an entry.
  attribute game     the generative stage also trains attribute heads (classifiers of a
                     sensitive attribute such as the speaker, `batch['attribute']`) on
                     the encoder's features *before* the release noise; the
                     adversarial stage adds `attribute_weight` x their confusion loss
                     (cross-entropy to the uniform distribution), so the encoder is
                     pushed to make the attribute unpredictable rather than to fool one
                     head. The heads see the clean features because release noise is
                     independent of the person: what the clean features do not carry, no
                     number of averaged releases can reveal, while a game played on
                     noisy releases can hide behind the noise that averaging removes.

The end of training (also off by default): learning-rate schedules for the three
stages (`ran.schedule`, `make_optimizers`) and an exponential moving average of the
encoder and classifier (`ran.ema_decay`, `update_ema`), which the test pass, the
export and the deployment use (`eval_view`). The adversarial game oscillates; at a
constant learning rate where its last step lands is float-rounding luck.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ran_jax import losses
from ran_jax.models import RANModels

STAGES = ("disc", "gen", "adv")
STAGE_NAMES = {"disc": "discriminative", "gen": "generative", "adv": "adversarial"}
ADVERSARY_REDUCTIONS = ("min", "softmin")
SCHEDULES = ("constant", "cosine", "step")
_STAGE_IDS = {name: i for i, name in enumerate(STAGES)}


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["step", "params", "batch_stats", "opt_state", "rng", "ema"],
    meta_fields=[],
)
@dataclasses.dataclass
class TrainState:
  """Everything that evolves during RAN training.

  step: completed Algorithm-1 iterations (mini-batches).
  params / batch_stats: dicts over 'encoder', 'classifier', 'decoder'.
  opt_state: one Adam state per stage: 'disc' and 'adv' over {encoder,
    classifier}, 'gen' over the decoder.
  rng: base PRNG key; steps derive theirs with fold_in, never by hand.
  ema: {} (off), or the moving averages {'params': {encoder, classifier},
    'batch_stats': {encoder}} that evaluation and export use (`eval_view`).
  """

  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: dict
  rng: jax.Array
  ema: dict = dataclasses.field(default_factory=dict)


def learning_rate(ran_config, stage: str, total_steps: int | None = None):
  """The learning rate of one stage: a float ('constant') or an optax schedule.

  A schedule counts the stage's own updates: the discriminative and generative
  stages update k times per Algorithm-1 iteration, the adversarial stage once, so
  every stage reaches its floor at the last of `total_steps` iterations. 'cosine'
  decays to `lr_floor` x the peak along a half cosine; 'step' multiplies by
  sqrt(lr_floor) at 50 % and again at 75 % of training. Both start with a linear
  warm-up of `lr_warmup_steps` iterations from 0.
  """
  peak = float(ran_config[{"disc": "l1", "gen": "l2", "adv": "l3"}[stage]])
  kind = ran_config.get("schedule", "constant")
  if kind == "constant":
    return peak
  if kind not in SCHEDULES:
    raise ValueError(f"ran.schedule={kind!r}: allowed values are {list(SCHEDULES)}.")
  if not total_steps or total_steps < 1:
    raise ValueError(f"ran.schedule={kind!r} needs the number of training steps (got "
                     f"{total_steps!r}).")
  per_iter = int(ran_config.k) if stage in ("disc", "gen") else 1
  n = per_iter * int(total_steps)
  warm = min(per_iter * int(ran_config.get("lr_warmup_steps", 0)), n - 1)
  floor = float(ran_config.get("lr_floor", 0.0))
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, max(n - warm, 1), alpha=floor)
  else:
    s = math.sqrt(floor)
    decay = optax.piecewise_constant_schedule(
        peak, {max((n - warm) // 2, 1): s, max(3 * (n - warm) // 4, 1) + 1: s})
  if warm <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def make_optimizers(ran_config, total_steps: int | None = None
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam for every stage (§2.4), at l1 (disc), l2 (gen) and l3 (adv), or their schedules.

  `total_steps` (Algorithm-1 iterations of the whole run) is needed by the
  non-constant `ran.schedule`s.
  """
  return {stage: optax.adam(learning_rate(ran_config, stage, total_steps)) for stage in STAGES}


def _ec(params):
  return {"encoder": params["encoder"], "classifier": params["classifier"]}


_GEN_EXTRAS = ("adversaries", "attribute")


def _dec(params):
  """What the generative stage updates: D alone, or D with extra decoders / attribute heads."""
  if not any(k in params for k in _GEN_EXTRAS):
    return params["decoder"]
  return {k: params[k] for k in ("decoder",) + _GEN_EXTRAS if k in params}


def _dec_update(tree, new):
  """Writes the generative stage's tree (`_dec` layout) back into a params/stats dict."""
  if any(k in tree for k in _GEN_EXTRAS):  # then `_dec` gave a dict of the parts
    return {**tree, **new}
  return {**tree, "decoder": new}


def init_state(models: RANModels, optimizers, rng) -> TrainState:
  k_init, k_state = jax.random.split(rng)
  params, stats = models.init(k_init)
  opt_state = {
      "disc": optimizers["disc"].init(_ec(params)),
      "gen": optimizers["gen"].init(_dec(params)),
      "adv": optimizers["adv"].init(_ec(params)),
  }
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                    opt_state=opt_state, rng=k_state, ema={})


def init_ema(state: TrainState) -> TrainState:
  """Starts the moving averages at the current encoder and classifier."""
  ema = {"params": _ec(state.params), "batch_stats": {"encoder": state.batch_stats["encoder"]}}
  return dataclasses.replace(state, ema=jax.tree.map(jnp.copy, ema))


def update_ema(state: TrainState, *, decay: float) -> TrainState:
  """ema <- d * ema + (1 - d) * current, with d = min(decay, (1 + step) / (10 + step)).

  The warm-up of d lets the average forget the random initialisation quickly;
  `state.step` is the number of finished iterations. Only `state.ema` changes, so
  the raw weights (what training continues from) are untouched.
  """
  t = state.step.astype(jnp.float32)
  d = jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))
  cur = {"params": _ec(state.params), "batch_stats": {"encoder": state.batch_stats["encoder"]}}
  ema = jax.tree.map(lambda e, c: (d * e.astype(jnp.float32) + (1.0 - d) * c).astype(c.dtype),
                     state.ema, cur)
  return dataclasses.replace(state, ema=ema)


def eval_view(state: TrainState) -> TrainState:
  """The state evaluation and export use: the moving averages where kept, else the weights."""
  if not state.ema:
    return state
  return dataclasses.replace(
      state, params={**state.params, **state.ema["params"]},
      batch_stats={**state.batch_stats, **state.ema["batch_stats"]})


# ---------------------------------------------------------------- forward helpers


def _stage_rng(state: TrainState, stage: str):
  # The k inner repetitions share `step`; the stage optimizer's update count
  # tells them apart so each pass draws fresh dropout masks and noise.
  # Adam's own count (a schedule keeps a second one; the first found is Adam's).
  count = optax.tree_utils.tree_get_all_with_path(state.opt_state[stage], "count")[0][1]
  rng = jax.random.fold_in(state.rng, state.step)
  rng = jax.random.fold_in(rng, _STAGE_IDS[stage])
  return jax.random.fold_in(rng, count)


def _noise_key(rng):
  return jax.random.fold_in(rng, 0x6E6F6973)  # its own stream, apart from dropout


def round_to_step(z, step: float):
  """`z` rounded to the nearest multiple of `step` (0: unchanged), with the identity's
  gradient (straight-through), so a function of the release stays differentiable in z."""
  if not step:
    return z
  s = jnp.asarray(step, z.dtype)
  return z + jax.lax.stop_gradient(jnp.round(z / s) * s - z)


def features(models, params, stats, x, train: bool):
  """The encoder's (bounded) features before any noise; in train mode also new statistics.

  Outside training they are rounded to `model.release_step` when set: the clean features
  a release carries (evaluation, export, attacks, the phone). Training sees them unrounded:
  trained through the rounding (straight-through), the spoken-digit encoder put the speaker
  into which grid cell a feature falls in, and one release named it more often
  (docs/privacy_identity.md).
  """
  variables = {"params": params, "batch_stats": stats}
  if train:
    z, upd = models.encoder.apply(variables, x, train=True, mutable=["batch_stats"])
    return z, upd["batch_stats"]
  z = models.encoder.apply(variables, x, train=False)
  return round_to_step(z, getattr(models, "release_step", 0.0)), stats


def release(models, z, rng):
  """What the phone sends: the features plus N(0, feature_noise^2) noise drawn from `rng`.

  Without feature noise it returns `z` itself. With it, a key is required: training,
  evaluation and export all draw the noise from explicit keys.
  """
  sigma = models.feature_noise
  if not sigma:
    return z
  if rng is None:
    raise ValueError("This encoder releases noisy features (model.feature_noise="
                     f"{sigma}); pass a PRNG key for the noise.")
  return z + jnp.asarray(sigma, z.dtype) * jax.random.normal(rng, z.shape, z.dtype)


def encode(models, params, stats, x, train: bool, rng=None):
  """Released features E(x) (noise included); in train mode also the new statistics."""
  z, stats = features(models, params, stats, x, train)
  return release(models, z, rng), stats


def decode(models, params, stats, z, train: bool, module=None):
  """A decoder forward (RAN's D unless `module` names another); returns (x_rec, stats)."""
  module = models.decoder if module is None else module
  variables = {"params": params, "batch_stats": stats}
  if not stats:
    variables = {"params": params}
  if train and stats:
    x, upd = module.apply(variables, z, train=True, mutable=["batch_stats"])
    return x, upd["batch_stats"]
  return module.apply(variables, z, train=train), stats


def decode_all(models, params, stats, z, train: bool):
  """Every decoder of the ensemble on z: {name: (x_rec, stats)}, D under 'decoder'."""
  out = {"decoder": decode(models, params["decoder"], stats["decoder"], z, train)}
  for name, module in models.adversaries.items():
    out[name] = decode(models, params["adversaries"][name], stats["adversaries"][name], z, train,
                       module)
  return out


def classify(models, params, z, train: bool, rng=None):
  rngs = {"dropout": rng} if (train and rng is not None) else None
  return models.classifier.apply({"params": params}, z, train=train, rngs=rngs)


def strongest(recons: dict, reduce: str = "min", temperature: float = 1.0):
  """The reconstruction error the encoder fights: of the best decoder, or a soft minimum.

  'softmin' weighs each decoder by softmax(-r / (temperature * mean r)) (weights
  not differentiated), so a decoder close to the best still counts.
  """
  rs = list(recons.values())
  if len(rs) == 1:
    return rs[0]
  r = jnp.stack(rs)
  if reduce == "min":
    return jnp.min(r)
  scale = jax.lax.stop_gradient(temperature * jnp.mean(r))
  w = jax.nn.softmax(-jax.lax.stop_gradient(r) / jnp.maximum(scale, 1e-12))
  return jnp.sum(w * r)


def _sum(values):
  return functools.reduce(lambda a, b: a + b, values)


def _attributes(batch):
  if "attribute" not in batch:
    raise ValueError("The attribute game (ran.attribute_weight > 0) needs batches with a "
                     "sensitive attribute: set data.attribute (e.g. 'speaker', 'subject').")
  return batch["attribute"]


def standardise(z, eps: float = 1e-6):
  """Each feature over the batch to mean 0, variance 1 (flattened): [B, ...] -> [B, D].

  Attackers standardise what they receive (or, like kNN, do not care about scale), so a
  head that reads raw features is blind to an attribute carried by small variations,
  e.g. inside a compact class: the encoder could then hide it by shrinking it alone.
  """
  z = z.reshape((z.shape[0], -1)).astype(jnp.float32)
  mean = jnp.mean(z, axis=0, keepdims=True)
  return (z - mean) * jax.lax.rsqrt(jnp.var(z, axis=0, keepdims=True) + eps)


def attribute_logits(models, params, z):
  """{head: logits [B, num_attributes]} of every attribute head on features z (standardised)."""
  zs = standardise(z)
  return {n: m.apply({"params": params["attribute"][n]}, zs, train=False)
          for n, m in models.attribute_heads.items()}


# ---------------------------------------------------------------- the three stages
# Batch-norm: every training stage runs the networks in train mode (batch
# statistics), so the decoder learns on exactly the features the encoder produces
# during training. A stage writes back only the running statistics of the networks
# it updates; a frozen network's parameters *and* statistics stay bit-identical.


# ---------------------------------------------------------------- defences
# A feature penalty is one function (z, batch, models, **options) -> scalar and one entry
# of PENALTY_TERMS: its name is the `ran` config field of its weight, its options map to
# their config fields and defaults. `Defences.from_config` declares the ones switched on;
# both encoder stages add `feature_penalties`, so no stage signature grows with them.


def _compactness(z, batch, models: RANModels):
  """The within-class variance of the features."""
  return losses.within_class_variance(z, batch["label"], models.num_classes)


def _entanglement(z, batch, models: RANModels, temperature: float = 0.1):
  """The attribute entanglement of the standardised features within each class
  (`losses.attribute_entanglement`)."""
  del models
  return losses.attribute_entanglement(standardise(z), _attributes(batch), batch["label"],
                                       temperature)


def _hsic(z, batch, models: RANModels, bandwidth: float = 1.0):
  """The normalised HSIC between the standardised features and the attribute inside each
  class (`losses.conditional_hsic`)."""
  return losses.conditional_hsic(standardise(z), _attributes(batch), batch["label"],
                                 models.num_classes, bandwidth)


# name (the config field of its weight) -> (term, {option: (config field, default)})
PENALTY_TERMS = {
    "compactness": (_compactness, {}),
    "entangle": (_entanglement, {"temperature": ("entangle_temperature", 0.1)}),
    "hsic": (_hsic, {"bandwidth": ("hsic_bandwidth", 1.0)}),
}


@dataclasses.dataclass(frozen=True)
class Penalty:
  """One declared feature penalty: weight x PENALTY_TERMS[name](z, batch, models, **options)."""

  name: str
  weight: float
  options: tuple = ()   # ((option, value), ...): hashable, so a bound step stays static

  def __call__(self, z, batch, models: RANModels):
    term, _ = PENALTY_TERMS[self.name]
    return self.weight * term(z, batch, models, **dict(self.options))


@dataclasses.dataclass(frozen=True)
class Defences:
  """The defences a training declares, bound once into the encoder stages.

  penalties: the feature penalties with a nonzero weight (`Penalty`), summed on the
  features before the release noise in the discriminative and adversarial stages.
  attribute_weight: the attribute game's weight on the heads' confusion (adversarial stage).
  """

  penalties: tuple = ()
  attribute_weight: float = 0.0

  @classmethod
  def from_config(cls, ran_config) -> "Defences":
    penalties = []
    for name, (_, options) in PENALTY_TERMS.items():
      weight = float(ran_config.get(name, 0.0) or 0.0)
      if weight:
        penalties.append(Penalty(name, weight, tuple(
            (opt, float(ran_config.get(field, default))) for opt, (field, default)
            in sorted(options.items()))))
    return cls(tuple(penalties), float(ran_config.get("attribute_weight", 0.0) or 0.0))


NO_DEFENCES = Defences()


def feature_penalties(z, batch, models: RANModels, defences: Defences = NO_DEFENCES):
  """The sum of the declared penalties on the features before the release noise (0.0
  when none is declared)."""
  return sum((p(z, batch, models) for p in defences.penalties), 0.0)


def _task_loss(ce, logits, batch, distill: tuple):
  """The classifier's loss: its cross-entropy `ce`, or the distilled loss when the batch
  carries a teacher's logits (`batch['teacher']`) and `distill` = (weight, temperature)
  has a weight."""
  weight, temperature = distill
  if not weight or "teacher" not in batch:
    return ce
  return losses.task_loss(logits, batch["label"], batch["teacher"], weight, temperature)


def discriminative_step(state: TrainState, batch, *, models: RANModels,
                        optimizer: optax.GradientTransformation,
                        defences: Defences = NO_DEFENCES, distill: tuple = (0.0, 1.0)):
  """Line 5 of Algorithm 1: update theta_e, theta_c minimising O_d (Eq. 2).

  Plus the feature penalties (`feature_penalties`) when set; with `distill` =
  (weight, temperature) and a teacher in the batch, the cross-entropy is the distilled one
  (`losses.task_loss`; 'disc/ce' still reports the plain cross-entropy).
  Reports only what the update computes (no decoder pass).
  """
  x, y = batch["image"], batch["label"]
  rng = _stage_rng(state, "disc")

  def loss_fn(ec):
    z, enc_stats = features(models, ec["encoder"], state.batch_stats["encoder"], x, True)
    logits = classify(models, ec["classifier"], release(models, z, _noise_key(rng)), True, rng)
    ce = losses.cross_entropy(logits, y)
    loss = _task_loss(ce, logits, batch, distill)
    if defences.penalties:
      loss = loss + feature_penalties(z, batch, models, defences)
    return loss, (enc_stats, logits, ce)

  ec = _ec(state.params)
  (loss, (enc_stats, logits, ce)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ec)
  updates, opt = optimizer.update(grads, state.opt_state["disc"], ec)
  ec = optax.apply_updates(ec, updates)
  new_state = dataclasses.replace(
      state,
      params={**state.params, **ec},
      batch_stats={**state.batch_stats, "encoder": enc_stats},
      opt_state={**state.opt_state, "disc": opt},
  )
  return new_state, {"disc/loss": loss, "disc/ce": ce,
                     "disc/accuracy": losses.accuracy(logits, y)}


def generative_step(state: TrainState, batch, *, models: RANModels,
                    optimizer: optax.GradientTransformation, recon_reduction: str = "sum"):
  """Line 6 of Algorithm 1: update theta_d minimising O_g (Eq. 3), encoder frozen.

  With extra decoder families each one minimises its own reconstruction error on
  the same released features (their losses are summed; they share no parameters).
  With the attribute game the attribute heads minimise their cross-entropy on the
  same features before the release noise, in the same update.
  """
  x = batch["image"]
  a = _attributes(batch) if models.attribute_heads else None
  rng = _stage_rng(state, "gen")
  clean, _ = features(models, state.params["encoder"], state.batch_stats["encoder"], x, True)
  clean = jax.lax.stop_gradient(clean)
  z = release(models, clean, _noise_key(rng))

  def loss_fn(dec_params):
    params = _dec_update(state.params, dec_params)
    outs = decode_all(models, params, state.batch_stats, z, True)
    recons = {n: losses.recon_error(x, xr, recon_reduction) for n, (xr, _) in outs.items()}
    new_stats = {"decoder": outs["decoder"][1]}
    if models.adversaries:
      new_stats["adversaries"] = {n: outs[n][1] for n in models.adversaries}
    loss, attr = _sum(recons.values()), {}
    if models.attribute_heads:
      logits = attribute_logits(models, params, clean)
      ces = {n: losses.cross_entropy(lg, a) for n, lg in logits.items()}
      attr = {"attribute_ce": jnp.min(jnp.stack(list(ces.values()))),
              "attribute_accuracy": jnp.max(jnp.stack([losses.accuracy(lg, a)
                                                       for lg in logits.values()]))}
      loss = loss + _sum(ces.values())
    return loss, (recons, new_stats, attr)

  (loss, (recons, new_stats, attr)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      _dec(state.params))
  updates, opt = optimizer.update(grads, state.opt_state["gen"], _dec(state.params))
  dec_params = optax.apply_updates(_dec(state.params), updates)
  new_state = dataclasses.replace(
      state,
      params=_dec_update(state.params, dec_params),
      batch_stats={**state.batch_stats, **new_stats},
      opt_state={**state.opt_state, "gen": opt},
  )
  name = losses.recon_metric_name(recon_reduction)
  metrics = {"gen/loss": loss, f"gen/{name}": recons["decoder"]}
  metrics.update({f"gen/{name}_{n}": recons[n] for n in models.adversaries})
  metrics.update({f"gen/{k}": v for k, v in attr.items()})
  return new_state, metrics


def adversarial_step(state: TrainState, batch, *, models: RANModels,
                     optimizer: optax.GradientTransformation, lam: float,
                     recon_reduction: str = "sum", adversary_reduce: str = "min",
                     softmin_temperature: float = 1.0, warmup_steps: int = 0,
                     target_recon: float | None = None,
                     defences: Defences = NO_DEFENCES, distill: tuple = (0.0, 1.0)):
  """Line 8 of Algorithm 1: update theta_e, theta_c minimising O_a (Eq. 4), decoders frozen.

  The reconstruction term is the strongest decoder's error (`strongest`), capped at
  `target_recon` when a privacy target is set, and off during `warmup_steps`. With the
  attribute game, `defences.attribute_weight` x the attribute heads' mean confusion loss
  is added (heads frozen; also off during `warmup_steps`); the feature penalties of
  `defences` too. With `distill` (as in `discriminative_step`) the cross-entropy of Eq. 4
  is the distilled one.
  Ends the Algorithm-1 iteration, so it advances `state.step`.
  """
  x, y = batch["image"], batch["label"]
  rng = _stage_rng(state, "adv")
  attribute_weight = defences.attribute_weight
  use_attr = bool(attribute_weight) and bool(models.attribute_heads)
  if use_attr:
    _attributes(batch)  # the confusion needs no labels, but a game without them is a mistake

  def loss_fn(ec):
    z, enc_stats = features(models, ec["encoder"], state.batch_stats["encoder"], x, True)
    zr = release(models, z, _noise_key(rng))
    logits = classify(models, ec["classifier"], zr, True, rng)
    outs = decode_all(models, state.params, state.batch_stats, zr, True)
    ce = losses.cross_entropy(logits, y)
    recons = {n: losses.recon_error(x, xr, recon_reduction) for n, (xr, _) in outs.items()}
    recon = strongest(recons, adversary_reduce, softmin_temperature)
    term = recon
    if target_recon is not None:
      term = jnp.minimum(recon, target_recon)  # no gradient once the target is reached
    if warmup_steps:
      term = term * (state.step >= warmup_steps).astype(term.dtype)
    loss = losses.adversarial_objective(_task_loss(ce, logits, batch, distill), term, lam)
    if defences.penalties:
      loss = loss + feature_penalties(z, batch, models, defences)
    confusion = None
    if use_attr:
      heads = attribute_logits(models, state.params, z)
      confusion = jnp.mean(jnp.stack([losses.confusion_loss(lg) for lg in heads.values()]))
      on = confusion
      if warmup_steps:
        on = on * (state.step >= warmup_steps).astype(on.dtype)
      loss = loss + attribute_weight * on
    return loss, (enc_stats, logits, ce, recon, confusion)

  ec = _ec(state.params)
  (loss, (enc_stats, logits, ce, recon, confusion)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(ec)
  updates, opt = optimizer.update(grads, state.opt_state["adv"], ec)
  ec = optax.apply_updates(ec, updates)
  new_state = dataclasses.replace(
      state,
      step=state.step + 1,
      params={**state.params, **ec},
      batch_stats={**state.batch_stats, "encoder": enc_stats},
      opt_state={**state.opt_state, "adv": opt},
  )
  metrics = {"adv/loss": loss, "adv/ce": ce,
             f"adv/{losses.recon_metric_name(recon_reduction)}": recon,
             "adv/accuracy": losses.accuracy(logits, y)}
  if confusion is not None:
    metrics["adv/attribute_confusion"] = confusion
  return new_state, metrics


def reinit_decoders(state: TrainState, *, models: RANModels,
                    optimizer: optax.GradientTransformation, every: int):
  """At steps divisible by `every` (not 0): fresh decoders and a fresh generative Adam state.

  Keeps the encoder from co-adapting to one decoder's blind spots.
  """

  def fresh(s):
    key = jax.random.fold_in(jax.random.fold_in(s.rng, s.step), 0x72656E69)
    params, stats = models.init_decoders(key)
    opt = optimizer.init(_dec(params))
    return dataclasses.replace(s, params={**s.params, **params},
                               batch_stats={**s.batch_stats, **stats},
                               opt_state={**s.opt_state, "gen": opt})

  due = jnp.logical_and(state.step > 0, state.step % every == 0)
  return jax.lax.cond(due, fresh, lambda s: s, state)


def test_step(state: TrainState, batch, key, *, models: RANModels):
  """Sums over a (possibly padded) test batch, in eval mode (running statistics).

  `key` draws the released features' noise (if any), so a test pass is reproducible.
  Uses the moving averages when kept (`eval_view`).
  Returns totals so that batches add up exactly: correct predictions, summed CE,
  summed per-example squared error (sum and per-value mean) of RAN's own decoder,
  and the count.
  """
  x, y, mask = batch["image"], batch["label"], batch["mask"].astype(jnp.float32)
  state = eval_view(state)
  z, _ = encode(models, state.params["encoder"], state.batch_stats["encoder"], x, False, key)
  logits = classify(models, state.params["classifier"], z, False)
  x_rec, _ = decode(models, state.params["decoder"], state.batch_stats["decoder"], z, False)
  return {
      "correct": jnp.sum(losses.correct(logits, y) * mask),
      "ce": jnp.sum(losses.cross_entropy_per_example(logits, y) * mask),
      "recon_sse": jnp.sum(losses.squared_error_per_example(x, x_rec, "sum") * mask),
      "recon_mse": jnp.sum(losses.squared_error_per_example(x, x_rec, "mean") * mask),
      "count": jnp.sum(mask),
  }


# ---------------------------------------------------------------- one iteration


@dataclasses.dataclass(frozen=True)
class StageFns:
  """The three stage steps with their static arguments bound (jitted or not).

  `reinit` (None unless decoders are re-initialised periodically) runs before each
  iteration's first stage; `ema` (None unless `ran.ema_decay` > 0) after its last.
  """

  disc: Any
  gen: Any
  adv: Any
  reinit: Any = None
  ema: Any = None


def target_recon_error(ran_config, input_shape, value_range):
  """The reconstruction error (in the training reduction) of `ran.target_psnr`, or None."""
  psnr = float(ran_config.get("target_psnr", 0.0) or 0.0)
  if psnr <= 0:
    return None
  lo, hi = value_range
  mse = (hi - lo) ** 2 * 10.0 ** (-psnr / 10.0)      # per value
  if ran_config.recon_reduction == "sum":
    mse *= float(math.prod(input_shape))
  return mse


def bind_stages(models: RANModels, optimizers, ran_config) -> StageFns:
  """Binds modules, optimizers, lambda and the defences; returns plain (un-jitted) steps."""
  red = ran_config.recon_reduction
  every = int(ran_config.get("reinit_every_steps", 0))
  defences = Defences.from_config(ran_config)
  distill = (float(ran_config.get("distill_weight", 0.0) or 0.0),
             float(ran_config.get("distill_temperature", 1.0)))
  return StageFns(
      disc=functools.partial(discriminative_step, models=models, optimizer=optimizers["disc"],
                             defences=defences, distill=distill),
      gen=functools.partial(generative_step, models=models, optimizer=optimizers["gen"],
                            recon_reduction=red),
      adv=functools.partial(
          adversarial_step, models=models, optimizer=optimizers["adv"],
          lam=float(ran_config.lam), recon_reduction=red,
          adversary_reduce=ran_config.get("adversary_reduce", "min"),
          softmin_temperature=float(ran_config.get("softmin_temperature", 1.0)),
          warmup_steps=int(ran_config.get("warmup_steps", 0)),
          target_recon=target_recon_error(ran_config, models.input_shape, models.value_range),
          defences=defences, distill=distill),
      reinit=(functools.partial(reinit_decoders, models=models, optimizer=optimizers["gen"],
                                every=every) if every > 0 else None),
      ema=(functools.partial(update_ema, decay=float(ran_config.ema_decay))
           if float(ran_config.get("ema_decay", 0.0) or 0.0) > 0 else None),
  )


def ran_iteration(state: TrainState, batch, *, stages: StageFns, k: int):
  """One Algorithm-1 iteration: k x (discriminative, generative), then adversarial.

  Returns the metrics of the last pass of each stage.
  """
  if stages.reinit is not None:
    state = stages.reinit(state)
  metrics = {}
  for _ in range(k):
    state, m_d = stages.disc(state, batch)
    state, m_g = stages.gen(state, batch)
  state, m_a = stages.adv(state, batch)
  if stages.ema is not None:
    state = stages.ema(state)
  metrics.update(m_d)
  metrics.update(m_g)
  metrics.update(m_a)
  return state, metrics

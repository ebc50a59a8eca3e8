"""The three pure stage steps of Algorithm 1 and their losses.

Each step is a pure function `(state, batch) -> (state, metrics)`. Static
dependencies (the modules, the stage's optimizer, lambda) are bound with
`functools.partial` as keyword-only arguments; the trainer jits each once.

Loss convention (Eq. 2-4 of the paper): per example, the cross-entropy is weighed
against the *summed* squared error over all input values |I - I'|^2; both are then
averaged over the batch (`recon_reduction='sum'`, the default). With
`recon_reduction='mean'` the squared error is averaged over the input values
instead, which is (H*W*C) times smaller and shifts what a given lambda means.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ran_jax.models import RANModels

RECON_REDUCTIONS = ("sum", "mean")
STAGES = ("disc", "gen", "adv")
_STAGE_IDS = {name: i for i, name in enumerate(STAGES)}


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["step", "params", "batch_stats", "opt_state", "rng"],
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
  """

  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: dict
  rng: jax.Array


def make_optimizers(ran_config) -> dict[str, optax.GradientTransformation]:
  """Adam for every stage (§2.4), at l1 (disc), l2 (gen) and l3 (adv)."""
  return {
      "disc": optax.adam(ran_config.l1),
      "gen": optax.adam(ran_config.l2),
      "adv": optax.adam(ran_config.l3),
  }


def _ec(params):
  return {"encoder": params["encoder"], "classifier": params["classifier"]}


def init_state(models: RANModels, optimizers, rng) -> TrainState:
  k_init, k_state = jax.random.split(rng)
  params, stats = models.init(k_init)
  opt_state = {
      "disc": optimizers["disc"].init(_ec(params)),
      "gen": optimizers["gen"].init(params["decoder"]),
      "adv": optimizers["adv"].init(_ec(params)),
  }
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                    opt_state=opt_state, rng=k_state)


# ---------------------------------------------------------------- losses


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def recon_error(x, x_rec, reduction: str):
  """Squared reconstruction error, per example summed ('sum') or averaged ('mean')."""
  se = jnp.square(x.astype(jnp.float32) - x_rec.astype(jnp.float32))
  per_example = se.reshape(se.shape[0], -1)
  per_example = per_example.sum(-1) if reduction == "sum" else per_example.mean(-1)
  return per_example.mean()


def adversarial_objective(ce, recon, lam):
  """O_a = lambda * CE - (1 - lambda) * |I - I'|^2  (Eq. 4)."""
  return lam * ce - (1.0 - lam) * recon


# ---------------------------------------------------------------- forward helpers


def _stage_rng(state: TrainState, stage: str):
  # The k inner repetitions share `step`; the stage optimizer's update count
  # tells them apart so each pass draws fresh dropout masks.
  count = optax.tree_utils.tree_get(state.opt_state[stage], "count")
  rng = jax.random.fold_in(state.rng, state.step)
  rng = jax.random.fold_in(rng, _STAGE_IDS[stage])
  return jax.random.fold_in(rng, count)


def encode(models, params, stats, x, train: bool):
  """Encoder forward; in train mode also returns the updated batch statistics."""
  variables = {"params": params, "batch_stats": stats}
  if train:
    z, upd = models.encoder.apply(variables, x, train=True, mutable=["batch_stats"])
    return z, upd["batch_stats"]
  return models.encoder.apply(variables, x, train=False), stats


def decode(models, params, stats, z, train: bool):
  variables = {"params": params, "batch_stats": stats}
  if train:
    x, upd = models.decoder.apply(variables, z, train=True, mutable=["batch_stats"])
    return x, upd["batch_stats"]
  return models.decoder.apply(variables, z, train=False), stats


def classify(models, params, z, train: bool, rng=None):
  rngs = {"dropout": rng} if (train and rng is not None) else None
  return models.classifier.apply({"params": params}, z, train=train, rngs=rngs)


def _metrics(stage, loss, ce, recon, acc):
  return {f"{stage}/loss": loss, f"{stage}/ce": ce, f"{stage}/recon_mse": recon,
          f"{stage}/accuracy": acc}


# ---------------------------------------------------------------- the three stages
# Batch-norm: every training stage runs the networks in train mode (batch
# statistics), so the decoder learns on exactly the features the encoder produces
# during training. A stage writes back only the running statistics of the networks
# it updates; a frozen network's parameters *and* statistics stay bit-identical.


def discriminative_step(state: TrainState, batch, *, models: RANModels,
                        optimizer: optax.GradientTransformation, recon_reduction: str = "sum"):
  """Line 5 of Algorithm 1: update theta_e, theta_c minimising O_d (Eq. 2)."""
  x, y = batch["image"], batch["label"]
  rng = _stage_rng(state, "disc")

  def loss_fn(ec):
    z, enc_stats = encode(models, ec["encoder"], state.batch_stats["encoder"], x, True)
    logits = classify(models, ec["classifier"], z, True, rng)
    ce = cross_entropy(logits, y)
    return ce, (enc_stats, logits, z)

  ec = _ec(state.params)
  (ce, (enc_stats, logits, z)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ec)
  updates, opt = optimizer.update(grads, state.opt_state["disc"], ec)
  ec = optax.apply_updates(ec, updates)
  # Reported only: how well the current decoder reconstructs these features.
  x_rec, _ = decode(models, state.params["decoder"], state.batch_stats["decoder"],
                    jax.lax.stop_gradient(z), True)
  recon = recon_error(x, x_rec, recon_reduction)
  new_state = dataclasses.replace(
      state,
      params={**state.params, **ec},
      batch_stats={**state.batch_stats, "encoder": enc_stats},
      opt_state={**state.opt_state, "disc": opt},
  )
  return new_state, _metrics("disc", ce, ce, recon, accuracy(logits, y))


def generative_step(state: TrainState, batch, *, models: RANModels,
                    optimizer: optax.GradientTransformation, recon_reduction: str = "sum"):
  """Line 6 of Algorithm 1: update theta_d minimising O_g (Eq. 3), encoder frozen."""
  x, y = batch["image"], batch["label"]
  z, _ = encode(models, state.params["encoder"], state.batch_stats["encoder"], x, True)
  z = jax.lax.stop_gradient(z)

  def loss_fn(dec_params):
    x_rec, dec_stats = decode(models, dec_params, state.batch_stats["decoder"], z, True)
    return recon_error(x, x_rec, recon_reduction), dec_stats

  (recon, dec_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["decoder"])
  updates, opt = optimizer.update(grads, state.opt_state["gen"], state.params["decoder"])
  dec_params = optax.apply_updates(state.params["decoder"], updates)
  logits = classify(models, state.params["classifier"], z, False)
  new_state = dataclasses.replace(
      state,
      params={**state.params, "decoder": dec_params},
      batch_stats={**state.batch_stats, "decoder": dec_stats},
      opt_state={**state.opt_state, "gen": opt},
  )
  return new_state, _metrics("gen", recon, cross_entropy(logits, y), recon, accuracy(logits, y))


def adversarial_step(state: TrainState, batch, *, models: RANModels,
                     optimizer: optax.GradientTransformation, lam: float,
                     recon_reduction: str = "sum"):
  """Line 8 of Algorithm 1: update theta_e, theta_c minimising O_a (Eq. 4), decoder frozen.

  Ends the Algorithm-1 iteration, so it advances `state.step`.
  """
  x, y = batch["image"], batch["label"]
  rng = _stage_rng(state, "adv")

  def loss_fn(ec):
    z, enc_stats = encode(models, ec["encoder"], state.batch_stats["encoder"], x, True)
    logits = classify(models, ec["classifier"], z, True, rng)
    x_rec, _ = decode(models, state.params["decoder"], state.batch_stats["decoder"], z, True)
    ce = cross_entropy(logits, y)
    recon = recon_error(x, x_rec, recon_reduction)
    return adversarial_objective(ce, recon, lam), (enc_stats, logits, ce, recon)

  ec = _ec(state.params)
  (loss, (enc_stats, logits, ce, recon)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ec)
  updates, opt = optimizer.update(grads, state.opt_state["adv"], ec)
  ec = optax.apply_updates(ec, updates)
  new_state = dataclasses.replace(
      state,
      step=state.step + 1,
      params={**state.params, **ec},
      batch_stats={**state.batch_stats, "encoder": enc_stats},
      opt_state={**state.opt_state, "adv": opt},
  )
  return new_state, _metrics("adv", loss, ce, recon, accuracy(logits, y))


def eval_step(state: TrainState, batch, *, models: RANModels):
  """Sums over a (possibly padded) test batch, in eval mode (running statistics).

  Returns totals so that batches add up exactly: correct predictions, summed CE,
  summed per-example squared error, the per-value mean of it, and the count.
  """
  x, y, mask = batch["image"], batch["label"], batch["mask"].astype(jnp.float32)
  z, _ = encode(models, state.params["encoder"], state.batch_stats["encoder"], x, False)
  logits = classify(models, state.params["classifier"], z, False)
  x_rec, _ = decode(models, state.params["decoder"], state.batch_stats["decoder"], z, False)
  se = jnp.square(x - x_rec).reshape(x.shape[0], -1)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return {
      "correct": jnp.sum((jnp.argmax(logits, -1) == y) * mask),
      "ce": jnp.sum(ce * mask),
      "recon_sum": jnp.sum(se.sum(-1) * mask),
      "recon_mean": jnp.sum(se.mean(-1) * mask),
      "count": jnp.sum(mask),
  }


# ---------------------------------------------------------------- one iteration


@dataclasses.dataclass(frozen=True)
class StageFns:
  """The three stage steps with their static arguments bound (jitted or not)."""

  disc: Any
  gen: Any
  adv: Any


def bind_stages(models: RANModels, optimizers, ran_config) -> StageFns:
  """Binds modules, optimizers and lambda; returns plain (un-jitted) step functions."""
  red = ran_config.recon_reduction
  return StageFns(
      disc=functools.partial(discriminative_step, models=models, optimizer=optimizers["disc"],
                             recon_reduction=red),
      gen=functools.partial(generative_step, models=models, optimizer=optimizers["gen"],
                            recon_reduction=red),
      adv=functools.partial(adversarial_step, models=models, optimizer=optimizers["adv"],
                            lam=float(ran_config.lam), recon_reduction=red),
  )


def ran_iteration(state: TrainState, batch, *, stages: StageFns, k: int):
  """One Algorithm-1 iteration: k x (discriminative, generative), then adversarial.

  Returns the metrics of the last pass of each stage.
  """
  metrics = {}
  for _ in range(k):
    state, m_d = stages.disc(state, batch)
    state, m_g = stages.gen(state, batch)
  state, m_a = stages.adv(state, batch)
  metrics.update(m_d)
  metrics.update(m_g)
  metrics.update(m_a)
  return state, metrics

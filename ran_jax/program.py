"""The one builder of the compiled RAN program.

`build_program(config, mesh, input_spec)` turns a config into everything that runs
RAN's compute: the models with their dtype, the optimizers, the abstract and the
concrete train state, the jitted Algorithm-1 iteration (fused or per stage), each
stage jitted on its own, and the jitted test-split step. The trainer, the
benchmark, the input throughput tool and the tests all call it, so they compile
the same program. It knows nothing of datasets beyond `InputSpec`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax

from ran_jax import parallel, stages
from ran_jax.models import RANModels, build_models


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What the models need to know about the data: one example's shape, classes, range.

  `num_attributes`: values of the sensitive attribute (`data.attribute`), 0 without one.
  """

  input_shape: tuple
  num_classes: int
  value_range: tuple = (0.0, 1.0)
  num_attributes: int = 0

  @classmethod
  def of(cls, source) -> "InputSpec":
    """From a `DataSource` (or anything with the same attributes)."""
    return cls(tuple(int(d) for d in source.input_shape), int(source.num_classes),
               tuple(float(v) for v in source.value_range),
               int(getattr(source, "num_attributes", 0) or 0))


@dataclasses.dataclass(frozen=True)
class Program:
  """The compiled pieces of one RAN configuration on one mesh."""

  config: Any
  mesh: jax.sharding.Mesh
  input_spec: InputSpec
  models: RANModels
  optimizers: dict
  bound: stages.StageFns        # un-jitted stage steps, static arguments bound
  stage_steps: stages.StageFns  # each stage jitted once (state donated)
  iteration: Callable           # (state, batch) -> (state, metrics), one Algorithm-1 iteration
  test_step: Callable           # (state, batch with 'mask', noise key) -> summed test metrics
  state_shardings: Any          # a TrainState of NamedShardings (`parallel.state_shardings`)
  _init: Callable

  def create_state(self, seed: int | None = None) -> stages.TrainState:
    """A fresh TrainState, replicated over the mesh."""
    seed = self.config.seed if seed is None else seed
    return self._init(jax.random.PRNGKey(seed))

  def abstract_state(self) -> stages.TrainState:
    """ShapeDtypeStructs of the state with its sharding: the checkpoint restore target."""
    shapes = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def replicate(self, state: stages.TrainState) -> stages.TrainState:
    """The state with every array whole on every device (to read it on the host, or export
    it, when the classifier is sharded over devices of several hosts)."""
    if parallel.model_shards(self.mesh) == 1:
      return state
    return jax.jit(lambda s: s, out_shardings=parallel.replicated(self.mesh))(state)


def _jit_step(fn, mesh, state_sh):
  repl, dsh = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(state_sh, dsh), out_shardings=(state_sh, repl),
                 donate_argnums=0)


def _with_ema(init_state):
  return lambda rng: stages.init_ema(init_state(rng))


def build_program(config, mesh, input_spec: InputSpec, total_steps: int | None = None) -> Program:
  """Builds models, optimizers, state init and the jitted steps; compiles lazily.

  `total_steps` (the run's Algorithm-1 iterations) sizes a non-constant
  `ran.schedule`; a constant learning rate does not need it.

  `config.ran.fused` (default True): the whole iteration (k unrolled (disc, gen)
  pairs + adv) is one jitted function with the state donated, one dispatch per
  mini-batch; False: the per-stage jitted steps called 2k+1 times from Python.
  Both run the same stage functions and give the same results.
  """
  models = build_models(config.model, input_spec.input_shape, input_spec.num_classes,
                        input_spec.value_range, config.ran, input_spec.num_attributes)
  constrain = parallel.classifier_constraints(mesh)
  if constrain is not None:
    models.classifier = models.classifier.clone(constrain=constrain)
  optimizers = stages.make_optimizers(config.ran, total_steps)
  bound = stages.bind_stages(models, optimizers, config.ran)
  repl = parallel.replicated(mesh)
  init_state = functools.partial(stages.init_state, models, optimizers)
  if bound.ema is not None:
    init_state = _with_ema(init_state)
  state_sh = parallel.state_shardings(mesh, jax.eval_shape(init_state, jax.random.PRNGKey(0)))
  stage_steps = stages.StageFns(
      **{name: _jit_step(getattr(bound, name), mesh, state_sh) for name in stages.STAGES},
      reinit=(jax.jit(bound.reinit, in_shardings=(state_sh,), out_shardings=state_sh,
                      donate_argnums=0) if bound.reinit is not None else None),
      ema=(jax.jit(bound.ema, in_shardings=(state_sh,), out_shardings=state_sh,
                   donate_argnums=0) if bound.ema is not None else None))
  k = int(config.ran.k)
  if config.ran.get("fused", True):
    iteration = _jit_step(functools.partial(stages.ran_iteration, stages=bound, k=k), mesh,
                          state_sh)
  else:
    iteration = functools.partial(stages.ran_iteration, stages=stage_steps, k=k)
  test_step = jax.jit(functools.partial(stages.test_step, models=models),
                      in_shardings=(state_sh, parallel.data_sharding(mesh), repl),
                      out_shardings=repl)
  init = jax.jit(init_state, out_shardings=state_sh)
  return Program(config=config, mesh=mesh, input_spec=input_spec, models=models,
                 optimizers=optimizers, bound=bound, stage_steps=stage_steps,
                 iteration=iteration, test_step=test_step, state_shardings=state_sh, _init=init)

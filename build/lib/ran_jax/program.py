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
  """What the models need to know about the data: one example's shape, classes, range."""

  input_shape: tuple
  num_classes: int
  value_range: tuple = (0.0, 1.0)

  @classmethod
  def of(cls, source) -> "InputSpec":
    """From a `DataSource` (or anything with the same three attributes)."""
    return cls(tuple(int(d) for d in source.input_shape), int(source.num_classes),
               tuple(float(v) for v in source.value_range))


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
  _init: Callable

  def create_state(self, seed: int | None = None) -> stages.TrainState:
    """A fresh TrainState, replicated over the mesh."""
    seed = self.config.seed if seed is None else seed
    return self._init(jax.random.PRNGKey(seed))

  def abstract_state(self) -> stages.TrainState:
    """ShapeDtypeStructs of the state with its sharding: the checkpoint restore target."""
    repl = parallel.replicated(self.mesh)
    shapes = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)


def _jit_step(fn, mesh):
  repl, dsh = parallel.replicated(mesh), parallel.data_sharding(mesh)
  return jax.jit(fn, in_shardings=(repl, dsh), out_shardings=(repl, repl), donate_argnums=0)


def build_program(config, mesh, input_spec: InputSpec) -> Program:
  """Builds models, optimizers, state init and the jitted steps; compiles lazily.

  `config.ran.fused` (default True): the whole iteration (k unrolled (disc, gen)
  pairs + adv) is one jitted function with the state donated, one dispatch per
  mini-batch; False: the per-stage jitted steps called 2k+1 times from Python.
  Both run the same stage functions and give the same results.
  """
  models = build_models(config.model, input_spec.input_shape, input_spec.num_classes,
                        input_spec.value_range, config.ran)
  optimizers = stages.make_optimizers(config.ran)
  bound = stages.bind_stages(models, optimizers, config.ran)
  repl = parallel.replicated(mesh)
  stage_steps = stages.StageFns(
      **{name: _jit_step(getattr(bound, name), mesh) for name in stages.STAGES},
      reinit=(jax.jit(bound.reinit, in_shardings=repl, out_shardings=repl, donate_argnums=0)
              if bound.reinit is not None else None))
  k = int(config.ran.k)
  if config.ran.get("fused", True):
    iteration = _jit_step(functools.partial(stages.ran_iteration, stages=bound, k=k), mesh)
  else:
    iteration = functools.partial(stages.ran_iteration, stages=stage_steps, k=k)
  test_step = jax.jit(functools.partial(stages.test_step, models=models),
                      in_shardings=(repl, parallel.data_sharding(mesh), repl), out_shardings=repl)
  init = jax.jit(functools.partial(stages.init_state, models, optimizers), out_shardings=repl)
  return Program(config=config, mesh=mesh, input_spec=input_spec, models=models,
                 optimizers=optimizers, bound=bound, stage_steps=stage_steps,
                 iteration=iteration, test_step=test_step, _init=init)

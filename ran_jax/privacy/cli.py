"""Command-line flags of the attack protocol, shared by `ran_jax.attack` and `ran_jax.sweep`."""

from __future__ import annotations

from absl import flags

from ran_jax import config_lib
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import protocol


def define_attack_flags() -> None:
  """The flags that set an `AttackConfig` (call once, at import of a command's module)."""
  flags.DEFINE_integer("attack_train_limit", 0,
                       "First N training examples for attackers (0: the whole split).")
  flags.DEFINE_integer("test_limit", 0, "First N test examples (0: all).")
  flags.DEFINE_integer("attack_max_epochs", 100,
                       "Epoch cap of each early-stopped fit (a safety net; fits end on a "
                       "plateau, and a fit that hits the cap is reported as not converged).")
  flags.DEFINE_integer("patience", 3, "Epochs without validation improvement before a cut/stop.")
  flags.DEFINE_list("attackers", list(protocol.ATTACKERS), "Attacker families to train.")
  flags.DEFINE_integer("resnet_width", 64, "Channels of the residual decoder's coarsest stage.")
  flags.DEFINE_integer("seed", 0, "Seed of the attacker split and fits.")


def attack_config_from_flags() -> protocol.AttackConfig:
  """The AttackConfig the flags describe; unknown attacker names end the command (exit 2)."""
  f = flags.FLAGS
  unknown = sorted(set(f.attackers) - set(protocol.ATTACKERS))
  if unknown:
    config_lib.exit_with_error(f"--attackers: unknown {unknown}; allowed: "
                               f"{list(protocol.ATTACKERS)}.")
  fit = atk.FitConfig(max_epochs=f.attack_max_epochs, patience=f.patience, seed=f.seed)
  return protocol.AttackConfig(attack_train_limit=f.attack_train_limit, test_limit=f.test_limit,
                               attackers=tuple(f.attackers), attacker_fit=fit,
                               classifier_fit=fit, seed=f.seed, resnet_width=f.resnet_width)

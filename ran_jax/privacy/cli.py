"""Command-line flags of the attack protocol, shared by `ran_jax.attack` and `ran_jax.sweep`."""

from __future__ import annotations

from absl import flags

from ran_jax import config_lib
from ran_jax.privacy import attackers as atk
from ran_jax.privacy import identity, protocol


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


def define_identity_flags(attribute: bool = True) -> None:
  """Flags of the attribute-inference attacks (`ran_jax.privacy.identity`); `attribute`:
  also --attribute (commands whose attribute is the config's data.attribute go without)."""
  if attribute:
    flags.DEFINE_string("attribute", None,
                        "Sensitive attribute to infer (e.g. subject, speaker); default: the "
                        "run's data.attribute; '' skips the attribute attacks.")
  flags.DEFINE_list("identity_attackers", list(identity.FAMILIES), "Attribute attacker families.")
  flags.DEFINE_integer("identity_seeds", 3, "Seeds per attribute attacker (release noise, init).")
  flags.DEFINE_list("releases", ["4", "16"],
                    "N of the 'mean of N releases of one input' settings (noisy releases), "
                    "besides one release and the clean features.")
  flags.DEFINE_integer("person_releases", 10,
                       "Releases of different inputs of one person an attacker combines (0: off).")
  flags.DEFINE_integer("person_groups", 1000, "Random groups of person_releases scored.")


def identity_config_from_flags() -> identity.IdentityConfig:
  """The IdentityConfig the flags describe; bad values end the command (exit 2)."""
  f = flags.FLAGS
  unknown = sorted(set(f.identity_attackers) - set(identity.FAMILIES))
  if unknown:
    config_lib.exit_with_error(f"--identity_attackers: unknown {unknown}; allowed: "
                               f"{list(identity.FAMILIES)}.")
  try:
    releases = tuple(int(n) for n in f.releases)
  except ValueError:
    releases = ()
  if not releases and f.releases or any(n < 2 for n in releases):
    config_lib.exit_with_error(f"--releases={','.join(f.releases)}: integers >= 2 expected.")
  if f.identity_seeds < 1 or f.person_releases < 0 or f.person_groups < 1:
    config_lib.exit_with_error("--identity_seeds and --person_groups must be >= 1, "
                               "--person_releases >= 0.")
  return identity.IdentityConfig(attackers=tuple(f.identity_attackers),
                                 seeds=tuple(range(f.seed, f.seed + f.identity_seeds)),
                                 releases=releases, person_releases=f.person_releases,
                                 person_groups=f.person_groups, seed=f.seed)

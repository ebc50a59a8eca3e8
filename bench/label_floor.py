"""The label-only floor of the identity attacks for a dataset, no encoder needed.

  python -m bench.label_floor --config=har_lenet_private --manual_dir=/path/to/uci_har \
      --out=docs/data/label_only_har.json

The attackers of `ran_jax.privacy.identity` (logistic regression, MLP, kNN; 3 seeds; the
attack's own split and test part) given only the task label of each example (HAR: the
activity, spoken digits: the digit) name the person (`data.attribute` of the config):
no representation that carries the task can hide what its label says, so this, beside
chance, is the level an identity figure is read against
(`identity.label_only_floor`, equal to `attack_identity`'s result['label_only']).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.label_floor", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="a config module of ran_jax.configs")
  p.add_argument("--manual_dir", default=None, help="data.manual_dir (the dataset's files)")
  p.add_argument("--attribute", default=None, help="default: the config's data.attribute")
  p.add_argument("--out", required=True, help="the JSON file to write")
  args = p.parse_args(argv)

  from ran_jax import input_pipeline
  from ran_jax.privacy import identity

  config = importlib.import_module(f"ran_jax.configs.{args.config}").get_config()
  if args.manual_dir:
    config.data.manual_dir = args.manual_dir
  if args.attribute is not None:
    config.data.attribute = args.attribute
  source = input_pipeline.load_dataset(config.data)
  r = identity.label_only_floor(source)
  r["command"] = "python -m bench.label_floor " + " ".join(sys.argv[1:] if argv is None
                                                           else argv)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(r, f, indent=2)
  floor = r["label_only"]
  print(f"{r['attribute']} from the task label only: top-1 {floor['worst']['top1']:.4f} "
        f"({floor['worst']['attacker']}, 95 % CI {floor['worst']['ci95']}), from the labels "
        f"of {floor.get('person', {}).get('releases')} examples of the person "
        f"{floor.get('person', {}).get('top1')}; chance {r['chance']:.4f}, majority "
        f"{r['majority']:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

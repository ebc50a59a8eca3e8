"""`python -m bench`: the training benchmark; `python -m bench input ...`: input throughput
(`--config=...`: a dataset next to its trainer, bench/throughput.py; `--imagenet_fake=N`: host
JPEG decoding per core, today's pipeline and Grain, bench/input_bench.py);
`python -m bench tasks ...`: the paper's accelerator tasks (bench/paper_tasks.py);
`python -m bench robustness ...`: a config over seeds and conv paths (bench/robustness.py);
`python -m bench attackers ...`: attacker training vs PyTorch (bench/attacker_bench.py);
`python -m bench levers ...`: what buys a defended config's accuracy back, on a validation split
(bench/accuracy_levers.py)."""

import sys


def main():
  if sys.argv[1:2] == ["input"] and any(
      a.startswith(("--imagenet_fake", "--cores_from")) for a in sys.argv[2:]):
    from bench import input_bench  # pylint: disable=g-import-not-at-top

    sys.exit(input_bench.main(sys.argv[2:]))
  elif sys.argv[1:2] == ["input"]:
    from bench import throughput  # pylint: disable=g-import-not-at-top

    throughput.run([sys.argv[0]] + sys.argv[2:])
  elif sys.argv[1:2] == ["tasks"]:
    from bench import paper_tasks  # pylint: disable=g-import-not-at-top

    sys.exit(paper_tasks.main(sys.argv[2:]))
  elif sys.argv[1:2] == ["robustness"]:
    from bench import robustness  # pylint: disable=g-import-not-at-top

    sys.exit(robustness.main(sys.argv[2:]))
  elif sys.argv[1:2] == ["levers"]:
    from bench import accuracy_levers  # pylint: disable=g-import-not-at-top

    sys.exit(accuracy_levers.main(sys.argv[2:]))
  elif sys.argv[1:2] == ["attackers"]:
    from bench import attacker_bench  # pylint: disable=g-import-not-at-top

    attacker_bench.run(sys.argv[2:])
  else:
    from bench import ran_bench  # pylint: disable=g-import-not-at-top

    ran_bench.main()


if __name__ == "__main__":
  main()

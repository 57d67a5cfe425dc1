"""A minimal sweep: depth x seeds on the tiny synthetic-corpus model (shows the sweep format).

Command:
  python -m experiments.sweep --sweep=experiments/sweeps/example.py --root=runs/example
  python -m experiments.compare runs/example --metric=eval/loss --by=model.num_layers --out=runs/example/report
Runs: num_layers1_seed0, num_layers1_seed1, num_layers2_seed0, num_layers2_seed1 (100 steps each).
Cost: not measured; ~1.5e12 training FLOPs per run, under a minute each on 2 CPU cores at
the ~20-40 GFLOP/s tiny_clm reaches.
"""


def get_sweep():
  return {
      "config": "experiments/configs/tiny_clm.py",
      "fixed": {"train.num_steps": 100, "train.eval_every": 50, "train.checkpoint_every": 50},
      "grid": {"model.num_layers": [1, 2]},
      "seeds": [0, 1],
  }

"""IsoFLOP sweep: at each compute budget, models of several sizes trained to exactly that budget.

compare.py finds the budgets again from each run's flops_seen, fits a parabola of loss in
log N per budget and the power laws N_opt ∝ C^a, D_opt ∝ C^b (Chinchilla's approach 2):

  python -m experiments.sweep --sweep=experiments/sweeps/isoflop.py --root=runs/isoflop --dry_run
  python -m experiments.sweep --sweep=experiments/sweeps/isoflop.py --root=runs/isoflop
  python -m experiments.compare runs/isoflop --metric=eval/loss --fit=isoflop --out=runs/isoflop/report

The plan (shapes, tokens, steps per budget) prints with
  python -c "from experiments.sweeps.isoflop import plan; print(plan())"
Cost (from the FLOPs formula, NOT measured): the budgets sum, over their 4-6 shapes each,
to ~8e13 FLOPs: roughly 1-1.5 hours on 2 CPU cores at 20 GFLOP/s (small models at many steps
run below that rate). Result: not yet measured.
"""
from experiments import isoflop
from experiments.configs.tiny_clm import get_config

BUDGETS = [1e12, 3e12, 1e13]
SHAPES = isoflop.shapes_by_aspect([1, 2, 3, 4, 5, 6], aspect=24, head_dim=16)
_BASE = get_config()
BASE = _BASE.model  # vocab, max_len, ... of tiny_clm; the shape fields are replaced per point
SEQ_LEN, BATCH = _BASE.data.seq_len, _BASE.train.batch_size
MIN_STEPS = 50


def plan() -> str:
  return "\n".join(isoflop.describe(isoflop.isoflop_points(b, SHAPES, BASE, SEQ_LEN, BATCH, MIN_STEPS))
                   for b in BUDGETS)


def get_sweep():
  axes = isoflop.sweep_axes(BUDGETS, SHAPES, BASE, SEQ_LEN, BATCH, MIN_STEPS, warmup_fraction=0.1)
  return {
      "config": "experiments/configs/tiny_clm.py",
      "fixed": {"train.eval_every": 100000, "train.checkpoint_every": 500, "train.log_every": 20},
      "zip": axes,
      "name_fields": ["model.d_model", "model.num_layers", "train.num_steps"],
  }

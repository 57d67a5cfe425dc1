"""Scaling ablation: model size vs loss on the known-entropy synthetic corpus (issue 7, item 3).

Seven decoder-only sizes (4.6k-492k params, mlp 4x, depth and width growing together),
every other setting from tiny_clm, each trained for the same 800 steps. compare.py fits
L(N) = E + A N^-alpha to the final eval bits per byte and checks E against the corpus's
entropy floor (entropy_floor_bpb) and the source's score on the eval documents
(eval_floor_bpb), both logged with every eval:

  python -m experiments.sweep --sweep=experiments/sweeps/scaling.py --root=runs/scaling
  python -m experiments.compare runs/scaling --metric=eval/bits_per_byte --fit=params \
      --by=model.d_model --out=runs/scaling/report

Cost: measured 14 minutes on 2 shared CPU cores (1.8e13 training FLOPs in all).
Result (experiments/REPRODUCE.md): E = 0.4975 [0.4967, 0.4984] bits/byte against the floor
0.4971. 200,000 training documents keep 800 steps under one epoch: with the default 20,000
the larger models memorise them and E sits above the floor. Add seeds (e.g. [0, 1, 2]) for
seed CIs; run names stay the same.
"""

# (d_model, num_layers, num_heads, mlp_dim)
SIZES = [(8, 1, 1, 32), (16, 1, 1, 64), (24, 1, 2, 96), (32, 1, 2, 128), (48, 2, 3, 192),
         (64, 2, 4, 256), (96, 3, 6, 384)]


def get_sweep():
  return {
      "config": "experiments/configs/tiny_clm.py",
      "fixed": {"train.num_steps": 800, "train.warmup_steps": 40, "train.eval_every": 400,
                "train.checkpoint_every": 400, "train.eval_batches": 16,
                "data.synthetic.train_docs": 200000, "data.synthetic.eval_docs": 2000},
      "zip": {"model.d_model": [s[0] for s in SIZES], "model.num_layers": [s[1] for s in SIZES],
              "model.num_heads": [s[2] for s in SIZES], "model.mlp_dim": [s[3] for s in SIZES]},
      "seeds": [0],
      "name_fields": ["model.d_model", "model.num_layers", "seed"],
  }

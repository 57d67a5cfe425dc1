"""Tiny decoder-only causal LM on the built-in synthetic corpus (the foundation's main job).

Command:
  python -m experiments.train --config=experiments/configs/tiny_clm.py --workdir=/tmp/tiny_clm
Cost: about 2-4 minutes on 2 CPU cores (the corpus and tokenizer are built once and cached).
Expected: eval bits per byte falls from ~8 to within ~10% of the corpus's entropy floor
(the floor is printed with every eval line and stored in metrics.jsonl as entropy_floor_bpb).
"""
from lm.config import base_config


def get_config():
  c = base_config()
  c.model.vocab_size = 512
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.max_len = 128
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.num_steps = 300
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c

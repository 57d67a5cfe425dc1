"""A ~350M-parameter decoder prefix-LM (24 layers, d 1024) for accelerators.

Needs a prepared text dataset (nothing downloads at run time), e.g.
  tfds build c4/en --data_dir=$LM_DATA_DIR --file_format=array_record
  python -m experiments.train --config=experiments/configs/prefixlm_base.py --workdir=RUN
"""
from lm.config import base_config


def get_config():
  c = base_config()
  c.objective = "prefix_lm"
  c.model.family = "decoder"
  c.data.dataset = "c4/en"
  c.model.vocab_size = 32768
  c.model.d_model = 1024
  c.model.num_layers = 24
  c.model.num_heads = 16
  c.model.mlp_dim = 2816
  c.model.max_len = 1024
  c.model.dtype = "bfloat16"
  c.model.remat_policy = "dots_saveable"
  c.data.seq_len = 1024
  c.train.batch_size = 256
  c.train.num_steps = 100_000
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 2_000
  c.train.eval_every = 5_000
  c.train.checkpoint_every = 5_000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c

"""A ~1B-parameter decoder for accelerators (context 2048, bf16 compute, f32 params).

Dry run (compiles for a fake 8-device mesh on CPU, allocates nothing):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
    python -m experiments.train --config=experiments/configs/ref_1b.py --dry_run --device_memory_gb=80
Parameters: 16 layers x (4 d^2 attention + 3 d x 5632 SwiGLU) + untied 32768 x 2048 in and out = ~0.96B.
"""
from lm.config import base_config


def get_config():
  c = base_config()
  c.model.vocab_size = 32768
  c.model.d_model = 2048
  c.model.num_layers = 16
  c.model.num_heads = 16
  c.model.num_kv_heads = 16
  c.model.mlp_dim = 5632
  c.model.max_len = 2048
  c.model.tie_embeddings = False
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat_policy = "dots_saveable"
  c.data.seq_len = 2048
  c.train.batch_size = 16
  c.train.num_steps = 10000
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 500
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c

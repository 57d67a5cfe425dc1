"""Benchmark reference: decoder-only, 6 layers, d_model 384, 6 heads, MLP 1536, vocab 8192, context 256,
batch 16, f32 (about 14M parameters with the tied embedding).

  python -m experiments.benchmark --config=experiments/configs/ref_small.py
"""
from lm.config import base_config


def get_config():
  c = base_config()
  c.model.vocab_size = 8192
  c.model.d_model = 384
  c.model.num_layers = 6
  c.model.num_heads = 6
  c.model.mlp_dim = 1536
  c.model.max_len = 256
  c.model.mlp_activation = "gelu"
  c.model.norm = "layernorm"
  c.model.dropout_rate = 0.0
  c.data.seq_len = 256
  c.train.batch_size = 16
  c.mesh.data = 1
  return c

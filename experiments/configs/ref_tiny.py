"""Benchmark reference: decoder-only, 4 layers, d_model 256, 4 heads, MLP 1024, vocab 4096, context 128,
batch 32, f32, no dropout (about 4.5M parameters with the tied embedding).

  python -m experiments.benchmark --config=experiments/configs/ref_tiny.py
"""
from lm.config import base_config


def get_config():
  c = base_config()
  c.model.vocab_size = 4096
  c.model.d_model = 256
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 1024
  c.model.max_len = 128
  c.model.mlp_activation = "gelu"
  c.model.norm = "layernorm"
  c.model.dropout_rate = 0.0
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.mesh.data = 1
  return c

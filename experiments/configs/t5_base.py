"""T5-base-sized encoder-decoder (12 + 12 layers, d 768, 12 heads, MLP 2048 gated) with span corruption.

For accelerators. Needs a prepared text dataset (nothing downloads at run time), e.g.
  tfds build c4/en --data_dir=$LM_DATA_DIR --file_format=array_record
  python -m experiments.train --config=experiments/configs/t5_base.py --workdir=RUN
or override --config.data.dataset=synthetic to try it on built-in data.
Inputs of 512 tokens; each example has at most 16 spans (the tokenizer's sentinels),
so a row packs several shorter examples.
"""
from experiments.configs.t5_tiny import t5_architecture
from lm.config import base_config


def get_config():
  c = t5_architecture(base_config())
  c.data.dataset = "c4/en"
  c.model.vocab_size = 32128
  c.model.d_model = 768
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.mlp_dim = 2048
  c.model.max_len = 512
  c.model.dropout_rate = 0.0
  c.model.dtype = "bfloat16"
  c.data.seq_len = 512
  c.train.batch_size = 128
  c.train.num_steps = 524_288
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 10_000
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c

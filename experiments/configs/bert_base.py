"""BERT-base (110M parameters: 12 layers, d 768, 12 heads, MLP 3072, 512 positions) with MLM + NSP.

For accelerators. Needs a prepared text dataset (nothing downloads at run time), e.g.
  tfds build c4/en --data_dir=$LM_DATA_DIR --file_format=array_record
  python -m experiments.train --config=experiments/configs/bert_base.py --workdir=RUN
or override --config.data.dataset=synthetic to try it on built-in data.
Architecture fields are BERT's exactly (see lm/bert.py for the parameter tree and the
Hugging Face names each weight maps to); the vocabulary is this codebase's own tokenizer.
"""
from experiments.configs.bert_tiny import bert_architecture
from lm.config import base_config


def get_config():
  c = bert_architecture(base_config())
  c.data.dataset = "c4/en"
  c.model.vocab_size = 30522
  c.model.d_model = 768
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.mlp_dim = 3072
  c.model.max_len = 512
  c.model.dropout_rate = 0.1
  c.data.seq_len = 128  # BERT's phase 1; raise to 512 for phase 2
  c.train.batch_size = 256
  c.train.num_steps = 1_000_000
  c.train.learning_rate = 1e-4
  c.train.warmup_steps = 10_000
  c.train.b2 = 0.999
  c.train.weight_decay = 0.01
  c.train.eval_every = 10_000
  c.train.checkpoint_every = 10_000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c

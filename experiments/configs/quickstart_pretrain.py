"""Quickstart stage 1: pretrain a tiny decoder on agent-like text.

The corpus is the training demonstrations' turns written as plain text
(experiments/quickstart.py makes it), so the tokenizer and the model learn the
action/observation vocabulary before tuning; the synthetic Markov corpus shares
none of it.

Command (the quickstart fills text_glob):
  python -m experiments.train --config=experiments/configs/quickstart_pretrain.py \
      --workdir=runs/quickstart/pretrain --config.data.text_glob='runs/quickstart/data/corpus/*.txt'
Cost: about 2-3 minutes on 2 CPU cores.
Expected: eval loss falls well below the unigram level (the text is highly regular).
"""
from lm.config import base_config


def get_config():
  c = base_config()
  c.model.vocab_size = 768
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.max_len = 384
  c.data.dataset = "text"
  c.data.text_mode = "blank_line"
  c.data.seq_len = 256
  c.train.batch_size = 16
  c.train.num_steps = 300
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 50
  c.train.eval_every = 150
  c.train.checkpoint_every = 150
  return c

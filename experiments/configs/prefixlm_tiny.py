"""Tiny decoder-only prefix-LM on the synthetic corpus: bidirectional prefix, loss on the rest.

Command:
  python -m experiments.train --config=experiments/configs/prefixlm_tiny.py --workdir=/tmp/prefixlm_tiny
Cost: a few minutes on 2 CPU cores (corpus and tokenizer are built once and cached).
Expected (measured on 2 shared CPU cores, 300 steps, ~1.5 minutes, ~18k tokens/s): eval
loss ~0.69, accuracy ~0.74, bits per byte ~0.32. Bits per byte are over the suffix tokens
only, which never include a document's first words (where its topic is chosen), so they
can end slightly below the whole-text entropy floor printed beside them.
"""
from lm.config import base_config

def get_config():
  c = base_config()
  c.objective = "prefix_lm"
  c.model.family = "decoder"
  c.data.prefix_fraction = 0.0  # a uniformly random split point per example
  c.model.vocab_size = 512
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.max_len = 128
  c.data.seq_len = 128
  # The families' shared synthetic corpus: 8 topics of 16 words, 2 successors per word.
  # Sentences of a document share a topic, so next-sentence prediction is learnable.
  c.data.synthetic.topics = 8
  c.data.synthetic.num_words = 16
  c.data.synthetic.branching = 2
  c.train.batch_size = 32
  c.train.num_steps = 300
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c

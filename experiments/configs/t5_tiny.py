"""Tiny T5-style encoder-decoder pretrained with span corruption on the synthetic corpus.

Command:
  python -m experiments.train --config=experiments/configs/t5_tiny.py --workdir=/tmp/t5_tiny
Cost: a few minutes on 2 CPU cores (corpus and tokenizer are built once and cached).
Expected (measured on 2 shared CPU cores, 300 steps, ~1.5 minutes, ~14k encoder tokens/s):
eval loss ~1.55 nats per target token, accuracy ~0.50. Encoder rows are 128 tokens; the
decoder rows are sized automatically for 15% noise in spans of mean length 3.
"""
from lm.config import base_config

def t5_architecture(c):
  """T5 v1.1-like: pre-norm RMSNorm, gated MLP, shared tied embeddings, relative position bias."""
  c.objective = "span_corruption"
  c.model.family = "encoder_decoder"
  c.model.position = "relative"
  c.model.relative_attention_num_buckets = 32
  c.model.relative_attention_max_distance = 128
  c.model.norm = "rmsnorm"
  c.model.norm_placement = "pre"
  c.model.mlp_activation = "swiglu"
  c.model.tie_embeddings = True
  c.data.noise_density = 0.15
  c.data.mean_span_length = 3.0
  return c


def get_config():
  c = t5_architecture(base_config())
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

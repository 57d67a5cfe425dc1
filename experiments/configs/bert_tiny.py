"""Tiny BERT (encoder-only, the original architecture) pretrained with MLM + NSP on the synthetic corpus.

Command:
  python -m experiments.train --config=experiments/configs/bert_tiny.py --workdir=/tmp/bert_tiny
Cost: a few minutes on 2 CPU cores (corpus and tokenizer are built once and cached).
Expected (measured on 2 shared CPU cores, 300 steps, ~1 minute, ~26k tokens/s): eval
mlm_accuracy ~0.25, nsp_accuracy ~0.84, mlm_loss ~3.0; chance is MLM accuracy ~1/V and
NSP accuracy 0.5. The corpus has 8 topics, so NotNext pairs usually mix two topics'
words: NSP can reach ~0.5 + 0.5 * 7/8 = 0.94.
"""
from lm.config import base_config

def bert_architecture(c):
  """The fields that make a model BERT's architecture exactly (lm/bert.py)."""
  c.objective = "mlm_nsp"
  c.model.family = "encoder"
  c.model.norm_placement = "post"
  c.model.norm = "layernorm"
  c.model.norm_eps = 1e-12
  c.model.embed_norm = True
  c.model.mlp_activation = "gelu_exact"
  c.model.use_bias = True
  c.model.position = "learned"
  c.model.type_vocab_size = 2
  c.model.tie_embeddings = True
  c.model.num_kv_heads = 0
  return c


def get_config():
  c = bert_architecture(base_config())
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
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 30
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c

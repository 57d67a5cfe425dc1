"""Small configs shared by the training tests."""
from lm.config import base_config


def tiny_config(data_dir: str, **overrides):
  """A model and corpus small enough for a few-second CPU test."""
  c = base_config()
  c.data.data_dir = data_dir
  c.data.synthetic.train_docs = 400
  c.data.synthetic.eval_docs = 40
  c.data.tokenizer_docs = 400
  c.data.seq_len = 32
  c.model.vocab_size = 320
  c.model.d_model = 32
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 64
  c.model.max_len = 32
  c.train.batch_size = 8
  c.train.num_steps = 5
  c.train.warmup_steps = 2
  c.train.log_every = 1
  c.train.eval_every = 5
  c.train.eval_batches = 2
  c.train.checkpoint_every = 5
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def losses(workdir: str, split: str = "train"):
  from lm.metrics import read_metrics
  return [(r["step"], r["loss"]) for r in read_metrics(workdir) if r["split"] == split]

"""Instruction tuning on the built-in toy task (reverse space-separated letters), from a tiny
pretraining run, then decoding held-out prompts.

Commands:
  python -m experiments.train --config=experiments/configs/sft_toy.py:pretrain --workdir=/tmp/toy_pre
  python -c "from lm.data.toy_tasks import write_task; write_task('/tmp/toy')"
  python -m experiments.train --config=experiments/configs/sft_toy.py --workdir=/tmp/toy_sft \
      --config.train.init_from=/tmp/toy_pre --config.data.instructions_glob=/tmp/toy/reverse_train.jsonl
  python -m experiments.generate --workdir=/tmp/toy_sft --prompts_file=/tmp/toy/reverse_heldout.jsonl
The tuning run uses the pretraining run's tokenizer (train.init_from's WORKDIR/tokenizer.model).
Expected (tests/test_sft.py, 2 CPU cores, ~1 minute): held-out exact match 1.0 (>= 0.95).
"""
from lm.config import base_config


def get_config(arg: str = "sft"):
  c = base_config()
  c.model.vocab_size = 320
  c.model.d_model = 64
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 128
  c.model.max_len = 64
  c.data.seq_len = 64
  c.data.tokenizer_docs = 400
  c.data.synthetic.train_docs = 400
  c.data.synthetic.eval_docs = 40
  c.train.batch_size = 16
  c.train.eval_batches = 2
  c.train.log_every = 50
  if arg == "pretrain":
    c.train.num_steps = 20
    c.train.checkpoint_every = 20
    c.train.eval_every = 20
    return c
  c.objective = "sft"
  c.data.dataset = "instructions"
  c.data.eval_fraction = 0.02
  c.train.num_steps = 400
  c.train.warmup_steps = 20
  c.train.eval_every = 400
  c.train.checkpoint_every = 400
  return c

"""Tiny encoder-decoder trained on (input, continuation) pairs cut from the synthetic corpus.

Command:
  python -m experiments.train --config=experiments/configs/seq2seq_tiny.py --workdir=/tmp/seq2seq_tiny
The encoder reads the first part of a document piece, the decoder writes the rest
(the objective instruction tuning builds on). Bits per byte are over the targets.
Expected (measured on 2 shared CPU cores, 300 steps, ~3 minutes, ~8k encoder tokens/s):
eval loss ~0.81, accuracy ~0.72, bits per byte ~0.37.
"""
from experiments.configs.t5_tiny import get_config as t5_tiny


def get_config():
  c = t5_tiny()
  c.objective = "seq2seq"
  c.data.target_seq_len = 0  # = data.seq_len
  return c

"""Supervised fine-tuning examples: conversations -> packed, prompt-masked batches.

Every conversation is rendered by lm/chat.py (the one chat template). Decoder-only
("sft"): inputs/targets shifted by one, weights 1 only on assistant tokens (and the
<|end|> closing each turn); packed rows carry segment ids, so conversations never
attend to each other, and padding has weight 0. Encoder-decoder ("sft_seq2seq"):
one example per assistant turn, the history to the encoder, the turn as the target.
Too-long examples are cut: a decoder-only row keeps its start, an encoder input its
end (the newest turns and the `<|assistant|>` marker).
"""
from __future__ import annotations

import json

import numpy as np

from lm import chat
from lm.data import examples, spans

CLM_FIELDS = {"inputs": ("", np.int32), "targets": ("", np.int32), "weights": ("", np.float32)}


def conversation(tokenizer, text: str) -> list[dict]:
  del tokenizer
  return json.loads(text)


def clm_examples(messages, tokenizer, seq_len: int) -> list[dict[str, np.ndarray]]:
  ex = chat.clm_example(messages, tokenizer)
  ex = {k: v[:seq_len] for k, v in ex.items()}
  return [ex] if ex["weights"].sum() > 0 else []


def seq2seq_examples(messages, tokenizer, enc_len: int, dec_len: int) -> list[dict[str, np.ndarray]]:
  out = []
  for ex in chat.seq2seq_examples(messages, tokenizer):
    target = ex["decoder_targets"][:dec_len]
    out.append(spans.seq2seq_example(ex["encoder_inputs"][-enc_len:], target, tokenizer.bos_id))
  return out


def preprocessing(cfg, tokenizer, batch_size: int, decoder_len: int):
  """(tokenize, make_examples, new_packer) for objective "sft" or "sft_seq2seq"."""
  seq_len = cfg.data.seq_len
  if cfg.objective == "sft":
    make = lambda msgs, rng, other: clm_examples(msgs, tokenizer, seq_len)
    return conversation, make, lambda: examples.RowPacker(batch_size, {"": seq_len}, CLM_FIELDS)
  make = lambda msgs, rng, other: seq2seq_examples(msgs, tokenizer, seq_len, decoder_len)
  sides = {"encoder_": seq_len, "decoder_": decoder_len}
  return conversation, make, lambda: examples.RowPacker(batch_size, sides, spans.SEQ2SEQ_FIELDS)

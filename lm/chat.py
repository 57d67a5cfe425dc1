"""The chat template: one definition of how messages become tokens, for training and decoding.

    [bos] <|role|> content <|end|> <|role|> content <|end|> ...

Roles are `system`, `user`, `assistant`, `tool`; each role marker and `<|end|>` is a
reserved control token of the tokenizer (ids fixed since the foundation), so no
user or tool text can forge a turn. A generation prompt is the rendered history
followed by `<|assistant|>`; the model's turn ends when it emits `<|end|>`.

Supervised fine-tuning learns the assistant's turns only: the loss mask is 1 on
every assistant content token and on the `<|end|>` that closes it, 0 elsewhere.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ROLES = ("system", "user", "assistant", "tool")
END = "<|end|>"


def role_token(role: str) -> str:
  return f"<|{role}|>"


def validate_messages(messages: Any, where: str = "messages") -> list[dict]:
  """A list of {"role", "content"} with known roles and string content; ValueError names the entry."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError(f"{where} must be a non-empty list of {{'role', 'content'}} objects")
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
      raise ValueError(f"{where}[{i}] must be an object with exactly 'role' and 'content', got {m!r}"[:300])
    if m["role"] not in ROLES:
      raise ValueError(f"{where}[{i}].role={m['role']!r} is not one of: {', '.join(ROLES)}")
    if not isinstance(m["content"], str):
      raise ValueError(f"{where}[{i}].content must be a string")
    out.append({"role": m["role"], "content": m["content"]})
  return out


def from_prompt_response(prompt: str, response: str) -> list[dict]:
  return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def render(messages: Sequence[dict], tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """Token ids of a whole conversation and its loss mask (1 = an assistant token to learn)."""
  ids, mask = [tokenizer.bos_id], [0]
  end = tokenizer.special_id(END)
  for m in messages:
    learn = int(m["role"] == "assistant")
    content = tokenizer.encode(m["content"])
    ids += [tokenizer.special_id(role_token(m["role"]))] + content + [end]
    mask += [0] + [learn] * len(content) + [learn]
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def render_prompt(messages: Sequence[dict], tokenizer) -> np.ndarray:
  """The history followed by `<|assistant|>`: what the model continues when generating."""
  ids, _ = render(messages, tokenizer) if messages else (np.asarray([tokenizer.bos_id], np.int32), None)
  return np.concatenate([ids, np.asarray([tokenizer.special_id(role_token("assistant"))], np.int32)])


def stop_ids(tokenizer) -> tuple[int, ...]:
  """Tokens that end an assistant turn."""
  return (tokenizer.special_id(END), tokenizer.eos_id)


def clm_example(messages: Sequence[dict], tokenizer) -> dict[str, np.ndarray]:
  """Decoder-only SFT example: inputs/targets shifted by one, weights = the mask on targets."""
  ids, mask = render(messages, tokenizer)
  return {"inputs": ids[:-1], "targets": ids[1:], "weights": mask[1:].astype(np.float32)}


def seq2seq_examples(messages: Sequence[dict], tokenizer) -> list[dict[str, np.ndarray]]:
  """Encoder-decoder SFT: one example per assistant turn; the history is the encoder input,
  the turn (content + <|end|>) is the decoder target."""
  out = []
  end = tokenizer.special_id(END)
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    prompt = render_prompt(messages[:i], tokenizer)
    target = np.asarray(tokenizer.encode(m["content"]) + [end], np.int32)
    out.append({"encoder_inputs": prompt, "decoder_targets": target})
  return out

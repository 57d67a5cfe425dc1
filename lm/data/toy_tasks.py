"""Built-in toy instruction tasks, written as instruction JSONL (lm/data/instructions.py).

  reverse: "reverse: c a d" -> "d a c"  (space-separated symbols, so every
           symbol is its own token whatever the tokenizer merged)

Train and held-out prompts are disjoint sets of symbol sequences, so held-out
exact match measures the skill, not memorisation.
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np

TASKS = ("reverse",)


def reverse_pairs(symbols: str = "abcdef", min_len: int = 2, max_len: int = 3):
  """Every (prompt, response) of the reverse task, in a fixed order."""
  out = []
  for n in range(min_len, max_len + 1):
    for seq in itertools.product(symbols, repeat=n):
      out.append((f"reverse: {' '.join(seq)}", " ".join(reversed(seq))))
  return out


def split_pairs(pairs, num_held_out: int, seed: int = 0):
  """(train, held_out): a seeded random choice of held-out pairs."""
  order = np.random.default_rng(seed).permutation(len(pairs))
  held = set(order[:num_held_out].tolist())
  return ([p for i, p in enumerate(pairs) if i not in held],
          [p for i, p in enumerate(pairs) if i in held])


def write_jsonl(path: str, pairs, repeat: int = 1) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(repeat):
      for prompt, response in pairs:
        f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
  return path


def write_task(directory: str, task: str = "reverse", num_held_out: int = 40, seed: int = 0,
               repeat: int = 1, **kw) -> tuple[str, str]:
  """Writes <directory>/{task}_train.jsonl and {task}_heldout.jsonl; returns their paths."""
  if task not in TASKS:
    raise ValueError(f"unknown toy task {task!r}; known: {', '.join(TASKS)}")
  train, held = split_pairs(reverse_pairs(**kw), num_held_out, seed)
  return (write_jsonl(os.path.join(directory, f"{task}_train.jsonl"), train, repeat),
          write_jsonl(os.path.join(directory, f"{task}_heldout.jsonl"), held))


def read_pairs(path: str) -> list[tuple[str, str]]:
  with open(path, encoding="utf-8") as f:
    return [(o["prompt"], o["response"]) for o in map(json.loads, f) if o]

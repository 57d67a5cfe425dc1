"""Completions from a trained run: prints them (or writes JSONL) and reports tokens/s.

  python -m experiments.generate --workdir=/tmp/sft --prompt="reverse: a b c"
  python -m experiments.generate --workdir=/tmp/sft --prompts_file=prompts.jsonl --out=out.jsonl

A prompts file has one JSON object per line: {"prompt": "..."} or {"messages": [...]}
(chat format), or {"text": "..."} with --raw. --chat (default) wraps prompts in the
chat template (lm/chat.py) and stops at <|end|>; --raw continues plain text.
"""
from __future__ import annotations

import json
import sys
import time

from absl import app, flags

flags.DEFINE_string("workdir", None, "WORKDIR of a training run (config.json, tokenizer.model, checkpoints/)")
flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
flags.DEFINE_string("prompt", None, "one prompt")
flags.DEFINE_string("prompts_file", None, "JSONL of prompts")
flags.DEFINE_string("out", None, "write completions as JSONL here instead of printing")
flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate at most")
flags.DEFINE_float("temperature", 0.0, "0 = greedy")
flags.DEFINE_integer("top_k", 0, "0 = off")
flags.DEFINE_float("top_p", 1.0, "1 = off")
flags.DEFINE_integer("beam_size", 1, "> 1: beam search")
flags.DEFINE_float("length_penalty", 0.0, "beam search: score = logp / len^alpha")
flags.DEFINE_integer("seed", 0, "request i samples with fold_in(key(seed), i)")
flags.DEFINE_boolean("chat", True, "chat template (--nochat or --raw for plain text)")
flags.DEFINE_boolean("raw", False, "plain-text continuation (same as --nochat)")
flags.DEFINE_integer("batch_size", 16, "prompts decoded together")
flags.DEFINE_multi_string("stop", [], "stop strings (completions are cut before them)")
FLAGS = flags.FLAGS


def read_prompts(path: str, chat_format: bool) -> list:
  out = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      obj = json.loads(line)
      if chat_format and "messages" in obj:
        out.append(obj["messages"])
      elif "prompt" in obj or "text" in obj:
        out.append(obj.get("prompt", obj.get("text")))
      else:
        raise SystemExit(f"{path}:{n}: need 'prompt' (or 'messages' / 'text')")
  return out


def main(argv):
  del argv
  from lm import decode
  if not FLAGS.workdir or (FLAGS.prompt is None) == (FLAGS.prompts_file is None):
    raise app.UsageError("give --workdir and exactly one of --prompt / --prompts_file")
  chat_format = FLAGS.chat and not FLAGS.raw
  dec = decode.Decoder.from_workdir(FLAGS.workdir, FLAGS.step)
  prompts = [FLAGS.prompt] if FLAGS.prompt is not None else read_prompts(FLAGS.prompts_file, chat_format)
  to_ids = dec.chat_prompt if chat_format else dec.raw_prompt
  stop = dec.stop_ids() if chat_format else (dec.tokenizer.eos_id,)
  kw = dict(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
            top_p=FLAGS.top_p, beam_size=FLAGS.beam_size, length_penalty=FLAGS.length_penalty,
            stop_ids=stop)
  results, prompt_tokens, new_tokens, gen_s = [], 0, 0, 0.0
  for start in range(0, len(prompts), FLAGS.batch_size):
    batch = prompts[start:start + FLAGS.batch_size]
    ids = [to_ids(p) for p in batch]
    keys = decode.request_keys(FLAGS.seed, len(batch), offset=start)
    dec.generate(ids, keys=keys, **kw)  # compile (cached for same-shaped batches)
    t0 = time.perf_counter()
    outs = dec.generate(ids, keys=keys, **kw)
    gen_s += time.perf_counter() - t0
    prompt_tokens += sum(map(len, ids))
    new_tokens += sum(map(len, outs))
    for p, o in zip(batch, outs):
      text = decode.cut_at_stop_strings(dec.tokenizer.decode(o), FLAGS.stop)
      results.append({"prompt": p, "completion": text, "tokens": len(o)})
  prefill = decode.measure_prefill(dec, [to_ids(p) for p in prompts[:FLAGS.batch_size]])
  stats = {"step": dec.step, "prompts": len(prompts), "new_tokens": new_tokens,
           "decode_tokens_per_s": round(new_tokens / max(gen_s, 1e-9), 1),
           "prefill_tokens_per_s": round(prefill, 1)}
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      for r in results:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
  else:
    for r in results:
      print(json.dumps(r, ensure_ascii=False))
  print(json.dumps(stats), file=sys.stderr)


if __name__ == "__main__":
  app.run(main)

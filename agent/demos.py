"""Demonstrations: gold trajectories of training tasks as SFT data.

Each line is `{"messages": [...]}` in the tuning issue's messages format. The
trajectories come from running the oracle through the real episode loop, so
every observation is a real tool output and every assistant turn is the
canonical text the strict parser accepts.

    python -m agent.demos --out=demos.jsonl --split=train --num=2000 --seed=0
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from agent import format as fmt
from agent.baselines import OraclePolicy
from agent.episode import EpisodeResult, Limits, run_episodes
from agent.tasks import FAMILIES, build_suite


def demonstration_episodes(num: int, seed: int = 0, split: str = "train",
                           families: Sequence[str] = FAMILIES,
                           prompt: fmt.PromptConfig = fmt.PromptConfig(),
                           limits: Limits = Limits(),
                           thoughts: bool = False) -> list[EpisodeResult]:
  """`num` oracle episodes, families interleaved round-robin."""
  if split != "train":
    raise ValueError(f"demonstrations come from the train split only (got {split!r}); "
                     "held-out tasks must never be trained on")
  per_family = -(-num // len(families))
  tasks = build_suite(split, per_family, seed=seed, families=families)
  by_family = {f: [t for t in tasks if t.family == f] for f in families}
  ordered = [by_family[f][i] for i in range(per_family) for f in families][:num]
  results = run_episodes(ordered, OraclePolicy(thoughts), limits, prompt=prompt)
  failed = [r.task.id for r in results if not r.success]
  if failed:
    raise RuntimeError(f"gold trajectories failed for {failed[:5]}: a generator bug")
  return results


def write_demos(path: str, num: int, seed: int = 0, split: str = "train",
                families: Sequence[str] = FAMILIES,
                prompt: fmt.PromptConfig = fmt.PromptConfig(),
                thoughts: bool = False) -> list[EpisodeResult]:
  results = demonstration_episodes(num, seed, split, families, prompt, thoughts=thoughts)
  with open(path, "w") as f:
    for r in results:
      f.write(json.dumps({"messages": r.messages}, ensure_ascii=False) + "\n")
  return results


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m agent.demos", description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="JSONL file to write")
  p.add_argument("--split", default="train", help="only 'train' is allowed")
  p.add_argument("--num", type=int, default=1000, help="number of demonstrations")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
  p.add_argument("--prompt_style", default="names", choices=fmt.PROMPT_STYLES)
  p.add_argument("--prompt_header", default="", help="text before the tool list")
  p.add_argument("--thoughts", action="store_true", help="open each turn with a Thought line")
  args = p.parse_args(argv)
  families = [f for f in args.families.split(",") if f]
  try:
    results = write_demos(args.out, args.num, args.seed, args.split, families,
                          fmt.PromptConfig(args.prompt_style, args.prompt_header), args.thoughts)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  chars = [r.chars for r in results]
  mean = sum(chars) / max(len(chars), 1)
  print(f"wrote {len(results)} demonstrations to {args.out} "
        f"(chars per episode: mean {mean:.0f}, max {max(chars, default=0)})")
  return 0


if __name__ == "__main__":
  sys.exit(main())

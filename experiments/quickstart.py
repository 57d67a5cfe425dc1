"""The quickstart: built-in data -> pretrain -> tune into an agent -> held-out evaluation.

  python -m experiments.quickstart [--workdir=runs/quickstart] [--scale=full|ci]

Stages (one progress line each; a finished stage is skipped when re-run, and an
interrupted training stage resumes from its last checkpoint):
  data      training demonstrations (agent.demos, train split only) as JSONL, and
            their turns as plain text: the pretraining corpus
  pretrain  a tiny decoder on that text (experiments/configs/quickstart_pretrain.py)
  sft       tuned on the demonstrations' assistant turns from the pretrained params
            (experiments/configs/quickstart_sft.py)
  evaluate  the tuned model on the held-out split against the no-tools baseline
            (agent.evaluate); the comparison table is printed at the end
`--scale=ci` shrinks every stage so the whole pipeline runs in a CI test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

STAGES = ("data", "pretrain", "sft", "evaluate")
SCALES = {
    "full": {"demos": 2000, "pretrain": [], "sft": [], "eval_per_family": 20},
    "ci": {"demos": 160, "eval_per_family": 2,
           "pretrain": ["--config.train.num_steps=30", "--config.model.d_model=64",
                        "--config.model.mlp_dim=128", "--config.train.batch_size=8",
                        "--config.train.eval_every=30", "--config.train.checkpoint_every=30"],
           "sft": ["--config.train.num_steps=30", "--config.model.d_model=64",
                   "--config.model.mlp_dim=128", "--config.train.batch_size=8",
                   "--config.train.eval_every=30", "--config.train.checkpoint_every=30"]},
}
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _log(msg: str) -> None:
  print(f"[quickstart {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _marker(workdir: str, stage: str) -> str:
  return os.path.join(workdir, "stages", f"{stage}.json")


def stage_data(workdir: str, scale: dict) -> str:
  from agent.demos import write_demos
  data = os.path.join(workdir, "data")
  os.makedirs(os.path.join(data, "corpus"), exist_ok=True)
  results = write_demos(os.path.join(data, "demos.jsonl"), scale["demos"], seed=0)
  # One block per episode, its turns one per line: blank lines only between blocks.
  blocks = ["\n".join(" ".join(m["content"].split()) for m in r.messages) for r in results]
  with open(os.path.join(data, "corpus", "demos.txt"), "w") as f:
    f.write("\n\n".join(blocks) + "\n")
  return f"{len(results)} demonstrations, {sum(map(len, blocks))} chars of pretraining text"


def _train(config: str, run: str, overrides: list[str]) -> None:
  cmd = [sys.executable, "-m", "experiments.train", f"--config={config}", f"--workdir={run}",
         *overrides]
  _log("  $ " + " ".join(cmd[1:]))
  subprocess.run(cmd, check=True, cwd=_ROOT)


def _last_eval(run: str) -> str:
  path = os.path.join(run, "metrics.jsonl")
  evals = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
  evals = [r for r in evals if r.get("split") == "eval"]
  return f"eval loss {evals[-1]['loss']:.3f} at step {evals[-1]['step']}" if evals else "no eval"


def stage_pretrain(workdir: str, scale: dict) -> str:
  run = os.path.join(workdir, "pretrain")
  _train("experiments/configs/quickstart_pretrain.py", run,
         [f"--config.data.text_glob={os.path.join(workdir, 'data', 'corpus', '*.txt')}",
          f"--config.data.data_dir={os.path.join(workdir, 'data', 'tfds')}", *scale["pretrain"]])
  return _last_eval(run)


def sft_supported() -> str | None:
  """None when the training code can tune on messages JSONL, else what is missing."""
  from lm.config import base_config
  from lm.objectives import OBJECTIVES
  missing = [name for name, ok in (("objective 'sft'", "sft" in OBJECTIVES),
                                   ("data.tokenizer_path", "tokenizer_path" in base_config().data))
             if not ok]
  return ", ".join(missing) or None


def stage_sft(workdir: str, scale: dict) -> str:
  missing = sft_supported()
  if missing:
    raise RuntimeError(f"this checkout cannot tune on demonstrations yet (missing: {missing}); "
                       "the SFT data path comes with the tuning issue")
  run, pre = os.path.join(workdir, "sft"), os.path.join(workdir, "pretrain")
  _train("experiments/configs/quickstart_sft.py", run,
         [f"--config.data.instructions_glob={os.path.join(workdir, 'data', 'demos.jsonl')}",
          f"--config.data.data_dir={os.path.join(workdir, 'data', 'tfds')}",
          f"--config.data.tokenizer_path={os.path.join(pre, 'tokenizer.model')}",
          f"--config.train.init_from={pre}", *scale["sft"]])
  return _last_eval(run)


def stage_evaluate(workdir: str, scale: dict) -> str:
  from agent import evaluate
  out = os.path.join(workdir, "eval")
  rc = evaluate.main([f"--workdir={os.path.join(workdir, 'sft')}", "--split=heldout",
                      f"--num_per_family={scale['eval_per_family']}", "--baseline=no_tools",
                      f"--out={out}"])
  if rc:
    raise RuntimeError(f"agent.evaluate failed with exit code {rc}")
  return f"reports in {out}"


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.quickstart",
                              description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/quickstart")
  p.add_argument("--scale", default="full", choices=tuple(SCALES))
  args = p.parse_args(argv)
  workdir, scale = os.path.abspath(args.workdir), SCALES[args.scale]
  os.makedirs(os.path.join(workdir, "stages"), exist_ok=True)
  start = time.time()
  fns = {"data": stage_data, "pretrain": stage_pretrain, "sft": stage_sft,
         "evaluate": stage_evaluate}
  for i, stage in enumerate(STAGES, 1):
    marker = _marker(workdir, stage)
    if os.path.exists(marker):
      done = json.load(open(marker))
      _log(f"{i}/{len(STAGES)} {stage}: done earlier ({done['summary']})")
      continue
    _log(f"{i}/{len(STAGES)} {stage} ...")
    t0 = time.time()
    try:
      summary = fns[stage](workdir, scale)
    except (RuntimeError, subprocess.CalledProcessError) as e:
      _log(f"{i}/{len(STAGES)} {stage} FAILED: {e}")
      return 1
    with open(marker, "w") as f:
      json.dump({"summary": summary, "wall_s": round(time.time() - t0, 1)}, f)
    _log(f"{i}/{len(STAGES)} {stage}: {summary} ({time.time() - t0:.0f}s)")
  compare = os.path.join(workdir, "eval", "compare.md")
  if os.path.exists(compare):
    print(open(compare).read(), end="")
  _log(f"total {time.time() - start:.0f}s (this invocation)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Pretrain (or later: tune) a model, chosen by config.

  python -m experiments.train --config=experiments/configs/tiny_clm.py --workdir=/tmp/run \
      [--config.model.num_layers=4 ...]

Starting the same command again resumes from the newest checkpoint in WORKDIR.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (config, metrics, checkpoints).")
flags.mark_flags_as_required(["config", "workdir"])


def format_record(r: dict) -> str:
  """One progress line: step/total, loss, tokens/s, ETA (train) or eval metrics."""
  if r["split"] == "eval":
    floor = r.get("entropy_floor_bpb")
    extra = f" (floor {floor:.3f})" if floor is not None else ""
    return (f"eval  step {r['step']}: loss {r['loss']:.4f}  ppl {r['perplexity']:.2f}  "
            f"bits/byte {r['bits_per_byte']:.4f}{extra}")
  total, step = r["total_steps"], r["step"]
  eta = (total - step) * r["step_time_s"]
  return (f"train step {step}/{total}: loss {r['loss']:.4f}  lr {r['learning_rate']:.2e}  "
          f"{r['tokens_per_s']:,.0f} tok/s  ETA {time.strftime('%M:%S', time.gmtime(eta))}")


def _fault_injection():
  """LM_FAULT_KILL_AFTER_STEP=N: SIGKILL this process after step N once a checkpoint is on disk.

  For testing that a run killed like a preempted job resumes exactly.
  """
  kill_at = os.environ.get("LM_FAULT_KILL_AFTER_STEP")
  if not kill_at:
    return None

  def after_step(step):
    if step != int(kill_at):
      return
    ckpt_dir = os.path.join(_WORKDIR.value, "checkpoints")
    deadline = time.time() + 60
    while time.time() < deadline and not any(d.isdigit() for d in os.listdir(ckpt_dir)):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)

  return after_step


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:  # orbax and tfds log every step at INFO
    logging.set_verbosity(logging.WARNING)
  from lm.config import ConfigError
  from lm.train import train

  def progress(record):
    print(format_record(record), flush=True)

  try:
    summary = train(_CONFIG.value, _WORKDIR.value, progress=progress, after_step=_fault_injection())
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"done: {summary['workdir']} ({summary['num_params']:,} parameters)")


def parse_flags(argv):
  """absl parsing, with a one-line error for a misspelt --config.* field or a bad config file."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    msg = str(e).replace("\\n", " ").strip("'\"")
    print(f"error: {msg}\nFields can be listed with: python -c \"from lm.config import base_config; "
          f"print(base_config())\"", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

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
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile the train step for the mesh and report memory; no training.")
_DEVICE_MEMORY_GB = flags.DEFINE_float("device_memory_gb", 0.0, "With --dry_run: say whether it fits in this much.")
_PROFILE_STEPS = flags.DEFINE_string("profile_steps", "", "START,STOP: write a jax.profiler trace to WORKDIR/profile.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_s", 20, "Multi-process: a dead peer ends the run after this.")
flags.mark_flags_as_required(["config"])


def format_record(r: dict) -> str:
  """One progress line: step/total, loss, tokens/s, ETA (train) or eval metrics."""
  if r["split"] == "eval":
    names = {"loss": "loss", "loss_stderr": "±", "perplexity": "ppl", "bits_per_byte": "bits/byte",
             "accuracy": "acc", "mlm_accuracy": "mlm acc", "nsp_accuracy": "nsp acc"}
    parts = [f"{label} {r[key]:.4f}" for key, label in names.items() if key in r]
    floor = r.get("entropy_floor_bpb")
    extra = f" (floor {floor:.3f})" if floor is not None and "bits_per_byte" in r else ""
    return f"eval  step {r['step']}: " + "  ".join(parts) + extra
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
  import jax
  if not flags.FLAGS["verbosity"].present:  # orbax and tfds log every step at INFO
    logging.set_verbosity(logging.WARNING)
  from lm import distributed, host_memory
  from lm.config import ConfigError

  host_memory.apply_config(_CONFIG.value)  # before the backend starts (lm/host_memory.py)
  try:
    distributed.initialize(distributed.DistributedSettings(
        coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value, heartbeat_timeout_s=_HEARTBEAT.value))
    if _DRY_RUN.value:
      from lm.dry_run import dry_run, format_report
      print(format_report(dry_run(_CONFIG.value, device_memory_gb=_DEVICE_MEMORY_GB.value)))
      return
    if not _WORKDIR.value:
      raise ConfigError("--workdir is required: the run directory for config, metrics and checkpoints.")
    from lm.train import train

    def progress(record):
      if jax.process_index() == 0:
        print(format_record(record), flush=True)

    profile = tuple(int(x) for x in _PROFILE_STEPS.value.split(",")) if _PROFILE_STEPS.value else None
    if profile is not None and (len(profile) != 2 or profile[0] >= profile[1]):
      raise ConfigError(f"--profile_steps={_PROFILE_STEPS.value!r} must be START,STOP with START < STOP.")
    summary = train(_CONFIG.value, _WORKDIR.value, progress=progress, after_step=_fault_injection(),
                    profile_steps=profile)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if summary["preempted"]:
    print(f"preempted: checkpoint saved in {summary['workdir']}; run the same command to resume")
    return
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

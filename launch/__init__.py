"""How a run reaches hardware: local multi-process, TPU VM pods, SLURM GPU clusters.

  python -m launch --backend=local|tpu|slurm [--num_processes=N] [--dry_run] [flags] -- COMMAND...

Every backend turns the same COMMAND into a `Plan`: the exact text of what it will
run (printed by --dry_run) and a function that runs it. See launch/cli.py for flags.
"""
from launch.plan import Plan

__all__ = ["Plan"]

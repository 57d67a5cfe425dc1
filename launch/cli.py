"""`python -m launch --backend=local|tpu|slurm [flags] -- COMMAND...`

  # 2 processes x 4 fake CPU devices on this machine
  python -m launch --backend=local --num_processes=2 --devices_per_process=4 -- \
      python -m experiments.train --config=experiments/configs/tiny_clm.py --workdir=/tmp/run
  # a v4-32 pod slice (prints the gcloud commands; drop --dry_run to run them)
  python -m launch --backend=tpu --tpu_name=lm-v4 --zone=us-central2-b --accelerator_type=v4-32 \
      --dry_run -- python -m experiments.train --config=... --workdir=gs://bucket/run
  # 2 nodes x 8 GPUs, one process per GPU
  python -m launch --backend=slurm --nodes=2 --gpus_per_node=8 --partition=gpu --dry_run -- python -m ...
"""
from __future__ import annotations

import argparse
import sys

from launch.local import LocalOptions, local_plan
from launch.plan import REPO_ROOT, Plan, parse_env
from launch.slurm import SlurmOptions, slurm_plan
from launch.tpu import DEFAULT_STEPS, TpuOptions, tpu_plan

BACKENDS = ("local", "tpu", "slurm")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m launch", description="Run COMMAND on a backend.",
                              usage="python -m launch --backend=local|tpu|slurm [flags] -- COMMAND...")
  p.add_argument("--backend", choices=BACKENDS, required=True)
  p.add_argument("--num_processes", type=int, default=None,
                 help="local: processes to start (default 2); slurm: must equal nodes x processes per node")
  p.add_argument("--dry_run", action="store_true", help="print the exact commands / script, run nothing")
  p.add_argument("--log_dir", default="launch_logs", help="where logs (and the sbatch script) go")
  p.add_argument("--job_name", default="", help="names logs, the SLURM job (default lm / run)")
  p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment (repeat)")
  p.add_argument("--port", type=int, default=0, help="coordinator port (0: free port / derived from job id)")

  g = p.add_argument_group("local")
  g.add_argument("--devices_per_process", type=int, default=1, help="fake CPU devices per process")
  g.add_argument("--timeout_s", type=float, default=0.0, help="terminate everything after this (0: none)")
  g.add_argument("--grace_s", type=float, default=10.0, help="SIGTERM to SIGKILL delay when stopping")
  g.add_argument("--quiet", action="store_true", help="do not echo process 0's output")

  g = p.add_argument_group("tpu")
  g.add_argument("--tpu_name", default="lm-tpu")
  g.add_argument("--zone", default="")
  g.add_argument("--project", default="", help="(default: gcloud's configured project)")
  g.add_argument("--accelerator_type", default="v4-8", help="e.g. v4-8, v4-32, v5litepod-16")
  g.add_argument("--runtime_version", default="tpu-ubuntu2204-base")
  g.add_argument("--queued", action="store_true", help="create through a queued resource")
  g.add_argument("--spot", action="store_true")
  g.add_argument("--tpu_steps", default=",".join(DEFAULT_STEPS),
                 help="comma list of create,sync,install,run,fetch,delete")
  g.add_argument("--install_cmd", default=TpuOptions.install_cmd)
  g.add_argument("--src", default=REPO_ROOT, help="source tree to copy (tpu) or cd into (slurm)")

  g = p.add_argument_group("slurm")
  g.add_argument("--nodes", type=int, default=1)
  g.add_argument("--gpus_per_node", type=int, default=8)
  g.add_argument("--process_per", choices=("gpu", "node"), default="gpu")
  g.add_argument("--partition", default="")
  g.add_argument("--account", default="")
  g.add_argument("--time", default="04:00:00")
  g.add_argument("--cpus_per_task", type=int, default=0)
  g.add_argument("--sbatch_arg", action="append", default=[], help="extra #SBATCH option (repeat)")
  g.add_argument("--setup", action="append", default=[], help="shell line before srun (repeat)")
  g.add_argument("--script", default="", help="sbatch script path (default LOG_DIR/JOB.sbatch)")
  return p


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
  """Own flags before the first '--', the command after it."""
  if "--" not in argv:
    return argv, []
  i = argv.index("--")
  return argv[:i], argv[i + 1:]


def make_plan(args: argparse.Namespace, command: list[str]) -> Plan:
  if not command:
    raise ValueError("no command: put it after '--', e.g. python -m launch --backend=local -- python -c 'print(1)'")
  env = parse_env(args.env)
  if args.backend == "local":
    return local_plan(LocalOptions(
        num_processes=2 if args.num_processes is None else args.num_processes,
        devices_per_process=args.devices_per_process, log_dir=args.log_dir, port=args.port,
        timeout_s=args.timeout_s, grace_s=args.grace_s, echo=not args.quiet, env=env), command)
  if args.backend == "tpu":
    if args.num_processes is not None:
      raise ValueError("--num_processes does not apply to tpu: one process runs per worker of the slice "
                       "(choose the slice with --accelerator_type)")
    return tpu_plan(TpuOptions(
        tpu_name=args.tpu_name, zone=args.zone, project=args.project, accelerator_type=args.accelerator_type,
        runtime_version=args.runtime_version, queued=args.queued, spot=args.spot,
        steps=tuple(s for s in args.tpu_steps.split(",") if s), job_name=args.job_name or "run",
        log_dir=args.log_dir, src=args.src, install_cmd=args.install_cmd, env=env), command)
  opts = SlurmOptions(
      job_name=args.job_name or "lm", nodes=args.nodes, gpus_per_node=args.gpus_per_node,
      process_per=args.process_per, partition=args.partition, account=args.account, time=args.time,
      cpus_per_task=args.cpus_per_task, sbatch_args=tuple(args.sbatch_arg), setup=tuple(args.setup), env=env,
      port=args.port, log_dir=args.log_dir, script=args.script, src=args.src)
  if args.num_processes is not None and args.num_processes != opts.num_processes:
    raise ValueError(f"--num_processes={args.num_processes} does not match --nodes={opts.nodes} x "
                     f"{opts.tasks_per_node} per node = {opts.num_processes}; change --nodes, "
                     "--gpus_per_node or --process_per")
  return slurm_plan(opts, command)


def main(argv: list[str] | None = None) -> int:
  own, command = split_argv(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  args = parser.parse_args(own)
  try:
    plan = make_plan(args, command)
  except ValueError as e:
    parser.error(str(e))
  if args.dry_run:
    sys.stdout.write(plan.text)
    return 0
  return plan.run()

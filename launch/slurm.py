"""An sbatch script for a SLURM GPU cluster, submitted with `sbatch --parsable`.

One task per GPU (each bound to its GPU by --gpus-per-task=1) or one per node (all the
node's GPUs). The coordinator is the job's first node (`scontrol show hostnames`) on a
port derived from the job id, so jobs sharing a node do not collide; each task exports
LM_NUM_PROCESSES=$SLURM_NTASKS and LM_PROCESS_ID=$SLURM_PROCID for lm/distributed.py.
`srun --kill-on-bad-exit=1` ends the job when any task fails; task logs are
LOG_DIR/<job>-<id>-<task>.log. The script cds to the source tree, which must be on a
filesystem the nodes share.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys

from launch.plan import REPO_ROOT, Plan, env_prefix


@dataclasses.dataclass
class SlurmOptions:
  job_name: str = "lm"
  nodes: int = 1
  gpus_per_node: int = 8
  process_per: str = "gpu"  # "gpu" | "node"
  partition: str = ""
  account: str = ""
  time: str = "04:00:00"
  cpus_per_task: int = 0  # 0: the cluster default
  sbatch_args: tuple[str, ...] = ()  # extra #SBATCH options, e.g. "--exclusive"
  setup: tuple[str, ...] = ()  # shell lines before srun, e.g. "source .venv/bin/activate"
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  port: int = 0  # 0: 20000 + job id % 20000
  log_dir: str = "launch_logs"
  script: str = ""  # "": LOG_DIR/<job_name>.sbatch
  src: str = REPO_ROOT
  sbatch: str = "sbatch"

  @property
  def tasks_per_node(self) -> int:
    return self.gpus_per_node if self.process_per == "gpu" else 1

  @property
  def num_processes(self) -> int:
    return self.nodes * self.tasks_per_node

  def script_path(self) -> str:
    return os.path.abspath(self.script or os.path.join(self.log_dir, f"{self.job_name}.sbatch"))


def sbatch_script(o: SlurmOptions, command: list[str]) -> str:
  if o.process_per not in ("gpu", "node"):
    raise ValueError(f"--process_per={o.process_per!r} must be 'gpu' or 'node'")
  if o.nodes < 1 or o.gpus_per_node < 1:
    raise ValueError(f"--nodes={o.nodes} and --gpus_per_node={o.gpus_per_node} must be >= 1")
  log_dir = os.path.abspath(o.log_dir)
  head = ["#!/bin/bash", f"#SBATCH --job-name={o.job_name}", f"#SBATCH --nodes={o.nodes}",
          f"#SBATCH --ntasks-per-node={o.tasks_per_node}"]
  head.append("#SBATCH --gpus-per-task=1" if o.process_per == "gpu" else f"#SBATCH --gpus-per-node={o.gpus_per_node}")
  if o.cpus_per_task:
    head.append(f"#SBATCH --cpus-per-task={o.cpus_per_task}")
  head.append(f"#SBATCH --time={o.time}")
  head.append(f"#SBATCH --output={log_dir}/%x-%j.out")
  if o.partition:
    head.append(f"#SBATCH --partition={o.partition}")
  if o.account:
    head.append(f"#SBATCH --account={o.account}")
  head += [f"#SBATCH {a}" for a in o.sbatch_args]
  per = "GPU" if o.process_per == "gpu" else "node"
  port = str(o.port) if o.port else "$((20000 + SLURM_JOB_ID % 20000))"
  task = ('export LM_NUM_PROCESSES="$SLURM_NTASKS" LM_PROCESS_ID="$SLURM_PROCID"; '
          f"exec {shlex.join(command)}")
  plural = "es" if o.num_processes != 1 else ""
  body = [f"# {o.num_processes} process{plural}, one per {per}; jax.distributed from the LM_* variables",
          "set -euo pipefail", f"cd {shlex.quote(os.path.abspath(o.src))}", *o.setup,
          'export LM_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
          f':{port}"']
  if o.env:
    body.append(f"export {env_prefix(o.env)}")
  body.append(f"srun --kill-on-bad-exit=1 --output={log_dir}/%x-%j-%t.log bash -c {shlex.quote(task)}")
  return "\n".join(head + body) + "\n"


def slurm_plan(o: SlurmOptions, command: list[str]) -> Plan:
  script = sbatch_script(o, command)
  path = o.script_path()
  submit = f"{o.sbatch} --parsable {shlex.quote(path)}"
  text = f"# slurm: write {path}\n{script}# submit\n{submit}\n"
  return Plan(text=text, run=lambda: submit_script(o, script, path))


def submit_script(o: SlurmOptions, script: str, path: str) -> int:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  os.makedirs(os.path.abspath(o.log_dir), exist_ok=True)  # sbatch does not create the log dir
  with open(path, "w") as f:
    f.write(script)
  out = subprocess.run([o.sbatch, "--parsable", path], capture_output=True, text=True)
  if out.returncode:
    print(f"launch slurm: sbatch failed ({out.returncode}): {out.stderr.strip()}", file=sys.stderr)
    return out.returncode
  job = out.stdout.strip().split(";")[0]
  print(f"submitted job {job}: {path}\nlogs: {os.path.abspath(o.log_dir)}/{o.job_name}-{job}-<task>.log")
  return 0

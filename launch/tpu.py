"""gcloud commands for a Cloud TPU VM or pod slice: create or reuse, sync, install, run, fetch, delete.

Steps (choose with --tpu_steps; `delete` is not in the default):
  create   reuse the TPU VM if `describe` finds it, else create it (or a queued
           resource with --queued, waiting until it is ACTIVE)
  sync     tar the source tree (no .git, caches, venvs), scp it to every worker, unpack
  install  `pip install -e .` plus jax[tpu] on every worker
  run      the command on all workers at once (--worker=all); JAX finds its peers from
           the TPU environment; output is tee'd to ~/lm-logs/<job>-<host>.log on each worker
  fetch    copy every worker's log to LOG_DIR
  delete   delete the TPU VM (or the queued resource)
Each step is one shell command; the plan's text is exactly what runs, step by step,
and a failing `run` still fetches logs (and deletes, when asked) before returning.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys

from launch.plan import REPO_ROOT, Plan, env_prefix

STEPS = ("create", "sync", "install", "run", "fetch", "delete")
DEFAULT_STEPS = ("create", "sync", "install", "run", "fetch")
TAR_EXCLUDES = (".git", "__pycache__", "*.egg-info", ".venv", "venv", ".pytest_cache", "./runs",
                "./launch_logs")


@dataclasses.dataclass
class TpuOptions:
  tpu_name: str = "lm-tpu"
  zone: str = ""
  project: str = ""
  accelerator_type: str = "v4-8"
  runtime_version: str = "tpu-ubuntu2204-base"
  queued: bool = False  # create through a queued resource (waits for capacity)
  spot: bool = False
  steps: tuple[str, ...] = DEFAULT_STEPS
  job_name: str = "run"  # names the log files
  log_dir: str = "launch_logs"
  remote_dir: str = "lm"  # under the remote home
  src: str = REPO_ROOT
  install_cmd: str = 'python3 -m pip install -e . "jax[tpu]"'
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  gcloud: str = "gcloud"


def _where(o: TpuOptions) -> str:
  return f"--zone={o.zone}" + (f" --project={o.project}" if o.project else "")


def _vm(o: TpuOptions, verb: str) -> str:
  return f"{o.gcloud} compute tpus tpu-vm {verb} {o.tpu_name} {_where(o)}"


def _scp(o: TpuOptions, src: str, dst: str, worker: str) -> str:
  return f"{o.gcloud} compute tpus tpu-vm scp {src} {dst} --worker={worker} {_where(o)}"


def _ssh_all(o: TpuOptions, remote: str) -> str:
  return f"{_vm(o, 'ssh')} --worker=all --command={shlex.quote(remote)}"


def _create(o: TpuOptions) -> str:
  spot = " --spot" if o.spot else ""
  exists = f"{_vm(o, 'describe')} > /dev/null 2>&1"
  if not o.queued:
    return (f"{exists} || {_vm(o, 'create')} --accelerator-type={o.accelerator_type} "
            f"--version={o.runtime_version}{spot}")
  qr = f"{o.gcloud} compute tpus queued-resources"
  return (f"{exists} || {{ {qr} create {o.tpu_name} --node-id={o.tpu_name} {_where(o)} "
          f"--accelerator-type={o.accelerator_type} --runtime-version={o.runtime_version}{spot} && "
          f"while true; do state=$({qr} describe {o.tpu_name} {_where(o)} --format='value(state.state)'); "
          f'echo "queued resource {o.tpu_name}: $state"; '
          f'case "$state" in ACTIVE) break;; FAILED|SUSPENDED) exit 1;; esac; sleep 30; done; }}')


def _tarball(o: TpuOptions) -> str:
  return f"/tmp/{o.tpu_name}-code.tar.gz"


def _sync(o: TpuOptions) -> str:
  excludes = " ".join(f"--exclude={shlex.quote(e)}" for e in TAR_EXCLUDES)
  return (f"tar -czf {_tarball(o)} {excludes} -C {shlex.quote(os.path.abspath(o.src))} . && "
          f"{_scp(o, _tarball(o), f'{o.tpu_name}:{o.remote_dir}-code.tar.gz', 'all')} && "
          + _ssh_all(o, f"mkdir -p ~/{o.remote_dir} && tar -xzf ~/{o.remote_dir}-code.tar.gz -C ~/{o.remote_dir}"))


def _install(o: TpuOptions) -> str:
  return _ssh_all(o, f"cd ~/{o.remote_dir} && {o.install_cmd}")


def _run(o: TpuOptions, command: list[str]) -> str:
  env = env_prefix(o.env) + " " if o.env else ""
  remote = (f"cd ~/{o.remote_dir} && mkdir -p ~/lm-logs && set -o pipefail && "
            f"{{ {env}{shlex.join(command)}; }} 2>&1 | tee ~/lm-logs/{o.job_name}-$(hostname).log")
  return _ssh_all(o, remote)


def _fetch(o: TpuOptions) -> str:
  log_dir = shlex.quote(os.path.abspath(o.log_dir))
  return (f"mkdir -p {log_dir} && n=$({_vm(o, 'describe')} --format='value(networkEndpoints.len())') && "
          f"for w in $(seq 0 $((n - 1))); do "
          f"{_scp(o, shlex.quote(f'{o.tpu_name}:~/lm-logs/{o.job_name}-*.log'), log_dir + '/', '$w')}; done")


def _delete(o: TpuOptions) -> str:
  if o.queued:
    return f"{o.gcloud} compute tpus queued-resources delete {o.tpu_name} {_where(o)} --force --quiet"
  return f"{_vm(o, 'delete')} --quiet"


def tpu_steps(o: TpuOptions, command: list[str]) -> list[tuple[str, str]]:
  """[(step, shell command)] in execution order."""
  if not o.zone:
    raise ValueError("the tpu backend needs --zone (e.g. --zone=us-central2-b)")
  unknown = [s for s in o.steps if s not in STEPS]
  if unknown:
    raise ValueError(f"--tpu_steps: unknown step(s) {unknown}; choose from {','.join(STEPS)}")
  build = {"create": _create, "sync": _sync, "install": _install, "run": lambda o: _run(o, command),
           "fetch": _fetch, "delete": _delete}
  return [(s, build[s](o)) for s in STEPS if s in o.steps]


_TITLES = {"create": "create or reuse the TPU VM", "sync": "copy the code to every worker",
           "install": "install on every worker", "run": "run the command on all workers",
           "fetch": "fetch the logs", "delete": "delete the TPU VM"}


def tpu_plan(o: TpuOptions, command: list[str]) -> Plan:
  steps = tpu_steps(o, command)
  lines = [f"# tpu: {o.tpu_name} ({o.accelerator_type}, {o.zone}{', queued' if o.queued else ''})"]
  for name, cmd in steps:
    lines += [f"# {name}: {_TITLES[name]}", cmd]
  return Plan(text="\n".join(lines) + "\n", run=lambda: run_steps(steps))


def run_steps(steps: list[tuple[str, str]]) -> int:
  """Run in order; after a failed `run`, still fetch and delete; other failures stop."""
  status = 0
  for name, cmd in steps:
    if status and name not in ("fetch", "delete"):
      continue
    print(f"launch tpu: {name}", file=sys.stderr, flush=True)
    code = subprocess.run(["bash", "-c", cmd]).returncode
    if code:
      print(f"launch tpu: step {name!r} failed with status {code}", file=sys.stderr)
      if name not in ("run", "fetch", "delete"):
        return code
      status = status or code
  return status

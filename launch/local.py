"""N processes on this machine joined by jax.distributed on 127.0.0.1 (fake CPU devices each).

Each process gets LM_COORDINATOR_ADDRESS / LM_NUM_PROCESSES / LM_PROCESS_ID (read by
lm/distributed.py), JAX_PLATFORMS=cpu and XLA_FLAGS with its own fake device count,
and writes to LOG_DIR/process_<i>.log (process 0 is also echoed here). When one
process fails the others are terminated (their process groups: SIGTERM, then SIGKILL
after a grace period) and its exit status is returned; a timeout returns 124.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from launch.plan import Plan, env_prefix

_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")


@dataclasses.dataclass
class LocalOptions:
  num_processes: int = 2
  devices_per_process: int = 1
  log_dir: str = "launch_logs"
  port: int = 0  # 0: a free port, picked when the plan is made
  timeout_s: float = 0.0  # 0: no limit
  grace_s: float = 10.0  # SIGTERM -> SIGKILL
  echo: bool = True  # copy process 0's output to stdout
  env: dict[str, str] = dataclasses.field(default_factory=dict)


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def xla_flags(devices: int, inherited: str = "") -> str:
  """Inherited XLA_FLAGS with the fake-device count replaced."""
  kept = _DEVICE_FLAG.sub("", inherited).split()
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def process_env(opts: LocalOptions, port: int, rank: int) -> dict[str, str]:
  """The variables this launcher sets for process `rank` (on top of os.environ)."""
  return {
      "LM_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "LM_NUM_PROCESSES": str(opts.num_processes),
      "LM_PROCESS_ID": str(rank),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": xla_flags(opts.devices_per_process, os.environ.get("XLA_FLAGS", "")),
      **opts.env,
  }


def log_path(log_dir: str, rank: int) -> str:
  return os.path.join(log_dir, f"process_{rank}.log")


def local_plan(opts: LocalOptions, command: list[str]) -> Plan:
  if opts.num_processes < 1:
    raise ValueError(f"--num_processes={opts.num_processes} must be >= 1")
  if opts.devices_per_process < 1:
    raise ValueError(f"--devices_per_process={opts.devices_per_process} must be >= 1")
  port = opts.port or free_port()
  log_dir = os.path.abspath(opts.log_dir)
  timeout = f", timeout {opts.timeout_s:g} s" if opts.timeout_s else ""
  lines = [f"# local: {opts.num_processes} processes x {opts.devices_per_process} CPU devices, "
           f"coordinator 127.0.0.1:{port}, logs in {log_dir}{timeout}",
           f"mkdir -p {shlex.quote(log_dir)}"]
  for rank in range(opts.num_processes):
    lines.append(f"{env_prefix(process_env(opts, port, rank))} {shlex.join(command)} "
                 f"> {shlex.quote(log_path(log_dir, rank))} 2>&1 &")
  lines.append("wait")
  return Plan(text="\n".join(lines) + "\n",
              run=lambda: run_processes(opts, command, port, log_dir))


def _tee(stream, log_file, echo: bool) -> None:
  for line in iter(stream.readline, b""):
    log_file.write(line)
    log_file.flush()
    if echo:
      sys.stdout.buffer.write(line)
      sys.stdout.flush()


def _terminate(procs: list[subprocess.Popen], grace_s: float) -> None:
  """SIGTERM every live process group, SIGKILL what is left after grace_s."""
  live = [p for p in procs if p.poll() is None]
  for p in live:
    _signal_group(p, signal.SIGTERM)
  deadline = time.monotonic() + grace_s
  while time.monotonic() < deadline and any(p.poll() is None for p in live):
    time.sleep(0.05)
  for p in live:
    if p.poll() is None:
      _signal_group(p, signal.SIGKILL)
      p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(p.pid, sig)  # the command's own children too (start_new_session below)
  except ProcessLookupError:
    pass


def _status(code: int) -> int:
  return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, like a shell


def _tail(path: str, lines: int = 20) -> str:
  try:
    with open(path, errors="replace") as f:
      return "".join(f.readlines()[-lines:])
  except OSError:
    return ""


def run_processes(opts: LocalOptions, command: list[str], port: int, log_dir: str) -> int:
  os.makedirs(log_dir, exist_ok=True)
  procs, files, threads = [], [], []
  try:
    for rank in range(opts.num_processes):
      env = {**os.environ, **process_env(opts, port, rank)}
      log = open(log_path(log_dir, rank), "wb")
      files.append(log)
      if rank == 0:
        p = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        t = threading.Thread(target=_tee, args=(p.stdout, log, opts.echo), daemon=True)
        t.start()
        threads.append(t)
      else:
        p = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
      procs.append(p)
    return _supervise(opts, procs, log_dir)
  except OSError as e:  # e.g. the command does not exist
    print(f"launch: cannot start {command[0]!r}: {e}", file=sys.stderr)
    _terminate(procs, opts.grace_s)
    return 127
  except KeyboardInterrupt:
    print("launch: interrupted; terminating all processes", file=sys.stderr)
    _terminate(procs, opts.grace_s)
    return 130
  finally:
    for t in threads:
      t.join(timeout=5)
    for f in files:
      f.close()


def _supervise(opts: LocalOptions, procs: list[subprocess.Popen], log_dir: str) -> int:
  start = time.monotonic()
  while True:
    codes = [p.poll() for p in procs]
    failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
    if failed:
      rank, code = failed[0]
      print(f"launch: process {rank} exited with status {_status(code)}; terminating the others. "
            f"Last lines of {log_path(log_dir, rank)}:\n{_tail(log_path(log_dir, rank))}", file=sys.stderr)
      _terminate(procs, opts.grace_s)
      return _status(code)
    if all(c == 0 for c in codes):
      return 0
    if opts.timeout_s and time.monotonic() - start > opts.timeout_s:
      running = [r for r, c in enumerate(codes) if c is None]
      print(f"launch: timeout after {opts.timeout_s:g} s with processes {running} still running; "
            f"terminating them (logs in {log_dir})", file=sys.stderr)
      _terminate(procs, opts.grace_s)
      return 124
    time.sleep(0.05)

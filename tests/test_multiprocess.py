"""A real 2-process x 4-device run (jax.distributed over 127.0.0.1, gloo) matches 1 process x 8 devices,
also after both processes are killed and restarted."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
from tests.helpers import tiny_config

def get_config():
  return tiny_config({data_dir!r}, **{{"train.num_steps": 10, "train.checkpoint_every": 4, "train.eval_every": 5,
                                       "mesh.data": 4, "mesh.fsdp": 2}})
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, extra=None) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  env.update(extra or {})
  return env


def _train_cmd(config_path, workdir):
  return [sys.executable, "-m", "experiments.train", f"--config={config_path}", f"--workdir={workdir}"]


def _run_two_processes(config_path, workdir, extra_env=None):
  port = _free_port()
  procs = [subprocess.Popen(_train_cmd(config_path, workdir) + [
      f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(4, extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=600)
    outs.append((p.returncode, out))
  return outs


@pytest.mark.slow
def test_two_processes_equal_one_process_and_resume(tmp_path):
  config_path = tmp_path / "cfg.py"
  config_path.write_text(CONFIG.format(data_dir=str(tmp_path / "data")))
  single = str(tmp_path / "single")
  r = subprocess.run(_train_cmd(config_path, single), cwd=REPO, env=_env(8), capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]

  multi = str(tmp_path / "multi")
  outs = _run_two_processes(config_path, multi, {"LM_FAULT_KILL_AFTER_STEP": "6"})
  assert [code for code, _ in outs] == [-9, -9], [o[-2000:] for _, o in outs]
  assert "4" in os.listdir(os.path.join(multi, "checkpoints"))
  outs = _run_two_processes(config_path, multi)
  assert [code for code, _ in outs] == [0, 0], [o[-2000:] for _, o in outs]
  a, b = losses(single), losses(multi)
  assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 11))
  np.testing.assert_allclose([l for _, l in b], [l for _, l in a], rtol=2e-5)
  np.testing.assert_allclose([l for _, l in losses(multi, "eval")], [l for _, l in losses(single, "eval")],
                             rtol=2e-5)


@pytest.mark.slow
def test_dead_peer_ends_the_run_within_30s(tmp_path):
  import time

  config_path = tmp_path / "cfg.py"
  config_path.write_text(CONFIG.format(data_dir=str(tmp_path / "data")).replace(
      '"train.num_steps": 10', '"train.num_steps": 400'))
  port = _free_port()
  procs = []
  for i in range(2):
    extra = {"LM_FAULT_KILL_AFTER_STEP": "6"} if i == 1 else {}
    procs.append(subprocess.Popen(_train_cmd(config_path, str(tmp_path / "run")) + [
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
        "--heartbeat_timeout_s=10"], cwd=REPO, env=_env(4, extra), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  procs[1].wait(timeout=600)
  died = time.monotonic()
  out, _ = procs[0].communicate(timeout=120)
  waited = time.monotonic() - died
  assert procs[1].returncode == -9
  assert procs[0].returncode != 0, out[-2000:]
  assert waited <= 30, (waited, out[-2000:])
  assert "stopped sending heartbeats" in out and "another task died" in out, out[-3000:]

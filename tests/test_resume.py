"""A run killed after a checkpoint and started again with the same command matches an uninterrupted run bitwise."""
import os
import subprocess
import sys

import pytest

from tests.helpers import losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
from tests.helpers import tiny_config

def get_config():
  return tiny_config({data_dir!r}, **{{"train.num_steps": 12, "train.checkpoint_every": 5,
                                       "train.eval_every": 6, "mesh.data": 2, "mesh.fsdp": 2}})
"""


def _run(config_path, workdir, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run([sys.executable, "-m", "experiments.train", f"--config={config_path}",
                         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_run_resumes_bitwise(tmp_path):
  config_path = tmp_path / "cfg.py"
  config_path.write_text(CONFIG.format(data_dir=str(tmp_path / "data")))
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  r = _run(config_path, full)
  assert r.returncode == 0, r.stderr[-3000:]
  r = _run(config_path, killed, {"LM_FAULT_KILL_AFTER_STEP": "8"})
  assert r.returncode == -9, (r.returncode, r.stderr[-3000:])
  # step n-1 is logged once step n is dispatched: it died with steps 6-7 logged past the checkpoint at 5
  assert max(s for s, _ in losses(killed)) == 7
  assert "12" not in os.listdir(os.path.join(killed, "checkpoints"))
  r = _run(config_path, killed)
  assert r.returncode == 0, r.stderr[-3000:]
  assert losses(killed) == losses(full)  # exact float equality, every step 1..12
  assert losses(killed, "eval") == losses(full, "eval")
  assert [s for s, _ in losses(full)] == list(range(1, 13))

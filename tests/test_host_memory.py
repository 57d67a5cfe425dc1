"""lm/host_memory.py: freed host memory is reused, so repeated steps stop page-faulting."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Minor page faults per call of a jitted op whose 64 MiB output is freed after each call:
# the median over 20 calls, so that a call during which the heap still grew (it can, when
# the machine is busy and a freed buffer is released late) does not decide the result.
_FAULTS = """
import resource, statistics, sys
from lm import host_memory
applied = host_memory.reuse_freed_host_memory() if sys.argv[1] == "on" else False
import jax, jax.numpy as jnp
a = jnp.ones((4096, 4096)); f = jax.jit(lambda a: a + 1)
for _ in range(10): jax.block_until_ready(f(a))
faults = []
for _ in range(20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(a))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, statistics.median(faults))
"""


def _faults_per_call(mode):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  p = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  applied, faults = p.stdout.split()
  return applied == "True", float(faults)


def test_reuse_removes_per_call_page_faults():
  if not sys.platform.startswith("linux"):
    return
  applied, faults_on = _faults_per_call("on")
  _, faults_off = _faults_per_call("off")
  assert applied
  # glibc default: the 64 MiB output is a fresh mmap each call, 16384 4-KiB pages faulted in
  assert faults_off > 8000
  # with reuse a typical call reuses the same pages; without it every call faults them in
  assert faults_on < faults_off / 4


def test_too_late_is_refused_with_a_warning(caplog):
  import jax

  from lm import host_memory
  jax.devices()  # the backend has started in this process
  if host_memory._applied:  # an entry point in this process applied it before the backend
    return
  assert host_memory.reuse_freed_host_memory() is False
  assert "backend has started" in caplog.text


def test_config_field_off_leaves_glibc_defaults():
  from lm import host_memory
  from lm.config import base_config
  cfg = base_config()
  assert cfg.train.reuse_host_memory is True
  with cfg.unlocked():
    cfg.train.reuse_host_memory = False
  assert host_memory.apply_config(cfg) is False

"""Tests run on CPU with 8 fake devices; set before jax is imported anywhere."""
import atexit
import os
import shutil
import tempfile

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep TensorFlow (imported lazily by tfds) quiet and off any accelerator.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# XLA:CPU compiles are most of the suite's time, and many tests compile the same program again: a
# resumed or restarted run, a process started again. A persistent compilation cache, new for each
# pytest process (each xdist worker: JAX writes entries without a lock) and passed on to the runs tests
# start as subprocesses, loads those instead. Programs are keyed by their HLO, flags and devices.
_cache = tempfile.mkdtemp(prefix="lm-tests-jax-cache-")
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

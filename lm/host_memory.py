"""Keep freed host memory for reuse, so XLA:CPU's per-step buffers do not page-fault every step.

XLA:CPU allocates each execution's large buffers (logits, activations, the temp
arena) with glibc malloc from its worker threads. glibc serves anything over
32 MiB from a fresh mmap and unmaps it on free, so every train step writes to
new pages: the kernel zero-fills them one 4 KiB fault at a time. On the
ref_tiny benchmark that was a quarter of the step (experiments/BENCHMARKS.md).

`reuse_freed_host_memory()` tells glibc to serve every thread from the main heap
(one arena), never to mmap, and never to give freed memory back to the OS: after
the first step the same pages are reused. The cost: the process's RSS stays at
its high-water mark. It must run before the JAX backend starts (its threads
pick their malloc arena when they first allocate), so entry points call it
before `jax.devices()`; later it does nothing and says why.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = -1  # M_TRIM_THRESHOLD is a size_t inside glibc: -1 means never trim (2**31-1 would still trim a >2 GiB free top)

_applied = False


def _backend_started() -> bool:
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge
  return xla_bridge.backends_are_initialized()


def reuse_freed_host_memory() -> bool:
  """Apply the glibc settings above; True if they are in effect for this process."""
  global _applied
  if _applied:
    return True
  if not sys.platform.startswith("linux"):
    return False
  if _backend_started():
    logging.warning("reuse_host_memory: the JAX backend has started already, so its threads keep "
                    "their own malloc arenas; call lm.host_memory.reuse_freed_host_memory() first.")
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  ok = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
        and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1)
  _applied = ok
  return ok


def apply_config(cfg) -> bool:
  """`train.reuse_host_memory` of a run config: apply it (True) or leave glibc's defaults."""
  return bool(cfg.train.reuse_host_memory) and reuse_freed_host_memory()

"""Compiles a kernel's C++ source into a shared library on first use, cached on disk.

The library is built for this machine's CPU (-march=native), so the cache key holds
the source, the flags, the compiler, the jaxlib version (whose FFI headers it
includes) and the CPU model. Concurrent builders (several processes of one run)
each write a private file and rename it into place, so nobody loads a half-written
library. Nothing is downloaded: a machine without a C++ compiler gets a
`KernelBuildError` and the callers fall back to their XLA path.

The cache lives in $LM_KERNEL_CACHE, else $XDG_CACHE_HOME/lm_scaling/kernels, else
~/.cache/lm_scaling/kernels.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jaxlib

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC", "-w")


class KernelBuildError(RuntimeError):
  """The kernel could not be compiled on this machine (the message says why)."""


def cache_dir() -> Path:
  if os.environ.get("LM_KERNEL_CACHE"):
    return Path(os.environ["LM_KERNEL_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "lm_scaling" / "kernels"


def _cpu_model() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith(("model name", "flags")):
        return line
  except OSError:
    pass
  return platform.processor()


def _compiler() -> str:
  if os.environ.get("CXX"):
    if not shutil.which(os.environ["CXX"]):
      raise KernelBuildError(f"the C++ compiler CXX={os.environ['CXX']} does not exist")
    return os.environ["CXX"]
  compiler = shutil.which("g++") or shutil.which("c++")
  if not compiler:
    raise KernelBuildError("no C++ compiler found (set CXX or install g++)")
  return compiler


@functools.cache
def build(source_name: str) -> Path:
  """The shared library of lm/kernels/<source_name>, compiled if not cached."""
  source = Path(__file__).with_name(source_name)
  compiler = _compiler()
  include = Path(jaxlib.__file__).parent / "include"
  key = hashlib.sha256("\n".join(
      [source.read_text(), " ".join(FLAGS), compiler, jaxlib.__version__, _cpu_model()]
  ).encode()).hexdigest()[:16]
  target = cache_dir() / f"{source.stem}-{key}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  log.info("compiling %s into %s (once per machine and source)", source.name, target)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
  os.close(fd)
  try:
    result = subprocess.run([compiler, *FLAGS, f"-I{include}", str(source), "-o", tmp],
                            capture_output=True, text=True)
    if result.returncode:
      raise KernelBuildError(f"compiling {source} failed:\n{result.stderr[-2000:]}")
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return target

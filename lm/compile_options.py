"""XLA compile options for a model's jitted steps: which library runs the matmuls on CPU.

XLA:CPU hands most dots to YNNPACK by default. Its `xla_cpu_use_onednn` option with
the "dot" library fusion hands them to oneDNN instead, which runs this codebase's
train steps faster on the project's CPU (AMD EPYC, AVX-512; experiments/BENCHMARKS.md):
in-process A/B, ref_tiny x0.967 and ref_small x0.975 of the step time, mostly
from the small batched GEMMs of the attention core and the projections' GEMMs
running alone at higher speed. The f32 2048^3 matmul behind the CPU peak is not
faster with it (469 vs 481 GFLOP/s), and `lm/metrics.py` measures the peak with
both libraries and keeps the better, so MFU never gains from the choice itself.

`model.matmul_library`: "auto" (oneDNN on CPU when this jaxlib has it, XLA's
default otherwise) | "onednn" (CPU only; an error elsewhere) | "xla" (XLA's default).
With oneDNN on a CPU that has AVX-512, XLA's own loops are also compiled for 512-bit
vectors (`WIDE_VECTOR_OPTIONS`); "xla" keeps every XLA default.
The options apply per compiled function (`jit`, `compile_lowered` below), never
process-wide, so a run's other programs are unaffected.

Two limits of XLA's (experimental) oneDNN path, found here:
- Its "dot" fusion type, which also fuses element-wise ops into a dot, compiled a
  tiny model's backward to a program that died of an illegal instruction on this
  CPU ("partition compile failed"). "individual dot" hands over only the dots, and
  measured as fast on the reference configs; it is what this module uses.
- A oneDNN thunk returns a pooled per-run object to its executable shortly after
  the run's outputs are ready. An executable destroyed in that window aborts the
  process (object_pool.h: "Check failed: available_.size() == num_created_"), as a
  matmul measured and dropped at once did in 6 runs of 8. So every executable
  compiled with the oneDNN options is kept alive (the newest `KEEP_ALIVE`, which
  bounds the memory a long process of many runs holds).
"""
from __future__ import annotations

import collections
import functools

import jax

from lm.config import ConfigError

MATMUL_LIBRARIES = ("auto", "onednn", "xla")

ONEDNN_OPTIONS = {
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}

# XLA:CPU's own loops (norms, activations, copies, the softmax) in 512-bit vectors
# where the CPU has AVX-512; LLVM's default there is 256. In-process A/B on ref_tiny,
# alternating single steps: x0.991, x0.990, x0.991, x0.996, x0.991 of the step time over
# five measurements; ref_small x0.998 (experiments/BENCHMARKS.md).
WIDE_VECTOR_OPTIONS = {"xla_cpu_prefer_vector_width": 512}

KEEP_ALIVE = 64
_kept = collections.deque(maxlen=KEEP_ALIVE)


def keep_alive(obj, options: dict | None):
  """obj, held for the rest of the process (up to KEEP_ALIVE newest) if compiled with `options`."""
  if options:
    _kept.append(obj)
  return obj


def jit(fun, options: dict | None, **jit_kwargs):
  """jax.jit(fun, **jit_kwargs) compiled with `options` (None: XLA's defaults), kept alive."""
  return keep_alive(jax.jit(fun, compiler_options=options, **jit_kwargs), options)


def compile_lowered(lowered, options: dict | None):
  """lowered.compile() with `options`, kept alive."""
  return keep_alive(lowered.compile(compiler_options=options), options)


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
  """Whether this jaxlib's XLA:CPU takes the oneDNN options (they are experimental)."""
  try:
    compile_lowered(jax.jit(lambda x: x @ x).lower(jax.ShapeDtypeStruct((8, 8), "float32")),
                    ONEDNN_OPTIONS)
  except Exception:  # an unknown option or enum value: XLA refuses the compile
    return False
  return True


def matmul_compiler_options(library: str, backend: str | None = None) -> dict | None:
  """The compile options for `library` (model.matmul_library) on `backend` (default: JAX's).

  None means XLA's defaults. Raises ConfigError for an unknown library, or for
  "onednn" where it cannot apply.
  """
  if library not in MATMUL_LIBRARIES:
    raise ConfigError(f"model.matmul_library={library!r} is invalid: use one of "
                      f"{', '.join(MATMUL_LIBRARIES)}.")
  backend = backend or jax.default_backend()
  if library == "xla" or (library == "auto" and backend != "cpu"):
    return None
  if backend != "cpu":
    raise ConfigError(f"model.matmul_library='onednn' applies to CPUs only, and this run's "
                      f"backend is {backend!r}: use 'auto' or 'xla'.")
  if not onednn_available():
    if library == "auto":
      return None
    raise ConfigError("model.matmul_library='onednn': this jaxlib's XLA:CPU refuses the oneDNN "
                      "options (xla_cpu_use_onednn); use 'auto' or 'xla'.")
  return {**ONEDNN_OPTIONS, **(WIDE_VECTOR_OPTIONS if cpu_has_avx512() else {})}


@functools.lru_cache(maxsize=None)
def cpu_has_avx512() -> bool:
  """Whether this host's CPU has AVX-512 (Linux /proc/cpuinfo; False where unreadable)."""
  try:
    with open("/proc/cpuinfo") as f:
      return any(line.startswith("flags") and " avx512f" in line for line in f)
  except OSError:
    return False


def model_compiler_options(model_cfg) -> dict | None:
  """`matmul_compiler_options` for a ModelConfig (or anything with .matmul_library)."""
  return matmul_compiler_options(getattr(model_cfg, "matmul_library", "xla"))

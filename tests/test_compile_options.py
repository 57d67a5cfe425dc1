"""model.matmul_library: which library XLA:CPU runs the matmuls with (lm/compile_options.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.compile_options import (ONEDNN_OPTIONS, WIDE_VECTOR_OPTIONS, compile_lowered,
                                cpu_has_avx512, matmul_compiler_options, model_compiler_options,
                                onednn_available)
from lm.config import ConfigError, ModelConfig
from lm.models import make_model, validate_model_config

needs_onednn = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not onednn_available(),
    reason="XLA:CPU with the oneDNN options (this jaxlib refuses them, or no CPU backend)")


# A oneDNN fusion in compiled HLO text (a bare "onednn" also matches source names in metadata).
ONEDNN_FUSION = "%onednn_fusion"


def test_options_per_library_and_backend():
  assert matmul_compiler_options("xla", "cpu") is None
  assert matmul_compiler_options("auto", "gpu") is None  # XLA's choice on accelerators
  assert matmul_compiler_options("xla", "tpu") is None
  if onednn_available():
    # oneDNN's options, plus 512-bit vectors for XLA's own loops where the CPU has AVX-512.
    expected = {**ONEDNN_OPTIONS, **(WIDE_VECTOR_OPTIONS if cpu_has_avx512() else {})}
    assert matmul_compiler_options("auto", "cpu") == expected
    assert matmul_compiler_options("onednn", "cpu") == expected
  # A ModelConfig's field picks it; an older config object without it means XLA's default.
  assert model_compiler_options(ModelConfig(matmul_library="xla")) is None
  assert model_compiler_options(object()) is None


def test_bad_library_is_a_config_error_naming_the_field():
  with pytest.raises(ConfigError, match=r"model.matmul_library='mkl'.*auto, onednn, xla"):
    matmul_compiler_options("mkl", "cpu")
  with pytest.raises(ConfigError, match=r"model.matmul_library='onednn' applies to CPUs only.*'gpu'"):
    matmul_compiler_options("onednn", "gpu")
  with pytest.raises(ConfigError, match=r"model.matmul_library"):
    validate_model_config(ModelConfig(matmul_library="mkl"))


def _loss_and_grads(library: str):
  cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    mlp_dim=48, max_len=16, matmul_library=library)
  model = make_model(cfg)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 16)), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), ids)

  def loss(p):
    return -jnp.mean(jax.nn.log_softmax(model.apply(p, ids))[..., 0])

  compiled = compile_lowered(jax.jit(jax.value_and_grad(loss)).lower(params), model_compiler_options(cfg))
  return compiled.as_text(), compiled(params)


@needs_onednn
def test_onednn_runs_the_matmuls_with_the_same_numbers():
  """"auto" on CPU compiles the model's matmuls to oneDNN fusions ("xla" does not), and the
  loss and every gradient equal the default path's to float32 rounding."""
  hlo_auto, (loss_auto, grads_auto) = _loss_and_grads("auto")
  hlo_xla, (loss_xla, grads_xla) = _loss_and_grads("xla")
  assert ONEDNN_FUSION in hlo_auto and ONEDNN_FUSION not in hlo_xla
  np.testing.assert_allclose(loss_auto, loss_xla, rtol=1e-5)
  flat_xla = jax.tree_util.tree_leaves_with_path(grads_xla)
  flat_auto = jax.tree_util.tree_leaves(grads_auto)
  assert len(flat_xla) == len(flat_auto) > 0
  for (path, a), b in zip(flat_xla, flat_auto):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@needs_onednn
def test_train_step_is_compiled_with_the_models_library(tmp_path):
  """The benchmark's compiled step (experiments/train_step.py) carries the config's choice."""
  from experiments.train_step import build_train_step
  from tests.helpers import tiny_config

  texts = {}
  for library in ("auto", "xla"):
    cfg = tiny_config(str(tmp_path), **{"model.matmul_library": library})
    texts[library] = build_train_step(cfg).compiled.as_text()
  assert ONEDNN_FUSION in texts["auto"] and ONEDNN_FUSION not in texts["xla"]


@needs_onednn
def test_dropping_a_onednn_executable_right_after_its_run_does_not_abort():
  """XLA's oneDNN thunks hand a pooled object back just after a run's outputs are ready;
  an executable destroyed before that aborts the process. compile_lowered keeps them
  alive. The race needs a busy machine: two processes side by side, each measuring a
  matmul with both libraries and dropping the executables, as lm/metrics.py does.
  Without the keep-alive about half of such processes aborted on the project's CPU."""
  import os
  import subprocess
  import sys

  code = ("import jax, jax.numpy as jnp\n"
          "from lm.compile_options import ONEDNN_OPTIONS, compile_lowered\n"
          "def measure():\n"
          "  a = jnp.ones((1024, 1024))\n"
          "  lowered = jax.jit(lambda x: x @ x).lower(a)\n"
          "  fns = [compile_lowered(lowered, o) for o in (None, ONEDNN_OPTIONS)]\n"
          "  for _ in range(5):\n"
          "    for f in fns:\n"
          "      f(a).block_until_ready()\n"
          "for _ in range(10):\n"
          "  measure()\n"
          "print('done')\n")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = [subprocess.Popen([sys.executable, "-c", code], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "done" in out, err[-2000:]

"""Kernel gradients as row-major GEMMs (lm/weight_grads.py): same values as autodiff, and
no transposed-A matmul left in the compiled CPU program."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.config import ModelConfig
from lm.models import make_model
from lm.weight_grads import kernel_grad_plan, token_matmul, weight_grad_backend

# (spec, x shape, kernel shape): every token einsum the models use
SPECS = [
    ("bd,df->bf", (48, 16), (16, 40)),  # mlp up (x is the smaller operand)
    ("bf,fd->bd", (48, 40), (40, 16)),  # mlp down (dy is the smaller operand)
    ("bd,dhk->bhk", (48, 16), (16, 4, 8)),  # query/key/value
    ("bhk,hkd->bd", (48, 4, 8), (4, 8, 16)),  # attention out
    ("bd,vd->bv", (48, 16), (96, 16)),  # tied logits: kernel dims in the other order
    # heads whose y is >= 8x wider than x: the input gradient is computed transposed
    ("bd,vd->bv", (48, 16), (256, 16)),  # tied
    ("bd,dv->bv", (48, 16), (16, 256)),  # untied
    ("bhk,hkv->bv", (48, 2, 8), (2, 8, 256)),  # multi-dim x
]


def _grads(impl, spec, x, kernel, dtype=jnp.float32, preferred=None):
  y_shape = jax.eval_shape(lambda a, b: jnp.einsum(spec, a, b), x, kernel).shape
  r = jnp.asarray(np.random.default_rng(1).standard_normal(y_shape), jnp.float32)

  def loss(x, kernel):
    y = token_matmul(spec, x.astype(dtype), kernel.astype(dtype), impl, preferred)
    return jnp.sum(y.astype(jnp.float32) * r)

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)


@pytest.mark.parametrize("spec,x_shape,k_shape", SPECS, ids=[s for s, _, _ in SPECS])
def test_transposed_kernel_grads_equal_autodiff(spec, x_shape, k_shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(k_shape), jnp.float32)
  dx_ref, dk_ref = _grads("xla", spec, x, kernel)
  dx, dk = _grads("transposed", spec, x, kernel)
  assert dk.shape == kernel.shape and dx.shape == x.shape
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab", [96, 256])  # 256: the transposed input gradient
def test_bf16_kernel_grads_with_float32_logits(vocab):
  """The tied head in bf16 with float32 logits: gradients keep the input dtypes and are as
  close to the float32 ones as autodiff's."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((48, 16)), jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((vocab, 16)), jnp.bfloat16)
  truth = _grads("xla", "bd,vd->bv", x.astype(jnp.float32), kernel.astype(jnp.float32))
  ref = _grads("xla", "bd,vd->bv", x, kernel, jnp.bfloat16, jnp.float32)
  new = _grads("transposed", "bd,vd->bv", x, kernel, jnp.bfloat16, jnp.float32)
  for a, b, t in zip(ref, new, truth):
    assert a.dtype == b.dtype == jnp.bfloat16
    err_ref = float(jnp.max(jnp.abs(a.astype(jnp.float32) - t)))
    err_new = float(jnp.max(jnp.abs(b.astype(jnp.float32) - t)))
    assert err_new <= 1.5 * err_ref + 1e-2, (err_new, err_ref)


def _transposed_a_dots(hlo: str) -> list[str]:
  """Dots in a compiled module that contract the leading dim of a 2-d lhs (transposed-A)."""
  return [l for l in hlo.splitlines()
          if re.search(r"= f32\[\d+,\d+\]\S* dot\(", l) and "lhs_contracting_dims={0}" in l]


@pytest.mark.parametrize("spec,k_shape", [("bd,df->bf", (32, 64)), ("bd,vd->bv", (512, 32))])
def test_no_transposed_a_matmul_in_the_compiled_cpu_gradient(spec, k_shape):
  x = jnp.zeros((256, 32), jnp.float32)
  kernel = jnp.zeros(k_shape, jnp.float32)

  def hlo(impl):
    grad = jax.grad(lambda x, k: jnp.sum(token_matmul(spec, x, k, impl) ** 2), argnums=(0, 1))
    return jax.jit(grad).lower(x, kernel).compile().as_text()

  assert _transposed_a_dots(hlo("xla")), "autodiff no longer makes a transposed-A GEMM here"
  assert not _transposed_a_dots(hlo("transposed")), _transposed_a_dots(hlo("transposed"))


def test_plan_and_backend():
  assert kernel_grad_plan("bd,vd->bv") == ("d", "v", "vd")
  assert kernel_grad_plan("bhk,hkd->bd") == ("hk", "d", "hkd")
  assert kernel_grad_plan("bd,dd->bd") is None  # a dim shared by x and y: not one GEMM
  assert kernel_grad_plan("bd,bd->bd") is None  # the token dim in the kernel
  assert weight_grad_backend("xla") == "xla" and weight_grad_backend("transposed") == "transposed"
  assert weight_grad_backend("auto") == ("transposed" if jax.default_backend() == "cpu" else "xla")


def test_model_gradients_match_autodiff():
  """A whole decoder (tied head, GQA attention, gated MLP): the same gradients either way."""
  grads = {}
  for impl in ("xla", "transposed"):
    cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      mlp_dim=48, max_len=16, weight_grad_impl=impl)
    model = make_model(cfg)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (4, 16)), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), ids)

    def loss(p):
      logits = model.apply(p, ids)
      return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads[impl] = jax.jit(jax.grad(loss))(params)
  flat_ref = jax.tree_util.tree_leaves_with_path(grads["xla"])
  flat_new = jax.tree_util.tree_leaves(grads["transposed"])
  assert len(flat_ref) == len(flat_new) > 0
  for (path, a), b in zip(flat_ref, flat_new):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_layer_input_is_transposed_apart_from_its_layernorm():
  """The copied x^T of a LayerNorm's output is a plain transposing copy of the norm's
  materialised output (lm/unfused.py), not a loop that recomputes the norm per element
  in transposed order (several times slower on XLA:CPU)."""
  from lm.layers import layer_norm

  x = jnp.asarray(np.random.default_rng(0).standard_normal((256, 64)), jnp.float32)
  w, scale, bias = jnp.ones((64, 128)), jnp.ones((64,)), jnp.zeros((64,))

  def loss(x, w):
    return jnp.sum(token_matmul("td,df->tf", layer_norm(x, scale, bias, 1e-6), w, "transposed") ** 2)

  hlo = jax.jit(jax.grad(loss, argnums=1)).lower(x, w).compile().as_text()
  bodies = re.findall(r"^(?:ENTRY )?%?[\w.\-]+ [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M)
  transposing = [b for b in bodies if re.search(r" (?:transpose|copy)\(%", b)
                 and re.search(r"\{0,1\}", b)]
  assert transposing, "expected a transposing copy of the norm's output"
  for body in transposing:
    assert not re.search(r" (?:multiply|subtract|add)\(%", body), body
  # ... emitted as a transpose: a copy that only changes its operand's layout (a
  # transpose turned into a bitcast inside a conditional) runs slower on XLA:CPU.
  layout_copies = [b for b in bodies if re.search(r"\{0,1\} parameter\(", b)
                   and " copy(%" in b and " transpose(" not in b]
  assert not layout_copies, layout_copies


def test_transposed_back_kernel_gradient_is_not_fused_into_its_consumer():
  """A down-projection's kernel gradient, computed as dk^T = dy^T @ x, is transposed back
  by a transpose of its own: not inside the loop of whatever consumes it (here the sum of
  two layers' padded gradients; in a scanned stack, their concatenation), which XLA:CPU
  runs as a strided transposing loop several times slower."""
  rng = np.random.default_rng(0)
  xs = [jnp.asarray(rng.standard_normal((256, 128)), jnp.float32) for _ in range(2)]
  ws = jnp.asarray(rng.standard_normal((2, 128, 32)), jnp.float32)

  def loss(ws):
    return sum(jnp.sum(token_matmul("tf,fd->td", x, ws[i], "transposed") ** 2)
               for i, x in enumerate(xs))

  grad = jax.jit(jax.grad(loss))
  hlo = grad.lower(ws).compile().as_text()
  bodies = re.findall(r"^(?:ENTRY )?%?[\w.\-]+ [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M)
  fused = [b for b in bodies if " transpose(" in b
           and re.search(r" (?:pad|add|concatenate|dynamic-update-slice)\(", b)]
  assert not fused, fused[0]
  expected = jax.grad(lambda ws: sum(jnp.sum(jnp.einsum("tf,fd->td", x, ws[i]) ** 2)
                                     for i, x in enumerate(xs)))(ws)
  np.testing.assert_allclose(grad(ws), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the oneDNN library is a CPU option")
def test_head_input_gradient_form_follows_the_matmul_library(monkeypatch):
  """The head's input gradient is computed transposed where XLA's default library runs the
  matmuls, and by autodiff where oneDNN does (faster there); the gradients are the same."""
  from lm import weight_grads
  from lm.compile_options import onednn_available

  if not onednn_available():
    pytest.skip("this jaxlib refuses the oneDNN options")
  calls = []
  original = weight_grads._transposed_input_grad
  monkeypatch.setattr(weight_grads, "_transposed_input_grad",
                      lambda *a: calls.append(1) or original(*a))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  table = jnp.asarray(rng.standard_normal((256, 16)), jnp.float32)  # vocab 16x wider than x
  grads = {}
  for library in ("xla", "onednn"):
    calls.clear()
    grads[library] = jax.grad(lambda x: jnp.sum(jnp.sin(token_matmul(
        "bd,vd->bv", x, table, "transposed", matmul_library=library))))(x)
    assert bool(calls) == (library == "xla"), library
  np.testing.assert_allclose(grads["onednn"], grads["xla"], rtol=1e-4, atol=1e-5)

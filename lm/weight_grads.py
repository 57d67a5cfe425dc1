"""Kernel gradients of token einsums as plain row-major GEMMs (XLA:CPU's fast path).

The kernel gradient of y[t, o] = x[t, i] @ w[i, o] contracts the token dim t, the
leading (major) dim of both x and dy: a transposed-A GEMM. XLA:CPU hands plain and
transposed-B GEMMs to YNNPACK but runs transposed-A ones on Eigen, asynchronously,
at 55-75% of the speed (ref_tiny shapes, alone: x^T @ dy for 4096x256 by 4096x1024
at 335 vs 420 GFLOP/s; the tied head's 4096x4096 by 4096x256 at 250 vs 440), and
in a train step those Eigen GEMMs share the cores with the YNNPACK ones launched
beside them.

"transposed" copies the smaller of x and dy to its transpose first (a few MB) and
runs a plain GEMM. Optimization barriers keep XLA from folding the copies (and the
transpose of a dy^T @ x result) back into the dot's dimension numbers, which would
bring back the transposed-A form. ref_tiny's step went ~460 -> ~430 ms
(experiments/BENCHMARKS.md). On GPUs and TPUs every GEMM form is fast and the
copies would only cost bandwidth, so "auto" uses it on CPU only.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lm.unfused import materialized

WEIGHT_GRAD_IMPLS = ("auto", "xla", "transposed")


def weight_grad_backend(impl: str) -> str:
  """The kernel-gradient path of cfg.weight_grad_impl here: "auto" is "transposed" on CPU."""
  if impl != "auto":
    return impl
  return "transposed" if jax.default_backend() == "cpu" else "xla"


def kernel_grad_plan(spec: str) -> tuple[str, str, str] | None:
  """(x feature dims, y feature dims, kernel dims) if the kernel gradient is one GEMM, else None.

  `spec` is "t<x dims>,<kernel dims>->t<y dims>" with one leading token dim t: the
  gradient is a GEMM when the kernel's dims are exactly x's feature dims (all
  contracted) and y's feature dims, with none shared between x and y.
  """
  lhs, rest = spec.split(",")
  kspec, out = rest.split("->")
  t, xs, ys = lhs[0], lhs[1:], out[1:]
  if out[0] != t or t in kspec or set(xs) & set(ys) or len(set(kspec)) != len(kspec):
    return None
  if sorted(kspec) != sorted(xs + ys):
    return None
  return xs, ys, kspec


def _transposed_copy(a: jax.Array, apart_from_producer: bool = False) -> jax.Array:
  """a.T as a real copy; the barrier keeps the copy from being folded into the consuming dot.

  `apart_from_producer` transposes a materialised `a` (lm/unfused.py): for a layer input,
  whose producer is typically a LayerNorm that XLA would otherwise recompute inside the
  transposing loop (ref_tiny: about 1 ms per copy instead of 0.2-0.5). The transpose
  is taken outside the conditional, so XLA:CPU emits it as a transpose. Taken inside,
  layout assignment turned it into a bitcast and a layout-changing copy after the
  conditional, which runs slower (ref_tiny's step: 0.45-0.95 vs 0.17-0.5 ms per copy).
  Output gradients are left to XLA: their producers are cheap to fuse, and a separate
  copy of them measured slower.
  """
  if apart_from_producer:
    a = materialized(a)
  return jax.lax.optimization_barrier(jax.lax.optimization_barrier(a).T)


def _row_major_kernel_grad(spec: str, x: jax.Array, g: jax.Array, kernel_dtype) -> jax.Array:
  xs, ys, kspec = kernel_grad_plan(spec)
  n = x.shape[0]
  x2, g2 = x.reshape(n, -1), g.reshape(n, -1).astype(x.dtype)
  if g2.shape[1] < x2.shape[1]:  # dk^T = dy^T @ x, copying the smaller dy
    dk_t = jax.lax.optimization_barrier(
        jnp.dot(_transposed_copy(g2), x2, preferred_element_type=jnp.float32))
    # Transposed back on its own: left to XLA:CPU, the transpose joined dk's consumer
    # (a scanned stack's concatenation of the layers' gradients) as a transposing loop,
    # 1.24 ms for ref_tiny's four [256, 1024] down-projection gradients.
    dk = materialized(materialized(dk_t).T)
  else:  # dk = x^T @ dy
    dk = jax.lax.optimization_barrier(
        jnp.dot(_transposed_copy(x2, apart_from_producer=True), g2,
                preferred_element_type=jnp.float32))
  dk = dk.reshape(x.shape[1:] + g.shape[1:])
  return jnp.einsum(f"{xs}{ys}->{kspec}", dk).astype(kernel_dtype)


# `transposed_input_grad` (static): whether a vocabulary-sized projection's input gradient
# is computed transposed (_transposed_input_grad).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3, 4))
def _einsum_row_major_grads(spec, x, kernel, preferred_element_type, transposed_input_grad):
  return jnp.einsum(spec, x, kernel, preferred_element_type=preferred_element_type)


def _fwd(spec, x, kernel, preferred_element_type, transposed_input_grad):
  return (_einsum_row_major_grads(spec, x, kernel, preferred_element_type, transposed_input_grad),
          (x, kernel))


# The input gradient of a vocabulary-sized projection (its y at least this many times
# wider than its x) is computed transposed; see _transposed_input_grad.
LONG_CONTRACTION_RATIO = 8


def _transposed_input_grad(spec: str, x: jax.Array, kernel: jax.Array, g: jax.Array) -> jax.Array:
  """dx^T = w[x dims, y dims] @ dy^T (a transposed-B GEMM), transposed back to dx.

  For a head (y = logits, thousands wide, over a few hundred features), autodiff's
  dx = dy @ w^T contracts the long vocabulary dim into a narrow output. XLA:CPU runs
  it beside the equally large kernel-gradient GEMM, one core each, at about 185
  GFLOP/s against the other's 220, so one core idles while the slower finishes. As
  dx^T (narrow rows, long columns: the kernel gradient's own shape) the two run one
  after the other on both cores at 430-440 (ref_tiny's tied head: 46 -> 40 ms).
  """
  xs, ys, kspec = kernel_grad_plan(spec)
  n = x.shape[0]
  g2 = g.reshape(n, -1).astype(kernel.dtype)
  if kspec == xs + ys:  # the kernel is already [x features, y features]
    w = kernel
  elif len(kspec) == 2:  # e.g. a tied head's [vocab, d]: a copied transpose
    w = _transposed_copy(kernel)
  else:
    w = jax.lax.optimization_barrier(jnp.einsum(f"{kspec}->{xs}{ys}", kernel))
  w2 = w.reshape(-1, g2.shape[1])
  dxt = jax.lax.optimization_barrier(jnp.einsum("io,to->it", w2, g2, preferred_element_type=jnp.float32))
  return dxt.T.reshape(x.shape).astype(x.dtype)


def _bwd(spec, preferred_element_type, transposed_input_grad, residuals, g):
  x, kernel = residuals
  x_features, y_features = x[0].size, g[0].size
  if transposed_input_grad and y_features >= LONG_CONTRACTION_RATIO * x_features:
    dx = _transposed_input_grad(spec, x, kernel, g)
  else:
    _, input_vjp = jax.vjp(
        lambda x_: jnp.einsum(spec, x_, kernel, preferred_element_type=preferred_element_type), x)
    (dx,) = input_vjp(g)  # dy @ w^T: a transposed-B GEMM, already on the fast path
  return dx, _row_major_kernel_grad(spec, x, g, kernel.dtype)


_einsum_row_major_grads.defvjp(_fwd, _bwd)


def token_matmul(spec: str, x: jax.Array, kernel: jax.Array, impl: str = "auto",
                 preferred_element_type=None, matmul_library: str = "xla") -> jax.Array:
  """einsum(spec, x, kernel) over [T, ...] tokens, its kernel gradient computed per `impl`.

  "xla" leaves the gradient to autodiff; "transposed" computes it as a plain GEMM on
  a copied transpose (module doc). Specs whose kernel gradient is not one GEMM
  always use autodiff. `matmul_library` (cfg.matmul_library): the head's input
  gradient is computed transposed only where XLA's default library runs the matmuls;
  with oneDNN autodiff's form measured faster (in-process A/B, ref_tiny x0.988,
  ref_small x0.993).
  """
  if weight_grad_backend(impl) == "xla" or kernel_grad_plan(spec) is None:
    return jnp.einsum(spec, x, kernel, preferred_element_type=preferred_element_type)
  from lm.compile_options import matmul_compiler_options  # imports lm.config: import late
  transposed_input_grad = matmul_compiler_options(matmul_library) is None
  return _einsum_row_major_grads(spec, x, kernel, preferred_element_type, transposed_input_grad)

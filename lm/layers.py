"""Small shared layers: dtypes, initializers, a named einsum dense, norms, MLP, embedding.

Every parameter is created through `nn.with_logical_partitioning`, so `model.init`
returns boxed leaves whose logical names `lm/sharding.py` maps onto mesh axes.
Names used here:
  params:      ("embed",) norm scale/bias; ("embed","mlp") / ("mlp","embed") MLP
               kernels; ("vocab","embed") token table; ("embed","vocab") untied head;
               a bias (cfg.use_bias) takes the names of its kernel's output dims.
  activations: ("batch","length","act_mlp") inside the MLP,
               ("batch","length","act_embed") for every [B, L, D] output.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.config import ModelConfig
from lm.unfused import materialized
from lm.weight_grads import token_matmul

VALID_DTYPES = ("float32", "bfloat16", "float16")
BLD = ("batch", "length", "act_embed")


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
  return jnp.dtype(cfg.dtype)


def param_dtype(cfg: ModelConfig) -> jnp.dtype:
  return jnp.dtype(cfg.param_dtype)


def fan_in_init(scale: float = 1.0, in_axis=-2, out_axis=-1) -> Callable:
  """Truncated normal with variance scale/fan_in (the truncation is corrected for)."""
  return nn.initializers.variance_scaling(
      scale, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)


def out_proj_scale(cfg: ModelConfig) -> float:
  # Projections that write into the residual stream are shrunk by 1/sqrt(2L) (std),
  # so the stream's variance stays O(1) as depth grows (GPT-2 style).
  return 1.0 / (2.0 * cfg.num_layers)


def token_einsum(spec: str, x, kernel, weight_grad_impl: str = "xla", preferred_element_type=None,
                 matmul_library: str = "xla"):
  """einsum of [B, L, ...] activations with a kernel, run as one [B*L, ...] matmul.

  XLA:CPU turns a weight gradient that contracts two token dims (b, l) into explicit
  transposes of the activation and the incoming gradient; with the token dims merged
  into one, forward and both backward matmuls are plain GEMMs on row-major operands.
  `weight_grad_impl` (cfg.weight_grad_impl) picks how the kernel gradient is computed
  and `matmul_library` (cfg.matmul_library) tells which GEMM forms are fast
  (lm/weight_grads.py).
  """
  lhs, rest = spec.split(",")
  kspec, out = rest.split("->")
  b, l = lhs[:2]
  if x.ndim < 3 or out[:2] != lhs[:2] or b in kspec or l in kspec:
    return jnp.einsum(spec, x, kernel, preferred_element_type=preferred_element_type)
  n = x.shape[0] * x.shape[1]
  y = token_matmul(f"{b}{lhs[2:]},{kspec}->{b}{out[2:]}", x.reshape((n,) + x.shape[2:]), kernel,
                   weight_grad_impl, preferred_element_type, matmul_library)
  return y.reshape(x.shape[:2] + y.shape[1:])


class Einsum(nn.Module):
  """y = einsum(spec, x, kernel) [+ bias] with one explicitly shaped, logically named kernel.

  With cfg.use_bias, a zero-initialised `bias` spans the kernel's last `bias_dims`
  dims, which must be the output's trailing dims (true of every spec used here);
  bias_dims=0 means never a bias.
  """
  shape: Sequence[int]
  names: Sequence[str]
  spec: str
  kernel_init: Callable
  cfg: ModelConfig
  bias_dims: int = 1

  def setup(self):
    # setup (not compact), so that a parent can read `kernel` and `bias` without calling
    # the module (MultiHeadAttention fuses the q, k, v kernels into one matmul).
    self.kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.names)),
        tuple(self.shape), param_dtype(self.cfg))
    self.bias = None
    if self.cfg.use_bias and self.bias_dims:
      n = self.bias_dims
      self.bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                  tuple(self.names[-n:])),
                             tuple(self.shape[-n:]), param_dtype(self.cfg))

  def __call__(self, x):
    dtype = compute_dtype(self.cfg)
    y = token_einsum(self.spec, x.astype(dtype), self.kernel.astype(dtype),
                     self.cfg.weight_grad_impl, matmul_library=self.cfg.matmul_library)
    if self.bias is not None:
      y = y + self.bias.astype(dtype)
    return y


class RMSNorm(nn.Module):
  """x / rms(x) * scale, computed in float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    d = x_BLD.shape[-1]
    scale_D = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                         (d,), param_dtype(self.cfg))
    x = x_BLD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.cfg.norm_eps)
    return (x * scale_D.astype(jnp.float32)).astype(compute_dtype(self.cfg))


class LayerNorm(nn.Module):
  """(x - mean) / std * scale + bias, computed in float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    d = x_BLD.shape[-1]
    pdt = param_dtype(self.cfg)
    scale_D = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                         (d,), pdt)
    bias_D = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                        (d,), pdt)
    return layer_norm(x_BLD, scale_D, bias_D, self.cfg.norm_eps).astype(compute_dtype(self.cfg))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, eps: float):
  """(x - mean) / std * scale + bias over the last dim, in float32.

  Its own gradient keeps x and two numbers per row. Autodiff kept [..., D]
  broadcasts of 1/std and of the scale, plus the normalised x: three extra arrays of
  x's size per norm, written in the forward and read back. The row statistics (mean
  and 1/std forward, the two row means backward) are `materialized`, so that
  XLA:CPU's YNNPACK reduce fusions end at them and do not write them broadcast
  either (lm/unfused.py; ref_tiny x0.995, ref_small x0.996 in-process).
  """
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _row_stats(x, eps):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  return mean, jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True) + eps)


def _layer_norm_fwd(x, scale, bias, eps):
  xf = x.astype(jnp.float32)
  mean, rstd = materialized(_row_stats(xf, eps))
  y = (xf - mean) * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return y, (x, mean, rstd, scale, bias)


def _layer_norm_bwd(eps, residuals, g):
  x, mean, rstd, scale, bias = residuals
  g = g.astype(jnp.float32)
  x_hat = (x.astype(jnp.float32) - mean) * rstd
  g_scaled = g * scale.astype(jnp.float32)
  # dx = (g_s - mean(g_s) - x_hat * mean(g_s * x_hat)) / std, with g_s = g * scale
  mean_g, mean_gx = materialized((jnp.mean(g_scaled, axis=-1, keepdims=True),
                                  jnp.mean(g_scaled * x_hat, axis=-1, keepdims=True)))
  dx = rstd * (g_scaled - mean_g - x_hat * mean_gx)
  rows = tuple(range(g.ndim - 1))
  return (dx.astype(x.dtype), jnp.sum(g * x_hat, axis=rows).astype(scale.dtype),
          jnp.sum(g, axis=rows).astype(bias.dtype))


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


NORMS = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


def make_norm(cfg: ModelConfig, name: str) -> nn.Module:
  return NORMS[cfg.norm](cfg, name=name)


_GELU_C = 0.7978845608028654  # sqrt(2 / pi)


@jax.custom_vjp
def gelu_tanh(x):
  """GELU, tanh approximation (== jax.nn.gelu(x, approximate=True)) whose backward keeps only x.

  Autodiff of the formula saves several [B, L, F] intermediates (x^3, the tanh,
  products) per layer; a scanned stack writes each of them into its stacked
  residuals. The derivative recomputed from x costs a few elementwise ops instead.
  """
  return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
  return jax.nn.gelu(x, approximate=True), x


def _gelu_tanh_bwd(x, g):
  xf = x.astype(jnp.float32)
  # The same tanh as the forward's, written differently: XLA would otherwise compute it
  # once, in the forward, and keep it ([B, L, F] written and read back) instead of
  # recomputing it here from x.
  t = jnp.tanh(xf * (_GELU_C + (_GELU_C * 0.044715) * (xf * xf)))
  d = 0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * xf * xf)
  return ((g.astype(jnp.float32) * d).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


def activation(name: str) -> Callable:
  """The elementwise function of a non-gated activation name.

  "gelu" is the tanh approximation (GPT-2's "gelu_new"); "gelu_exact" is x * Phi(x)
  with erf (BERT); "relu" is T5 v1.0's.
  """
  if name == "gelu_exact":
    return lambda x: nn.gelu(x, approximate=False)
  if name == "relu":
    return nn.relu
  return gelu_tanh


GATED_ACTIVATIONS = {"swiglu": nn.silu, "geglu": gelu_tanh}  # gate function of each gated MLP


class MLP(nn.Module):
  """Plain (wi -> act -> wo) or gated (act(wi_gate) * wi_up -> wo: SwiGLU, GEGLU) feed-forward."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD):
    cfg = self.cfg
    d, f = cfg.d_model, cfg.mlp_dim
    act_BLF = ("batch", "length", "act_mlp")

    def up(name):
      return Einsum((d, f), ("embed", "mlp"), "bld,df->blf", fan_in_init(), cfg, name=name)(x_BLD)

    if cfg.mlp_activation in GATED_ACTIVATIONS:
      gate_BLF = nn.with_logical_constraint(up("wi_gate"), act_BLF)
      up_BLF = nn.with_logical_constraint(up("wi_up"), act_BLF)
      h_BLF = GATED_ACTIVATIONS[cfg.mlp_activation](gate_BLF) * up_BLF
    else:
      h_BLF = activation(cfg.mlp_activation)(nn.with_logical_constraint(up("wi"), act_BLF))
    h_BLF = nn.with_logical_constraint(h_BLF, act_BLF)
    y_BLD = Einsum((f, d), ("mlp", "embed"), "blf,fd->bld",
                   fan_in_init(out_proj_scale(cfg)), cfg, name="wo")(h_BLF)
    return nn.with_logical_constraint(y_BLD, BLD)


class Embed(nn.Module):
  """Token table [V, D]: lookup for inputs, and `attend` for tied output logits.

  Init std is 1/sqrt(D): with a final norm giving unit-RMS features, tied logits
  then start ~N(0, 1) instead of ~N(0, D) with a unit-variance table.
  """
  cfg: ModelConfig
  num_embeddings: int
  names: tuple = ("vocab", "embed")

  def setup(self):
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                            in_axis=1, out_axis=0)
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(init, self.names),
        (self.num_embeddings, self.cfg.d_model), param_dtype(self.cfg))

  def __call__(self, ids_BL):
    # Gather from a table whose feature axis is whole (FSDP gathers params before use
    # anyway): a gather out of an embed-sharded table makes XLA replicate the result.
    table = nn.with_logical_constraint(self.embedding, (self.names[0], None))
    x_BLD = jnp.take(table, ids_BL, axis=0).astype(compute_dtype(self.cfg))
    return nn.with_logical_constraint(x_BLD, BLD)

  def attend(self, x_BLD):
    """Logits x @ table^T, accumulated and returned in float32."""
    dtype = compute_dtype(self.cfg)
    return token_einsum("bld,vd->blv", x_BLD.astype(dtype), self.embedding.astype(dtype),
                        self.cfg.weight_grad_impl, preferred_element_type=jnp.float32,
                        matmul_library=self.cfg.matmul_library)

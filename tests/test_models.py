"""DecoderLM: causality, packing, scan/unrolled equivalence, param trees and names,
remat, dropout and config validation. Tiny f32 models on CPU."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.config import ConfigError, ModelConfig, base_config
from lm.models import DecoderLM, count_params, non_embedding_params, validate_model_config
from lm.transformer import stack_layer_params, unstack_layer_params

TOL = dict(atol=1e-5, rtol=1e-5)
V, D, L = 32, 16, 8


def small_cfg(**kw) -> ModelConfig:
  base = dict(vocab_size=V, d_model=D, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=32,
              max_len=16)
  base.update(kw)
  return ModelConfig(**base)


def tokens(seed=0, b=2, l=L):
  return jax.random.randint(jax.random.key(seed), (b, l), 1, V)


# jit once per config: eager flax calls trace and compile piecemeal and are slower here.
@functools.cache
def _jit_init(cfg):
  return jax.jit(DecoderLM(cfg).init)


@functools.cache
def _jit_apply(cfg):
  return jax.jit(DecoderLM(cfg).apply, static_argnames="deterministic")


def init(cfg, seed=0, boxed=False):
  variables = _jit_init(cfg)(jax.random.key(seed), tokens())
  return variables if boxed else nn.unbox(variables)


def apply(cfg, variables, *args, **kw):
  return _jit_apply(cfg)(variables, *args, **kw)


def shapes(tree):
  return jax.tree_util.tree_map(lambda x: x.shape, tree)


# ---------------------------------------------------------------- behaviour

@pytest.mark.parametrize("position", ["rope", "learned", "sinusoidal"])
def test_causal(position):
  cfg = small_cfg(position=position)
  variables = init(cfg)
  toks = tokens()
  t = 4
  changed = toks.at[:, t + 1:].set((toks[:, t + 1:] + 5) % V)
  a, b = apply(cfg, variables, toks), apply(cfg, variables, changed)
  assert a.shape == (2, L, V) and a.dtype == jnp.float32
  np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], **TOL)
  assert not np.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("position", ["rope", "learned", "sinusoidal"])
def test_packed_documents_match_running_alone(position):
  cfg = small_cfg(position=position)
  variables = init(cfg)
  doc_a, doc_b = tokens(1, 1, 3), tokens(2, 1, 4)
  packed = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, 1), jnp.int32)], axis=1)
  segment_ids = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])
  out = apply(cfg, variables, packed, positions, segment_ids)
  np.testing.assert_allclose(out[:, 0:3], apply(cfg, variables, doc_a), **TOL)
  np.testing.assert_allclose(out[:, 3:7], apply(cfg, variables, doc_b), **TOL)
  assert np.isfinite(np.asarray(out)).all()  # the padding row too


def test_scanned_and_unrolled_agree_both_ways():
  scanned_cfg, unrolled_cfg = small_cfg(scan_layers=True), small_cfg(scan_layers=False)
  toks = tokens()
  scanned = init(scanned_cfg, seed=1)
  unrolled = unstack_layer_params(scanned, scanned_cfg.num_layers)
  assert shapes(unrolled) == shapes(init(unrolled_cfg))
  np.testing.assert_allclose(apply(scanned_cfg, scanned, toks),
                             apply(unrolled_cfg, unrolled, toks), **TOL)

  unrolled = init(unrolled_cfg, seed=2)
  scanned = stack_layer_params(unrolled, unrolled_cfg.num_layers)
  assert shapes(scanned) == shapes(init(scanned_cfg))
  np.testing.assert_allclose(apply(unrolled_cfg, unrolled, toks),
                             apply(scanned_cfg, scanned, toks), **TOL)
  back = unstack_layer_params(scanned, unrolled_cfg.num_layers)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, unrolled)
  # Any number of layers per scan iteration (default: auto, the whole stack here) is the same
  # model with the same params.
  for unroll in (1, 2):
    unrolled_scan = dataclasses.replace(scanned_cfg, scan_unroll=unroll)
    assert shapes(init(unrolled_scan)) == shapes(scanned)
    np.testing.assert_allclose(apply(unrolled_scan, scanned, toks), apply(scanned_cfg, scanned, toks), **TOL)


def test_scan_unroll_auto_unrolls_shallow_stacks_only():
  from lm.transformer import AUTO_UNROLL_MAX_LAYERS, scan_unroll_for

  assert scan_unroll_for(0, 4) == 4 and scan_unroll_for(0, AUTO_UNROLL_MAX_LAYERS) == AUTO_UNROLL_MAX_LAYERS
  assert scan_unroll_for(0, AUTO_UNROLL_MAX_LAYERS + 1) == 1 and scan_unroll_for(0, 24) == 1
  assert scan_unroll_for(3, 24) == 3 and scan_unroll_for(8, 2) == 2  # explicit values kept, capped


def test_layout_conversion_keeps_logical_names():
  cfg = small_cfg()
  is_box = lambda x: isinstance(x, nn.Partitioned)
  names = lambda t: jax.tree_util.tree_map(lambda x: x.names, t, is_leaf=is_box)
  scanned = init(cfg, boxed=True)
  unrolled = init(dataclasses.replace(cfg, scan_layers=False), boxed=True)
  assert names(unstack_layer_params(scanned, 2)) == names(unrolled)
  assert names(stack_layer_params(unrolled, 2)) == names(scanned)


def test_param_trees_tied_untied_and_counts():
  h, g, k, f, n = 4, 2, 4, 32, 2
  block = D * h * k + 2 * D * g * k + h * k * D + 3 * D * f + 2 * D
  tied = init(small_cfg(tie_embeddings=True))["params"]
  untied = init(small_cfg(tie_embeddings=False))["params"]
  assert set(tied) == {"token_embed", "decoder", "final_norm"}
  assert set(untied) == {"token_embed", "decoder", "final_norm", "output"}
  assert untied["output"]["kernel"].shape == (D, V)
  assert tied["token_embed"]["embedding"].shape == (V, D)
  assert non_embedding_params(tied, None) == n * block + D
  assert count_params(tied) == n * block + D + V * D
  # The untied output projection counts as non-embedding (only tables are excluded).
  assert non_embedding_params(untied, None) == n * block + D + D * V
  assert count_params({"params": untied}) == n * block + D + 2 * V * D

  learned = init(small_cfg(position="learned"))["params"]
  assert learned["pos_embed"]["embedding"].shape == (16, D)
  assert non_embedding_params(learned, None) == n * block + D
  assert "pos_embed" not in init(small_cfg(position="sinusoidal"))["params"]


def test_block_param_paths():
  layer = init(small_cfg(scan_layers=False, norm="layernorm", mlp_activation="gelu"))
  block = layer["params"]["decoder"]["layers_1"]
  assert set(block) == {"attention_norm", "attention", "mlp_norm", "mlp"}
  assert set(block["attention"]) == {"query", "key", "value", "out"}
  assert set(block["mlp"]) == {"wi", "wo"}
  assert set(block["mlp_norm"]) == {"scale", "bias"}
  scanned = init(small_cfg())["params"]["decoder"]["layers"]
  assert set(scanned["mlp"]) == {"wi_gate", "wi_up", "wo"}
  assert scanned["attention"]["query"]["kernel"].shape == (2, D, 4, 4)


@pytest.mark.parametrize("kw", [
    dict(), dict(scan_layers=False),
    dict(tie_embeddings=False, position="learned", norm="layernorm", mlp_activation="gelu"),
    dict(scan_layers=False, tie_embeddings=False, position="learned", norm="layernorm"),
])
def test_every_param_has_logical_names(kw):
  cfg = small_cfg(**kw)
  boxed = jax.eval_shape(DecoderLM(cfg).init, jax.random.key(0), tokens())
  specs = nn.get_partition_spec(boxed)
  leaves = jax.tree_util.tree_leaves(nn.unbox(boxed))
  spec_leaves = jax.tree_util.tree_leaves(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(leaves) == len(spec_leaves)
  for leaf, spec in zip(leaves, spec_leaves):
    assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), (leaf, spec)
  if cfg.scan_layers:
    assert all(spec[0] == "layers" for spec in jax.tree_util.tree_leaves(
        specs["params"]["decoder"], is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_remat_policies_match_none(scan_layers):
  toks = tokens()
  params = init(small_cfg(scan_layers=scan_layers))

  def loss_and_grads(policy):
    cfg = small_cfg(scan_layers=scan_layers, remat_policy=policy)

    def loss(p):
      logits = apply(cfg, p, toks[:, :-1])
      logp = jax.nn.log_softmax(logits)
      return -jnp.take_along_axis(logp, toks[:, 1:, None], -1).mean()

    return jax.jit(jax.value_and_grad(loss))(params)

  ref_loss, ref_grads = loss_and_grads("none")
  for policy in ("full", "dots_saveable", "save_attention_out"):
    got_loss, got_grads = loss_and_grads(policy)
    np.testing.assert_allclose(got_loss, ref_loss, **TOL)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, **TOL),
                           got_grads, ref_grads)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_dropout_only_when_not_deterministic(scan_layers):
  cfg = small_cfg(scan_layers=scan_layers, dropout_rate=0.3)
  variables = init(cfg)
  toks = tokens()
  plain = apply(small_cfg(scan_layers=scan_layers), variables, toks)
  np.testing.assert_allclose(apply(cfg, variables, toks, deterministic=True), plain, **TOL)
  drop = lambda seed: apply(cfg, variables, toks, deterministic=False,
                            rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(drop(0), plain)
  assert not np.allclose(drop(0), drop(1))
  np.testing.assert_array_equal(drop(0), drop(0))


def test_bfloat16_compute_gives_float32_logits():
  cfg = small_cfg(dtype="bfloat16")
  logits = apply(cfg, init(cfg), tokens())
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_learned_positions_reject_too_long_inputs():
  cfg = small_cfg(position="learned", max_len=L)
  with pytest.raises(ValueError, match="max_len"):
    DecoderLM(cfg).init(jax.random.key(0), tokens(l=L + 1))


# ---------------------------------------------------------------- validation

def test_valid_configs_pass():
  validate_model_config(ModelConfig())
  validate_model_config(base_config().model)
  validate_model_config(small_cfg(num_kv_heads=1, head_dim=6, d_model=18, position="learned"))


@pytest.mark.parametrize("kw, field", [
    (dict(d_model=18), "model.num_heads=4 must divide model.d_model=18"),
    (dict(num_kv_heads=3), "model.num_heads must be a multiple of model.num_kv_heads"),
    (dict(position="alibi"), "model.position"),
    (dict(norm="batchnorm"), "model.norm"),
    (dict(mlp_activation="tanh"), "model.mlp_activation"),
    (dict(output_scale=0.0), "model.output_scale"),
    (dict(decoder_start_id=-1), "model.decoder_start_id"),
    (dict(scale_attention=1), "model.scale_attention"),
    (dict(remat_policy="some"), "model.remat_policy"),
    (dict(dtype="float64"), "model.dtype"),
    (dict(param_dtype="int8"), "model.param_dtype"),
    (dict(num_layers=0), "model.num_layers"),
    (dict(vocab_size=0), "model.vocab_size"),
    (dict(max_len=0), "model.max_len"),
    (dict(dropout_rate=1.0), "model.dropout_rate"),
    (dict(dropout_rate=-0.1), "model.dropout_rate"),
    (dict(head_dim=3, d_model=12), "model.head_dim"),
])
def test_validation_names_the_field(kw, field):
  with pytest.raises(ConfigError) as e:
    validate_model_config(small_cfg(**kw))
  assert field in str(e.value)


def test_validation_lists_valid_choices():
  with pytest.raises(ConfigError, match="rope, learned, sinusoidal"):
    validate_model_config(small_cfg(position="alibi"))


def test_configs_saved_before_the_interop_fields_still_match(tmp_path):
  """Runs written before scale_attention / output_scale / decoder_start_id existed resume and load."""
  import json

  from lm.train import check_checkpoint_model
  from lm.workdir import check_existing_config
  model = dataclasses.asdict(ModelConfig())
  for field in ("scale_attention", "output_scale", "decoder_start_id"):
    model.pop(field)
  check_checkpoint_model({"model": model}, ModelConfig(), "an older run")
  config = base_config().to_dict()
  (tmp_path / "config.json").write_text(json.dumps(dict(config, model=model)))
  assert check_existing_config(str(tmp_path), config) == {}
  with pytest.raises(ConfigError, match="model.output_scale"):
    check_checkpoint_model({"model": model}, ModelConfig(output_scale=0.5), "an older run")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU fusion decision")
def test_final_norm_reads_the_decoder_output_materialised():
  """No compiled fusion holds both a plain GEMM and a reduction: YNNPACK fused the final
  norm's reductions into the last layer's down-projection, taking that GEMM from oneDNN
  (about 40% slower on ref_tiny); lm/unfused.py `materialized` keeps them apart."""
  import re

  from lm.compile_options import matmul_compiler_options

  # ref_tiny's widths (the fusion depends on sizes); compiled only, never run.
  cfg = small_cfg(d_model=256, mlp_dim=1024, num_layers=1, num_heads=4, num_kv_heads=4,
                  vocab_size=512, max_len=128, norm="layernorm", mlp_activation="gelu")
  params = jax.eval_shape(DecoderLM(cfg).init, jax.random.key(0), tokens())["params"]

  def loss(params, toks):
    return jnp.sum(DecoderLM(cfg).apply({"params": params}, toks) ** 2)

  toks = jax.ShapeDtypeStruct((32, 128), jnp.int32)
  hlo = jax.jit(jax.grad(loss), compiler_options=matmul_compiler_options("auto", "cpu")).lower(
      nn.unbox(params), toks).compile().as_text()
  bodies = re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M)
  plain_dot = re.compile(r" dot\((?![^\n]*lhs_batch_dims)")
  mixed = [name for name, body in bodies if plain_dot.search(body) and " reduce(" in body]
  assert not mixed, mixed

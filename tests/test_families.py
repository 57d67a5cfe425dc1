"""The three model families: visibility (bidirectional / causal / prefix / cross-attention),
packing, param trees and logical names, layer layouts, remat, and BERT's exact architecture
against an independent numpy reference. Tiny f32 models on CPU."""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from lm.attention import make_attention_mask, relative_position_bucket
from lm.bert import EncoderLM, hf_bert_names, hf_bert_to_params
from lm.config import ConfigError, ModelConfig
from lm.encoder_decoder import EncoderDecoderLM
from lm.models import DecoderLM, make_model, non_embedding_params, validate_model_config
from lm.transformer import stack_layer_params, unstack_layer_params

TOL = dict(atol=1e-5, rtol=1e-5)
V, D, L = 40, 16, 8


def cfg_of(family="decoder", **kw) -> ModelConfig:
  base = dict(family=family, vocab_size=V, d_model=D, num_layers=2, num_heads=4, num_kv_heads=2,
              mlp_dim=32, max_len=16)
  base.update(kw)
  return ModelConfig(**base)


BERT = dict(norm_placement="post", norm="layernorm", norm_eps=1e-12, embed_norm=True,
            mlp_activation="gelu_exact", use_bias=True, position="learned", type_vocab_size=2,
            num_kv_heads=0)


def tokens(seed=0, b=2, l=L):
  return jax.random.randint(jax.random.key(seed), (b, l), 4, V)


def _call_args(cfg, toks):
  if cfg.family == "encoder_decoder":
    return (toks, toks[:, :5])
  return (toks,)


@functools.cache
def _jit_init(cfg):
  return jax.jit(make_model(cfg).init)


@functools.cache
def _jit_apply(cfg, method=None):
  return jax.jit(functools.partial(make_model(cfg).apply, method=method),
                 static_argnames="deterministic")


def init(cfg, seed=0):
  return nn.unbox(_jit_init(cfg)(jax.random.key(seed), *_call_args(cfg, tokens())))


def apply(cfg, variables, *args, method=None, **kw):
  return _jit_apply(cfg, method)(variables, *args, **kw)


def mlm_logits(cfg, variables, toks, **kw):
  return apply(cfg, variables, toks, **kw)[0]


# ---------------------------------------------------------------- visibility

@pytest.mark.parametrize("position", ["learned", "rope", "relative"])
def test_encoder_sees_later_tokens_decoder_does_not(position):
  toks, t = tokens(), 3
  changed = toks.at[:, t + 2].set((toks[:, t + 2] + 1 - 4) % (V - 4) + 4)
  enc_cfg = cfg_of("encoder", position=position, type_vocab_size=2)
  enc = init(enc_cfg)
  a, b = mlm_logits(enc_cfg, enc, toks), mlm_logits(enc_cfg, enc, changed)
  assert not np.allclose(a[:, :t + 1], b[:, :t + 1])  # earlier outputs change: bidirectional
  dec_cfg = cfg_of("decoder", position=position)
  dec = init(dec_cfg)
  np.testing.assert_allclose(apply(dec_cfg, dec, toks)[:, :t + 2],
                             apply(dec_cfg, dec, changed)[:, :t + 2], **TOL)


def test_encoder_decoder_encoder_is_bidirectional_decoder_causal():
  cfg = cfg_of("encoder_decoder", position="relative")
  v = init(cfg)
  src, tgt = tokens(1), tokens(2, l=6)
  enc = lambda s: apply(cfg, v, s, method="encode")
  changed_src = src.at[:, -1].set((src[:, -1] + 1 - 4) % (V - 4) + 4)
  assert not np.allclose(enc(src)[:, 0], enc(changed_src)[:, 0])
  t = 2
  changed_tgt = tgt.at[:, t + 1:].set((tgt[:, t + 1:] + 3 - 4) % (V - 4) + 4)
  a, b = apply(cfg, v, src, tgt), apply(cfg, v, src, changed_tgt)
  np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], **TOL)
  assert not np.allclose(a[:, t + 1:], b[:, t + 1:])
  assert not np.allclose(apply(cfg, v, src, tgt), apply(cfg, v, changed_src, tgt))


@pytest.mark.parametrize("position", ["rope", "learned", "relative"])
def test_cross_attention_ignores_encoder_padding(position):
  cfg = cfg_of("encoder_decoder", position=position)
  v = init(cfg)
  src, tgt = tokens(1, l=5), tokens(2, l=6)
  ref = apply(cfg, v, src, tgt)
  for pad, seed in ((1, 3), (4, 4)):  # more padding, holding arbitrary tokens
    padded = jnp.concatenate([src, tokens(seed, l=pad)], axis=1)
    seg = jnp.concatenate([jnp.ones((2, 5), jnp.int32), jnp.zeros((2, pad), jnp.int32)], axis=1)
    pos = jnp.broadcast_to(jnp.arange(5 + pad), (2, 5 + pad))
    out = apply(cfg, v, padded, tgt, pos, seg)
    np.testing.assert_allclose(out, ref, **TOL)


def test_prefix_mask_matches_definition():
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
  prefix = jnp.array([[1, 1, 0, 0, 1, 0, 0, 0]])
  got = np.asarray(make_attention_mask(seg, seg, causal=True, prefix_BL=prefix)[0, 0])
  s, p = np.asarray(seg[0]), np.asarray(prefix[0]).astype(bool)
  want = np.array([[s[i] == s[j] != 0 and (j <= i or (p[i] and p[j])) for j in range(8)]
                   for i in range(8)])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("position", ["rope", "relative"])
def test_prefix_lm_prefix_bidirectional_suffix_causal(position):
  cfg = cfg_of("decoder", position=position)
  v = init(cfg)
  toks = tokens()
  prefix = jnp.array([[1, 1, 1, 1, 0, 0, 0, 0]] * 2)
  run = lambda t: apply(cfg, v, t, prefix_mask_BL=prefix)
  bump = lambda t, i: t.at[:, i].set((t[:, i] + 1 - 4) % (V - 4) + 4)
  a = run(toks)
  # a later prefix token is seen by earlier prefix tokens
  assert not np.allclose(a[:, 0], run(bump(toks, 3))[:, 0])
  # a suffix token is seen by nothing before it
  np.testing.assert_allclose(a[:, :6], run(bump(toks, 6))[:, :6], **TOL)
  assert not np.allclose(a[:, 6:], run(bump(toks, 6))[:, 6:])
  # no prefix is the plain causal LM
  np.testing.assert_allclose(apply(cfg, v, toks, prefix_mask_BL=jnp.zeros_like(prefix)),
                             apply(cfg, v, toks), **TOL)


# ---------------------------------------------------------------- packing

def test_packed_encoder_examples_match_running_alone():
  cfg = cfg_of("encoder", **BERT)
  v = init(cfg)
  a, b = tokens(1, 1, 3), tokens(2, 1, 4)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 1), jnp.int32)], axis=1)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
  pos = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])
  types = jnp.array([[0, 1, 1, 0, 0, 1, 1, 0]])
  mlm, nsp = apply(cfg, v, packed, pos, seg, types)
  mlm_a, nsp_a = apply(cfg, v, a, None, None, types[:, :3])
  mlm_b, nsp_b = apply(cfg, v, b, None, None, types[:, 3:7])
  np.testing.assert_allclose(mlm[:, :3], mlm_a, **TOL)
  np.testing.assert_allclose(mlm[:, 3:7], mlm_b, **TOL)
  np.testing.assert_allclose(nsp[:, 3], nsp_b[:, 0], **TOL)
  assert np.isfinite(np.asarray(mlm)).all()


@pytest.mark.parametrize("position", ["learned", "relative"])
def test_packed_seq2seq_examples_match_running_alone(position):
  cfg = cfg_of("encoder_decoder", position=position)
  v = init(cfg)
  s1, s2, t1, t2 = tokens(1, 1, 3), tokens(2, 1, 4), tokens(3, 1, 2), tokens(4, 1, 3)
  src = jnp.concatenate([s1, s2, jnp.zeros((1, 1), jnp.int32)], axis=1)
  tgt = jnp.concatenate([t1, t2, jnp.zeros((1, 1), jnp.int32)], axis=1)
  src_seg, src_pos = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]]), jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])
  tgt_seg, tgt_pos = jnp.array([[1, 1, 2, 2, 2, 0]]), jnp.array([[0, 1, 0, 1, 2, 0]])
  out = apply(cfg, v, src, tgt, src_pos, src_seg, tgt_pos, tgt_seg)
  np.testing.assert_allclose(out[:, :2], apply(cfg, v, s1, t1), **TOL)
  np.testing.assert_allclose(out[:, 2:5], apply(cfg, v, s2, t2), **TOL)
  assert np.isfinite(np.asarray(out)).all()


# ---------------------------------------------------------------- param trees

def test_bert_param_tree_matches_docstring_and_hf_names():
  cfg = cfg_of("encoder", scan_layers=False, **BERT)
  p = init(cfg)["params"]
  assert set(p) == {"token_embed", "pos_embed", "type_embed", "embed_norm", "encoder",
                    "mlm_head", "pooler", "nsp_head"}
  layer = p["encoder"]["layers_0"]
  assert set(layer) == {"attention", "attention_norm", "mlp", "mlp_norm"}
  assert layer["attention"]["query"]["kernel"].shape == (D, 4, 4)
  assert layer["attention"]["query"]["bias"].shape == (4, 4)
  assert layer["attention"]["out"]["bias"].shape == (D,)
  assert set(layer["mlp"]) == {"wi", "wo"} and layer["mlp"]["wi"]["bias"].shape == (32,)
  assert set(p["mlm_head"]) == {"transform", "transform_norm", "output_bias"}
  assert p["nsp_head"]["kernel"].shape == (D, 2) and p["nsp_head"]["bias"].shape == (2,)
  assert p["type_embed"]["embedding"].shape == (2, D)
  flat = {k for k, _ in jax.tree_util.tree_flatten_with_path(p)[0]}
  ours = {tuple(x.key for x in path) for path in flat}
  assert ours == set(hf_bert_names(cfg))  # every weight has exactly one HF name


def test_t5_param_tree():
  cfg = cfg_of("encoder_decoder", position="relative", num_decoder_layers=3)
  p = init(cfg)["params"]
  assert set(p) == {"token_embed", "encoder", "encoder_norm", "decoder", "decoder_norm"}
  assert p["encoder"]["relpos_bias"]["embedding"].shape == (32, 4)
  assert p["decoder"]["layers"]["cross_attention"]["query"]["kernel"].shape == (3, D, 4, 4)
  assert set(p["decoder"]["layers"]) == {"attention_norm", "attention", "cross_attention_norm",
                                         "cross_attention", "mlp_norm", "mlp"}
  assert p["encoder"]["layers"]["mlp"]["wo"]["kernel"].shape == (2, 32, D)
  untied = init(cfg_of("encoder_decoder", position="learned", tie_embeddings=False))["params"]
  assert untied["output"]["kernel"].shape == (D, V) and "pos_embed" in untied
  assert non_embedding_params(untied, None) < sum(x.size for x in jax.tree.leaves(untied))


@pytest.mark.parametrize("cfg", [
    cfg_of("encoder", **BERT), cfg_of("encoder", **dict(BERT, scan_layers=False)),
    cfg_of("encoder", tie_embeddings=False, position="relative"),
    cfg_of("encoder_decoder", position="relative", num_decoder_layers=3),
    cfg_of("encoder_decoder", position="learned", scan_layers=False, use_bias=True,
           tie_embeddings=False),
    cfg_of("decoder", position="relative", norm_placement="post", use_bias=True),
], ids=["bert", "bert_unrolled", "encoder_relative", "t5", "t5_unrolled_biases", "decoder_post"])
def test_every_param_has_logical_names(cfg):
  boxed = jax.eval_shape(make_model(cfg).init, jax.random.key(0), *_call_args(cfg, tokens()))
  specs = nn.get_partition_spec(boxed)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  leaves = jax.tree_util.tree_leaves(nn.unbox(boxed))
  spec_leaves = jax.tree_util.tree_leaves(specs, is_leaf=is_spec)
  assert len(leaves) == len(spec_leaves)
  for leaf, spec in zip(leaves, spec_leaves):
    assert len(spec) == leaf.ndim and all(isinstance(n, str) for n in spec), (leaf, spec)
    assert len(set(spec)) == len(spec), spec  # one logical name per dim
  for stack in ("encoder", "decoder"):
    if cfg.scan_layers and stack in specs["params"]:
      layers = specs["params"][stack]["layers"]
      assert all(s[0] == "layers" for s in jax.tree_util.tree_leaves(layers, is_leaf=is_spec))


def test_scanned_and_unrolled_agree_with_different_decoder_depth():
  scanned_cfg = cfg_of("encoder_decoder", position="relative", num_decoder_layers=3)
  unrolled_cfg = dataclasses.replace(scanned_cfg, scan_layers=False)
  scanned = init(scanned_cfg, seed=1)
  unrolled = unstack_layer_params(scanned, scanned_cfg.num_layers)
  assert set(unrolled["params"]["decoder"]) >= {"layers_0", "layers_1", "layers_2"}
  shapes = lambda t: jax.tree.map(lambda x: x.shape, t)
  assert shapes(unrolled) == shapes(init(unrolled_cfg))
  src, tgt = tokens(), tokens(1, l=5)
  np.testing.assert_allclose(apply(scanned_cfg, scanned, src, tgt),
                             apply(unrolled_cfg, unrolled, src, tgt), **TOL)
  back = stack_layer_params(unrolled, scanned_cfg.num_layers)
  jax.tree.map(np.testing.assert_array_equal, back, scanned)


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder"])
def test_remat_and_dropout(family):
  cfg = cfg_of(family, position="relative", dropout_rate=0.2)
  v = init(cfg)
  args = _call_args(cfg, tokens())
  first = lambda out: out[0] if isinstance(out, tuple) else out
  plain = first(apply(cfg, v, *args))
  full = cfg_of(family, position="relative", dropout_rate=0.2, remat_policy="full")
  np.testing.assert_allclose(first(apply(full, v, *args)), plain, **TOL)
  drop = lambda seed: first(apply(cfg, v, *args, deterministic=False,
                                  rngs={"dropout": jax.random.key(seed)}))
  assert not np.allclose(drop(0), plain) and not np.allclose(drop(0), drop(1))


# ---------------------------------------------------------------- relative positions

def _t5_bucket(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
  """T5's bucket function, written out per scalar as in the paper's code."""
  ret, n = 0, -rel
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      ret += num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return ret + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_t5(bidirectional):
  rel = np.arange(-300, 301)
  got = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional, 32, 128))
  want = [_t5_bucket(int(r), bidirectional, 32, 128) for r in rel]
  np.testing.assert_array_equal(got, want)


def test_relative_bias_depends_only_on_relative_positions():
  cfg = cfg_of("encoder", position="relative")
  v = init(cfg)
  toks = tokens()
  pos = jnp.broadcast_to(jnp.arange(L), (2, L))
  np.testing.assert_allclose(mlm_logits(cfg, v, toks, positions_BL=pos),
                             mlm_logits(cfg, v, toks, positions_BL=pos + 7), **TOL)


# ---------------------------------------------------------------- BERT, exactly

def _numpy_bert(w: dict, cfg: ModelConfig, ids: np.ndarray, types: np.ndarray):
  """BERT's forward pass from its paper / reference code, on Hugging Face-named weights."""
  eps, h = cfg.norm_eps, cfg.num_heads
  ln = lambda x, n: ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
                     * w[n + ".weight"] + w[n + ".bias"])
  dense = lambda x, n: x @ w[n + ".weight"].T + w[n + ".bias"]
  gelu = lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
  b, l = ids.shape
  e = "bert.embeddings."
  x = (w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][np.arange(l)]
       + w[e + "token_type_embeddings.weight"][types])
  x = ln(x, e + "LayerNorm")
  for i in range(cfg.num_layers):
    p = f"bert.encoder.layer.{i}."
    split = lambda t: t.reshape(b, l, h, -1).transpose(0, 2, 1, 3)
    q, k, vv = (split(dense(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ vv).transpose(0, 2, 1, 3).reshape(b, l, -1)
    x = ln(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    x = ln(x + dense(gelu(dense(x, p + "intermediate.dense")), p + "output.dense"),
           p + "output.LayerNorm")
  t = ln(gelu(dense(x, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
  mlm = t @ w["bert.embeddings.word_embeddings.weight"].T + w["cls.predictions.bias"]
  pooled = np.tanh(dense(x[:, 0], "bert.pooler.dense"))
  return mlm, dense(pooled, "cls.seq_relationship")


@pytest.mark.parametrize("scan_layers", [True, False])
def test_bert_matches_reference_on_hf_named_weights(scan_layers):
  cfg = cfg_of("encoder", **dict(BERT, scan_layers=scan_layers))
  rng = np.random.default_rng(0)
  like = init(dataclasses.replace(cfg, scan_layers=False))["params"]
  # Random Hugging Face-layout (PyTorch Linear: [out, in]) weights of the right shapes.
  state = {}
  for path, name in hf_bert_names(cfg).items():
    shape = functools.reduce(lambda t, k: t[k], path, like).shape
    module, leaf = path[-2], path[-1]
    if leaf == "kernel":
      fan_in = shape[0] * shape[1] if module == "out" else shape[0]
      shape = (int(np.prod(shape)) // fan_in, fan_in)
    elif leaf == "bias" and module in ("query", "key", "value"):
      shape = (int(np.prod(shape)),)
    x = rng.standard_normal(shape)
    state[name] = (1.0 + 0.1 * x if leaf == "scale" else 0.3 * x).astype(np.float32)
  params = hf_bert_to_params(state, cfg)
  ids = rng.integers(4, V, size=(2, L))
  types = np.array([[0, 0, 0, 1, 1, 1, 1, 1]] * 2)
  mlm, nsp = apply(cfg, {"params": params}, jnp.asarray(ids), None, None, jnp.asarray(types))
  want_mlm, want_nsp = _numpy_bert({k: v.astype(np.float64) for k, v in state.items()}, cfg, ids, types)
  np.testing.assert_allclose(mlm, want_mlm, atol=2e-4, rtol=2e-4)
  np.testing.assert_allclose(nsp[:, 0], want_nsp, atol=2e-4, rtol=2e-4)


def test_hf_conversion_refuses_other_architectures():
  with pytest.raises(ValueError, match="not BERT's architecture"):
    hf_bert_to_params({}, cfg_of("encoder"))


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("kw, field", [
    (dict(family="bert"), "model.family"),
    (dict(norm_placement="middle"), "model.norm_placement"),
    (dict(mlp_activation="tanh"), "model.mlp_activation"),
    (dict(position="relative", relative_attention_num_buckets=2), "relative_attention_num_buckets"),
    (dict(position="relative", relative_attention_max_distance=8), "relative_attention_max_distance"),
    (dict(type_vocab_size=-1), "model.type_vocab_size"),
    (dict(num_decoder_layers=2), "model.num_decoder_layers"),
])
def test_validation_names_the_field(kw, field):
  with pytest.raises(ConfigError) as e:
    validate_model_config(cfg_of(**kw))
  assert field in str(e.value)


def test_family_configs_validate():
  for cfg in (cfg_of("encoder", **BERT), cfg_of("encoder_decoder", position="relative",
                                                   num_decoder_layers=1)):
    validate_model_config(cfg)
  assert isinstance(make_model(cfg_of("encoder")), EncoderLM)
  assert isinstance(make_model(cfg_of("encoder_decoder")), EncoderDecoderLM)
  assert isinstance(make_model(cfg_of()), DecoderLM)

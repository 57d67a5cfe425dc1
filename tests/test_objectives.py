"""Objectives: what each loss reads, exact normalisation across microbatches, metrics, family checks."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.config import ConfigError, ModelConfig
from lm.data import preprocessing
from lm.objectives import OBJECTIVES, get_objective
from lm.objectives import OBJECTIVE_FAMILIES
from tests.test_data_examples import OBJECTIVES as FAMILIES, CharTokenizer, _cfg, _docs

B, L = 4, 32
V = CharTokenizer.vocab_size


def _setup(objective, **model_kw):
  tok = CharTokenizer()
  tokenize, make, new_packer = preprocessing(_cfg(objective, L), tok, B)
  packer = new_packer()
  for i, text in enumerate(_docs(40, seed=3)):
    other = lambda r: tokenize(tok, "xy zz. qq.")
    for ex in make(tokenize(tok, text), np.random.default_rng(i), other):
      if not packer.add(ex):
        break
    if packer.full:
      break
  batch = {k: jnp.asarray(v) for k, v in packer.batch.items()}
  cfg = ModelConfig(family=FAMILIES[objective], vocab_size=V, d_model=16, num_layers=1,
                    num_heads=2, mlp_dim=32, max_len=L, type_vocab_size=2, **model_kw)
  obj = get_objective(objective)
  model = obj.make_model(cfg)
  # jit everything: eager flax calls trace and compile piecemeal and are far slower here
  init = jax.jit(lambda r: nn.unbox(obj.init_params(model, r, obj.init_batch(2, L))))
  return obj, model, init(jax.random.key(0)), batch


@functools.cache
def _jit_loss(obj, model):
  return jax.jit(lambda p, b, n: obj.loss(model, p, b, deterministic=True, num_tokens=n))


def _loss(obj, model, params, batch, num_tokens=None):
  loss, aux = _jit_loss(obj, model)(params, batch, num_tokens)
  assert np.isfinite(loss)
  return loss, aux


def test_mlm_nsp_loss_reads_only_selected_tokens_and_cls():
  obj, model, params, batch = _setup("mlm_nsp")
  loss, aux = _loss(obj, model, params, batch)
  assert set(aux) == {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"}
  np.testing.assert_allclose(loss, aux["mlm_loss"] + aux["nsp_loss"], rtol=1e-6)
  unselected = batch["weights"] == 0
  noisy = dict(batch, targets=jnp.where(unselected, 7, batch["targets"]),
               nsp_labels=jnp.where(batch["nsp_weights"] == 0, 1, batch["nsp_labels"]))
  np.testing.assert_allclose(_loss(obj, model, params, noisy)[0], loss, rtol=1e-6)
  flipped = dict(batch, nsp_labels=1 - batch["nsp_labels"])
  assert not np.allclose(_loss(obj, model, params, flipped)[0], loss)


def test_nsp_loss_weight_comes_from_the_run_config():
  obj, model, params, batch = _setup("mlm_nsp")
  run = _cfg("mlm_nsp")
  run.data.nsp_loss_weight = 0.25
  weighted = get_objective("mlm_nsp", run)
  loss, aux = _loss(weighted, model, params, batch)
  np.testing.assert_allclose(loss, aux["mlm_loss"] + 0.25 * aux["nsp_loss"], rtol=1e-6)


@pytest.mark.parametrize("objective", list(FAMILIES))
def test_microbatch_losses_with_the_full_normaliser_sum_to_the_batch_loss(objective):
  obj, model, params, batch = _setup(objective)
  full, _ = _loss(obj, model, params, batch)
  norm = obj.loss_normalizer(batch)
  parts = [_loss(obj, model, params, jax.tree.map(lambda x: x[i::2], batch), num_tokens=norm)[0]
           for i in range(2)]
  np.testing.assert_allclose(sum(parts), full, rtol=1e-5)
  grad = jax.jit(lambda b, n: jax.grad(
      lambda p: obj.loss(model, p, b, deterministic=True, num_tokens=n)[0])(params))
  g_full = grad(batch, None)
  g_parts = [grad(jax.tree.map(lambda x: x[i::2], batch), norm) for i in range(2)]
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a, b + c, atol=1e-6, rtol=1e-4),
               g_full, *g_parts)


def test_scalar_normaliser_is_the_masked_token_count():
  obj, model, params, batch = _setup("mlm_nsp")
  n = batch["weights"].sum()
  loss, aux = _loss(obj, model, params, batch, num_tokens=n * 2)
  np.testing.assert_allclose(aux["mlm_loss"], _loss(obj, model, params, batch)[1]["mlm_loss"] / 2,
                             rtol=1e-6)


@pytest.mark.parametrize("objective, keys, absent", [
    ("mlm_nsp", {"loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "perplexity"},
     {"bits_per_byte"}),
    ("mlm", {"loss", "mlm_loss", "mlm_accuracy", "perplexity"}, {"nsp_accuracy", "bits_per_byte"}),
    ("span_corruption", {"loss", "loss_stderr", "perplexity", "accuracy"}, {"bits_per_byte"}),
    ("seq2seq", {"loss", "perplexity", "accuracy", "bits_per_byte"}, set()),
    ("prefix_lm", {"loss", "perplexity", "accuracy", "bits_per_byte"}, set()),
])
def test_eval_metrics_per_objective(objective, keys, absent):
  obj, model, params, batch = _setup(objective)
  token_bytes = jnp.ones(V, jnp.float32)
  eval_sums = jax.jit(lambda b: obj.eval_sums(model, params, b, token_bytes))
  sums = jax.device_get(eval_sums(batch))
  half = jax.device_get(eval_sums(jax.tree.map(lambda x: x[:2], batch)))
  rest = jax.device_get(eval_sums(jax.tree.map(lambda x: x[2:], batch)))
  for k in sums:  # sums over batches add up
    np.testing.assert_allclose(sums[k], half[k] + rest[k], rtol=1e-5)
  metrics = obj.eval_metrics({k: float(v) for k, v in sums.items()})
  assert keys <= set(metrics) and not absent & set(metrics)
  assert all(np.isfinite(v) for v in metrics.values())
  loss, _ = _loss(obj, model, params, batch)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)


def test_objectives_refuse_the_wrong_family():
  for name, obj_cls in OBJECTIVES.items():
    family = FAMILIES.get(name) or OBJECTIVE_FAMILIES.get(name, "decoder")
    wrong = "encoder" if family != "encoder" else "decoder"
    with pytest.raises(ConfigError, match=f"model.family='{family}'"):
      obj_cls().make_model(ModelConfig(family=wrong))
  with pytest.raises(ConfigError, match="objective='nope'"):
    get_objective("nope")

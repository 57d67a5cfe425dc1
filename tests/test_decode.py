"""KV-cache decoding agrees with recomputing the sequence; sampling controls reduce to greedy."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import decode
from lm.config import ModelConfig
from lm.models import make_model

PROMPTS = [[2, 17, 33, 9, 41], [2, 5], [2, 60, 61, 62, 63, 64, 65, 66, 67, 68]]


def tiny(**kw):
  base = dict(vocab_size=96, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
              max_len=64)
  base.update(kw)
  return ModelConfig(**base)


def init(cfg, seed=0):
  model = make_model(cfg)
  z = jnp.zeros((1, 8), jnp.int32)
  args = (z, z) if cfg.family == "encoder_decoder" else (z,)
  # jitted: an eager flax init compiles op by op and is several times slower here
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), *args)["params"])
  # larger logits so greedy choices are not near-ties
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, params)
  return model, params


@pytest.mark.parametrize("kw", [
    dict(),
    dict(position="learned", scan_layers=False),
    dict(family="encoder_decoder"),
    dict(family="encoder_decoder", position="relative", num_decoder_layers=3),
], ids=["decoder_rope", "decoder_learned_unrolled", "encdec_rope", "encdec_relative"])
def test_cache_matches_recompute(kw):
  model, params = init(tiny(**kw))
  n = 8
  ref_toks, ref_logits = decode.generate_recompute(model, params, PROMPTS, max_new_tokens=n)
  toks, logits = decode.generate(model, params, PROMPTS, max_new_tokens=n, return_logits=True)
  assert [list(r) for r in ref_toks] == toks
  np.testing.assert_allclose(logits, ref_logits, atol=2e-4, rtol=2e-4)


def test_padding_and_batch_do_not_change_results():
  model, params = init(tiny())
  alone = [decode.generate(model, params, [p], max_new_tokens=6, temperature=0.8, seed=3,
                           keys=decode.request_keys(3, 3)[i:i + 1])[0]
           for i, p in enumerate(PROMPTS)]
  batched = decode.generate(model, params, PROMPTS, max_new_tokens=6, temperature=0.8, seed=3)
  assert alone == batched
  # a longer pad bucket (more left padding) gives the same tokens and logits
  a, la = decode.generate(model, params, PROMPTS[:1], max_new_tokens=6, return_logits=True)
  b, lb = decode.generate(model, params, PROMPTS[:1] + [[1] * 40], max_new_tokens=6,
                          return_logits=True)
  assert a[0] == b[0]
  np.testing.assert_allclose(la[0], lb[0], atol=1e-5)


def test_sampling_controls_reduce_to_greedy():
  model, params = init(tiny())
  greedy = decode.generate(model, params, PROMPTS, max_new_tokens=8)
  assert decode.generate(model, params, PROMPTS, max_new_tokens=8, temperature=1.0,
                         top_k=1, seed=5) == greedy
  assert decode.generate(model, params, PROMPTS, max_new_tokens=8, temperature=1e-5,
                         seed=5) == greedy
  assert decode.generate(model, params, PROMPTS, max_new_tokens=8, temperature=1.0,
                         top_p=1e-6, seed=5) == greedy
  s1 = decode.generate(model, params, PROMPTS, max_new_tokens=8, temperature=1.0, seed=7)
  s2 = decode.generate(model, params, PROMPTS, max_new_tokens=8, temperature=1.0, seed=7)
  s3 = decode.generate(model, params, PROMPTS, max_new_tokens=8, temperature=1.0, seed=8)
  assert s1 == s2 and s1 != s3


def test_stop_tokens_and_host_constraints():
  model, params = init(tiny())
  greedy = decode.generate(model, params, PROMPTS, max_new_tokens=8)
  stop = greedy[0][2]
  stopped = decode.generate(model, params, PROMPTS, max_new_tokens=8, stop_ids=[stop])
  assert stopped[0] == greedy[0][:greedy[0].index(stop)]
  # host-side constraint: only tokens 10..19 allowed
  mask = np.zeros(96, bool)
  mask[10:20] = True
  out = decode.generate(model, params, PROMPTS, max_new_tokens=5,
                        token_mask_fn=lambda gen: np.tile(mask, (len(gen), 1)))
  assert all(len(r) == 5 and all(10 <= t < 20 for t in r) for r in out)
  # an all-allowed mask through the host loop equals the compiled loop
  free = decode.generate(model, params, PROMPTS, max_new_tokens=8,
                         token_mask_fn=lambda gen: np.ones((len(gen), 96), bool))
  assert free == greedy


def test_filter_logits():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keep = decode.filter_logits(logits, 1.0, 2, 1.0) > decode.NEG_INF / 2
  assert keep.tolist() == [[True, True, False, False]]
  keep = decode.filter_logits(logits, 1.0, 0, 0.7) > decode.NEG_INF / 2
  assert keep.tolist() == [[True, True, False, False]]


@pytest.mark.parametrize("family", ["decoder", pytest.param("encoder_decoder",
                                                            marks=pytest.mark.slow)])
def test_beam_one_is_greedy_and_beams_score_higher(family):
  model, params = init(tiny(family=family))
  greedy = decode.generate(model, params, PROMPTS, max_new_tokens=6)
  stop = [greedy[0][1], greedy[2][3]]
  assert decode.generate(model, params, PROMPTS, max_new_tokens=6, beam_size=1) == greedy
  assert (decode.generate(model, params, PROMPTS, max_new_tokens=6, beam_size=1, stop_ids=stop)
          == decode.generate(model, params, PROMPTS, max_new_tokens=6, stop_ids=stop))
  beams = decode.generate(model, params, PROMPTS, max_new_tokens=6, beam_size=4)
  # without stop tokens every beam has 6 tokens: the beam's total logp is >= greedy's

  @jax.jit  # one compile per prompt length; eager flax applies were most of this test's time
  def total_logp(params, prompt_RP, rows_RN):
    if family == "decoder":
      seq = jnp.concatenate([prompt_RP, rows_RN], 1)
      logits = model.apply({"params": params}, seq)[:, prompt_RP.shape[1] - 1:-1]
    else:
      dec = jnp.concatenate([jnp.full_like(rows_RN[:, :1], decode.BOS_ID), rows_RN[:, :-1]], 1)
      logits = model.apply({"params": params}, prompt_RP, dec)
    lp = jax.nn.log_softmax(logits, -1)
    return jnp.take_along_axis(lp, rows_RN[..., None], -1)[..., 0].sum(-1)

  # full-sequence forward passes (no cache), the beam and greedy rows of a prompt in one batch
  beam_lp, greedy_lp = np.asarray([total_logp(params, jnp.asarray([p, p]), jnp.asarray([b, g]))
                                   for p, b, g in zip(PROMPTS, beams, greedy)]).T
  assert np.all(beam_lp >= greedy_lp - 1e-4)
  assert np.any(beam_lp > greedy_lp + 1e-4) or beams == greedy


def test_sharded_params_on_a_mesh_give_the_same_tokens():
  import ml_collections
  from lm import sharding
  cfg = tiny(num_kv_heads=4)
  model, params = init(cfg)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
  target = decode.abstract_params(cfg, mesh)
  placed = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), params, target)
  want = decode.generate(model, params, PROMPTS, max_new_tokens=5)
  got = decode.generate(model, placed, PROMPTS, max_new_tokens=5, mesh=mesh)
  assert got == want

"""T5 span corruption: exact round trip, noise statistics, lengths; seq2seq and prefix-LM examples."""
import numpy as np
import pytest

from lm.data import prefix, spans
from lm.data.tokenizer import NUM_RESERVED

SENTINELS = tuple(range(12, 28))
SPEC = spans.SpanSpec(noise_density=0.15, mean_span_length=3.0, sentinel_ids=SENTINELS,
                      eos_id=1, bos_id=2)


def _ids(rng, n):
  return rng.integers(NUM_RESERVED, 500, size=n).astype(np.int32)


def test_inputs_and_targets_reconstruct_the_original_exactly():
  rng = np.random.default_rng(0)
  for n in [2, 3, 5, 17, 64, 113, 300]:
    for _ in range(20):
      ids = _ids(rng, n)
      mask = spans.noise_mask(n, SPEC, rng)
      inputs, targets = spans.corrupt(ids, mask, SPEC)
      np.testing.assert_array_equal(spans.reconstruct(inputs, targets, SPEC), ids)
      assert inputs[-1] == 1 and targets[-1] == 1
      (noise, num_spans), lengths = SPEC.counts(n), SPEC.lengths(n)
      assert (len(inputs), len(targets)) == lengths
      assert mask.sum() == noise
      # sentinels appear in order, once per span, on both sides
      np.testing.assert_array_equal(inputs[np.isin(inputs, SENTINELS)], SENTINELS[:num_spans])
      np.testing.assert_array_equal(targets[np.isin(targets, SENTINELS)], SENTINELS[:num_spans])


def test_noise_density_and_mean_span_length():
  rng = np.random.default_rng(1)
  noise = tokens = spans_seen = 0
  starts_at_noise = 0
  for _ in range(500):
    mask = spans.noise_mask(100, SPEC, rng)
    noise += mask.sum()
    tokens += 100
    spans_seen += (mask & ~np.concatenate([[False], mask[:-1]])).sum()
    starts_at_noise += mask[0]
  assert noise / tokens == pytest.approx(0.15, abs=0.005)
  assert noise / spans_seen == pytest.approx(3.0, abs=0.05)
  assert 0.05 < starts_at_noise / 500 < 0.3  # pieces do not always start or end the same way


def test_span_positions_are_random():
  rng = np.random.default_rng(2)
  hits = sum(spans.noise_mask(60, SPEC, rng).astype(int) for _ in range(2000)) / 2000
  assert hits.min() > 0.04 and hits.max() < 0.25, hits  # no position is special
  assert hits[5:-5].mean() == pytest.approx(0.15, abs=0.01)


def test_max_raw_length_fits_rows_and_sentinels():
  for inputs_len, targets_len in [(32, 0), (128, 0), (512, 0), (128, 20)]:
    n = spans.max_raw_length(SPEC, inputs_len, targets_len)
    a, b = SPEC.lengths(n)
    assert a <= inputs_len and SPEC.counts(n)[1] <= 16
    assert not targets_len or b <= targets_len
    auto = spans.targets_length(SPEC, n)
    assert all(SPEC.lengths(m)[1] <= auto for m in range(2, n + 1))
  assert spans.max_raw_length(SPEC, 512) < 512  # capped by the 16 sentinels, not the row


def test_span_examples_cover_the_document():
  rng = np.random.default_rng(3)
  ids = _ids(rng, 500)
  max_raw = spans.max_raw_length(SPEC, 64)
  exs = spans.span_examples(ids, SPEC, rng, max_raw)
  rebuilt = np.concatenate([spans.reconstruct(e["encoder_inputs"], e["decoder_targets"], SPEC)
                            for e in exs])
  np.testing.assert_array_equal(rebuilt, ids)
  for e in exs:
    assert len(e["encoder_inputs"]) <= 64
    assert e["decoder_inputs"][0] == 2  # <s> starts the decoder
    np.testing.assert_array_equal(e["decoder_inputs"][1:], e["decoder_targets"][:-1])
  assert spans.span_examples(ids[:1], SPEC, rng, max_raw) == []


def test_seq2seq_pairs_split_documents():
  rng = np.random.default_rng(4)
  ids = _ids(rng, 70)
  exs = prefix.seq2seq_pair_examples(ids, 31, 0.0, 1, 2, rng)
  joined = np.concatenate([np.concatenate([e["encoder_inputs"][:-1], e["decoder_targets"][:-1]])
                           for e in exs])
  np.testing.assert_array_equal(joined, ids)
  for e in exs:
    assert e["encoder_inputs"][-1] == 1 and e["decoder_targets"][-1] == 1
    assert len(e["encoder_inputs"]) >= 2 and len(e["decoder_targets"]) >= 2
    assert len(e["encoder_inputs"]) + len(e["decoder_targets"]) - 2 <= 31
  fixed = prefix.seq2seq_pair_examples(ids[:40], 40, 0.25, 1, 2, rng)
  assert len(fixed[0]["encoder_inputs"]) - 1 == 10


def test_prefix_lm_examples():
  rng = np.random.default_rng(5)
  ids = np.concatenate([[2], _ids(rng, 50), [1]]).astype(np.int32)
  exs = prefix.prefix_lm_examples(ids, 16, 0.0, rng)
  np.testing.assert_array_equal(np.concatenate([e["inputs"] for e in exs]), ids[:-1])
  np.testing.assert_array_equal(np.concatenate([e["targets"] for e in exs]), ids[1:])
  splits = []
  for e in exs:
    p = int(e["prefix_mask"].sum())
    m = len(e["inputs"])
    assert 1 <= p <= m and e["prefix_mask"][:p].all()
    # loss on every target after the prefix: positions p-1 .. m-1 predict ids after the prefix
    np.testing.assert_array_equal(e["weights"], (np.arange(m) >= p - 1).astype(np.float32))
    splits.append(p)
  assert len(set(splits)) > 1
  fixed = prefix.prefix_lm_examples(ids, 16, 0.5, rng)
  assert [int(e["prefix_mask"].sum()) for e in fixed][:3] == [8, 8, 8]

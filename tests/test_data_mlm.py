"""BERT preprocessing: MLM masking statistics, NSP pairs and labels, layout of examples."""
import numpy as np
import pytest

from lm.data import mlm
from lm.data.tokenizer import NUM_RESERVED

VOCAB = 300
SPEC = mlm.MaskingSpec(rate=0.15, mask_fraction=0.8, random_fraction=0.1, mask_id=4, cls_id=6,
                       sep_id=5, vocab_size=VOCAB)


def _doc(rng, num_sentences, topic=0):
  # Sentences of one "topic": ids from a topic-specific range, so documents are distinguishable.
  lo = NUM_RESERVED + 50 * topic
  return [rng.integers(lo, lo + 50, size=int(rng.integers(3, 9))).astype(np.int32)
          for _ in range(num_sentences)]


def test_masking_statistics_and_specials_never_selected():
  rng = np.random.default_rng(0)
  selected = masked = randomised = kept = candidates = 0
  for _ in range(3000):
    ids = rng.integers(NUM_RESERVED, VOCAB, size=40).astype(np.int32)
    ids[[0, 7, 20, 39]] = [6, 5, 1, 5]  # specials: <cls>, <sep>, </s>, <sep>
    inputs, weights = mlm.mask_tokens(ids, SPEC, rng)
    sel = weights > 0
    assert not sel[[0, 7, 20, 39]].any()
    np.testing.assert_array_equal(inputs[~sel], ids[~sel])  # unselected tokens never change
    candidates += 36
    selected += sel.sum()
    masked += (inputs[sel] == SPEC.mask_id).sum()
    same = inputs[sel] == ids[sel]
    kept += same.sum()
    randomised += (~same & (inputs[sel] != SPEC.mask_id)).sum()
    assert (inputs[sel & (inputs != SPEC.mask_id)] >= NUM_RESERVED).all()  # random ids are not specials
  assert selected / candidates == pytest.approx(0.15, abs=0.01)
  # random replacements land on the original id 1/(V - NUM_RESERVED) of the time
  p_same = 1 / (VOCAB - NUM_RESERVED)
  assert masked / selected == pytest.approx(0.8, abs=0.01)
  assert randomised / selected == pytest.approx(0.1 * (1 - p_same), abs=0.01)
  assert kept / selected == pytest.approx(0.1 + 0.1 * p_same, abs=0.01)


def test_masking_is_deterministic_given_the_rng_seed():
  ids = np.arange(NUM_RESERVED, NUM_RESERVED + 50, dtype=np.int32)
  a = mlm.mask_tokens(ids, SPEC, np.random.default_rng([3, 1, 4]))
  b = mlm.mask_tokens(ids, SPEC, np.random.default_rng([3, 1, 4]))
  c = mlm.mask_tokens(ids, SPEC, np.random.default_rng([3, 1, 5]))
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[1], c[1])


def _split_example(ex):
  t = ex["targets"]
  seps = np.flatnonzero(t == SPEC.sep_id)
  return t[1:seps[0]], t[seps[0] + 1:seps[1]]


def _find(haystack: list, needle: list, start: int = 0) -> int:
  return next((i for i in range(start, len(haystack) - len(needle) + 1)
               if haystack[i:i + len(needle)] == needle), -1)


def test_nsp_pairs_layout_labels_and_continuations():
  rng = np.random.default_rng(1)
  docs = [_doc(rng, int(rng.integers(1, 7)), topic=i % 4) for i in range(400)]
  labels, seq_len = [], 40
  for i, doc in enumerate(docs):
    other = lambda r, i=i: docs[(i + 1 + int(r.integers(len(docs) - 1))) % len(docs)]
    for ex in mlm.nsp_examples(doc, SPEC, np.random.default_rng([0, i]), other, seq_len):
      t = ex["targets"]
      assert len(t) <= seq_len and t[0] == SPEC.cls_id and t[-1] == SPEC.sep_id
      a, b = _split_example(ex)
      assert len(a) and len(b)
      np.testing.assert_array_equal(ex["token_types"], [0] * (len(a) + 2) + [1] * (len(b) + 1))
      assert ex["nsp_weights"].tolist() == [1.0] + [0.0] * (len(t) - 1)
      label = int(ex["nsp_labels"][0])
      labels.append(label)
      if label == mlm.ISNEXT:  # A and B are runs of this document, B after A
        flat = np.concatenate(doc).tolist()
        ia = _find(flat, a.tolist())
        assert ia >= 0 and _find(flat, b.tolist(), ia + len(a)) >= 0
      # specials are never selected for MLM
      assert not ex["weights"][np.isin(t, [SPEC.cls_id, SPEC.sep_id])].any()
  labels = np.array(labels)
  assert len(labels) > 500
  assert labels.mean() == pytest.approx(0.5, abs=0.05)


def test_notnext_b_comes_from_another_document():
  rng = np.random.default_rng(2)
  mine, theirs = _doc(rng, 6, topic=0), _doc(rng, 6, topic=3)
  seen_notnext = 0
  for seed in range(40):
    for ex in mlm.nsp_examples(mine, SPEC, np.random.default_rng(seed), lambda r: theirs, 64):
      a, b = _split_example(ex)
      in_theirs = (b >= NUM_RESERVED + 150).all()
      assert in_theirs == (ex["nsp_labels"][0] == mlm.NOTNEXT)
      assert (a < NUM_RESERVED + 50).all()
      seen_notnext += int(in_theirs)
  assert seen_notnext > 10


def test_long_documents_fill_examples_and_use_every_sentence():
  rng = np.random.default_rng(3)
  doc = _doc(rng, 60)
  exs = mlm.nsp_examples(doc, SPEC, np.random.default_rng(0), lambda r: _doc(rng, 3), 64)
  lengths = [len(e["targets"]) for e in exs]
  assert max(lengths) <= 64 and np.mean(lengths) > 40
  mlm_only = mlm.mlm_examples(np.concatenate(doc), SPEC, np.random.default_rng(0), 32)
  assert all(len(e["targets"]) <= 32 for e in mlm_only)
  np.testing.assert_array_equal(np.concatenate([e["targets"][1:-1] for e in mlm_only]),
                                np.concatenate(doc))
  assert all((e["token_types"] == 0).all() and "nsp_labels" not in e for e in mlm_only)


def test_capped_sentences_keep_every_token():
  s = [np.arange(10), np.arange(3)]
  out = mlm.capped_sentences(s, 4)
  assert [len(x) for x in out] == [4, 4, 2, 3]
  np.testing.assert_array_equal(np.concatenate(out), np.concatenate(s))

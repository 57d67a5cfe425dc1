"""Packing CLM pieces into rows: a hand-made example, and exact reconstruction."""
import numpy as np

from lm.data import packing

BOS, EOS = 2, 1


def unpack_documents(batches, eos=EOS):
  """Follows segments (and their continuations) in stream order back to id lists."""
  docs, inputs = [], []
  for b in batches:
    for r in range(b["inputs"].shape[0]):
      seg, pos, w = b["segment_ids"][r], b["positions"][r], b["weights"][r]
      for s in range(1, seg.max() + 1):
        cols = np.flatnonzero(seg == s)
        assert (cols == np.arange(cols[0], cols[0] + len(cols))).all()  # contiguous
        assert (pos[cols] == np.arange(len(cols))).all() and (w[cols] == 1).all()
        ins, tgt = b["inputs"][r, cols], b["targets"][r, cols]
        assert (ins[1:] == tgt[:-1]).all()  # targets are inputs shifted
        inputs.append(list(ins))
        if tgt[-1] == eos:
          docs.append([int(t) for piece in inputs for t in piece] + [eos])
          inputs = []
  return docs, inputs


def test_hand_made_example():
  docs = [np.array(d, np.int32) for d in
          ([BOS, 10, 11, 12, EOS], [BOS, 20, EOS], [BOS, 30, 31, 32, 33, EOS])]
  b1, b2 = list(packing.pack(docs, batch_size=2, seq_len=5))
  np.testing.assert_array_equal(b1["inputs"], [[2, 10, 11, 12, 2], [20, 2, 30, 31, 32]])
  np.testing.assert_array_equal(b1["targets"], [[10, 11, 12, 1, 20], [1, 30, 31, 32, 33]])
  np.testing.assert_array_equal(b1["segment_ids"], [[1, 1, 1, 1, 2], [1, 2, 2, 2, 2]])
  np.testing.assert_array_equal(b1["positions"], [[0, 1, 2, 3, 0], [0, 0, 1, 2, 3]])
  np.testing.assert_array_equal(b1["weights"], np.ones((2, 5)))
  # The data ends: the rest of the last batch is padding (segment 0, weight 0).
  np.testing.assert_array_equal(b2["inputs"], [[33, 0, 0, 0, 0], [0] * 5])
  np.testing.assert_array_equal(b2["targets"], [[1, 0, 0, 0, 0], [0] * 5])
  np.testing.assert_array_equal(b2["segment_ids"], [[1, 0, 0, 0, 0], [0] * 5])
  np.testing.assert_array_equal(b2["positions"], np.zeros((2, 5)))
  np.testing.assert_array_equal(b2["weights"], [[1, 0, 0, 0, 0], [0] * 5])
  for b in (b1, b2):
    assert {k: v.dtype.name for k, v in b.items()} == {
        "inputs": "int32", "targets": "int32", "segment_ids": "int32",
        "positions": "int32", "weights": "float32"}


def test_unpacking_reproduces_every_document():
  rng = np.random.default_rng(0)
  docs = [[BOS] + rng.integers(4, 99, size=rng.integers(0, 40)).tolist() + [EOS]
          for _ in range(200)]
  batches = list(packing.pack((np.array(d, np.int32) for d in docs), 3, 16))
  got, rest = unpack_documents(batches)
  assert got == docs and rest == []
  for b in batches[:-1]:  # no padding anywhere but the end of the data
    assert (b["weights"] == 1).all() and (b["segment_ids"] > 0).all()
  w = batches[-1]["weights"].reshape(-1)
  assert (np.diff(w) <= 0).all()  # the last batch pads only at its end


def test_seq_len_two_and_exact_fit():
  docs = [np.array([BOS, 5, EOS], np.int32)] * 3  # 2 positions each
  (b,) = list(packing.pack(docs, 3, 2))
  np.testing.assert_array_equal(b["segment_ids"], np.ones((3, 2)))
  assert (b["weights"] == 1).all()

"""Synthetic corpus with topics: documents of one topic share words, the floor stays exact."""
import pytest

from lm.data import synthetic

DEFAULT = (0, 48, 4, 0.25)


def test_one_topic_is_the_original_corpus():
  assert synthetic.topic_chains(*DEFAULT, 1) == (synthetic.markov_chain(*DEFAULT),)
  assert (list(synthetic.generate_documents(*DEFAULT, 30, topics=1))
          == list(synthetic.generate_documents(*DEFAULT, 30)))
  assert synthetic.entropy_floor_bpb(*DEFAULT, topics=1) == synthetic.entropy_floor_bpb(*DEFAULT)


@pytest.mark.parametrize("args", [(0, 24, 4, 0.25, 4), (2, 16, 3, 0.5, 8)])
def test_topic_floor_matches_empirical_entropy(args):
  docs = list(synthetic.generate_documents(*args[:4], 3000, "train", topics=args[4]))
  bits = -sum(synthetic.log2_prob(*args, d) for d in docs)
  assert bits / sum(len(d) for d in docs) == pytest.approx(synthetic.entropy_floor_bpb(*args), rel=0.02)


def test_topics_have_disjoint_words_and_documents_keep_to_one():
  chains = synthetic.topic_chains(0, 24, 4, 0.25, 4)
  vocab = [set(c.words) for c in chains]
  assert all(a.isdisjoint(b) for i, a in enumerate(vocab) for b in vocab[i + 1:])
  used = set()
  for doc in synthetic.generate_documents(0, 24, 4, 0.25, 200, topics=4):
    words = set(doc.replace(".", "").split())
    topic = [i for i, v in enumerate(vocab) if words <= v]
    assert len(topic) == 1
    used.add(topic[0])
  assert used == {0, 1, 2, 3}

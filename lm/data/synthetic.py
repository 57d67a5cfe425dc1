"""A synthetic corpus whose entropy floor is known exactly.

Source. A seeded random vocabulary of `num_words` distinct lowercase words
(2-7 letters) and a first-order Markov chain over the symbols
{words, EOS (end of sentence), END (end of document)}:
  - a word goes to `branching` distinct random words with Dirichlet(1)
    probabilities, scaled by 1 - p_eos(word), and to EOS with p_eos(word) drawn
    uniformly from [0.08, 0.22] (sentences of ~5-8 words);
  - EOS goes to END with `end_prob`, else to a word of the start distribution
    (Dirichlet(1) over all words, so every word has positive start probability);
  - END goes to a word of the start distribution: the next document begins.
Every word reaches EOS, EOS reaches END and END reaches every word, so the chain
is irreducible and has one stationary distribution pi. A document is the symbol
run between two ENDs; documents are i.i.d. because END forgets the past.

Rendering. sentence = " ".join(words) + "."; document = " ".join(sentences).
Words are distinct, contain no space or ".", so the text is a deterministic,
uniquely decodable function of the symbols: -log2 P(text) = -log2 P(symbols).
Characters each symbol adds: c(word) = len(word) + 1 (the word and the space or
period after it), c(EOS) = 1 (the space before the next sentence), c(END) = -1
(the last sentence of a document has no trailing space). These sum to the
document's length exactly.

Floor. The chain emits H = sum_s pi(s) H(P(.|s)) bits per symbol (the entropy
rate of a stationary Markov chain) and C = sum_s pi(s) c(s) characters per
symbol. Documents are END-to-END cycles, so by the renewal-reward theorem the
bits per character over many documents converge to H / C. The text is ASCII,
so this is also bits per byte. It counts the first word of each document (END's
row) and the decision to stop (EOS -> END), which a language model pays as the
first target after <bos> and as the <eos> target: H / C is the lowest loss,
summed over all targets and divided by the text's bytes, any model can reach.

Topics (`topics` = T > 1; T = 1 is the corpus above, bit for bit). Each document
first draws a topic uniformly, then runs that topic's own chain, built as above
over its own `num_words` words; the T word sets are disjoint. Sentences of one
document then share a vocabulary that sentences of another document mostly do
not, so next-sentence prediction has something to learn (with T = 1 every
sentence is independent of the previous ones). The first word reveals the topic,
so -log2 P(text) = log2 T - log2 P_t(text) exactly. Per document, topic t costs
B_t = H_t / pi_t(END) bits and N_t = C_t / pi_t(END) characters (1 / pi_t(END) is
the mean END-to-END cycle length), so the floor is
(log2 T + mean_t B_t) / mean_t N_t, which is H / C again when T = 1.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from lm.data import tfds_util

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
# Streams of the per-split document RNGs; the chain itself uses the bare seed.
_SPLIT_STREAMS = {"train": 1, "validation": 2}
_EOS_RANGE = (0.08, 0.22)


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovChain:
  """The source: words, and transitions over states [words..., EOS, END]."""
  words: tuple[str, ...]
  trans: np.ndarray  # float64 [S, S], rows sum to 1, S = len(words) + 2

  @property
  def eos(self) -> int:
    return len(self.words)

  @property
  def end(self) -> int:
    return len(self.words) + 1

  def char_costs(self) -> np.ndarray:
    return np.array([len(w) + 1 for w in self.words] + [1, -1], np.float64)

  def stationary(self) -> np.ndarray:
    """pi with pi P = pi, sum(pi) = 1 (one equation replaced by the sum)."""
    s = self.trans.shape[0]
    a = self.trans.T - np.eye(s)
    a[-1, :] = 1.0
    b = np.zeros(s)
    b[-1] = 1.0
    return np.linalg.solve(a, b)

  def log2_prob(self, text: str) -> float:
    """log2 P(document text), parsing the text back into symbols."""
    index = {w: i for i, w in enumerate(self.words)}
    if not text.endswith("."):
      raise ValueError(f"not a rendered document: {text[:40]!r}")
    total, prev = 0.0, self.end
    for sentence in text[:-1].split(". "):
      for word in sentence.split(" "):
        total += math.log2(self.trans[prev, index[word]])
        prev = index[word]
      total += math.log2(self.trans[prev, self.eos])
      prev = self.eos
    return total + math.log2(self.trans[prev, self.end])


def _random_words(rng: np.random.Generator, num_words: int) -> tuple[str, ...]:
  words: dict[str, None] = {}  # insertion-ordered set
  while len(words) < num_words:
    length = int(rng.integers(2, 8))
    words["".join(_LETTERS[rng.integers(0, 26, size=length)])] = None
  return tuple(words)


@functools.lru_cache(maxsize=8)
def markov_chain(seed: int, num_words: int, branching: int, end_prob: float) -> MarkovChain:
  """The chain for these settings; the same arguments always give the same chain."""
  _check_chain_args(num_words, branching, end_prob)
  rng = np.random.default_rng(seed)
  return _build_chain(rng, _random_words(rng, num_words), branching, end_prob)


def _check_chain_args(num_words: int, branching: int, end_prob: float) -> None:
  if not 1 <= branching <= num_words:
    raise ValueError(f"need 1 <= branching <= num_words, got {branching}, {num_words}")
  if not 0.0 < end_prob <= 1.0:
    raise ValueError(f"need 0 < end_prob <= 1, got {end_prob}")


@functools.lru_cache(maxsize=8)
def topic_chains(seed: int, num_words: int, branching: int, end_prob: float,
                 topics: int = 1) -> tuple[MarkovChain, ...]:
  """One chain per topic over disjoint word sets; topics=1 is (markov_chain(...),)."""
  if topics == 1:
    return (markov_chain(seed, num_words, branching, end_prob),)
  if topics < 1:
    raise ValueError(f"need topics >= 1, got {topics}")
  _check_chain_args(num_words, branching, end_prob)
  words = _random_words(np.random.default_rng([seed, 1_000_003]), topics * num_words)
  return tuple(
      _build_chain(np.random.default_rng([seed, 1_000_003, t]),
                   words[t * num_words:(t + 1) * num_words], branching, end_prob)
      for t in range(topics))


def _build_chain(rng: np.random.Generator, words: tuple[str, ...], branching: int,
                 end_prob: float) -> MarkovChain:
  w = len(words)
  trans = np.zeros((w + 2, w + 2))
  for i in range(w):
    succ = rng.choice(w, size=branching, replace=False)
    p_eos = rng.uniform(*_EOS_RANGE)
    trans[i, succ] = (1.0 - p_eos) * rng.dirichlet(np.ones(branching))
    trans[i, w] = p_eos
  start = rng.dirichlet(np.ones(w))
  trans[w, :w] = (1.0 - end_prob) * start
  trans[w, w + 1] = end_prob
  trans[w + 1, :w] = start
  return MarkovChain(words, trans)


def _bits_and_chars_per_symbol(chain: MarkovChain) -> tuple[float, float, float]:
  """(H, C, pi(END)) of one chain: entropy rate, characters per symbol, END's share."""
  p = chain.trans
  with np.errstate(divide="ignore", invalid="ignore"):
    row_h = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
  pi = chain.stationary()
  return float(pi @ row_h), float(pi @ chain.char_costs()), float(pi[chain.end])


def entropy_floor_bpb(seed: int, num_words: int, branching: int, end_prob: float,
                      topics: int = 1) -> float:
  """Bits per byte of the best possible model of the corpus text (see module doc)."""
  if topics == 1:
    h, c, _ = _bits_and_chars_per_symbol(markov_chain(seed, num_words, branching, end_prob))
    return h / c
  stats = [_bits_and_chars_per_symbol(ch)
           for ch in topic_chains(seed, num_words, branching, end_prob, topics)]
  bits = math.log2(topics) + float(np.mean([h / p_end for h, _, p_end in stats]))
  chars = float(np.mean([c / p_end for _, c, p_end in stats]))
  return bits / chars


def log2_prob(seed: int, num_words: int, branching: int, end_prob: float, topics: int,
              text: str) -> float:
  """log2 P(document text) under the (topic) corpus."""
  chains = topic_chains(seed, num_words, branching, end_prob, topics)
  first = text.split(" ", 1)[0].rstrip(".")
  chain = next(ch for ch in chains if first in ch.words)
  return chain.log2_prob(text) - math.log2(topics)


def _sampler(chain: MarkovChain) -> tuple[list, list]:
  # Sparse rows as python lists: bisect on them is far faster than rng.choice.
  succ, cum = [], []
  for row in chain.trans:
    nz = np.flatnonzero(row)
    c = np.cumsum(row[nz]).tolist()
    c[-1] = 1.0  # uniforms are < 1, so bisect never runs off the end
    succ.append(nz.tolist())
    cum.append(c)
  return succ, cum


def generate_documents(seed: int, num_words: int, branching: int, end_prob: float,
                       num_docs: int, split: str = "train", topics: int = 1) -> Iterator[str]:
  """`num_docs` document texts of one split, from that split's own seeded RNG."""
  chains = topic_chains(seed, num_words, branching, end_prob, topics)
  samplers = [_sampler(ch) for ch in chains]
  rng = np.random.default_rng([seed, _SPLIT_STREAMS[split]])
  uniforms: list[float] = []
  for _ in range(num_docs):
    t = 0
    if topics > 1:  # topics=1 draws nothing here, so that corpus is unchanged
      if not uniforms:
        uniforms = rng.random(4096).tolist()[::-1]
      t = min(int(uniforms.pop() * topics), topics - 1)
    chain, (succ, cum) = chains[t], samplers[t]
    eos, end = chain.eos, chain.end
    state, sentences, words = end, [], []
    while True:
      if not uniforms:
        uniforms = rng.random(4096).tolist()[::-1]
      state = succ[state][bisect.bisect_right(cum[state], uniforms.pop())]
      if state == end:
        break
      if state == eos:
        sentences.append(" ".join(words) + ".")
        words = []
      else:
        words.append(chain.words[state])
    yield " ".join(sentences)


class SyntheticConfig(tfds.core.BuilderConfig):
  """Corpus settings; the name spells them so each setting caches separately."""

  def __init__(self, *, seed: int = 0, num_words: int = 48, branching: int = 4,
               end_prob: float = 0.25, train_docs: int = 20000, eval_docs: int = 500,
               topics: int = 1):
    super().__init__(
        name=(f"s{seed}-w{num_words}-b{branching}-e{float(end_prob)!r}"
              f"-tr{train_docs}-ev{eval_docs}" + (f"-t{topics}" if topics != 1 else "")),
        description="Markov-chain text with a known entropy floor.")
    self.topics = int(topics)
    self.seed = int(seed)
    self.num_words = int(num_words)
    self.branching = int(branching)
    self.end_prob = float(end_prob)
    self.train_docs = int(train_docs)
    self.eval_docs = int(eval_docs)

  @property
  def chain_args(self) -> tuple[int, int, int, float]:
    return self.seed, self.num_words, self.branching, self.end_prob

  @property
  def corpus_args(self) -> tuple[int, int, int, float, int]:
    return self.chain_args + (self.topics,)


class SyntheticCorpus(tfds_util.QuietBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """tfds builder of the synthetic corpus (splits train, validation; feature text)."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [SyntheticConfig()]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[1],
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        metadata=tfds.core.MetadataDict(
            entropy_floor_bpb=entropy_floor_bpb(*cfg.corpus_args),
            seed=cfg.seed, num_words=cfg.num_words, branching=cfg.branching,
            end_prob=cfg.end_prob, **({"topics": cfg.topics} if cfg.topics != 1 else {})))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {"train": self._generate_examples("train", cfg.train_docs),
            "validation": self._generate_examples("validation", cfg.eval_docs)}

  def _generate_examples(self, split: str, num_docs: int):
    cfg = self.builder_config
    docs = generate_documents(*cfg.chain_args, num_docs, split, topics=cfg.topics)
    for i, text in enumerate(docs):
      yield i, {"text": text}

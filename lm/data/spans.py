"""T5 span corruption, and the encoder-decoder example layout it shares with seq2seq.

A document's token ids are cut into near-equal pieces of at most `max_raw_length`
tokens. In a piece of n tokens, round(n * noise_density) tokens (at least 1, at
most n - 1) are noise, in round(noise / mean_span_length) spans (at least 1, at
most the tokens of either kind). Noise and non-noise lengths are each a uniformly
random composition into that many positive parts; the kept tokens form one more
run, around and between the spans, where only the first and last run may be
empty. Unlike T5 (whose pieces always end with noise), every position is then
about equally likely to be noise, with the same span and token counts.
Each noise span becomes one sentinel <extra_id_i> (i = 0, 1, ... in order) in the
inputs; the targets are each sentinel followed by the span it replaced. Both end
with </s>. `reconstruct(inputs, targets)` puts the spans back: the original ids.

The tokenizer reserves 16 sentinels, so a piece never has more than 16 spans;
longer rows simply pack several pieces.

Encoder-decoder example fields (`seq2seq_example`): encoder_inputs; decoder_inputs
(<s> then the targets shifted right), decoder_targets, decoder_weights (float32).
"""
from __future__ import annotations

import dataclasses

import numpy as np

NUM_SENTINELS = 16
SEQ2SEQ_FIELDS = {"encoder_inputs": ("encoder_", np.int32),
                  "decoder_inputs": ("decoder_", np.int32),
                  "decoder_targets": ("decoder_", np.int32),
                  "decoder_weights": ("decoder_", np.float32)}


def seq2seq_example(encoder_ids, target_ids, bos_id: int) -> dict[str, np.ndarray]:
  """Teacher-forced encoder-decoder example; both id lists already end with </s>."""
  target = np.asarray(target_ids, np.int32)
  return {"encoder_inputs": np.asarray(encoder_ids, np.int32),
          "decoder_inputs": np.concatenate([[bos_id], target[:-1]]).astype(np.int32),
          "decoder_targets": target,
          "decoder_weights": np.ones(len(target), np.float32)}


@dataclasses.dataclass(frozen=True)
class SpanSpec:
  noise_density: float
  mean_span_length: float
  sentinel_ids: tuple[int, ...]  # <extra_id_0>, <extra_id_1>, ...
  eos_id: int
  bos_id: int

  @classmethod
  def from_config(cls, data_cfg, tokenizer) -> "SpanSpec":
    sentinels = tuple(tokenizer.special_id(f"<extra_id_{i}>") for i in range(NUM_SENTINELS))
    return cls(float(data_cfg.noise_density), float(data_cfg.mean_span_length), sentinels,
               tokenizer.eos_id, tokenizer.bos_id)

  def counts(self, n: int) -> tuple[int, int]:
    """(noise tokens, noise spans) in a piece of n >= 2 tokens."""
    noise = min(max(int(round(n * self.noise_density)), 1), n - 1)
    spans = min(max(int(round(noise / self.mean_span_length)), 1), noise, n - noise)
    return noise, spans

  def lengths(self, n: int) -> tuple[int, int]:
    """(encoder inputs, decoder targets) lengths of a piece of n tokens, </s> included."""
    noise, spans = self.counts(n)
    return n - noise + spans + 1, noise + spans + 1


def max_raw_length(spec: SpanSpec, inputs_len: int, targets_len: int = 0) -> int:
  """Longest piece whose inputs fit inputs_len, targets fit targets_len (0: any), <= 16 spans."""
  best = 0
  for n in range(2, 4 * inputs_len + 8):
    inputs, targets = spec.lengths(n)
    if inputs > inputs_len:
      break
    if spec.counts(n)[1] <= len(spec.sentinel_ids) and (not targets_len or targets <= targets_len):
      best = n
  if not best:
    raise ValueError(f"no span-corruption piece fits encoder length {inputs_len} and decoder "
                     f"length {targets_len}")
  return best


def targets_length(spec: SpanSpec, max_raw: int) -> int:
  """Decoder row length that every piece of at most max_raw tokens fits."""
  return max(spec.lengths(n)[1] for n in range(2, max_raw + 1))


def _composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
  """`total` split into `parts` positive integers, uniformly over all such splits."""
  cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(n: int, spec: SpanSpec, rng: np.random.Generator) -> np.ndarray:
  """bool [n]: True on noise tokens (see the module docstring)."""
  noise, spans = spec.counts(n)
  noise_lengths = _composition(noise, spans, rng)
  # spans + 1 runs of kept tokens; the first and last may be empty (a +1 each, taken back)
  keep_lengths = _composition(n - noise + 2, spans + 1, rng)
  keep_lengths[[0, -1]] -= 1
  lengths = np.stack([keep_lengths[:-1], noise_lengths], axis=1).ravel()
  lengths = np.append(lengths, keep_lengths[-1])
  return np.repeat(np.tile([False, True], spans + 1)[:-1], lengths)


def corrupt(ids: np.ndarray, mask: np.ndarray, spec: SpanSpec) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of one piece given its noise mask; see the module docstring."""
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  sentinel = np.asarray(spec.sentinel_ids, np.int32)[np.maximum(np.cumsum(starts) - 1, 0)]
  inputs = np.where(starts, sentinel, ids)[~mask | starts]
  # targets interleave [sentinel if a span starts here, token if it is noise] per position
  pairs = np.stack([sentinel, ids], axis=1).ravel()
  targets = pairs[np.stack([starts, mask], axis=1).ravel()]
  eos = np.array([spec.eos_id], np.int32)
  return (np.concatenate([inputs, eos]).astype(np.int32),
          np.concatenate([targets, eos]).astype(np.int32))


def reconstruct(inputs: np.ndarray, targets: np.ndarray, spec: SpanSpec) -> np.ndarray:
  """The original piece from (inputs, targets): each sentinel replaced by its span."""
  sentinels = set(spec.sentinel_ids)
  spans: dict[int, list[int]] = {}
  current = None
  for t in targets.tolist():
    if t == spec.eos_id:
      break
    if t in sentinels:
      current = spans.setdefault(t, [])
    elif current is not None:
      current.append(t)
  out: list[int] = []
  for t in inputs.tolist():
    if t == spec.eos_id:
      break
    out.extend(spans.get(t, [])) if t in sentinels else out.append(t)
  return np.array(out, np.int32)


def span_examples(ids: np.ndarray, spec: SpanSpec, rng: np.random.Generator,
                  max_raw: int) -> list[dict[str, np.ndarray]]:
  """Span-corruption examples of one document's ids (pieces shorter than 2 are skipped)."""
  if len(ids) < 2:
    return []
  out = []
  for piece in np.array_split(ids, -(-len(ids) // max_raw)):
    if len(piece) < 2:
      continue
    inputs, targets = corrupt(piece, noise_mask(len(piece), spec, rng), spec)
    out.append(seq2seq_example(inputs, targets, spec.bos_id))
  return out

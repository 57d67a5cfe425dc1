"""Training objectives: the model a run builds, its loss, and its eval metrics.

An objective ties a model family to a batch format and a loss. The training
loop only calls the methods below, so a new objective is a new class here plus
its data preprocessing (lm/data/). Registered (cfg.objective -> family):
  clm              decoder          next-token loss on every token
  prefix_lm        decoder          bidirectional prefix, loss on the rest
  mlm              encoder          masked-LM loss/accuracy on selected tokens
  mlm_nsp          encoder          MLM + data.nsp_loss_weight * next-sentence prediction
  span_corruption  encoder_decoder  T5 sentinel-span targets
  seq2seq          encoder_decoder  target given input (instruction tuning builds on it)
  sft              decoder          CLM loss on assistant tokens only (lm/data/sft.py weights)
  sft_seq2seq      encoder_decoder  the conversation history in, the assistant turn out

Normalisers: `loss_normalizer(batch)` gives what a loss divides by over a batch
(a scalar, or a dict for MLM+NSP: masked tokens and examples). With gradient
accumulation, compute it over the whole effective batch and pass it to each
microbatch's `loss(..., num_tokens=)`; the microbatch losses then sum to the
full-batch loss exactly.

Losses and softmax are computed in float32 whatever the compute dtype.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.config import ConfigError, ModelConfig


OBJECTIVE_FAMILIES = {"clm": "decoder", "prefix_lm": "decoder", "mlm": "encoder",
                      "mlm_nsp": "encoder", "span_corruption": "encoder_decoder",
                      "seq2seq": "encoder_decoder", "sft": "decoder",
                      "sft_seq2seq": "encoder_decoder"}


def check_family(objective: str, family: str) -> None:
  """ConfigError when the objective needs another model family."""
  want = OBJECTIVE_FAMILIES.get(objective)
  if want is not None and family != want:
    raise ConfigError(f"objective={objective!r} trains a model.family={want!r} model, but "
                      f"model.family={family!r}; set model.family={want!r} (or pick an objective "
                      f"of {family!r}: {', '.join(o for o, f in OBJECTIVE_FAMILIES.items() if f == family)}).")


def token_losses(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in nats, in float32."""
  return softmax_cross_entropy(logits_BLV, targets_BL)


@jax.custom_vjp
def softmax_cross_entropy(logits, targets):
  """logsumexp(logits) - logits[target] over the last dim, float32; the gradient
  recomputes the softmax from the logits instead of keeping it."""
  return _softmax_cross_entropy_fwd(logits, targets)[0]


def _softmax_cross_entropy_fwd(logits, targets):
  x = logits.astype(jnp.float32)
  # Shifted by the row max, kept apart from it: m + log(sum) would round at large |m|.
  m = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  log_sum = jnp.log(jnp.sum(jnp.exp(x - m), axis=-1, keepdims=True))
  target_logit = jnp.take_along_axis(x, targets[..., None], axis=-1)
  return (log_sum - (target_logit - m))[..., 0], (logits, targets, m, log_sum)


def _softmax_cross_entropy_bwd(residuals, g):
  logits, targets, m, log_sum = residuals
  x = logits.astype(jnp.float32)
  onehot = jax.lax.broadcasted_iota(targets.dtype, x.shape, x.ndim - 1) == targets[..., None]
  # x - (m + log_sum), not (x - m) - log_sum: XLA would share x - m with the forward
  # and write it out (a pass over [tokens, vocab]) for this pass to read.
  dx = (jnp.exp(x - (m + log_sum)) - onehot.astype(jnp.float32)) * g[..., None]
  return dx.astype(logits.dtype), None


softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)


def _correct(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
  return (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)


def _token_metrics(sums: dict[str, float], bits_per_byte: bool) -> dict[str, float]:
  """loss, its standard error, perplexity, accuracy [, bits per byte] from token sums."""
  n = max(sums["tokens"], 1.0)
  loss = sums["nll"] / n
  var = max(sums["nll_sq"] / n - loss * loss, 0.0)
  out = {
      "loss": loss,
      "loss_stderr": math.sqrt(var / n),  # per-token standard error (tokens treated as independent)
      "perplexity": math.exp(min(loss, 50.0)),
      "accuracy": sums["correct"] / n,
      "eval_tokens": sums["tokens"],
  }
  if bits_per_byte:
    out["bits_per_byte"] = sums["nll"] / math.log(2) / max(sums["bytes"], 1.0)
  return out


class CausalLM:
  """Next-token prediction on every target whose weight is 1 (padding has weight 0).

  Batch: inputs, targets, segment_ids, positions [B, L] int32; weights [B, L] float32.
  The loss is normalised by the number of weighted target tokens in the batch.
  """
  name = "clm"
  batch_keys = ("inputs", "targets", "segment_ids", "positions", "weights")

  def __init__(self, cfg: Any = None):
    self.run_cfg = cfg  # the run config, for objectives with settings; optional

  def make_model(self, cfg: ModelConfig) -> nn.Module:
    from lm.models import make_model
    check_family(self.name, cfg.family)
    return make_model(cfg)

  def loss_normalizer(self, batch) -> jax.Array:
    return jnp.maximum(batch["weights"].sum(), 1.0)

  def init_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    z = jnp.zeros((batch_size, seq_len), jnp.int32)
    return {"inputs": z, "targets": z, "segment_ids": z + 1, "positions": z,
            "weights": jnp.ones((batch_size, seq_len), jnp.float32)}

  def init_params(self, model: nn.Module, rng: jax.Array, batch: dict) -> Any:
    return model.init({"params": rng}, batch["inputs"], batch["positions"], batch["segment_ids"],
                      deterministic=True)["params"]

  def logits(self, model, params, batch, *, deterministic: bool, rng=None) -> jax.Array:
    rngs = None if deterministic else {"dropout": rng}
    return model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
                       deterministic=deterministic, rngs=rngs)

  def loss(self, model, params, batch, *, deterministic: bool, rng=None, num_tokens=None):
    """Mean loss over weighted targets; `num_tokens` overrides the normaliser (grad accumulation)."""
    logits = self.logits(model, params, batch, deterministic=deterministic, rng=rng)
    w = batch["weights"]
    denom = self.loss_normalizer(batch) if num_tokens is None else num_tokens
    return (token_losses(logits, batch["targets"]) * w).sum() / denom, {}

  def eval_sums(self, model, params, batch, token_bytes: jax.Array) -> dict[str, jax.Array]:
    """Sums over one batch: nats, target tokens, and the bytes those tokens decode to."""
    logits = self.logits(model, params, batch, deterministic=True)
    w = batch["weights"]
    nll = token_losses(logits, batch["targets"]) * w
    return {"nll": nll.sum(), "nll_sq": (nll * nll).sum(), "tokens": w.sum(),
            "correct": (_correct(logits, batch["targets"]) * w).sum(),
            "bytes": (token_bytes[batch["targets"]] * w).sum()}

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    return _token_metrics(sums, bits_per_byte=True)


class PrefixLM(CausalLM):
  """Decoder-only LM with a bidirectional prefix; loss only after the prefix.

  Batch: CausalLM's keys + prefix_mask [B, L] int32 (1 on prefix inputs). The
  data puts weight 1 on every target after the prefix (lm/data/prefix.py), so
  loss, accuracy and bits per byte are over the suffix tokens.
  """
  name = "prefix_lm"
  batch_keys = CausalLM.batch_keys + ("prefix_mask",)

  def init_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    return {**super().init_batch(batch_size, seq_len),
            "prefix_mask": jnp.ones((batch_size, seq_len), jnp.int32)}

  def init_params(self, model, rng, batch) -> Any:
    return model.init({"params": rng}, batch["inputs"], batch["positions"], batch["segment_ids"],
                      deterministic=True, prefix_mask_BL=batch["prefix_mask"])["params"]

  def logits(self, model, params, batch, *, deterministic: bool, rng=None) -> jax.Array:
    rngs = None if deterministic else {"dropout": rng}
    return model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
                       deterministic=deterministic, rngs=rngs, prefix_mask_BL=batch["prefix_mask"])


class EncoderDecoderLM:
  """Teacher-forced target loss of an encoder-decoder model.

  Batch: encoder_{inputs,segment_ids,positions} [B, S]; decoder_{inputs,targets,
  segment_ids,positions} [B, L] int32, decoder_weights [B, L] float32. The loss is
  normalised by the number of weighted target tokens.
  """
  name = "seq2seq"
  batch_keys = ("encoder_inputs", "encoder_segment_ids", "encoder_positions",
                "decoder_inputs", "decoder_targets", "decoder_segment_ids",
                "decoder_positions", "decoder_weights")
  bits_per_byte = True  # targets are text

  def __init__(self, cfg: Any = None):
    self.run_cfg = cfg

  def make_model(self, cfg: ModelConfig) -> nn.Module:
    from lm.models import make_model
    check_family(self.name, cfg.family)
    return make_model(cfg)

  def init_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    # Param shapes do not depend on the decoder length, so seq_len serves both sides.
    z = jnp.zeros((batch_size, seq_len), jnp.int32)
    batch = {k: z for k in self.batch_keys}
    batch.update(encoder_segment_ids=z + 1, decoder_segment_ids=z + 1,
                 decoder_weights=jnp.ones((batch_size, seq_len), jnp.float32))
    return batch

  def _args(self, batch):
    return (batch["encoder_inputs"], batch["decoder_inputs"], batch["encoder_positions"],
            batch["encoder_segment_ids"], batch["decoder_positions"], batch["decoder_segment_ids"])

  def init_params(self, model, rng, batch) -> Any:
    return model.init({"params": rng}, *self._args(batch), deterministic=True)["params"]

  def logits(self, model, params, batch, *, deterministic: bool, rng=None) -> jax.Array:
    rngs = None if deterministic else {"dropout": rng}
    return model.apply({"params": params}, *self._args(batch), deterministic=deterministic,
                       rngs=rngs)

  def loss_normalizer(self, batch) -> jax.Array:
    return jnp.maximum(batch["decoder_weights"].sum(), 1.0)

  def loss(self, model, params, batch, *, deterministic: bool, rng=None, num_tokens=None):
    logits = self.logits(model, params, batch, deterministic=deterministic, rng=rng)
    w = batch["decoder_weights"]
    denom = self.loss_normalizer(batch) if num_tokens is None else num_tokens
    return (token_losses(logits, batch["decoder_targets"]) * w).sum() / denom, {}

  def eval_sums(self, model, params, batch, token_bytes: jax.Array) -> dict[str, jax.Array]:
    logits = self.logits(model, params, batch, deterministic=True)
    w, targets = batch["decoder_weights"], batch["decoder_targets"]
    nll = token_losses(logits, targets) * w
    return {"nll": nll.sum(), "nll_sq": (nll * nll).sum(), "tokens": w.sum(),
            "correct": (_correct(logits, targets) * w).sum(),
            "bytes": (token_bytes[targets] * w).sum()}

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    return _token_metrics(sums, bits_per_byte=self.bits_per_byte)


class SpanCorruption(EncoderDecoderLM):
  """T5 span corruption: the decoder writes each sentinel and the span it hides.

  No bits per byte: the targets are a sample of the text (plus sentinels), not
  the text, so nats per byte would not compare with a causal LM's.
  """
  name = "span_corruption"
  bits_per_byte = False


class MaskedLM:
  """BERT masked-LM loss and accuracy on the selected tokens only (weights 1 there).

  Batch: inputs (corrupted), targets (original), token_types, segment_ids,
  positions [B, L] int32; weights [B, L] float32.
  """
  name = "mlm"
  batch_keys = ("inputs", "targets", "weights", "token_types", "segment_ids", "positions")
  nsp = False

  def __init__(self, cfg: Any = None):
    self.run_cfg = cfg
    self.nsp_loss_weight = float(cfg.data.nsp_loss_weight) if cfg is not None else 1.0

  def make_model(self, cfg: ModelConfig) -> nn.Module:
    from lm.models import make_model
    check_family(self.name, cfg.family)
    return make_model(cfg)

  def init_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    z = jnp.zeros((batch_size, seq_len), jnp.int32)
    batch = {k: z for k in self.batch_keys}
    batch["segment_ids"] = z + 1
    for k in self.batch_keys:
      if k.endswith("weights"):
        batch[k] = jnp.ones((batch_size, seq_len), jnp.float32)
    return batch

  def _args(self, batch):
    return batch["inputs"], batch["positions"], batch["segment_ids"], batch["token_types"]

  def init_params(self, model, rng, batch) -> Any:
    return model.init({"params": rng}, *self._args(batch), deterministic=True)["params"]

  def logits(self, model, params, batch, *, deterministic: bool, rng=None):
    """(MLM logits [B, L, V], NSP logits [B, L, 2])."""
    rngs = None if deterministic else {"dropout": rng}
    return model.apply({"params": params}, *self._args(batch), deterministic=deterministic,
                       rngs=rngs)

  def loss_normalizer(self, batch):
    norm = {"mlm": jnp.maximum(batch["weights"].sum(), 1.0)}
    if self.nsp:
      norm["nsp"] = jnp.maximum(batch["nsp_weights"].sum(), 1.0)
    return norm

  def _terms(self, logits, batch):
    mlm_logits, nsp_logits = logits
    w = batch["weights"]
    out = {"mlm_nll": token_losses(mlm_logits, batch["targets"]) * w,
           "mlm_correct": _correct(mlm_logits, batch["targets"]) * w}
    if self.nsp:
      nw = batch["nsp_weights"]
      out["nsp_nll"] = token_losses(nsp_logits, batch["nsp_labels"]) * nw
      out["nsp_correct"] = _correct(nsp_logits, batch["nsp_labels"]) * nw
    return out

  def loss(self, model, params, batch, *, deterministic: bool, rng=None, num_tokens=None):
    """MLM (+ weight * NSP) loss; aux: the parts and accuracies of this (micro)batch.

    `num_tokens`: a `loss_normalizer` dict of the whole effective batch; a scalar
    is taken as the MLM normaliser (NSP then uses this batch's example count).
    """
    terms = self._terms(self.logits(model, params, batch, deterministic=deterministic, rng=rng),
                        batch)
    norm = self.loss_normalizer(batch)
    if num_tokens is not None:
      norm = dict(norm, **num_tokens) if isinstance(num_tokens, dict) else dict(norm, mlm=num_tokens)
    mlm_loss = terms["mlm_nll"].sum() / norm["mlm"]
    local = self.loss_normalizer(batch)
    aux = {"mlm_loss": mlm_loss, "mlm_accuracy": terms["mlm_correct"].sum() / local["mlm"]}
    loss = mlm_loss
    if self.nsp:
      nsp_loss = terms["nsp_nll"].sum() / norm["nsp"]
      aux.update(nsp_loss=nsp_loss, nsp_accuracy=terms["nsp_correct"].sum() / local["nsp"])
      loss = loss + self.nsp_loss_weight * nsp_loss
    return loss, aux

  def eval_sums(self, model, params, batch, token_bytes: jax.Array) -> dict[str, jax.Array]:
    del token_bytes  # masked-token nats are not a code length of the text: no bits per byte
    terms = self._terms(self.logits(model, params, batch, deterministic=True), batch)
    sums = {k: v.sum() for k, v in terms.items()}
    sums["mlm_tokens"] = batch["weights"].sum()
    if self.nsp:
      sums["nsp_examples"] = batch["nsp_weights"].sum()
    return sums

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["mlm_tokens"], 1.0)
    out = {"mlm_loss": sums["mlm_nll"] / n, "mlm_accuracy": sums["mlm_correct"] / n,
           "eval_tokens": sums["mlm_tokens"]}
    out["perplexity"] = math.exp(min(out["mlm_loss"], 50.0))
    out["loss"] = out["mlm_loss"]
    if self.nsp:
      e = max(sums["nsp_examples"], 1.0)
      out.update(nsp_loss=sums["nsp_nll"] / e, nsp_accuracy=sums["nsp_correct"] / e,
                 eval_examples=sums["nsp_examples"])
      out["loss"] = out["mlm_loss"] + self.nsp_loss_weight * out["nsp_loss"]
    return out


class MaskedLMNSP(MaskedLM):
  """MLM plus next-sentence prediction at each example's [CLS] (nsp_weights 1 there).

  Batch: MaskedLM's keys + nsp_labels [B, L] int32 (0 IsNext, 1 NotNext) and
  nsp_weights [B, L] float32. loss = mlm_loss + data.nsp_loss_weight * nsp_loss,
  each the mean over its own items (masked tokens; examples).
  """
  name = "mlm_nsp"
  batch_keys = MaskedLM.batch_keys + ("nsp_labels", "nsp_weights")
  nsp = True


class SFT(CausalLM):
  """Instruction tuning, decoder-only: CausalLM's loss; the data weights only response
  (assistant) tokens, so the loss is normalised by the response tokens of the batch."""
  name = "sft"


class SFTSeq2Seq(EncoderDecoderLM):
  """Instruction tuning, encoder-decoder: prompt to the encoder, response as the target."""
  name = "sft_seq2seq"


OBJECTIVES = {cls.name: cls for cls in (CausalLM, PrefixLM, MaskedLM, MaskedLMNSP,
                                        SpanCorruption, EncoderDecoderLM, SFT, SFTSeq2Seq)}


def get_objective(name: str, cfg: Any = None):
  """The objective called `name`; `cfg` (the run config) supplies its settings, e.g.
  data.nsp_loss_weight (defaults apply without it)."""
  if name not in OBJECTIVES:
    raise ConfigError(f"objective={name!r} is not one of: {', '.join(sorted(OBJECTIVES))}; set objective to one of them.")
  return OBJECTIVES[name](cfg)

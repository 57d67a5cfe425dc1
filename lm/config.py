"""Run configuration: defaults, the model's hashable config, and validation.

A run is configured by an `ml_collections.ConfigDict` built from `base_config()`
and overridden by an experiment file (`experiments/configs/*.py`) and absl
flags. The dict is locked, so a misspelt field is an error instead of a silent
no-op. `validate(cfg, num_devices)` checks everything that can be checked
before compute starts and raises `ConfigError` naming the field and the fix.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A configuration problem a person must fix; the message names field and fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hashable model hyper-parameters (Flax modules take this as an attribute)."""
  family: str = "decoder"  # "decoder" (GPT-style; prefix-LM too) | "encoder" (BERT) | "encoder_decoder" (T5)
  vocab_size: int = 512
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 0  # 0 means num_heads (plain MHA); fewer gives GQA/MQA
  head_dim: int = 0  # 0 means d_model // num_heads
  mlp_dim: int = 512
  max_len: int = 128  # longest position the model supports (learned/sinusoidal tables)
  position: str = "rope"  # "rope" | "learned" | "sinusoidal"
  rope_base: float = 10000.0
  norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
  norm_eps: float = 1e-6
  # "swiglu" | "gelu" (tanh approx.) | "gelu_exact" | "relu" | "geglu" (gated tanh-GELU, T5 v1.1)
  mlp_activation: str = "swiglu"
  dropout_rate: float = 0.0
  tie_embeddings: bool = True
  scan_layers: bool = True
  # Layers per scan iteration (scan_layers); more lets XLA fuse across layers. 0 = auto: the
  # whole stack up to 8 layers, else 1 (lm/transformer.py scan_unroll_for)
  scan_unroll: int = 0
  # "auto": cuDNN flash attention on GPUs in bf16/fp16, on CPUs "cpu_fused" where its kernel
  # compiles (else "blocked"), the XLA path elsewhere | "xla" | "cudnn" | "blocked"
  # (lm/blocked_attention.py) | "cpu_fused" (lm/cpu_attention.py: a C++ kernel; float32
  # causal/masked self-attention, other calls take the blocked path)
  attention_impl: str = "auto"
  # "blocked" attention: causal queries in blocks of this many, each skipping the keys after
  # it; 0 = one block
  attention_block_size: int = 64
  # Kernel gradients of dense layers and tied logits: "auto" (on CPU a plain GEMM on a copied
  # transpose, lm/weight_grads.py; autodiff elsewhere) | "xla" (autodiff) | "transposed"
  weight_grad_impl: str = "auto"
  # The library XLA:CPU runs matmuls with: "auto" (oneDNN on CPU, XLA's default elsewhere) |
  # "onednn" (CPU only) | "xla" (XLA's default: YNNPACK and Eigen); lm/compile_options.py
  matmul_library: str = "auto"
  remat_policy: str = "none"  # "none" | "full" | "dots_saveable" | "save_attention_out"
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  # Families beyond the decoder (lm/bert.py, lm/encoder_decoder.py). Defaults keep the decoder as it was.
  norm_placement: str = "pre"  # "pre": x + f(norm(x)) | "post": norm(x + f(x)) (original Transformer/BERT)
  use_bias: bool = False  # biases on every projection (BERT)
  embed_norm: bool = False  # a norm right after the embeddings (BERT)
  type_vocab_size: int = 0  # token-type (segment A/B) embeddings; 0 = none, BERT uses 2
  num_decoder_layers: int = 0  # encoder_decoder: decoder depth; 0 means num_layers
  relative_attention_num_buckets: int = 32  # position="relative" (T5 bucketed bias)
  relative_attention_max_distance: int = 128
  # Exact variants of imported checkpoints (lm/interop/). Defaults keep the models as they were.
  scale_attention: bool = True  # False: logits are q.k unscaled (T5 folds 1/sqrt(K) into its init)
  output_scale: float = 1.0  # final features times this before the logits (T5 v1.0: d_model**-0.5)
  decoder_start_id: int = 2  # encoder_decoder: first decoder input when generating (<bos>; T5: pad 0)

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @classmethod
  def from_config(cls, model_cfg: Any) -> "ModelConfig":
    d = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    return cls(**d)


def with_model_defaults(model: dict) -> dict:
  """A saved model config with the fields added since it was written at their defaults
  (which keep the model as it was), so older runs still resume and load."""
  return {**dataclasses.asdict(ModelConfig()), **model}


def _model_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))


def base_config() -> ml_collections.ConfigDict:
  """Every field a run may set, with its default. Experiment files override these."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.objective = "clm"  # see lm/objectives.py
  c.model = _model_defaults()

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "synthetic"  # "synthetic" | "text" | any registered tfds name ("lm1b", "c4/en")
  c.data.data_dir = ""  # "" means $LM_DATA_DIR or ~/.cache/lm_scaling/data
  c.data.text_field = "text"  # feature holding the text in a registered tfds dataset
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.text_glob = ""  # dataset="text": glob of .txt or .jsonl files
  c.data.text_mode = "file"  # .txt: "file" (one doc per file) | "blank_line" (one doc per block)
  c.data.eval_fraction = 0.05  # dataset="text": documents held out for validation
  c.data.seq_len = 128
  c.data.shuffle_seed = 0
  # "rows": every process packs the global batch and keeps its rows, so batches (and losses)
  # do not depend on the process count; "documents": each process packs its own share of the
  # documents (tokenization scales with processes, order depends on the process count).
  c.data.process_sharding = "rows"
  c.data.tokenizer_docs = 20000  # documents of the train split used to train the tokenizer
  # Per-objective preprocessing (lm/data/mlm.py, spans.py, prefix.py).
  c.data.mlm_rate = 0.15  # mlm, mlm_nsp: fraction of non-special tokens selected for prediction
  c.data.mlm_mask_fraction = 0.8  # of those: replaced by <mask>; mlm_random_fraction: a random token; rest unchanged
  c.data.mlm_random_fraction = 0.1
  c.data.nsp_loss_weight = 1.0  # mlm_nsp: loss = mlm_loss + nsp_loss_weight * nsp_loss
  c.data.noise_density = 0.15  # span_corruption: fraction of tokens in noise spans
  c.data.mean_span_length = 3.0  # span_corruption: mean noise span length
  c.data.target_seq_len = 0  # encoder-decoder decoder row length; 0 = auto (span_corruption: what the noise needs; seq2seq: seq_len)
  c.data.prefix_fraction = 0.0  # prefix_lm, seq2seq: prefix share of each example; 0 = uniform random split point
  # dataset="instructions" (lm/data/instructions.py): JSONL of {"prompt","response"} or {"messages"}
  c.data.instructions_glob = ""
  c.data.instructions_validation_glob = ""  # "" = hold out data.eval_fraction of instructions_glob
  # A tokenizer.model to use as is; "" = train/cache one, except that with train.init_from set
  # the pretrained run's <WORKDIR>/tokenizer.model is used (tuning must keep its ids).
  c.data.tokenizer_path = ""
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.seed = 0
  c.data.synthetic.num_words = 48
  c.data.synthetic.branching = 4
  c.data.synthetic.end_prob = 0.25
  c.data.synthetic.train_docs = 20000
  c.data.synthetic.eval_docs = 500
  c.data.synthetic.topics = 1  # >1: each document draws a topic with its own words (NSP becomes learnable)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global batch (sequences per step, all processes together)
  c.train.num_steps = 200
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 20
  c.train.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio
  c.train.weight_decay = 0.01
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.grad_clip = 1.0
  c.train.log_every = 10
  c.train.eval_every = 100
  c.train.eval_batches = 8
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 3
  c.train.grad_accum_steps = 1  # microbatches per step; the effective batch stays train.batch_size
  c.train.nonfinite = "stop"  # NaN/Inf loss or gradient: "stop" (error, last good checkpoint kept) | "skip" the step
  c.train.peak_flops_per_device = 0.0  # for MFU; 0 = datasheet table (accelerators) or a measured matmul (CPU)
  c.train.log_layer_norms = False  # also log per-layer parameter and gradient norms
  c.train.init_from = ""  # WORKDIR or WORKDIR/checkpoints/<step>: start from its params (new optimizer, schedule)
  # "all": init_from is the same model; "matching": load the params whose names and shapes match
  # (another family or heads; lm/warm_start.py), the rest keep their fresh init.
  c.train.init_from_params = "all"
  # CPU (glibc): keep freed host memory for reuse instead of unmapping it, so the step's large
  # buffers are not page-faulted in again every step (lm/host_memory.py; ~25% of a ref_tiny step).
  # The process keeps its peak RSS. Takes effect when set before the JAX backend starts (the CLIs do).
  c.train.reuse_host_memory = True
  c.train.debug_nan_step = -1  # fault injection for tests: make the loss NaN at this step

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: the rest of the devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.lock()
  return c


def suggest_field(cfg: ml_collections.ConfigDict, dotted: str) -> str:
  """'did you mean ...' text for a field name that does not exist."""
  names = list(_flat_keys(cfg.to_dict()))
  close = difflib.get_close_matches(dotted, names, n=3)
  return f" Did you mean: {', '.join(close)}?" if close else ""


def _flat_keys(d: dict, prefix: str = ""):
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      yield from _flat_keys(v, key + ".")
    else:
      yield key


def flatten(d: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


# Fields that may differ when a run in an existing WORKDIR is started again:
# they change how long or how often, not what is trained (mesh: elastic restore).
RESUMABLE_FIELDS = frozenset({
    "train.num_steps", "train.log_every", "train.eval_every", "train.eval_batches",
    "train.checkpoint_every", "train.keep_checkpoints",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "data.data_dir",
    "model.scan_layers", "model.scan_unroll", "model.attention_impl", "model.attention_block_size",
    "model.weight_grad_impl", "model.matmul_library",
    "model.remat_policy", "train.log_layer_norms",
    "train.peak_flops_per_device", "train.reuse_host_memory",
})


def config_diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} for every dotted field that differs."""
  a, b = flatten(old), flatten(new)
  missing = object()
  return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if a.get(k, missing) != b.get(k, missing)}


def _positive(cfg, dotted: str, allow_zero: bool = False) -> None:
  node = cfg
  for part in dotted.split("."):
    node = node[part]
  if not isinstance(node, (int, float)) or node < 0 or (node == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"{dotted}={node!r} is invalid: it must be a number {bound}.")


def validate(cfg: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
  """Every check that needs no data and no compute; raises ConfigError."""
  from lm.models import validate_model_config  # models import config: import late
  from lm.sharding import resolve_mesh_shape

  from lm.objectives import get_objective

  get_objective(cfg.objective)
  model = ModelConfig.from_config(cfg.model)
  validate_model_config(model)
  for f in ("train.batch_size", "train.num_steps", "train.learning_rate", "train.log_every",
            "train.eval_every", "train.eval_batches", "train.checkpoint_every", "train.keep_checkpoints",
            "data.seq_len"):
    _positive(cfg, f)
  for f in ("train.warmup_steps", "train.weight_decay", "train.grad_clip", "train.min_lr_ratio"):
    _positive(cfg, f, allow_zero=True)
  if cfg.data.seq_len > model.max_len:
    raise ConfigError(
        f"data.seq_len={cfg.data.seq_len} exceeds model.max_len={model.max_len}: "
        f"raise model.max_len to at least {cfg.data.seq_len} or shorten data.seq_len.")
  data, fsdp, tensor = resolve_mesh_shape(cfg.mesh, num_devices)
  dp = data * fsdp
  if cfg.train.batch_size % dp:
    raise ConfigError(
        f"train.batch_size={cfg.train.batch_size} is not divisible by the data-parallel size "
        f"mesh.data x mesh.fsdp = {data} x {fsdp} = {dp}; use a multiple of {dp}.")
  if cfg.train.batch_size % process_count:
    raise ConfigError(
        f"train.batch_size={cfg.train.batch_size} is not divisible by the {process_count} processes; "
        f"use a multiple of {process_count}.")

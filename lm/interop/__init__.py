"""Hugging Face checkpoints: import a BERT, GPT-2 or T5 directory as a WORKDIR, export back.

`import_hf(hf_dir, workdir)` reads config.json + model.safetensors (no torch) and
writes a WORKDIR like a training run's: config.json, manifest.json,
checkpoints/0/ (stacked layout, orbax), the HF tokenizer files under tokenizer/
and the original HF config as hf_config.json. `export_hf(workdir, hf_dir, step)`
writes config.json + model.safetensors + the tokenizer files back. Both check
everything (architecture, config fields, tensor names and shapes) and refuse a
non-empty destination before writing anything.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from types import ModuleType

import numpy as np

from lm.config import ModelConfig
from lm.interop import bert, gpt2, t5
from lm.interop.common import (HF_CONFIG, SAFETENSORS, InteropError, Reader, UnsupportedError,
                               check_specs_cover, check_tensors, hf_tensors, read_params,
                               storage_shapes, write_safetensors)

ARCHITECTURES = (bert, gpt2, t5)
FAMILY_ARCH = {"encoder": bert, "decoder": gpt2, "encoder_decoder": t5}
OBJECTIVES = {"encoder": "mlm_nsp", "decoder": "clm", "encoder_decoder": "span_corruption"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "added_tokens.json")
TOKENIZER_DIR = "tokenizer"  # in a WORKDIR
HF_CONFIG_COPY = "hf_config.json"  # in a WORKDIR: fields we do not model (token ids, ...) survive export

__all__ = ["import_hf", "export_hf", "InteropError", "UnsupportedError", "arch_of"]


def arch_of(hf: dict) -> ModuleType:
  """The architecture module of a HF config, or UnsupportedError naming it."""
  model_type = hf.get("model_type")
  for arch in ARCHITECTURES:
    if model_type in arch.MODEL_TYPES:
      return arch
  supported = ", ".join(t for a in ARCHITECTURES for t in a.MODEL_TYPES)
  raise UnsupportedError(f"model_type={model_type!r} (architectures={hf.get('architectures')}) "
                         f"is not supported; supported model types: {supported}")


def _check_empty(path: str) -> None:
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise InteropError(f"{path} exists and is not empty; give a new directory (nothing was written)")


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    raise InteropError(f"{path} does not exist")
  with open(path) as f:
    return json.load(f)


def _copy_tokenizer(src: str, dst: str) -> list[str]:
  found = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(src, f))]
  if found:
    os.makedirs(dst, exist_ok=True)
  for f in found:
    shutil.copyfile(os.path.join(src, f), os.path.join(dst, f))
  return found


def run_config(cfg: ModelConfig) -> dict:
  """A full, valid run config around an imported model (experiments.train can start from it)."""
  import ml_collections

  from lm.config import base_config, validate
  c = base_config().to_dict()
  c["model"] = dataclasses.asdict(cfg)
  c["objective"] = OBJECTIVES[cfg.family]
  c["data"]["seq_len"] = min(c["data"]["seq_len"], cfg.max_len)
  validate(ml_collections.ConfigDict(c), num_devices=1)
  return c


def import_hf(hf_dir: str, workdir: str) -> dict:
  """HF directory -> WORKDIR; returns a summary (architecture, model config, absent heads)."""
  hf = _read_json(os.path.join(hf_dir, HF_CONFIG))
  arch = arch_of(hf)
  reader = Reader(hf_dir, arch.canonical)
  cfg = arch.config_from_hf(hf, reader.names())
  from lm.models import validate_model_config
  validate_model_config(cfg)
  config = run_config(cfg)
  shapes = storage_shapes(cfg)
  specs = arch.tensor_specs(cfg)
  check_specs_cover(specs, shapes)
  absent = check_tensors(specs, shapes, reader, lambda n: bool(arch.IGNORED.search(n)))
  _check_empty(workdir)

  params = read_params(specs, shapes, reader, np.dtype(cfg.param_dtype))
  _write_workdir(workdir, config, params, cfg)
  _copy_tokenizer(hf_dir, os.path.join(workdir, TOKENIZER_DIR))
  with open(os.path.join(workdir, HF_CONFIG_COPY), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  _note_manifest(workdir, {"converted_from": os.path.abspath(hf_dir), "hf_model_type": hf["model_type"],
                           "hf_architectures": hf.get("architectures"),
                           "absent_tensors_zero_filled": absent})
  return {"arch": arch.ARCH, "model": dataclasses.asdict(cfg), "absent": absent}


def _write_workdir(workdir: str, config: dict, params: dict, cfg: ModelConfig) -> None:
  import jax

  from lm import sharding
  from lm.checkpoint import Checkpointer
  from lm.workdir import write_run_files
  import ml_collections
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                            jax.devices()[:1])
  write_run_files(workdir, config, mesh)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=1)
  ckpt.save(0, {"params": params}, {"model": dataclasses.asdict(cfg), "step": 0, "wall_s": 0.0})
  ckpt.close()


def _note_manifest(workdir: str, extra: dict) -> None:
  from lm.workdir import MANIFEST_FILE, read_json, write_json_atomic
  path = os.path.join(workdir, MANIFEST_FILE)
  write_json_atomic(path, {**read_json(path), **extra})


def export_hf(workdir: str, hf_dir: str, step: int | None = None) -> dict:
  """WORKDIR (its newest or given checkpoint step) -> HF directory; returns a summary."""
  from lm.decode import load_run_config, restore_params
  run = load_run_config(workdir)
  cfg = ModelConfig(**run["model"])
  arch = FAMILY_ARCH.get(cfg.family)
  if arch is None:
    raise UnsupportedError(f"model.family={cfg.family!r} has no Hugging Face export")
  base_path = os.path.join(workdir, HF_CONFIG_COPY)
  base = _read_json(base_path) if os.path.exists(base_path) else {}
  hf = arch.config_to_hf(cfg, base)
  _check_empty(hf_dir)
  stored_cfg = dataclasses.replace(cfg, scan_layers=True)  # the stacked checkpoint layout
  params, step = restore_params(workdir, stored_cfg, step)
  specs = arch.tensor_specs(cfg)
  check_specs_cover(specs, storage_shapes(cfg))
  tensors = hf_tensors(specs, params)
  del params
  os.makedirs(hf_dir, exist_ok=True)
  write_safetensors(os.path.join(hf_dir, SAFETENSORS), tensors)
  with open(os.path.join(hf_dir, HF_CONFIG), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  _copy_tokenizer(os.path.join(workdir, TOKENIZER_DIR), hf_dir)
  return {"arch": arch.ARCH, "step": step, "tensors": len(tensors)}

"""Shared pieces of the Hugging Face interop tests (torch and transformers: the `interop` extra)."""
import jax
import numpy as np
import torch

from lm.config import ModelConfig
from lm.decode import load_run_config, restore_params
from lm.models import make_model

MAX_DIFFS = {}  # (arch, what) -> max abs difference, printed by the tests with -s


def record(arch: str, what: str, a, b, mask=None, tol: float = 1e-4) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = np.abs(a - b)
  if mask is not None:
    d = d[np.asarray(mask, bool)]
  diff = float(d.max())
  MAX_DIFFS[(arch, what)] = diff
  print(f"max abs diff {arch} {what}: {diff:.3g}")
  assert diff <= tol, f"{arch} {what}: max abs diff {diff} > {tol}"
  return diff


def save_hf(model, path: str) -> str:
  model.save_pretrained(path)
  return path


def load_workdir(workdir: str, mesh=None):
  cfg = ModelConfig(**load_run_config(workdir)["model"])
  params, _ = restore_params(workdir, cfg, mesh=mesh)
  return cfg, make_model(cfg), params


def apply_capturing(model, params, *args, names=(), method=None, **kw):
  """(outputs, {module name: its output}) for the top-level submodules in `names`."""
  out, state = model.apply({"params": params}, *args, method=method, mutable=["intermediates"],
                           capture_intermediates=lambda m, _: m.name in names, **kw)
  inter = state["intermediates"]
  return out, {n: inter[n]["__call__"][0] for n in names}


def torch_logits(model, **inputs):
  with torch.no_grad():
    return model(**{k: torch.as_tensor(np.asarray(v)) for k, v in inputs.items()},
                 output_hidden_states=True)


def params_equal_bitwise(a, b) -> None:
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert [p for p, _ in flat_a] == list(flat_b)
  for p, x in flat_a:
    np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_b[p]), err_msg=str(p))
    assert np.asarray(x).dtype == np.asarray(flat_b[p]).dtype


def assert_reimport_is_bitwise(workdir: str, exported_hf: str, workdir2: str) -> None:
  """WORKDIR -> (exported) HF -> WORKDIR2 gives the same model config and bit-identical params."""
  from experiments import convert
  convert.main([f"--from_hf={exported_hf}", f"--to={workdir2}"])
  cfg1, _, p1 = load_workdir(workdir)
  cfg2, _, p2 = load_workdir(workdir2)
  assert cfg1 == cfg2
  params_equal_bitwise(p1, p2)

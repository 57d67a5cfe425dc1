"""Shared pieces of the Hugging Face interop tests (torch and transformers: the `interop` extra)."""
import dataclasses

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


def load_workdir(workdir: str, mesh=None, scan_layers: bool = True):
  cfg = ModelConfig(**load_run_config(workdir)["model"])
  cfg = dataclasses.replace(cfg, scan_layers=scan_layers)
  params, _ = restore_params(workdir, cfg, mesh=mesh)
  return cfg, make_model(cfg), params


def apply_capturing(model, params, *args, names=(), method=None, **kw):
  """(outputs, {"a/b": output}) for the submodules named in `names` and every unrolled
  layer (`<stack>/layers_<i>`, when the model has scan_layers=False)."""
  keep = lambda m, _: m.name in names or (m.name or "").startswith("layers_")
  out, state = model.apply({"params": params}, *args, method=method, mutable=["intermediates"],
                           capture_intermediates=keep, **kw)
  found = {}

  def walk(d, prefix):
    for k, v in d.items():
      if k == "__call__":
        found[prefix] = v[0]
      elif hasattr(v, "items"):  # a submodule (other methods' captures are skipped)
        walk(v, f"{prefix}/{k}" if prefix else k)

  walk(state["intermediates"], "")
  return out, found


def layers(found: dict, stack: str) -> list:
  """The outputs of <stack>/layers_0, layers_1, ... in order."""
  n = sum(1 for k in found if k.startswith(stack + "/layers_"))
  return [found[f"{stack}/layers_{i}"] for i in range(n)]


def record_hidden(arch: str, what: str, found: dict, stack: str, final: str, theirs, mask_BL):
  """Every layer's output (the last after the final norm, as HF reports it) against HF's
  hidden_states[1:], over the non-padded positions."""
  ours = [np.asarray(x) for x in layers(found, stack)[:-1] + [found[final]]]
  theirs = [t.numpy() for t in theirs[-len(ours):]]
  m = np.broadcast_to(np.asarray(mask_BL, bool)[None, :, :, None], (len(ours),) + ours[0].shape)
  return record(arch, f"{what} ({len(ours)} layers)", np.stack(ours), np.stack(theirs), m)


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

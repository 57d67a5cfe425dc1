"""Checkpoints in WORKDIR/checkpoints/<step>/: train state + data-iterator state + model config.

A thin layer over orbax's CheckpointManager that adds what resuming needs:
restoring onto the shardings of a target state (so a checkpoint saved on one
mesh restores onto another) and falling back to the previous step when the
newest one is unreadable (a copy cut short, a disk error).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each leaf's sharding: the restore target."""
  def leaf(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(leaf, tree)


class Checkpointer:
  """Saves and restores `(state, meta)` pairs under `directory`."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Asynchronous save; `wait()` blocks until it is on disk."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self._manager.save(step, args=args, force=True)

  def restore(self, step: int, target_state: Any) -> tuple[Any, dict]:
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_like(target_state)), meta=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored["state"], dict(restored["meta"])

  def restore_params(self, step: int, target_params: Any) -> Any:
    """Only the `params` subtree of a saved train state (for fine-tuning from a run)."""
    target = {"params": abstract_like(target_params)}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    args = ocp.args.Composite(state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                           partial_restore=True))
    return self._manager.restore(step, args=args)["state"]["params"]

  def read_meta(self, step: int) -> dict:
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore_latest(self, target_state: Any) -> tuple[int, Any, dict] | None:
    """Newest readable checkpoint; an unreadable newer one is skipped with a warning."""
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, target_state)
        return step, state, meta
      except Exception as e:  # a partial or corrupt step dir: try the one before
        log.warning("checkpoint %s/%d could not be restored (%s: %s); moved to %s; trying the previous one",
                    self.directory, step, type(e).__name__, str(e)[:300], self.quarantine(step))
    return None

  def quarantine(self, step: int) -> str:
    """Move an unreadable step aside (kept for inspection, never deleted) so it can be rewritten."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"unreadable-{step}-{int(time.time())}")
    if jax.process_index() == 0 and os.path.exists(src):
      os.rename(src, dst)
    self._manager.reload()
    return dst

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

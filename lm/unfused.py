"""Computing a value apart from its producers on XLA:CPU.

XLA:CPU fuses element-wise producers into every consumer, recomputing them per
consumer and per element, and it removes optimization barriers before it fuses,
so a barrier cannot stop that. A conditional can: its operands and its results
are buffers. `apart(fn, *args)` runs fn inside a conditional whose two branches
are the same (the predicate only has to be opaque to the compiler), so fn reads
materialised arguments and its result is materialised once.

Uses, measured in experiments/BENCHMARKS.md: RoPE's cos/sin tables, computed once
instead of inside every consumer (lm/rope.py); the transposed copy of a layer
input for its kernel gradient, which XLA otherwise fuses with the LayerNorm that
produced the input: a transposing loop that recomputes the norm per element runs
at a fraction of a plain transpose's speed (lm/weight_grads.py, via `materialized`);
and the decoder's output before the final norm (`materialized`, lm/models.py), whose
norm reductions YNNPACK otherwise fuses with the last layer's down-projection GEMM,
taking it from oneDNN and running it about 40% slower.

Elsewhere (GPU, TPU) `apart` calls fn directly: a conditional there can cost a
device-to-host sync for the predicate, and their fusion heuristics differ.
"""
from __future__ import annotations

import jax


def apart(fn, *args):
  """fn(*args); on CPU computed from materialised args into a materialised result."""
  leaves = [x for x in jax.tree_util.tree_leaves(args) if x.size]
  if not leaves or jax.default_backend() != "cpu":
    return fn(*args)
  opaque = leaves[0].reshape(-1)[0]
  return jax.lax.cond(opaque > 0, fn, fn, *args)


def materialized(x):
  """x (an array or a pytree of them) as buffers on CPU that x's consumers read: x's
  producer is not fused into them.

  Free: XLA drops the copy inside the branches, and the result aliases x's buffer.
  The copy is there for JAX, which forwards a conditional's pass-through outputs
  and would drop an identity conditional. Transpose a materialized value rather than
  transposing inside `apart`: layout assignment turns a transpose inside the
  conditional into a bitcast and a layout-changing copy after it, which XLA:CPU runs
  slower than a transpose (lm/weight_grads.py).
  """
  return apart(lambda t: jax.tree_util.tree_map(jax.numpy.copy, t), x)

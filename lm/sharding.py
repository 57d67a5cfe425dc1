"""Device meshes, logical axis rules and batch placement.

The model names every parameter and large activation with logical axes
(`batch, length, embed, heads, kv_heads, kv, mlp, vocab, layers, pos` for
parameters; `act_embed, act_heads, act_mlp, act_vocab` for activations, so an
activation's feature axis can stay replicated while the matching parameter axis
is FSDP-sharded). This module is the only place that maps them to mesh axes.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters
and optimizer state sharded along `embed`), `tensor` (heads / mlp / vocab split).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lm.config import ConfigError, ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, ...]:
  """Mesh shape from config; one axis may be -1 (= the rest of the devices)."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  for axis, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ConfigError(f"mesh.{axis}={s} is invalid: use a positive size or -1 (the rest of the devices).")
  auto = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(auto) > 1:
    raise ConfigError(f"mesh.{auto[0]} and mesh.{auto[1]} are both -1: at most one mesh axis may be -1.")
  fixed = math.prod(s for s in sizes if s != -1)
  if auto:
    if num_devices % fixed:
      raise ConfigError(
          f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes multiply to {fixed}, which does not divide "
          f"the {num_devices} devices; set mesh.{auto[0]} and the others so their product is {num_devices}.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ConfigError(
        f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, but "
        f"{num_devices} are available; make the product {num_devices} (or set one axis to -1).")
  return tuple(sizes)


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def logical_rules(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> tuple[tuple[str, Any], ...]:
  """Logical-to-mesh rules; a dimension the axis size does not divide stays replicated."""
  tensor, fsdp = mesh.shape["tensor"], mesh.shape["fsdp"]

  def split(size: int, axis: str, axis_size: int):
    return axis if size % axis_size == 0 else None

  return (
      ("batch", BATCH_AXES),
      ("length", None),
      ("act_embed", None),
      ("act_heads", split(cfg.num_heads, "tensor", tensor)),
      ("act_kv_heads", split(cfg.kv_heads, "tensor", tensor)),
      ("act_mlp", split(cfg.mlp_dim, "tensor", tensor)),
      ("act_vocab", split(cfg.vocab_size, "tensor", tensor)),
      ("embed", split(cfg.d_model, "fsdp", fsdp)),
      ("heads", split(cfg.num_heads, "tensor", tensor)),
      ("kv_heads", split(cfg.kv_heads, "tensor", tensor)),
      ("kv", None),
      ("mlp", split(cfg.mlp_dim, "tensor", tensor)),
      ("vocab", split(cfg.vocab_size, "tensor", tensor)),
      ("layers", None),
      ("pos", None),
  )


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Batches [B, L] are split over (data, fsdp) along B."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Process-local numpy rows -> one global array per field, sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  nproc = jax.process_count()
  out = {}
  for k, v in local_batch.items():
    global_shape = (v.shape[0] * nproc,) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out

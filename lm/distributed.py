"""Multi-host start-up: `jax.distributed.initialize` from flags, environment, SLURM or TPU VMs.

Explicit settings win (flags, then LM_COORDINATOR_ADDRESS / LM_NUM_PROCESSES /
LM_PROCESS_ID); otherwise JAX's own cluster detection handles SLURM (srun sets
SLURM_* variables) and Cloud TPU VMs. The heartbeat is bounded so that a dead
peer ends the run with an error instead of a hang.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import jax

from lm.config import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  initialization_timeout_s: int = 300
  heartbeat_timeout_s: int = 20  # a dead peer is noticed within this many seconds


def settings_from_env(base: DistributedSettings | None = None) -> DistributedSettings:
  """Fill unset fields from LM_* environment variables."""
  base = base or DistributedSettings()
  env = os.environ
  def pick(value, name, cast):
    return value if value is not None else (cast(env[name]) if env.get(name) else None)
  return dataclasses.replace(
      base,
      coordinator_address=pick(base.coordinator_address, "LM_COORDINATOR_ADDRESS", str),
      num_processes=pick(base.num_processes, "LM_NUM_PROCESSES", int),
      process_id=pick(base.process_id, "LM_PROCESS_ID", int))


def detected_cluster() -> str | None:
  """Which environment JAX can auto-configure from, if any."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
    return "slurm"
  if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID"):
    return "tpu"
  return None


def initialize(settings: DistributedSettings | None = None) -> bool:
  """Start jax.distributed when this is a multi-process run; returns whether it did."""
  s = settings_from_env(settings)
  explicit = [s.coordinator_address, s.num_processes, s.process_id]
  timeouts = dict(initialization_timeout=s.initialization_timeout_s,
                  heartbeat_timeout_seconds=s.heartbeat_timeout_s)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ConfigError(
          "multi-process runs need all of coordinator_address, num_processes and process_id "
          f"(got {s.coordinator_address!r}, {s.num_processes!r}, {s.process_id!r}); set the missing "
          "flags or LM_COORDINATOR_ADDRESS / LM_NUM_PROCESSES / LM_PROCESS_ID.")
    if not 0 <= s.process_id < s.num_processes:
      raise ConfigError(f"process_id={s.process_id} must be in [0, num_processes={s.num_processes}).")
    if s.num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address=s.coordinator_address, num_processes=s.num_processes,
                               process_id=s.process_id, **timeouts)
    return True
  cluster = detected_cluster()
  if cluster is None:
    return False
  log.info("initialising jax.distributed from the %s environment", cluster)
  jax.distributed.initialize(**timeouts)
  return True

"""Devices, processes and where arrays live: the mesh, batch placement, multi-process start-up.

Data parallelism: a `Mesh` over all devices of all processes with one `'data'` axis; batches are
sharded on it, everything else (parameters, optimiser state) replicated. Each process passes its
own slice of every global batch (`global_batch`).

Every command that can run as several processes takes the same three flags (docs/commands.md):
`--coordinator_address host:port --num_processes N --process_id I`; argparse commands also
accept them hyphenated (`add_distributed_args`), absl commands define them with
`define_distributed_flags`. On Cloud TPU VMs and under SLURM none is needed.
"""

from __future__ import annotations

import argparse
import glob
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# (name, type, metavar, help) of the multi-process flags; default '' for the address, None for the numbers.
DISTRIBUTED_FLAGS = (
    ('coordinator_address', str, 'HOST:PORT', 'host:port of process 0 (multi-process runs; not needed on Cloud TPU '
     'or under SLURM)'),
    ('num_processes', int, 'N', 'number of processes (multi-process runs)'),
    ('process_id', int, 'I', 'index of this process, 0 .. num_processes - 1 (multi-process runs)'),
)


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh `('data',)` over all (global) devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, keys: tuple[str, ...] | None = None) -> dict[str, jax.Array]:
  """This process's slice of a global batch -> global arrays sharded on 'data'.

  Each process passes its own consecutive slice (process p holds rows [p * B / P, (p + 1) * B / P)).
  `keys` selects the entries to transfer (default: all).
  """
  sharding = batch_sharding(mesh)
  keys = tuple(local) if keys is None else keys
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(local[k])) for k in keys}


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host values (identical on every process) -> arrays replicated over the mesh."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def initialize_distributed(coordinator_address: str = '', num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts JAX's multi-process runtime when this is one process of several.

  Explicit: `coordinator_address` (+ `num_processes`, `process_id`), e.g. 2 local CPU processes
  (gloo collectives) or hosts without a cluster manager. Implicit: on a Cloud TPU VM (a pod slice
  runs one process per host) or under SLURM with several tasks, `jax.distributed.initialize()`
  detects its parameters itself. Otherwise nothing: one process. ValueError (naming the flags) on
  an incomplete set.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and --process_id')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif num_processes is not None and num_processes > 1:
    raise ValueError('--num_processes > 1 needs --coordinator_address (host:port of process 0)')
  elif glob.glob('/dev/accel*') or int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
  """Adds the multi-process flags to an argparse command, under both spellings
  (`--coordinator_address` and `--coordinator-address`, ...); `args.coordinator_address` etc."""
  group = parser.add_argument_group('multi-process runs')
  for name, kind, metavar, help_text in DISTRIBUTED_FLAGS:
    group.add_argument(f'--{name}', f'--{name.replace("_", "-")}', dest=name, type=kind, metavar=metavar,
                       default='' if kind is str else None, help=help_text)


def define_distributed_flags() -> dict[str, Any]:
  """Defines the multi-process flags of an absl command; {name: FlagHolder}."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  define = {str: flags.DEFINE_string, int: flags.DEFINE_integer}
  return {name: define[kind](name, '' if kind is str else None, help_text)
          for name, kind, _, help_text in DISTRIBUTED_FLAGS}

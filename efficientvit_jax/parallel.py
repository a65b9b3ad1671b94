"""Devices, processes and where arrays live: the mesh, batch placement, copies back to the host,
multi-process start-up and the one outcome of several processes.

Data parallelism: a `Mesh` over all devices of all processes with one `'data'` axis; batches are
sharded on it, everything else (parameters, optimiser state) replicated. Each process passes its
own slice of every global batch (`global_batch`).

Every command that can run as several processes takes the same three flags (docs/commands.md):
`--coordinator_address host:port --num_processes N --process_id I`; argparse commands also
accept them hyphenated (`add_distributed_args`), absl commands define them with
`define_distributed_flags`. Inside a cluster that `jax.distributed.initialize()` detects (Cloud
TPU, SLURM, Open MPI, Kubernetes) none is needed; flags given override what it detects.

One outcome for several processes (train.py): a process that fails calls `stop_all` with its exit
code and message, which go to JAX's coordination service; every other process watches for them in
a background thread (`start_watchdog`) and exits at once with the same code, wherever it is (in a
collective, a save, start-up), instead of waiting for the service's heartbeat timeout. `share`
hands a decision of process 0 (the step to restore) to every process; `barrier` waits for all.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from efficientvit_jax import console

# (name, type, metavar, help) of the multi-process flags; default '' for the address, None for the numbers.
DISTRIBUTED_FLAGS = (
    ('coordinator_address', str, 'HOST:PORT', 'host:port of process 0 (multi-process runs; detected inside Cloud '
     'TPU, SLURM, Open MPI and Kubernetes clusters)'),
    ('num_processes', int, 'N', 'number of processes (multi-process runs; 1: one process even inside a cluster)'),
    ('process_id', int, 'I', 'index of this process, 0 .. num_processes - 1 (multi-process runs)'),
)
_KEY = 'efficientvit_jax'  # prefix of this project's keys in the coordination service
_WAIT_MS = 3_600_000  # `share` and `barrier`: a failing process stops the waiting ones through `stop_all`
_GOODBYE_MS = 10_000  # process 0 keeps the coordination service up this long for the others to read a stop
_GOODBYE_GRACE_S = 2.0  # and this long after the last of them has, for it to exit


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


def to_host(x: Any) -> np.ndarray:
  """A replicated (possibly multi-process) array -> numpy, this process's own copy; ValueError for
  an array sharded across processes (`gather_to_host`, `local_rows`)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError('to_host takes replicated arrays; this one is sharded across processes')
    return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x))


def replicated_to_host(tree: Any) -> Any:
  """A tree of replicated device values -> numpy, from this process's own copy."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)


def gather_to_host(x: Any) -> np.ndarray:
  """An array sharded on its leading axis -> numpy, all of it: gathered across processes when it
  is not fully addressable (every process must call this)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # only multi-process runs need it
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of an array sharded on its leading axis, in order."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = {}
  for shard in x.addressable_shards:
    shards.setdefault(shard.index[0].start or 0, shard.data)
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


# --------------------------------------------------------------------------------------------------
# Start-up


def detect_cluster() -> Any:
  """The cluster environment `jax.distributed.initialize()` detects here (its own registry and
  tests: Cloud TPU VMs of a pod slice, SLURM, Open MPI's mpirun, Kubernetes Jobs), or None."""
  from jax._src import clusters  # the registry initialize() itself uses

  for env in clusters.ClusterEnv._cluster_types:
    if not env.opt_in_only_method and env.is_env_present():
      return env
  return None


def cluster_name(env: Any) -> str:
  """'slurm', 'ompi', 'gketpu', 'gcetpu', 'k8s', ... (jax's names)."""
  return getattr(env, 'name', '') or env.__name__.removesuffix('Cluster').lower()


def initialize_distributed(coordinator_address: str = '', num_processes: int | None = None,
                           process_id: int | None = None) -> str:
  """Starts JAX's multi-process runtime when this is one process of several; returns how it was
  found: 'flags', the detected cluster's name (e.g. 'slurm', 'gketpu'), or '' for one process.

  Flags given are passed on and win over detection (`--num_processes=1` alone: one process even
  inside a cluster). Without flags, a detected cluster of several processes is started by
  `jax.distributed.initialize()`'s own detection; a cluster of one process, or no cluster, runs as
  one process. ValueError (one line naming the flags or the cluster) on flags that do not fit
  together and on a start-up that fails (coordinator unreachable, detection failing).
  """
  given = [f'--{name}' for name, value in (('coordinator_address', coordinator_address),
                                           ('num_processes', num_processes), ('process_id', process_id))
           if value not in ('', None)]
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'--num_processes must be >= 1, got {num_processes}')
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id must be in 0..{num_processes - 1}, got {process_id}')
  if num_processes == 1 and not coordinator_address:
    return ''
  complete = len(given) == 3
  env = None if complete else detect_cluster()
  if env is None:
    if not given:
      return ''
    if not complete:
      missing = [f'--{n}' for n, *_ in DISTRIBUTED_FLAGS if f'--{n}' not in given]
      raise ValueError(f'{" and ".join(given)} needs {" and ".join(missing)} (no cluster that jax.distributed '
                       'detects is present here: Cloud TPU, SLURM, Open MPI, Kubernetes)')
  how = 'flags' if complete else cluster_name(env)
  try:
    if not given and env.get_process_count() == 1:
      return ''
    jax.distributed.initialize(coordinator_address or None, num_processes, process_id)
  except Exception as e:  # detection and connection raise many types
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    what = f'cannot reach the coordinator at {coordinator_address}' if coordinator_address else 'JAX could not connect'
    raise ValueError(f'multi-process start-up ({how}) failed: {what} ({first}); check --coordinator_address, '
                     '--num_processes, --process_id and that every process was started (--num_processes=1: '
                     'one process)') from None
  return how


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
  """Adds the multi-process flags to an argparse command, under both spellings
  (`--coordinator_address` and `--coordinator-address`, ...); `args.coordinator_address` etc."""
  group = parser.add_argument_group('multi-process runs')
  for name, kind, metavar, help_text in DISTRIBUTED_FLAGS:
    group.add_argument(f'--{name}', f'--{name.replace("_", "-")}', dest=name, type=kind, metavar=metavar,
                       default='' if kind is str else None, help=help_text)


def define_distributed_flags() -> dict[str, Any]:
  """Defines the multi-process flags of an absl command; {name: FlagHolder}."""
  from absl import flags

  define = {str: flags.DEFINE_string, int: flags.DEFINE_integer}
  return {name: define[kind](name, '' if kind is str else None, help_text)
          for name, kind, _, help_text in DISTRIBUTED_FLAGS}


# --------------------------------------------------------------------------------------------------
# One outcome for several processes


def _client() -> Any:
  """JAX's coordination-service client (what orbax's barriers use too), None in one process."""
  from jax._src import distributed

  return distributed.global_state.client


def is_multiprocess() -> bool:
  """Whether `initialize_distributed` connected this process to others."""
  return _client() is not None


class _Watch:
  thread: threading.Thread | None = None
  done = threading.Event()  # normal exit: the watchdog returns
  stopping = False  # set once, by `stop_all` or by the watchdog: one of them ends this process
  lock = threading.Lock()
  at_stop: list[Callable[[], None]] = []


def at_stop(fn: Callable[[], None]) -> None:
  """Runs `fn` (e.g. releasing the workdir lock) when a stopped multi-process run exits at once."""
  _Watch.at_stop.append(fn)


def start_watchdog() -> None:
  """Several processes: a background thread that exits this process at once, with the code a
  failing process passed to `stop_all`, after printing one line naming that process and its
  message. Idempotent; nothing in one process."""
  client = _client()
  if client is None or _Watch.thread is not None:
    return
  me = jax.process_index()

  def watch():
    while not _Watch.done.is_set():
      try:  # short waits: a normal exit ends this thread within a second
        raw = client.blocking_key_value_get(f'{_KEY}/stop', 1000)
      except Exception:  # DEADLINE_EXCEEDED, or the service shutting down
        continue
      stop = json.loads(raw)
      with _Watch.lock:
        if stop['process'] == me or _Watch.stopping:  # this process stops the run and exits on its own
          return
        _Watch.stopping = True
      console.line(f'error: process {stop["process"]} stopped the run: {stop["message"]}', sys.stderr)
      exit_now(stop['code'])

  _Watch.thread = threading.Thread(target=watch, name='efficientvit-stop-watchdog', daemon=True)
  _Watch.thread.start()

  def end_watch():  # before the client's own shutdown at interpreter exit
    _Watch.done.set()
    _Watch.thread.join(timeout=5)

  atexit.register(end_watch)


def stop_all(code: int, message: str) -> int:
  """Several processes: stops every process with `code` (their watchdogs print `message` as the
  cause). The first process to call this decides the code; returns that code (`code` in one process)."""
  client = _client()
  if client is None:
    return code
  with _Watch.lock:
    watchdog_exits = _Watch.stopping
    _Watch.stopping = True
  if watchdog_exits:  # another process stopped the run first; the watchdog is ending this one
    threading.Event().wait()
  stop = json.dumps({'code': int(code), 'process': jax.process_index(), 'message': message})
  try:
    client.key_value_set(f'{_KEY}/stop', stop)
  except Exception:  # ALREADY_EXISTS: another process stopped it first
    try:
      return int(json.loads(client.key_value_try_get(f'{_KEY}/stop'))['code'])
    except Exception:  # the coordination service is gone
      return code
  return code


def exit_now(code: int) -> NoReturn:
  """Ends this process of a stopped multi-process run without waiting for the others (they are
  stopping too): runs the `at_stop` callbacks, flushes the output and `os._exit(code)`. Process 0,
  which holds the coordination service, first waits (at most 10 s) until every other process has
  read the stop."""
  for fn in _Watch.at_stop:
    try:
      fn()
    except Exception:  # exiting anyway
      pass
  sys.stdout.flush()
  sys.stderr.flush()
  client = _client()
  if client is not None:
    me = jax.process_index()
    try:
      client.key_value_set(f'{_KEY}/stopped/{me}', '1')
      if me == 0:
        deadline = time.monotonic() + _GOODBYE_MS / 1000
        for p in range(1, jax.process_count()):
          client.blocking_key_value_get(f'{_KEY}/stopped/{p}', max(1, int((deadline - time.monotonic()) * 1000)))
        # A process still alive when the service goes is aborted by JAX's client ("the JAX
        # distributed service detected fatal errors"): give the others time to leave first.
        time.sleep(_GOODBYE_GRACE_S)
    except Exception:  # a process that is gone already, or the service
      pass
  os._exit(code)


def share(name: str, value: Any) -> Any:
  """Process 0's `value` (JSON) on every process; in one process `value`."""
  client = _client()
  if client is None:
    return value
  key = f'{_KEY}/share/{name}'
  if jax.process_index() == 0:
    client.key_value_set(key, json.dumps(value))
    return value
  return json.loads(client.blocking_key_value_get(key, _WAIT_MS))


def barrier(name: str) -> None:
  """Waits until every process got here (several processes; a stopped run ends the wait)."""
  client = _client()
  if client is not None:
    client.wait_at_barrier(f'{_KEY}/{name}', _WAIT_MS)


def reached_preemption(step: int) -> bool:
  """Several processes: True on every process at the same `step` once any of them received SIGTERM
  (JAX's preemption sync point; orbax's saves count steps the same way). False in one process."""
  if _client() is None:
    return False
  from jax.experimental import multihost_utils

  return multihost_utils.reached_preemption_sync_point(step)

"""The training state and the pure, jitted train and evaluation steps (train.py holds the loop).

The state is a dict pytree: `params` and `batch_stats` (`nnx.State`), `kendall` (`log_sigma_d`,
`log_sigma_s`, [1]), `opt_state` (optax, over `{'model': params, 'kendall': kendall}`), `step`
(int32) and `nonfinite_step` (int32, -1 while every loss has been finite). The model's graph
definition is split off once and merged inside the step: no per-step NNX graph walk.

Data parallelism: a `Mesh` over all devices with one `'data'` axis; batches are sharded on it,
everything else replicated; XLA inserts the gradient all-reduce, and BatchNorm statistics are
means over the global batch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from efficientvit_jax import augment as augment_lib
from efficientvit_jax import losses
from efficientvit_jax import model as model_lib
from efficientvit_jax import optimizer as optimizer_lib

State = dict[str, Any]


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh `('data',)` over all (global) devices."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


TRAIN_KEYS = ('image', 'depth', 'depth_valid', 'seg', 'domain')


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


def create_state(model: model_lib.DepthSegNet, kendall: dict[str, np.ndarray],
                 tx: optax.GradientTransformation, mesh: Mesh) -> tuple[nnx.GraphDef, State]:
  """Splits `model` once; returns its graph definition and a replicated training state."""
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  host = {
      'params': jax.tree.map(np.asarray, params),
      'batch_stats': jax.tree.map(np.asarray, batch_stats),
      'kendall': {k: np.asarray(v, np.float32) for k, v in kendall.items()},
      'step': np.zeros((), np.int32),
      'nonfinite_step': np.full((), -1, np.int32),
  }
  state = put_replicated(host, mesh)
  state['opt_state'] = jax.jit(tx.init, out_shardings=replicated(mesh))(
      {'model': state['params'], 'kendall': state['kendall']})
  return graphdef, state


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_config: Any, *,
                    seed: int = 0, color_jitter: tuple[bool, ...] = (False, False, False),
                    augment: bool = True, freeze_steps: int = 0, freeze_bn_when_frozen: bool = False,
                    encoder_bn_train: bool = True) -> Callable[[State, dict[str, jax.Array]], tuple[State, dict]]:
  """The pure train step `(state, batch) -> (state, metrics)`.

  batch: the training element stacked, as the host pipeline makes it ([B, H, W, 3] uint8 `image`,
  [B, H, W] `depth`, `depth_valid`, `seg`, [B] `domain`). With `augment`, the step first flips
  and colour-jitters it (`augment.augment_batch`: keys from `seed`, the state's step and the
  position in the global batch; `color_jitter` per domain id); without, it only converts the
  image to float. While `step < freeze_steps` and `freeze_bn_when_frozen`, the encoder and
  neck BatchNorm statistics are kept (and with `encoder_bn_train=False` they also normalise with
  their running statistics, i.e. eval mode; train.py compiles that variant for the frozen phase).
  A non-finite loss (or update) leaves the state unchanged and records its step in `nonfinite_step`.
  """

  def loss_fn(trainable, batch_stats, batch):
    model = nnx.merge(graphdef, trainable['model'], batch_stats, copy=True)
    out = model(batch['image'], train=True, encoder_train=encoder_bn_train)
    total, aux = losses.multitask_loss(out['depth'], out['seg_logits'], batch, trainable['kendall'], loss_config)
    return total, (aux, nnx.state(model, nnx.BatchStat))

  def train_step(state: State, batch: dict[str, jax.Array]) -> tuple[State, dict[str, jax.Array]]:
    if augment:
      batch = augment_lib.augment_batch(batch, seed=seed, step=state['step'], jitter=color_jitter)
    else:
      batch = {**batch, 'image': augment_lib.to_float(batch['image'])}
    trainable = {'model': state['params'], 'kendall': state['kendall']}
    (total, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, state['batch_stats'], batch)
    if freeze_bn_when_frozen and freeze_steps > 0:
      frozen = state['step'] < freeze_steps
      for part in model_lib.ENCODER_KEYS:
        batch_stats[part] = _select(frozen, state['batch_stats'][part], batch_stats[part])
    updates, opt_state = tx.update(grads, state['opt_state'], trainable)
    trainable = optax.apply_updates(trainable, updates)
    # A non-finite loss, gradient or updated parameter discards the whole update.
    finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(updates)) & jnp.isfinite(
        optax.tree.norm(trainable))
    new = {
        'params': trainable['model'],
        'batch_stats': batch_stats,
        'kendall': trainable['kendall'],
        'opt_state': opt_state,
        'step': state['step'] + 1,
    }
    keep = {k: state[k] for k in new}
    new = _select(finite, new, keep)
    new['step'] = state['step'] + 1
    new['nonfinite_step'] = jnp.where((state['nonfinite_step'] < 0) & ~finite, state['step'],
                                      state['nonfinite_step'])
    metrics = {'train/loss': total, **{f'train/{k}': v for k, v in aux.items()},
               'train/grad_norm': optax.tree.norm(grads['model']),
               **optimizer_lib.learning_rates(opt_state)}
    return new, metrics

  return train_step


def jit_train_step(train_step: Callable, mesh: Mesh, state: State) -> Callable:
  """`jax.jit` with stated shardings and the state's buffers donated."""
  state_sharding = jax.tree.map(lambda _: replicated(mesh), state)
  return jax.jit(train_step, in_shardings=(state_sharding, batch_sharding(mesh)),
                 out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,))


def initialize_distributed(coordinator_address: str = '', num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts JAX's multi-process runtime when this is one process of several.

  Explicit: `coordinator_address` (+ `num_processes`, `process_id`), e.g. 2 local CPU processes
  (gloo collectives) or hosts without a cluster manager. Implicit: on a Cloud TPU VM (a pod slice
  runs one process per host) or under SLURM with several tasks, `jax.distributed.initialize()`
  detects its parameters itself. Otherwise nothing: one process.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and --process_id')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif num_processes is not None and num_processes > 1:
    raise ValueError('--num_processes > 1 needs --coordinator_address (host:port of process 0)')
  elif glob.glob('/dev/accel*') or int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()

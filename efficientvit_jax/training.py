"""The training state and the pure, jitted train step (the loop: `train_loop.py`).

The state is a dict pytree: `params` and `batch_stats` (`nnx.State`), `kendall` (`log_sigma_d`,
`log_sigma_s`, [1]), `opt_state` (optax, over `{'model': params, 'kendall': kendall}`), `step`
(int32) and `nonfinite_step` (int32, -1 while every loss has been finite). The model's graph
definition is split off once and merged inside the step: no per-step NNX graph walk.

Data parallelism (`parallel.py`): a `Mesh` over all devices with one `'data'` axis; batches are
sharded on it, everything else replicated; XLA inserts the gradient all-reduce, and BatchNorm
statistics are means over the global batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from efficientvit_jax import augment as augment_lib
from efficientvit_jax import losses
from efficientvit_jax import model as model_lib
from efficientvit_jax import optimizer as optimizer_lib
from efficientvit_jax import parallel

State = dict[str, Any]

TRAIN_KEYS = ('image', 'depth', 'depth_valid', 'seg', 'domain')  # what the train step reads of a batch


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
  state = parallel.put_replicated(host, mesh)
  state['opt_state'] = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(
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
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), state)
  return jax.jit(train_step, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                 out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=(0,))


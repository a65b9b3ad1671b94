"""AdamW in three parameter groups, one cosine schedule, global-norm clipping, encoder freezing.

The optimised pytree is `{'model': params, 'kendall': {'log_sigma_d': [1], 'log_sigma_s': [1]}}`,
`params` a nested dict or an `nnx.State` whose top-level keys are the model's parts. Groups
(docs/training.md#optimiser), labelled by path:

  'encoder'  encoder, neck                                    optimizer.encoder_lr
  'decoder'  depth_d1..d3, depth_head, seg_d1..d3, seg_head    optimizer.decoder_lr
  'kendall'  the two log-sigmas                               optimizer.kendall_lr

Each group is `optax.adamw` (betas 0.9 / 0.999, eps 1e-8, `optimizer.weight_decay` on every
parameter) under `optax.inject_hyperparams`, so the rates actually used live in the state
(`learning_rates`). The transformation is

  chain(clip over the trained leaves, partition({group: inject_hyperparams(adamw gated)}))

Freezing reproduces the reference's `requires_grad=False` for the first `freeze_encoder_epochs`
epochs: the encoder group's gradients are left out of the clipping norm, its updates are zero
(parameters bit-identical), its AdamW state (moments, Adam step count) does not move, so its first
update after unfreezing is a fresh AdamW's first step; the schedule is not shifted. Frozen-ness is
a function of the step count in the state: one jitted step serves the whole run.

Usage:
  tx = make_optimizer(config, steps_per_epoch=spe, total_steps=total)
  opt_state = tx.init({'model': params, 'kendall': kendall})
  updates, opt_state = tx.update(grads, opt_state, trainable)
  trainable = optax.apply_updates(trainable, updates)
  learning_rates(opt_state)  # {'lr/encoder': ..., 'lr/decoder': ..., 'lr/kendall': ...}
  adam_state(opt_state, 'decoder')  # that group's Adam count, mu, nu
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from efficientvit_jax import trees

GROUPS = ('encoder', 'decoder', 'kendall')
GROUP_OF_PART = {
    'encoder': 'encoder', 'neck': 'encoder',
    'depth_d1': 'decoder', 'depth_d2': 'decoder', 'depth_d3': 'decoder', 'depth_head': 'decoder',
    'seg_d1': 'decoder', 'seg_d2': 'decoder', 'seg_d3': 'decoder', 'seg_head': 'decoder',
}
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6)


def _label(path: tuple[Any, ...]) -> str:
  names = [trees.key_name(entry) for entry in path]
  if not names or names[0] not in ('model', 'kendall'):
    top = names[0] if names else None
    raise ValueError(f"optimizer: top-level key {top!r} of the trained pytree is neither 'model' "
                     "nor 'kendall'")
  if names[0] == 'kendall':
    return 'kendall'
  part = names[1] if len(names) > 1 else None
  if part not in GROUP_OF_PART:
    raise ValueError(f'optimizer: unknown model parameter group {part!r} at '
                     f'{jax.tree_util.keystr(path)}; expected one of {sorted(GROUP_OF_PART)}')
  return GROUP_OF_PART[part]


def param_labels(tree: Any) -> Any:
  """The group label ('encoder' | 'decoder' | 'kendall') of every leaf of `tree`, same structure.

  `tree` = `{'model': params, 'kendall': {...}}`, params a nested dict or `nnx.State`. An unknown
  top-level model key raises a ValueError naming it.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _label(path), tree)


def lr_multiplier(
    *, total_steps: int, steps_per_epoch: int, num_epochs: int, warmup_steps: int = 0,
    per_epoch: bool = False,
) -> Callable[[jax.Array], jax.Array]:
  """The schedule shared by all groups: `step -> float32` multiplier of the base rates.

  Per step: linear warmup `(step + 1) / warmup_steps` for the first `warmup_steps` steps, then a
  cosine from 1 to 0 over the remaining `total_steps - warmup_steps` steps.
  Per epoch (the reference): `(1 + cos(pi * e / num_epochs)) / 2`, `e = step // steps_per_epoch`,
  times the same warmup factor when `warmup_steps > 0`; 0 from epoch `num_epochs` on.
  """
  decay_steps = max(total_steps - warmup_steps, 1)

  def multiplier(step: jax.Array) -> jax.Array:
    step = jnp.asarray(step, jnp.int32)
    warm = jnp.minimum(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if per_epoch:
      phase = jnp.minimum((step // steps_per_epoch) / num_epochs, 1.0)
    else:
      phase = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    return jnp.asarray(warm * 0.5 * (1.0 + jnp.cos(math.pi * phase)), jnp.float32)

  return multiplier


def _adamw_gated(
    learning_rate: jax.Array, weight_decay: jax.Array, trainable: jax.Array,
) -> optax.GradientTransformation:
  """`optax.adamw` that, while `trainable` is False, outputs zeros and keeps its state unchanged.

  A factory for `inject_hyperparams`: `trainable` is a scheduled bool, so the state holds it too.
  """
  inner = optax.adamw(learning_rate, ADAM_B1, ADAM_B2, ADAM_EPS, weight_decay=weight_decay)

  def update_fn(updates, state, params=None):
    new_updates, new_state = inner.update(updates, state, params)
    # -0.0 is the exact identity of float addition (x + -0.0 == x even for x = -0.0), so
    # optax.apply_updates leaves a frozen parameter bit-identical.
    new_updates = jax.tree.map(
        lambda u: jnp.where(trainable, u, jnp.full_like(u, -0.0)), new_updates)
    new_state = jax.tree.map(
        lambda new, old: jnp.where(trainable, new, old), new_state, state)
    return new_updates, new_state

  return optax.GradientTransformation(inner.init, update_fn)


class ClipState(NamedTuple):
  count: jax.Array  # int32 [], optimiser steps taken


def clip_trained_by_global_norm(max_norm: float, freeze_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping as `torch.nn.utils.clip_grad_norm_` over the parameters being trained.

  The norm is taken over every leaf except the 'encoder' group's during the first `freeze_steps`
  steps (frozen parameters have no gradient in the reference); all updates are then multiplied by
  `min(1, max_norm / (norm + 1e-6))`.
  """

  def init_fn(params):
    del params
    return ClipState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    frozen = state.count < freeze_steps
    squares = jax.tree.map(lambda label, g: jnp.where(
        frozen & (label == 'encoder'), 0.0, jnp.sum(jnp.square(g.astype(jnp.float32)))),
        param_labels(updates), updates)
    norm = jnp.sqrt(sum(jax.tree.leaves(squares)))
    coef = jnp.minimum(1.0, max_norm / (norm + CLIP_EPS))
    updates = jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates)
    return updates, ClipState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    config: Any, *, steps_per_epoch: int, total_steps: int,
) -> optax.GradientTransformation:
  """The training optimiser of the whole config (`optimizer.*`, `num_epochs`,
  `freeze_encoder_epochs`).

  `total_steps` is the run's length in optimiser steps (the per-step cosine reaches 0 there);
  the per-epoch cosine (`optimizer.lr_per_epoch`) uses `T = num_epochs`. The encoder group is
  frozen for `freeze_encoder_epochs * steps_per_epoch` steps.
  """
  opt = config.optimizer
  multiplier = lr_multiplier(
      total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs,
      warmup_steps=opt.warmup_steps, per_epoch=opt.lr_per_epoch)
  freeze_steps = int(config.freeze_encoder_epochs) * steps_per_epoch

  def group(base_lr: float, first_step: int = 0) -> optax.GradientTransformation:
    # While frozen the group's rate is reported as 0: the rate it is effectively trained with.
    return optax.inject_hyperparams(_adamw_gated, hyperparam_dtype=jnp.float32)(
        learning_rate=lambda count: jnp.where(
            count >= first_step, base_lr * multiplier(count), 0.0),
        weight_decay=float(opt.weight_decay),
        trainable=lambda count: count >= first_step)

  return optax.chain(
      clip_trained_by_global_norm(float(opt.clip_norm), freeze_steps),
      optax.partition({
          'encoder': group(float(opt.encoder_lr), freeze_steps),
          'decoder': group(float(opt.decoder_lr)),
          'kendall': group(float(opt.kendall_lr)),
      }, param_labels))


def learning_rates(opt_state: Any) -> dict[str, jax.Array]:
  """`{'lr/encoder', 'lr/decoder', 'lr/kendall'}` of a `make_optimizer` state, float32 scalars.

  After `k` updates: the rates the k-th update used (before the first: the first step's rates).
  The encoder's is 0 while it is frozen.
  """
  groups = opt_state[1].inner_states
  return {f'lr/{name}': groups[name].inner_state.hyperparams['learning_rate'] for name in GROUPS}


def adam_state(opt_state: Any, group: str) -> optax.ScaleByAdamState:
  """The AdamW state of `group` in a `make_optimizer` state: `count` (that group's Adam steps),
  `mu`, `nu` (first and second moments, shaped like the trained pytree with the other groups'
  leaves masked out), found by type and read by field name."""
  found = [x for x in jax.tree.leaves(opt_state[1].inner_states[group],
                                      is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(x, optax.ScaleByAdamState)]
  if len(found) != 1:
    raise ValueError(f'optimizer: the {group!r} group holds {len(found)} Adam states, expected 1')
  return found[0]

"""Training losses of the V5 recipe (docs/training.md): berHu depth, cross-entropy, edge smoothness.

All functions are pure and jittable, take NHWC / NHW arrays of any float dtype and compute in
float32. The reference's terms are combined by Kendall uncertainty weighting with learnable
log-sigmas clamped to [-2, 2]:

  total = 0.5 exp(-s_d) L_depth + 0.5 s_d + exp(-s_s) L_seg + 0.5 s_s + lambda_edge L_edge

(`loss.lambda_depth` / `loss.lambda_seg` weight the terms only when `loss.use_kendall` is False,
as in the reference). Empty cases are defined, never NaN: no valid depth pixel gives L_depth = 0,
no labelled pixel gives L_seg = 0, both with zero gradient.

Usage:
  total, aux = multitask_loss(depth, seg_logits, batch, kendall, config.loss)
  # aux: {'depth', 'seg', 'edge', 'log_sigma_d', 'log_sigma_s'}, float32 scalars
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from efficientvit_jax.classes import IGNORE_LABEL

BERHU_FRACTION = 0.2  # c = 0.2 * max |e|, Laina et al. 2016
BERHU_EPS = 1e-8  # the reference's guard in (e^2 + c^2) / (2c + eps)
LOG_SIGMA_RANGE = (-2.0, 2.0)


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def berhu(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Reverse Huber loss over the valid pixels of the whole batch.

  Args:
    pred: `[N, H, W]` predicted depth.
    target: `[N, H, W]` target depth.
    valid: `[N, H, W]` bool, pixels that count.

  Returns:
    float32 scalar: mean over valid pixels of `e` where `e <= c`, else `(e^2 + c^2) / (2c + 1e-8)`,
    with `e = |pred - target|` and `c = 0.2 * max(e)` over the batch's valid pixels (no gradient
    through `c`). 0, with zero gradient, when no pixel is valid.
  """
  pred, target = _f32(pred), _f32(target)
  # Invalid targets may hold anything (inf, NaN): keep them out of the gradient, not only the sum.
  target = jnp.where(valid, target, 0.0)
  e = jnp.where(valid, jnp.abs(pred - target), 0.0)
  c = BERHU_FRACTION * jax.lax.stop_gradient(jnp.max(e))
  per_pixel = jnp.where(e <= c, e, (e * e + c * c) / (2.0 * c + BERHU_EPS))
  count = jnp.sum(valid, dtype=jnp.float32)
  return jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.maximum(count, 1.0)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, ignore_index: int = IGNORE_LABEL,
) -> jax.Array:
  """Softmax cross-entropy, mean over the pixels whose label is not `ignore_index`.

  Args:
    logits: `[N, H, W, C]`.
    labels: `[N, H, W]` int, in `[0, C)` or `ignore_index`.
    ignore_index: label of pixels left out (255).

  Returns:
    float32 scalar; 0 (zero gradient) when every pixel is ignored, where torch gives NaN.
  """
  logits = _f32(logits)
  labelled = labels != ignore_index
  safe = jnp.where(labelled, labels, 0).astype(jnp.int32)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
  count = jnp.sum(labelled, dtype=jnp.float32)
  return jnp.sum(jnp.where(labelled, nll, 0.0)) / jnp.maximum(count, 1.0)


def edge_smoothness(depth: jax.Array, image: jax.Array, frame_mask: jax.Array | None = None) -> jax.Array:
  """Edge-aware smoothness of predicted depth, forward differences.

  Args:
    depth: `[N, H, W]` predicted metric depth.
    image: `[N, H, W, 3]` input RGB in [0, 1].
    frame_mask: optional `[N]` bool; the mean is then over the frames where it is True (padding
      frames of an evaluation batch left out; 0 when there are none).

  Returns:
    float32 scalar `mean(|dx d| exp(-mean_c |dx I|)) + mean(|dy d| exp(-mean_c |dy I|))`.
  """
  depth, image = _f32(depth), _f32(image)
  d_dx = jnp.abs(depth[:, :, :-1] - depth[:, :, 1:])
  d_dy = jnp.abs(depth[:, :-1, :] - depth[:, 1:, :])
  i_dx = jnp.mean(jnp.abs(image[:, :, :-1] - image[:, :, 1:]), axis=-1)
  i_dy = jnp.mean(jnp.abs(image[:, :-1, :] - image[:, 1:, :]), axis=-1)
  if frame_mask is None:
    return jnp.mean(d_dx * jnp.exp(-i_dx)) + jnp.mean(d_dy * jnp.exp(-i_dy))
  # Every frame has the same size, so the mean over the kept frames of per-frame means is the
  # mean over their pixels.
  per_frame = jnp.mean(d_dx * jnp.exp(-i_dx), axis=(1, 2)) + jnp.mean(d_dy * jnp.exp(-i_dy), axis=(1, 2))
  keep = frame_mask.astype(bool)
  return jnp.sum(jnp.where(keep, per_frame, 0.0)) / jnp.maximum(jnp.sum(keep, dtype=jnp.float32), 1.0)


def clamp(x: jax.Array, lo: float, hi: float) -> jax.Array:
  """`torch.clamp` with torch's gradient: 1 on `[lo, hi]` boundaries included, 0 outside.

  `jnp.clip` gives 0.5 exactly at a boundary (the tie rule of min/max).
  """
  inside = (x >= lo) & (x <= hi)
  return jnp.where(inside, x, jnp.clip(x, lo, hi))


def _scalar(x: jax.Array) -> jax.Array:
  return jnp.reshape(_f32(x), ())


def kendall_total(
    l_depth: jax.Array,
    l_seg: jax.Array,
    l_edge: jax.Array,
    log_sigma_d: jax.Array,
    log_sigma_s: jax.Array,
    *,
    use_kendall: bool,
    lambda_depth: float,
    lambda_seg: float,
    lambda_edge: float,
) -> jax.Array:
  """Combines the three task losses into the training objective (float32 scalar).

  With `use_kendall`, `s = clamp(log_sigma, -2, 2)` and
  `0.5 exp(-s_d) L_d + 0.5 s_d + exp(-s_s) L_s + 0.5 s_s + lambda_edge L_edge`
  (`lambda_depth`, `lambda_seg` unused, as in the reference); else
  `lambda_depth L_d + lambda_seg L_s + lambda_edge L_edge` (log-sigmas get no gradient).
  `log_sigma_*` are `[1]` (or scalars).
  """
  l_depth, l_seg, l_edge = _scalar(l_depth), _scalar(l_seg), _scalar(l_edge)
  if not use_kendall:
    return lambda_depth * l_depth + lambda_seg * l_seg + lambda_edge * l_edge
  s_d = clamp(_scalar(log_sigma_d), *LOG_SIGMA_RANGE)
  s_s = clamp(_scalar(log_sigma_s), *LOG_SIGMA_RANGE)
  depth_term = 0.5 * jnp.exp(-s_d) * l_depth + 0.5 * s_d
  seg_term = jnp.exp(-s_s) * l_seg + 0.5 * s_s
  return depth_term + seg_term + lambda_edge * l_edge


def multitask_loss(
    depth_pred: jax.Array,
    seg_logits: jax.Array,
    batch: Mapping[str, jax.Array],
    kendall: Mapping[str, jax.Array],
    loss_config: Mapping[str, Any],
    frame_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The training objective of one batch and its parts for logging.

  Args:
    depth_pred: `[N, H, W]` predicted depth, metres.
    seg_logits: `[N, H, W, C]`.
    batch: the training batch after the device-side augmentation (docs/data.md#data-element):
      `image` `[N, H, W, 3]` float32 in [0, 1], `depth`
      `[N, H, W]` target (teacher or sensor, already resolved per sample), `depth_valid`
      `[N, H, W]` bool, `seg` `[N, H, W]` int (255 = none). Other keys are ignored.
    kendall: `{'log_sigma_d': [1], 'log_sigma_s': [1]}`.
    loss_config: the `loss.*` config (`use_kendall`, `lambda_depth`, `lambda_seg`, `lambda_edge`).
    frame_mask: optional `[N]` bool, False on padding frames (evaluation batches), which then
      count in none of the three terms: the loss of the batch of real frames.

  Returns:
    `(total, aux)`: float32 scalar, and float32 scalars `depth`, `seg`, `edge`, `log_sigma_d`,
    `log_sigma_s` (the log-sigmas as used, i.e. clamped to [-2, 2], as the reference logs them).

  Example:
    >>> def loss_fn(params, kendall, batch):
    ...   depth, seg_logits = model_apply(params, batch['image'])
    ...   return multitask_loss(depth, seg_logits, batch, kendall, config.loss)
  """
  target = _f32(batch['depth'])
  valid = batch['depth_valid'].astype(bool) & (target > 0)
  labels = batch['seg']
  if frame_mask is not None:
    keep = frame_mask.astype(bool)[:, None, None]
    valid = valid & keep
    labels = jnp.where(keep, labels, IGNORE_LABEL)
  l_depth = berhu(depth_pred, target, valid)
  l_seg = cross_entropy(seg_logits, labels)
  l_edge = edge_smoothness(depth_pred, batch['image'], frame_mask)
  total = kendall_total(
      l_depth, l_seg, l_edge, kendall['log_sigma_d'], kendall['log_sigma_s'],
      use_kendall=bool(loss_config['use_kendall']),
      lambda_depth=float(loss_config['lambda_depth']),
      lambda_seg=float(loss_config['lambda_seg']),
      lambda_edge=float(loss_config['lambda_edge']))
  aux = {
      'depth': l_depth,
      'seg': l_seg,
      'edge': l_edge,
      'log_sigma_d': clamp(_scalar(kendall['log_sigma_d']), *LOG_SIGMA_RANGE),
      'log_sigma_s': clamp(_scalar(kendall['log_sigma_s']), *LOG_SIGMA_RANGE),
  }
  return total, jax.lax.stop_gradient(aux)

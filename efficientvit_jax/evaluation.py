"""Evaluation of a model over batches of a split: a jitted eval-mode step + metric accumulation.

Used by `eval.py` and by `train.py`'s periodic validation. Batches come from the caller (the data
pipeline's padded eval iterator: the data element plus a `frame_mask` [B] bool that is False on
padding frames); each process passes its slice of every global batch, and the numbers come from
global sums (metrics.MetricAccumulator), so any device or process count gives the same JSON.

Given the Kendall log-sigmas and the `loss` config, the step also computes the training objective
(`losses.multitask_loss`, eval mode, no augmentation) of each global batch's real frames against
its training targets (`depth`, `depth_valid`, `seg`); the validation loss is its mean over the
batches, each batch weighing the same (the reference's `validate`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from efficientvit_jax import augment
from efficientvit_jax import classes
from efficientvit_jax import console
from efficientvit_jax import domains
from efficientvit_jax import losses
from efficientvit_jax import metrics as metrics_lib
from efficientvit_jax import parallel

PROTOCOLS = ('ours', 'reference', 'reference-frames')
REFERENCE_BATCH_SIZE = 16  # the reference averaged its metrics over validation batches of 16
LOSS_PARTS = ('loss', 'loss_depth', 'loss_seg', 'loss_edge')  # the validation loss and its terms


def make_eval_step(graphdef: nnx.GraphDef, *, set_name: str, protocol: str = 'ours',
                   with_seg: bool = True, loss_config: Any = None) -> Callable:
  """`(params, batch_stats, batch, kendall=None) -> (per-frame statistics, predictions, losses)`,
  eval mode.

  protocol 'reference': the reference's NYU validation, or for the corridor set its corridor
  evaluation (`batch['gt_depth']` then the sensor depth without window, `SensorDepthAsGroundTruth`).
  'reference-frames': its per-frame evaluation, whose numbers are computed on the host: the
  statistics are the maps themselves (`frame_mask`, `index`, `depth`, `gt_depth`).

  Predictions: `depth` [B, H, W] metres and `seg` [B, H, W] int32 class ids.
  Losses: {} without `loss_config`; else scalars over the batch's real frames: `LOSS_PARTS` float32
  (the total and its depth, segmentation and edge terms), `n_frames` (real frames), `n_depth` (valid
  depth target pixels), `n_labelled` (labelled pixels) int32; the batch then needs `depth`,
  `depth_valid`, `seg`, and `kendall` the log-sigmas ({'log_sigma_d': [1], 'log_sigma_s': [1]}).
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f'protocol must be one of {PROTOCOLS}, got {protocol!r}')
  min_depth, max_depth = domains.DEPTH_WINDOWS[set_name]

  def eval_step(params, batch_stats, batch, kendall=None):
    image = augment.to_float(batch['image'])
    out = nnx.merge(graphdef, params, batch_stats)(image, train=False)
    seg = jnp.argmax(out['seg_logits'], axis=-1).astype(jnp.int32)
    gt_seg = batch['gt_seg'] if with_seg else None
    pred_seg = seg if with_seg else None
    if protocol == 'reference-frames':
      stats = {'frame_mask': batch['frame_mask'], 'index': batch['index'], 'depth': out['depth'],
               'gt_depth': batch['gt_depth']}
    elif protocol == 'reference' and set_name == 'corridor':
      stats = metrics_lib.corridor_reference_frame_stats(out['depth'], batch['gt_depth'], batch['frame_mask'],
                                                         min_depth=min_depth, max_depth=max_depth)
    elif protocol == 'reference':
      stats = metrics_lib.reference_frame_stats(out['depth'], batch['gt_depth'], pred_seg, gt_seg,
                                                batch['frame_mask'])
    else:
      stats = metrics_lib.frame_stats(out['depth'], batch['gt_depth'], pred_seg, gt_seg, batch['frame_mask'],
                                      min_depth=min_depth, max_depth=max_depth)
    loss_parts = {}
    if loss_config is not None:
      mask = batch['frame_mask'].astype(bool)
      targets = {'image': image, 'depth': batch['depth'], 'depth_valid': batch['depth_valid'], 'seg': batch['seg']}
      total, aux = losses.multitask_loss(out['depth'], out['seg_logits'], targets, kendall, loss_config,
                                         frame_mask=mask)
      keep = mask[:, None, None]
      loss_parts = {'loss': total, 'loss_depth': aux['depth'], 'loss_seg': aux['seg'], 'loss_edge': aux['edge'],
                    'n_frames': jnp.sum(mask, dtype=jnp.int32),
                    'n_depth': jnp.sum(batch['depth_valid'].astype(bool) & (batch['depth'] > 0) & keep,
                                       dtype=jnp.int32),
                    'n_labelled': jnp.sum((batch['seg'] != classes.IGNORE_LABEL) & keep, dtype=jnp.int32)}
    return stats, {'depth': out['depth'], 'seg': seg}, loss_parts

  return eval_step


class SensorDepthAsGroundTruth:
  """A reader whose frames' `gt_depth` is the sensor depth as stored (no window, no confidence
  test), for the reference's corridor evaluation, which applies its own window."""

  def __init__(self, reader: Any):
    self._reader = reader

  def __len__(self) -> int:
    return len(self._reader)

  def __getattr__(self, name: str) -> Any:
    if name.startswith('_'):
      raise AttributeError(name)
    return getattr(self._reader, name)

  def read(self, i: int) -> dict[str, Any]:
    frame = dict(self._reader.read(i))
    frame['gt_depth'] = frame['sensor_depth']
    return frame


class FirstFrames:
  """An `on_batch` callback keeping the first `count` real frames of a split with their predictions
  (`image`, `gt_depth`, `gt_seg`, `index`, `depth`, `seg`; numpy), e.g. for pictures of a fixed set."""

  def __init__(self, count: int):
    self.count = count
    self.frames: list[dict[str, np.ndarray]] = []

  def __call__(self, batch: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> None:
    for i in np.flatnonzero(batch['frame_mask']):
      if len(self.frames) >= self.count:
        return
      frame = {k: np.asarray(batch[k][i]) for k in ('image', 'gt_depth', 'gt_seg', 'index') if k in batch}
      frame.update(depth=np.asarray(preds['depth'][i]), seg=np.asarray(preds['seg'][i]))
      self.frames.append(frame)


def mean_losses(batches: list[dict[str, np.ndarray]]) -> dict[str, float | None] | None:
  """The validation loss from the eval step's per-batch `losses`: each of `LOSS_PARTS` averaged over
  the batches with a real frame, equal weights; None when the split has no valid depth target
  pixel, and `loss_seg` None when it has no labelled pixel (the total then holds the
  segmentation term with L_seg = 0, as training does)."""
  batches = [b for b in batches if int(b['n_frames']) > 0]
  if not batches or not sum(int(b['n_depth']) for b in batches):
    return None
  out = {k: float(np.mean([float(b[k]) for b in batches])) for k in LOSS_PARTS}
  if not sum(int(b['n_labelled']) for b in batches):
    out['loss_seg'] = None
  out = {k: v if v is None or np.isfinite(v) else None for k, v in out.items()}
  return {**out, 'num_batches': len(batches)}


_EVAL_STEPS: dict[tuple[Any, ...], Callable] = {}


def _compiled_eval_step(graphdef: nnx.GraphDef, set_name: str, protocol: str, with_seg: bool,
                        loss_config: Any) -> Callable:
  """The jitted `make_eval_step`, one per network, split kind and loss config: training's periodic
  validation compiles (and says so) once per run, not at every validation."""
  loss_key = None if loss_config is None else json.dumps(
      loss_config.to_dict() if hasattr(loss_config, 'to_dict') else dict(loss_config), sort_keys=True,
      default=str)
  key = (graphdef, set_name, protocol, with_seg, loss_key)  # a ConfigDict is not hashable, its JSON is
  if key not in _EVAL_STEPS:
    if len(_EVAL_STEPS) >= 32:  # many models in one process (tests, notebooks): drop the old ones
      _EVAL_STEPS.clear()
    _EVAL_STEPS[key] = console.announce_compile(
        jax.jit(make_eval_step(graphdef, set_name=set_name, protocol=protocol, with_seg=with_seg,
                               loss_config=loss_config)),
        f'the evaluation step ({set_name})')
  return _EVAL_STEPS[key]


def evaluate(graphdef: nnx.GraphDef, params: Any, batch_stats: Any, batches: Iterable[dict[str, np.ndarray]],
             mesh: Mesh, *, set_name: str, protocol: str = 'ours', with_seg: bool = True,
             on_batch: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None,
             kendall: Any = None, loss_config: Any = None) -> dict[str, Any]:
  """Metrics of one split (the `depth`/`seg`/`baselines` parts of eval.py's JSON).

  params, batch_stats: replicated over `mesh`. batches: this process's slices of padded global
  batches. with_seg: whether the split has ground-truth labels (`gt_seg`). on_batch(local batch,
  local predictions) sees every batch (e.g. to save predictions); padding rows included.
  kendall (replicated log-sigmas) and loss_config (the `loss` config), protocol 'ours' only: the
  result also holds `loss` (`mean_losses`).
  """
  with_seg = with_seg and protocol != 'reference-frames'  # a depth-only protocol
  with_loss = loss_config is not None and protocol == 'ours'
  keys = ('image', 'gt_depth', 'frame_mask') + (('gt_seg',) if with_seg else ())
  keys += ('index',) if protocol == 'reference-frames' else ()
  keys += ('depth', 'depth_valid', 'seg') if with_loss else ()
  step = _compiled_eval_step(graphdef, set_name, protocol, with_seg, loss_config if with_loss else None)
  if protocol == 'reference-frames':
    accumulator = metrics_lib.FramesReferenceAccumulator()
  elif protocol == 'reference' and set_name == 'corridor':
    accumulator = metrics_lib.CorridorReferenceAccumulator()
  elif protocol == 'reference':
    accumulator = metrics_lib.ReferenceAccumulator(batch_size=REFERENCE_BATCH_SIZE)
  else:
    accumulator = metrics_lib.MetricAccumulator(bins=metrics_lib.depth_bins(domains.DEPTH_WINDOWS[set_name]))
  batch_losses = []
  for local in batches:
    stats, preds, loss_parts = step(params, batch_stats, parallel.global_batch(local, mesh, keys),
                                    kendall if with_loss else None)
    accumulator.update(stats)
    if with_loss:
      batch_losses.append(loss_parts)
    if on_batch is not None:
      on_batch(local, {k: parallel.local_rows(v) for k, v in preds.items()})
  result = accumulator.result()
  if with_loss:
    result['loss'] = mean_losses(parallel.replicated_to_host(batch_losses))
  return result

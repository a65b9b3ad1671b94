"""Evaluation of a model over batches of a split: a jitted eval-mode step + metric accumulation.

Used by `eval.py` and by `train.py`'s periodic validation. Batches come from the caller (the data
pipeline's padded eval iterator: the data element plus a `frame_mask` [B] bool that is False on
padding frames); each process passes its slice of every global batch, and the numbers come from
global sums (metrics.MetricAccumulator), so any device or process count gives the same JSON.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from efficientvit_jax import augment
from efficientvit_jax import console
from efficientvit_jax import domains
from efficientvit_jax import metrics as metrics_lib
from efficientvit_jax import parallel

PROTOCOLS = ('ours', 'reference', 'reference-frames')
REFERENCE_BATCH_SIZE = 16  # the reference averaged its metrics over validation batches of 16


def make_eval_step(graphdef: nnx.GraphDef, *, set_name: str, protocol: str = 'ours',
                   with_seg: bool = True) -> Callable:
  """`(params, batch_stats, batch) -> (per-frame statistics, predictions)`, eval mode.

  protocol 'reference': the reference's NYU validation, or for the corridor set its corridor
  evaluation (`batch['gt_depth']` then the sensor depth without window, `SensorDepthAsGroundTruth`).
  'reference-frames': its per-frame evaluation, whose numbers are computed on the host: the
  statistics are the maps themselves (`frame_mask`, `index`, `depth`, `gt_depth`).

  Predictions: `depth` [B, H, W] metres and `seg` [B, H, W] int32 class ids.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f'protocol must be one of {PROTOCOLS}, got {protocol!r}')
  min_depth, max_depth = domains.DEPTH_WINDOWS[set_name]

  def eval_step(params, batch_stats, batch):
    out = nnx.merge(graphdef, params, batch_stats)(augment.to_float(batch['image']), train=False)
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
    return stats, {'depth': out['depth'], 'seg': seg}

  return eval_step


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of an array sharded on its leading axis, in order."""
  if x.is_fully_addressable:
    return np.asarray(x)
  shards = {}
  for shard in x.addressable_shards:
    shards.setdefault(shard.index[0].start or 0, shard.data)
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


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


@functools.lru_cache(maxsize=32)
def _compiled_eval_step(graphdef: nnx.GraphDef, set_name: str, protocol: str, with_seg: bool) -> Callable:
  """The jitted `make_eval_step`, one per network and split kind: training's periodic validation
  compiles (and says so) once per run, not at every validation."""
  return console.announce_compile(
      jax.jit(make_eval_step(graphdef, set_name=set_name, protocol=protocol, with_seg=with_seg)),
      f'the evaluation step ({set_name})')


def evaluate(graphdef: nnx.GraphDef, params: Any, batch_stats: Any, batches: Iterable[dict[str, np.ndarray]],
             mesh: Mesh, *, set_name: str, protocol: str = 'ours', with_seg: bool = True,
             on_batch: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None) -> dict[str, Any]:
  """Metrics of one split (the `depth`/`seg`/`baselines` parts of eval.py's JSON).

  params, batch_stats: replicated over `mesh`. batches: this process's slices of padded global
  batches. with_seg: whether the split has ground-truth labels (`gt_seg`). on_batch(local batch,
  local predictions) sees every batch (e.g. to save predictions); padding rows included.
  """
  with_seg = with_seg and protocol != 'reference-frames'  # a depth-only protocol
  keys = ('image', 'gt_depth', 'frame_mask') + (('gt_seg',) if with_seg else ())
  keys += ('index',) if protocol == 'reference-frames' else ()
  step = _compiled_eval_step(graphdef, set_name, protocol, with_seg)
  if protocol == 'reference-frames':
    accumulator = metrics_lib.FramesReferenceAccumulator()
  elif protocol == 'reference' and set_name == 'corridor':
    accumulator = metrics_lib.CorridorReferenceAccumulator()
  elif protocol == 'reference':
    accumulator = metrics_lib.ReferenceAccumulator(batch_size=REFERENCE_BATCH_SIZE)
  else:
    accumulator = metrics_lib.MetricAccumulator()
  for local in batches:
    stats, preds = step(params, batch_stats, parallel.global_batch(local, mesh, keys))
    accumulator.update(stats)
    if on_batch is not None:
      on_batch(local, {k: local_rows(v) for k, v in preds.items()})
  return accumulator.result()

"""Evaluation metrics: jitted per-frame statistics on device, float64 finalisation on the host.

Two steps, so that the device work is one fused pass per batch and every mean is taken over the
whole split, whatever the batch size, sharding or padding:

1. `frame_stats` (pure, jittable) turns a batch of predictions and ground truth into small
   per-frame sums (`[N]`, `[N, 3]`, `[N, C, C]`), computed in float32 / int32.
2. `MetricAccumulator` pulls them to the host, drops padding frames, and `result()` reduces in
   float64 into the eval JSON structure (docs/evaluation.md#eval-json) (`num_frames`, `num_frames_skipped`,
   `depth`, `seg`, `baselines`).

Definitions (docs/evaluation.md#metrics). A depth pixel is valid when `min_depth <= gt <= max_depth`;
p is the prediction clipped to that window, as the common NYU evaluation code (BTS, AdaBins) clips
it to [min_depth_eval, max_depth_eval] (so that the logarithms are defined).
- Eigen et al.'s set: AbsRel = mean(|p - g| / g), SqRel = mean((p - g)^2 / g),
  RMSE = sqrt(mean((p - g)^2)), RMSE-log = sqrt(mean((ln p - ln g)^2)),
  log10 = mean|log10 p - log10 g|, delta_k = fraction with max(p / g, g / p) < 1.25^k; and
  MAE = mean|p - g|.
- `frame_mean`: the mean over frames of each frame's metric (as those codes report them), frames
  with fewer than `min_valid_pixels` (100) valid pixels skipped (and counted in
  `num_frames_skipped`). `pooled`: over all valid pixels of the split, small frames included.
- `median_scaled`: per frame the raw prediction times median(g) / median(p) over its valid pixels
  (numpy's median: the mean of the two middle values for an even count), then clipped to the
  window (Monodepth2's order). Frames with median(p) <= 1e-6 are left out of both its frame mean
  and its pooled sums; its pooled sums, like `pooled`, keep frames with fewer than 100 valid pixels.
- `bins`: pooled RMSE, AbsRel and delta1 over the valid pixels with gt in each of `depth_bins`'
  metre bins ([lo, hi); the last also holds gt = max_depth).
- `seg`: one confusion matrix over the split (`confusion`, rows ground truth, columns prediction, in
  the order of `classes`), pixels with gt 255 ignored. With TP_c, FP_c, FN_c and t_c = TP_c + FN_c
  (the class's labelled pixels): IoU_c = TP_c / (TP_c + FP_c + FN_c), None where that is 0 and left
  out of the mIoU; `class_accuracy`_c = TP_c / t_c, None where t_c = 0 and left out of
  `mean_class_accuracy`; `fw_iou` = sum_c t_c IoU_c / sum_c t_c over classes with t_c > 0;
  `pixel_accuracy` = trace / sum (Long et al.'s four segmentation metrics).
- `baselines`: `mean_depth_rmse` = pooled RMSE of the constant prediction mean(g) over all valid
  pixels of the split; `majority_class_miou` = mIoU of predicting the most frequent ground-truth
  class everywhere (from the confusion matrix's row sums: (n_major / n_labelled) / #classes present).
Undefined values (no valid pixel, no labelled pixel, non-finite results) are None, never NaN.

The reference's own validation protocol (`--protocol reference`) is `reference_frame_stats` +
`ReferenceAccumulator`, its corridor evaluation `corridor_reference_frame_stats` +
`CorridorReferenceAccumulator`, and its per-frame evaluation (`--protocol reference-frames`)
`FramesReferenceAccumulator` (on the host, in numpy, as it computes); see there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax import domains
from efficientvit_jax import parallel
from efficientvit_jax.classes import CLASS_NAMES

MIN_VALID_PIXELS = 100
PRED_FLOOR = 1e-6  # median(p) <= this => no median scaling
DEPTH_METRICS = ('rmse', 'mae', 'abs_rel', 'sq_rel', 'rmse_log', 'log10', 'delta1', 'delta2', 'delta3')
# Edges of the distance bins, metres: a set's bins are those below its window's maximum, the last
# one ending there (`depth_bins`).
BIN_EDGES = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 80.0)
_SUM_KEYS = ('sum_sq_err', 'sum_abs_err', 'sum_abs_rel', 'sum_sq_rel', 'sum_sq_log', 'sum_abs_log10',
             'n_delta1', 'n_delta2', 'n_delta3')
_BIN_KEYS = ('bin_sum_sq_err', 'bin_sum_abs_rel', 'bin_n_delta1', 'bin_n')
_FRAME_KEYS = ('n_valid', *_SUM_KEYS, 'median_ok', 'median_scale', *('ms_' + k for k in _SUM_KEYS),
               *_BIN_KEYS, 'sum_gt', 'sum_gt_sq')


def depth_bins(window: tuple[float, float]) -> tuple[tuple[str, float, float], ...]:
  """The distance bins of a set with depth window (min, max): (label, lo, hi) in metres.

  `BIN_EDGES` below the maximum, then the maximum: (0.1, 10) -> '0-1 m', '1-2 m', '2-3 m', '3-4 m',
  '4-6 m', '6-8 m', '8-10 m'; (0.1, 5) -> ... '3-4 m', '4-5 m'; (0.1, 15) adds '10-15 m'.
  """
  top = float(window[1])
  edges = [e for e in BIN_EDGES if e < top] + [top]
  return tuple((f'{lo:g}-{hi:g} m', lo, hi) for lo, hi in zip(edges, edges[1:]))


# ------------------------------------------------------------------------------------------------
# Device side (pure, jittable).
# ------------------------------------------------------------------------------------------------

def masked_median(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Median of `x` over `mask` along the last axis, as numpy's median of the selected values.

  Masked-out entries are replaced by +inf and the row is sorted, so the n selected values come
  first; the median is (s[(n - 1) // 2] + s[n // 2]) / 2: the middle value for odd n, the mean of
  the two middle values for even n (ties need no special care: they are equal sorted values).

  Args:
    x: [..., M] float.
    mask: [..., M] bool.
  Returns:
    (median [...], count [...] int32); the median is 0 where count is 0.
  """
  n = jnp.sum(mask, axis=-1, dtype=jnp.int32)
  s = jnp.sort(jnp.where(mask, x, jnp.inf), axis=-1)
  lo = jnp.clip((n - 1) // 2, 0, None)[..., None]
  hi = jnp.clip(n // 2, 0, None)[..., None]
  a = jnp.take_along_axis(s, lo, axis=-1)[..., 0]
  b = jnp.take_along_axis(s, hi, axis=-1)[..., 0]
  return jnp.where(n > 0, (a + b) / 2, 0.0).astype(x.dtype), n


def _depth_sums(p: jax.Array, g: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
  """Per-frame error sums over valid pixels. p (clipped to the window, > 0), g: [N, M] float32;
  valid: [N, M] bool -> [N] each."""
  g_safe = jnp.where(valid, g, 1.0)
  p_safe = jnp.where(valid, p, 1.0)
  err = jnp.where(valid, p - g, 0.0)
  log_err = jnp.log(p_safe) - jnp.log(g_safe)  # 0 where not valid
  ratio = jnp.maximum(p_safe / g_safe, g_safe / p_safe)
  out = {
      'sum_sq_err': jnp.sum(err * err, axis=1),
      'sum_abs_err': jnp.sum(jnp.abs(err), axis=1),
      'sum_abs_rel': jnp.sum(jnp.abs(err) / g_safe, axis=1),
      'sum_sq_rel': jnp.sum(err * err / g_safe, axis=1),
      'sum_sq_log': jnp.sum(log_err * log_err, axis=1),
      'sum_abs_log10': jnp.sum(jnp.abs(log_err), axis=1) / math.log(10.0),
  }
  for k in (1, 2, 3):
    out[f'n_delta{k}'] = jnp.sum(valid & (ratio < 1.25**k), axis=1, dtype=jnp.int32)
  return out


def _confusion(seg_pred: jax.Array, gt_seg: jax.Array, keep: jax.Array, num_classes: int) -> jax.Array:
  """Per-frame confusion [N, C, C] int32 (rows ground truth, columns prediction) over `keep` [N, M].

  Ground-truth labels outside [0, C) (255) match no row, so they are ignored.
  """
  classes = jnp.arange(num_classes, dtype=jnp.int32)
  g_hot = (gt_seg[..., None] == classes) & keep[..., None]  # [N, M, C]
  p_hot = seg_pred[..., None] == classes
  return jnp.sum(g_hot[..., :, None] & p_hot[..., None, :], axis=1, dtype=jnp.int32)


def _median_scaled_sums(raw: jax.Array, g: jax.Array, valid: jax.Array, min_depth: float,
                        max_depth: float) -> dict[str, jax.Array]:
  """`median_ok`, `median_scale` [N] and the `ms_` sums of `frame_stats`.

  raw: [N, P] unclipped predictions; g: [N, P] ground truth; valid: [N, P] bool."""
  med_p, count = masked_median(raw, valid)
  med_g, _ = masked_median(g, valid)
  ok = (count > 0) & (med_p > PRED_FLOOR)
  scale = jnp.where(ok, med_g / jnp.where(ok, med_p, 1.0), 1.0)
  out = {'median_ok': ok, 'median_scale': scale}
  scaled = jnp.clip(raw * scale[:, None], min_depth, max_depth)
  for k, v in _depth_sums(scaled, g, valid & ok[:, None]).items():
    out['ms_' + k] = v
  return out


def _bin_sums(p: jax.Array, g: jax.Array, valid: jax.Array, bins: Sequence[tuple[str, float, float]],
              max_depth: float) -> dict[str, jax.Array]:
  """The [N, B] per-depth-bin entries (`_BIN_KEYS`) of `frame_stats`; p, g: [N, P], valid: [N, P] bool."""
  per_bin = []  # one bin at a time: no [N, B, H * W] intermediate
  for i, (_, lo, hi) in enumerate(bins):
    closed = i == len(bins) - 1 and hi >= max_depth
    in_bin = valid & (g >= lo) & ((g <= hi) if closed else (g < hi))
    b = _depth_sums(p, g, in_bin)
    per_bin.append((b['sum_sq_err'], b['sum_abs_rel'], b['n_delta1'], jnp.sum(in_bin, axis=1, dtype=jnp.int32)))
  return {key: jnp.stack(values, axis=1) for key, values in zip(_BIN_KEYS, zip(*per_bin))}


def frame_stats(
    depth_pred: jax.Array,
    gt_depth: jax.Array,
    seg_pred: jax.Array | None,
    gt_seg: jax.Array | None,
    frame_mask: jax.Array,
    *,
    min_depth: float,
    max_depth: float,
    num_classes: int = len(CLASS_NAMES),
    bins: Sequence[tuple[str, float, float]] | None = None,
) -> dict[str, jax.Array]:
  """Per-frame metric statistics of one batch (jittable; batch may be sharded on axis 0).

  Args:
    depth_pred: [N, H, W] predicted depth, metres (clipped to [min_depth, max_depth] here).
    gt_depth: [N, H, W] ground-truth depth, metres (0 or out of [min_depth, max_depth] = invalid).
    seg_pred: [N, H, W] int predicted class ids, or None (no segmentation statistics).
    gt_seg: [N, H, W] int ground-truth class ids, 255 = ignore, or None.
    frame_mask: [N] bool; False marks padding frames, which contribute nothing.
    min_depth, max_depth: the valid ground-truth window, inclusive (min_depth > 0).
    num_classes: C.
    bins: (name, lo, hi) ground-truth depth bins, [lo, hi), the last one closed when hi >=
      max_depth; default `depth_bins((min_depth, max_depth))`.
  Returns:
    Every entry has the batch as leading axis:
    `frame_mask` [N] bool; `n_valid` [N] int32 (valid depth pixels);
    `sum_sq_err`, `sum_abs_err`, `sum_abs_rel`, `sum_sq_rel`, `sum_sq_log`, `sum_abs_log10` [N]
    float32, `n_delta1..3` [N] int32; `median_ok` [N] bool (n_valid > 0 and median(p) > 1e-6),
    `median_scale` [N] float32 (median(g) / median(p), 1 where not ok); `ms_` + each sum key: the
    same sums after median scaling, 0 where not ok; `bin_sum_sq_err`, `bin_sum_abs_rel` [N, B]
    float32, `bin_n_delta1`, `bin_n` [N, B] int32; `sum_gt`, `sum_gt_sq` [N] float32 (over valid
    pixels, for the mean-depth baseline); `confusion` [N, C, C] int32 (only when both seg arrays
    are given).
  """
  bins = depth_bins((min_depth, max_depth)) if bins is None else bins
  n = depth_pred.shape[0]
  frame_mask = frame_mask.astype(bool)
  raw = depth_pred.astype(jnp.float32).reshape(n, -1)
  p = jnp.clip(raw, min_depth, max_depth)
  g = gt_depth.astype(jnp.float32).reshape(n, -1)
  valid = (g >= min_depth) & (g <= max_depth) & frame_mask[:, None]
  g0 = jnp.where(valid, g, 0.0)

  out: dict[str, jax.Array] = {'frame_mask': frame_mask, 'n_valid': jnp.sum(valid, axis=1, dtype=jnp.int32)}
  sums = _depth_sums(p, g, valid)
  out.update(sums)

  out.update(_median_scaled_sums(raw, g, valid, min_depth, max_depth))
  out.update(_bin_sums(p, g, valid, bins, max_depth))
  out['sum_gt'] = jnp.sum(g0, axis=1)
  out['sum_gt_sq'] = jnp.sum(g0 * g0, axis=1)

  if seg_pred is not None and gt_seg is not None:
    keep = jnp.broadcast_to(frame_mask[:, None], (n, p.shape[1]))
    out['confusion'] = _confusion(
        seg_pred.astype(jnp.int32).reshape(n, -1), gt_seg.astype(jnp.int32).reshape(n, -1), keep, num_classes)
  return out


def reference_frame_stats(
    depth_pred: jax.Array,
    gt_depth: jax.Array,
    seg_pred: jax.Array | None,
    gt_seg: jax.Array | None,
    frame_mask: jax.Array,
    *,
    num_classes: int = len(CLASS_NAMES),
) -> dict[str, jax.Array]:
  """Per-frame statistics for the reference's validation protocol (jittable).

  The reference (`train.py: compute_metrics`) takes, per batch, the RMSE over pixels with gt > 0
  (no upper bound) and, per class c, IoU = |pred=c AND gt=c| / |pred=c OR gt=c| over **all**
  pixels: a pixel labelled 255 is in no ground-truth class but still counts in the union of the
  class predicted there (a false positive), which is what "255 not excluded" means. Classes with
  an empty union are left out of that batch's mean. Per-frame counts suffice to rebuild this for
  any grouping of frames into batches (`ReferenceAccumulator`).

  Args:
    depth_pred, gt_depth: [N, H, W] metres.
    seg_pred, gt_seg: [N, H, W] int, or None.
    frame_mask: [N] bool; padding frames contribute nothing.
  Returns:
    `frame_mask` [N] bool; `ref_sum_sq_err` [N] float32 and `ref_n_valid` [N] int32 over gt > 0;
    with seg: `ref_tp`, `ref_n_pred`, `ref_n_gt` [N, C] int32 (pred = c and gt = c; pred = c over
    all pixels; gt = c).
  """
  n = depth_pred.shape[0]
  frame_mask = frame_mask.astype(bool)
  p = depth_pred.astype(jnp.float32).reshape(n, -1)
  g = gt_depth.astype(jnp.float32).reshape(n, -1)
  valid = (g > 0) & frame_mask[:, None]
  err = jnp.where(valid, p - g, 0.0)
  out = {
      'frame_mask': frame_mask,
      'ref_sum_sq_err': jnp.sum(err * err, axis=1),
      'ref_n_valid': jnp.sum(valid, axis=1, dtype=jnp.int32),
  }
  if seg_pred is not None and gt_seg is not None:
    classes = jnp.arange(num_classes, dtype=jnp.int32)
    keep = frame_mask[:, None, None]
    p_hot = (seg_pred.astype(jnp.int32).reshape(n, -1)[..., None] == classes) & keep  # [N, M, C]
    g_hot = (gt_seg.astype(jnp.int32).reshape(n, -1)[..., None] == classes) & keep
    out['ref_tp'] = jnp.sum(p_hot & g_hot, axis=1, dtype=jnp.int32)
    out['ref_n_pred'] = jnp.sum(p_hot, axis=1, dtype=jnp.int32)
    out['ref_n_gt'] = jnp.sum(g_hot, axis=1, dtype=jnp.int32)
  return out


# ------------------------------------------------------------------------------------------------
# Host side (numpy, float64).
# ------------------------------------------------------------------------------------------------

def _real_frames(stats: Mapping[str, Any], drop: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """One batch of per-frame statistics -> numpy, padding frames (`frame_mask` False) removed."""
  host = {k: parallel.gather_to_host(v) for k, v in stats.items()}
  keep = host['frame_mask'].astype(bool)
  return {k: v[keep] for k, v in host.items() if k not in ('frame_mask', *drop)}


def _concatenated(chunks: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Batches of `_real_frames` -> one array per statistic ({} when there are none)."""
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


def _json_float(x: Any) -> float | None:
  """A Python float, or None for undefined (None, NaN, inf)."""
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
  """num / den in float64, NaN where den == 0 (no warnings)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def _metrics_from_sums(s: Mapping[str, np.ndarray], n: np.ndarray, prefix: str = '') -> dict[str, np.ndarray]:
  """The depth metrics (`DEPTH_METRICS`) from sums (any shape, float64; NaN where n == 0)."""
  return {
      'rmse': np.sqrt(_ratio(s[prefix + 'sum_sq_err'], n)),
      'mae': _ratio(s[prefix + 'sum_abs_err'], n),
      'abs_rel': _ratio(s[prefix + 'sum_abs_rel'], n),
      'sq_rel': _ratio(s[prefix + 'sum_sq_rel'], n),
      'rmse_log': np.sqrt(_ratio(s[prefix + 'sum_sq_log'], n)),
      'log10': _ratio(s[prefix + 'sum_abs_log10'], n),
      **{f'delta{k}': _ratio(s[f'{prefix}n_delta{k}'], n) for k in (1, 2, 3)},
  }


def _frame_mean(per_frame: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, float | None]:
  if not keep.any():
    return {k: None for k in DEPTH_METRICS}
  return {k: _json_float(np.mean(per_frame[k][keep])) for k in DEPTH_METRICS}


def _pooled(stats: Mapping[str, np.ndarray], keep: np.ndarray, prefix: str = '') -> dict[str, float | None]:
  sums = {k: np.sum(stats[prefix + k][keep], dtype=np.float64) for k in _SUM_KEYS}
  m = _metrics_from_sums(sums, np.sum(stats['n_valid'][keep], dtype=np.float64))
  return {k: _json_float(m[k]) for k in DEPTH_METRICS}


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
  """Per-class IoU [C] float64 from a [C, C] confusion matrix (rows gt); NaN where TP+FP+FN = 0."""
  c = np.asarray(confusion, np.float64)
  tp = np.diag(c)
  return _ratio(tp, c.sum(0) + c.sum(1) - tp)


def seg_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
  """The `seg` part of the eval JSON from a [C, C] int confusion matrix (rows gt) with pixels."""
  conf = np.asarray(confusion, np.int64)
  iou = iou_from_confusion(conf)
  gt_counts = conf.sum(1)
  accuracy = _ratio(np.diag(conf), gt_counts)
  labelled = gt_counts > 0
  return {
      'miou': _json_float(np.mean(iou[~np.isnan(iou)])),
      'iou': {name: _json_float(v) for name, v in zip(class_names, iou)},
      'mean_class_accuracy': _json_float(np.mean(accuracy[labelled])),
      'class_accuracy': {name: _json_float(v) for name, v in zip(class_names, accuracy)},
      'fw_iou': _json_float(np.sum(gt_counts[labelled] * iou[labelled]) / np.sum(gt_counts)),
      'pixel_accuracy': _json_float(np.trace(conf) / conf.sum()),
      'classes': list(class_names),
      'confusion': conf.tolist(),
  }


class MetricAccumulator:
  """Collects `frame_stats` outputs over a split and finalises them into the eval JSON parts.

  Usage:
    acc = MetricAccumulator(bins=depth_bins(window))
    for batch in loader:
      acc.update(stats_fn(params, batch))   # stats_fn: jitted, returns frame_stats(...)
    report = acc.result()

  Padding frames (frame_mask False) are dropped in `update`. Multi-process runs: arrays that are
  not fully addressable are gathered by `parallel.gather_to_host` (every process must call update).
  """

  def __init__(
      self,
      class_names: Sequence[str] = CLASS_NAMES,
      min_valid_pixels: int = MIN_VALID_PIXELS,
      bins: Sequence[tuple[str, float, float]] | None = None,
  ):
    """`bins` must be those given to `frame_stats` (only their names are used here); default
    `depth_bins` of the NYU window, `frame_stats`' default for that window."""
    bins = depth_bins(domains.DEPTH_WINDOWS['nyu']) if bins is None else bins
    self.class_names = tuple(class_names)
    self.min_valid_pixels = min_valid_pixels
    self.bin_names = tuple(name for name, _, _ in bins)
    self._chunks: list[dict[str, np.ndarray]] = []
    self._confusion = np.zeros((len(self.class_names),) * 2, np.int64)

  def update(self, stats: Mapping[str, Any]) -> None:
    """Adds one batch of `frame_stats` output (device or numpy arrays)."""
    frames = _real_frames(stats)
    if frames['bin_n'].shape[1:] != (len(self.bin_names),):
      raise ValueError(f'the statistics have {frames["bin_n"].shape[1]} depth bins, expected '
                       f'{len(self.bin_names)} ({", ".join(self.bin_names)}): give frame_stats and '
                       'MetricAccumulator the same bins')
    if 'confusion' in frames:
      conf = frames.pop('confusion')
      if conf.shape[1:] != self._confusion.shape:
        raise ValueError(f'confusion has shape {conf.shape}, expected [N, {len(self.class_names)}, '
                         f'{len(self.class_names)}] for classes {self.class_names}')
      self._confusion += conf.sum(0, dtype=np.int64)
    self._chunks.append(frames)

  def stats(self) -> dict[str, np.ndarray]:
    """All real frames' statistics, concatenated in update order ([F, ...] each)."""
    if not self._chunks:
      return {k: np.zeros((0, len(self.bin_names)) if k.startswith('bin_') else (0,)) for k in _FRAME_KEYS}
    return _concatenated(self._chunks)

  def frame_metrics(self) -> dict[str, np.ndarray]:
    """Per-frame metrics [F] float64 (NaN where undefined): `DEPTH_METRICS`, `ms_` + the
    median-scaled ones, and `n_valid`."""
    s = self.stats()
    n = s['n_valid'].astype(np.float64)
    out = _metrics_from_sums(s, n)
    ms = _metrics_from_sums(s, np.where(s['median_ok'], n, 0.0), prefix='ms_')
    out.update({'ms_' + k: v for k, v in ms.items()})
    out['n_valid'] = n
    return out

  @property
  def num_frames_median_skipped(self) -> int:
    """Frames counted in the frame means but not in the median-scaled ones (median(p) <= 1e-6)."""
    s = self.stats()
    return int(np.sum((s['n_valid'] >= self.min_valid_pixels) & ~s['median_ok'].astype(bool)))

  def result(self) -> dict[str, Any]:
    """The eval JSON parts: `num_frames`, `num_frames_skipped`, `depth`, `seg` (absent when no
    pixel of the split is labelled), `baselines`. Fractions, metres; None where undefined."""
    s = self.stats()
    n_valid = s['n_valid']
    num_frames = len(n_valid)
    counted = n_valid >= self.min_valid_pixels
    med_ok = s['median_ok'].astype(bool)
    per_frame = self.frame_metrics()
    ms_frame = {k: per_frame['ms_' + k] for k in DEPTH_METRICS}

    bins = {}
    for i, name in enumerate(self.bin_names):
      total = {k: np.sum(s[k][:, i], dtype=np.float64) for k in _BIN_KEYS}
      n_bin = total['bin_n']
      bins[name] = {'rmse': _json_float(np.sqrt(_ratio(total['bin_sum_sq_err'], n_bin))),
                    'abs_rel': _json_float(_ratio(total['bin_sum_abs_rel'], n_bin)),
                    'delta1': _json_float(_ratio(total['bin_n_delta1'], n_bin)), 'n_pixels': int(n_bin)}

    depth = {
        'frame_mean': _frame_mean(per_frame, counted),
        'pooled': _pooled(s, np.ones(num_frames, bool)),
        'median_scaled': {
            'frame_mean': _frame_mean(ms_frame, counted & med_ok),
            'pooled': _pooled(s, med_ok, prefix='ms_'),
        },
        'bins': bins,
    }

    n_total = np.sum(n_valid, dtype=np.float64)
    mean_gt = _ratio(np.sum(s['sum_gt'], dtype=np.float64), n_total)
    var_gt = _ratio(np.sum(s['sum_gt_sq'], dtype=np.float64), n_total) - mean_gt**2
    out: dict[str, Any] = {
        'num_frames': num_frames,
        'num_frames_skipped': int(np.sum(~counted)),
        'depth': depth,
    }
    baselines = {'mean_depth_rmse': _json_float(np.sqrt(np.maximum(var_gt, 0.0))), 'majority_class_miou': None}

    if self._confusion.sum() > 0:
      out['seg'] = seg_metrics(self._confusion, self.class_names)
      gt_counts = self._confusion.sum(1)
      baselines['majority_class_miou'] = _json_float(
          gt_counts.max() / gt_counts.sum() / np.count_nonzero(gt_counts))
    out['baselines'] = baselines
    return out


class ReferenceAccumulator:
  """The reference's validation protocol from `reference_frame_stats` outputs.

  Frames are taken in update order (padding dropped) and cut into consecutive batches of
  `batch_size`, the last one possibly smaller (the reference's val loader: no shuffle,
  drop_last=False). Per batch: RMSE over gt > 0 pooled over the batch (0.0 for a batch without a
  valid pixel, as the reference appends it), mIoU over the classes whose union is non-empty (0.0
  when none is). Both are then averaged over batches with equal weight.

  Where ours differs: frame means / split-pooled values instead of batch means (a batch mean
  depends on the batch size and order), a [min, max] depth window instead of gt > 0, and
  pixels labelled 255 ignored rather than counted as false positives. The inputs are the
  caller's (eval.py): the reference used bilinearly resized GT depth and the SAM2 teacher labels.
  """

  def __init__(self, batch_size: int = 16, class_names: Sequence[str] = CLASS_NAMES):
    self.batch_size = batch_size
    self.class_names = tuple(class_names)
    self._chunks: list[dict[str, np.ndarray]] = []

  def update(self, stats: Mapping[str, Any]) -> None:
    """Adds one batch of `reference_frame_stats` output (device or numpy arrays)."""
    self._chunks.append(_real_frames(stats))

  def result(self) -> dict[str, Any]:
    """{`num_frames`, `num_batches`, `batch_size`, `depth`: {`rmse`}, `seg`: {`miou`}} (`seg`
    absent when no segmentation statistics were given; None values when there are no frames)."""
    s = _concatenated(self._chunks)
    num_frames = len(s['ref_n_valid']) if s else 0
    starts = np.arange(0, num_frames, self.batch_size)
    out: dict[str, Any] = {'num_frames': num_frames, 'num_batches': len(starts), 'batch_size': self.batch_size}
    if not num_frames:
      out['depth'] = {'rmse': None}
      return out

    def batch_sum(x: np.ndarray) -> np.ndarray:  # [F, ...] -> [num_batches, ...]
      return np.add.reduceat(x.astype(np.float64), starts, axis=0)

    rmse = np.nan_to_num(np.sqrt(_ratio(batch_sum(s['ref_sum_sq_err']), batch_sum(s['ref_n_valid']))))
    out['depth'] = {'rmse': _json_float(np.mean(rmse))}
    if 'ref_tp' in s:
      tp = batch_sum(s['ref_tp'])
      iou = _ratio(tp, batch_sum(s['ref_n_pred']) + batch_sum(s['ref_n_gt']) - tp)  # [B, C]
      present = ~np.isnan(iou)
      per_batch = np.where(present.any(1), np.nansum(iou, 1) / np.maximum(present.sum(1), 1), 0.0)
      out['seg'] = {'miou': _json_float(np.mean(per_batch))}
    return out


# ------------------------------------------------------------------------------------------------
# The reference's corridor evaluation (`--protocol reference --dataset corridor`).
# ------------------------------------------------------------------------------------------------

# Its distance bins: (name, lo, hi), metres of sensor depth, [lo, hi).
CORRIDOR_REFERENCE_BINS = (('near', 0.3, 1.0), ('mid', 1.0, 2.0), ('far', 2.0, 4.0))
CORRIDOR_REGIONS = ('all', 'near', 'mid', 'far', 'top', 'bottom')
_REF_EPS = 1e-8  # the reference's guard in AbsRel and in the delta ratio


def corridor_reference_frame_stats(
    depth_pred: jax.Array,
    sensor_depth: jax.Array,
    frame_mask: jax.Array,
    *,
    min_depth: float = 0.1,
    max_depth: float = 5.0,
    bins: Sequence[tuple[str, float, float]] = CORRIDOR_REFERENCE_BINS,
) -> dict[str, jax.Array]:
  """Per-frame sums for the reference's corridor evaluation (its `eval_corridor_depth.py`; jittable).

  The reference pools over every valid pixel of the set, valid = min_depth <= sensor <= max_depth
  on the nearest-resized sensor depth (no confidence test): RMSE, MAE, AbsRel = |p - g| / (g + 1e-8),
  delta1 with ratio max(p / (g + 1e-8), g / (p + 1e-8)), for all valid pixels, per ground-truth bin,
  and for the image's top two thirds / bottom third (split at row H * 2 // 3); and it reports the
  sensor's failures (g == 0 or g > max_depth) and the prediction there.

  Args:
    depth_pred: [N, H, W] metres.
    sensor_depth: [N, H, W] the sensor depth as stored, resized by nearest neighbour (no window).
    frame_mask: [N] bool; padding frames contribute nothing.
  Returns:
    `frame_mask` [N]; per region of `CORRIDOR_REGIONS` (axis 1): `cr_sum_sq`, `cr_sum_abs`,
    `cr_sum_rel` [N, R] float32, `cr_n_delta`, `cr_n` [N, R] int32; `cr_zero`, `cr_far`,
    `cr_pixels` [N] int32; `cr_fail_sum`, `cr_fail_min`, `cr_fail_max` [N] float32 (prediction
    over failure pixels; +inf / -inf where none).
  """
  n, h, w = depth_pred.shape
  keep = frame_mask.astype(bool)[:, None, None]
  p = depth_pred.astype(jnp.float32)
  g = sensor_depth.astype(jnp.float32)
  valid = (g >= min_depth) & (g <= max_depth) & keep
  rows = jnp.arange(h)[None, :, None]
  split = h * 2 // 3
  regions = [valid] + [valid & (g >= lo) & (g < hi) for _, lo, hi in bins]
  regions += [valid & (rows < split), valid & (rows >= split)]
  m = jnp.stack(regions, axis=1)  # [N, R, H, W]
  err = (p - g)[:, None]
  ratio = jnp.maximum(p / (g + _REF_EPS), g / (p + _REF_EPS))[:, None]
  total = lambda x: jnp.sum(jnp.where(m, x, 0.0), axis=(2, 3))
  fail = ((g == 0) | (g > max_depth)) & keep
  return {
      'frame_mask': frame_mask.astype(bool),
      'cr_sum_sq': total(err * err),
      'cr_sum_abs': total(jnp.abs(err)),
      'cr_sum_rel': total(jnp.abs(err) / (g + _REF_EPS)[:, None]),
      'cr_n_delta': jnp.sum(m & (ratio < 1.25), axis=(2, 3), dtype=jnp.int32),
      'cr_n': jnp.sum(m, axis=(2, 3), dtype=jnp.int32),
      'cr_zero': jnp.sum((g == 0) & keep, axis=(1, 2), dtype=jnp.int32),
      'cr_far': jnp.sum((g > max_depth) & keep, axis=(1, 2), dtype=jnp.int32),
      'cr_pixels': jnp.where(frame_mask.astype(bool), h * w, 0).astype(jnp.int32),
      'cr_fail_sum': jnp.sum(jnp.where(fail, p, 0.0), axis=(1, 2)),
      'cr_fail_min': jnp.min(jnp.where(fail, p, jnp.inf), axis=(1, 2)),
      'cr_fail_max': jnp.max(jnp.where(fail, p, -jnp.inf), axis=(1, 2)),
  }


class CorridorReferenceAccumulator:
  """The reference's corridor evaluation from `corridor_reference_frame_stats` outputs.

  `result()`: `num_frames`; `depth` {rmse, mae, abs_rel, delta1 (a fraction; the reference prints
  percent), n_pixels} over all valid pixels; `bins` and `regions` (top, bottom) the same; `sensor`
  {pixels, valid_fraction, zero_fraction, far_fraction, failure_prediction {min, max, mean}}.
  (The reference also prints the median prediction over failure pixels; not kept here.)
  """

  def __init__(self, bins: Sequence[tuple[str, float, float]] = CORRIDOR_REFERENCE_BINS):
    self.bin_names = tuple(name for name, _, _ in bins)
    self._chunks: list[dict[str, np.ndarray]] = []

  def update(self, stats: Mapping[str, Any]) -> None:
    self._chunks.append(_real_frames(stats))

  def result(self) -> dict[str, Any]:
    s = _concatenated(self._chunks)
    num_frames = len(s['cr_n']) if s else 0
    total = lambda k: np.sum(s[k], axis=0, dtype=np.float64) if s else np.zeros(len(CORRIDOR_REGIONS))
    sq, ab, rel, nd, cnt = (total(k) for k in ('cr_sum_sq', 'cr_sum_abs', 'cr_sum_rel', 'cr_n_delta', 'cr_n'))

    def block(r: int) -> dict[str, Any]:
      return {'rmse': _json_float(np.sqrt(_ratio(sq[r], cnt[r]))), 'mae': _json_float(_ratio(ab[r], cnt[r])),
              'abs_rel': _json_float(_ratio(rel[r], cnt[r])), 'delta1': _json_float(_ratio(nd[r], cnt[r])),
              'n_pixels': int(cnt[r])}

    index = {name: i for i, name in enumerate(CORRIDOR_REGIONS)}
    pixels = int(np.sum(s['cr_pixels'], dtype=np.int64)) if s else 0
    failures = int(np.sum(s['cr_zero'], dtype=np.int64) + np.sum(s['cr_far'], dtype=np.int64)) if s else 0
    sensor = {
        'pixels': pixels,
        'valid_fraction': _json_float(_ratio(cnt[0], pixels)),
        'zero_fraction': _json_float(_ratio(np.sum(s['cr_zero']) if s else 0, pixels)),
        'far_fraction': _json_float(_ratio(np.sum(s['cr_far']) if s else 0, pixels)),
        'failure_prediction': {
            'min': _json_float(np.min(s['cr_fail_min'])) if failures else None,
            'max': _json_float(np.max(s['cr_fail_max'])) if failures else None,
            'mean': _json_float(_ratio(np.sum(s['cr_fail_sum'], dtype=np.float64), failures)) if failures else None,
        },
    }
    return {
        'num_frames': num_frames,
        'depth': block(0),
        'bins': {name: block(index[name]) for name in self.bin_names},
        'regions': {name: block(index[name]) for name in ('top', 'bottom')},
        'sensor': sensor,
    }


# ------------------------------------------------------------------------------------------------
# The reference's per-frame evaluation (`--protocol reference-frames`).
# ------------------------------------------------------------------------------------------------

def frames_reference_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
  """One frame's numbers as the reference's `run_student_evaluation.py` computes them, with its numpy
  operations on its dtypes (float32 maps), so that they are its numbers to the last bit.

  Valid pixels: 0.1 < g < 5 (m; float32 comparisons) and g not NaN; a frame with fewer than 100 is
  undefined (NaN). RMSE, MAE, AbsRel = mean(|p - g| / max(g, 0.01)), delta1 = 100 x the fraction
  with max(p / max(g, 0.01), g / max(p, 0.01)) < 1.25 (percent, as it reports).

  Args:
    pred: [H, W] float32 predicted depth, metres.
    gt: [H, W] float32 sensor depth resized by OpenCV's nearest neighbour (no window applied).
  Returns:
    {'rmse', 'mae', 'abs_rel', 'delta1', 'valid_pixels'}.
  """
  valid = (gt > 0.1) & (gt < 5.0) & ~np.isnan(gt)
  n = int(valid.sum())
  if n < MIN_VALID_PIXELS:
    return {'rmse': math.nan, 'mae': math.nan, 'abs_rel': math.nan, 'delta1': math.nan, 'valid_pixels': n}
  p, g = pred[valid], gt[valid]
  diff = np.abs(p - g)
  ratio = np.maximum(p / np.clip(g, 0.01, None), g / np.clip(p, 0.01, None))
  return {'rmse': float(np.sqrt(np.mean(diff ** 2))), 'mae': float(np.mean(diff)),
          'abs_rel': float(np.mean(diff / np.clip(g, 0.01, None))),
          'delta1': float((ratio < 1.25).mean() * 100.0), 'valid_pixels': n}


class FramesReferenceAccumulator:
  """The reference's per-frame evaluation from the eval step's `frame_mask`, `index`, `depth` and
  `gt_depth` (the whole maps, brought to the host: the numbers are computed there, in numpy, as the
  reference does; `frames_reference_metrics`).

  `result()`: `num_frames`, `num_frames_skipped` (fewer than 100 valid pixels), `depth` {rmse, mae,
  abs_rel, delta1}: the means over the other frames (delta1 a fraction: the reference's mean
  percentage / 100), `std`: their population standard deviations (the reference's `+/-`), and
  `frames`: every frame's numbers (`index`, the four metrics, `valid_pixels`; None where undefined).
  """

  def __init__(self):
    self._frames: list[dict[str, float]] = []

  def update(self, stats: Mapping[str, Any]) -> None:
    frames = _real_frames(stats)
    for index, p, g in zip(frames['index'], frames['depth'], frames['gt_depth']):
      self._frames.append({'index': int(index), **frames_reference_metrics(p, g)})

  def result(self) -> dict[str, Any]:
    counted = [f for f in self._frames if not math.isnan(f['rmse'])]
    keys = ('rmse', 'mae', 'abs_rel', 'delta1')
    scale = {'delta1': 100.0}

    def reduce(fn):
      return {k: _json_float(fn([f[k] for f in counted]) / scale.get(k, 1.0)) if counted else None for k in keys}

    return {
        'num_frames': len(self._frames),
        'num_frames_skipped': len(self._frames) - len(counted),
        'depth': reduce(np.mean),
        'std': reduce(np.std),
        'frames': [{k: (_json_float(v) if k in keys else v) for k, v in f.items()} for f in self._frames],
    }

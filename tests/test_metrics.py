"""Tests for efficientvit_jax.metrics: hand-computed cases, a numpy recomputation (BTS's compute_errors
and Long et al.'s segmentation metrics written out), sharding."""

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from efficientvit_jax import classes
from efficientvit_jax import domains
from efficientvit_jax import metrics

STATIC = ('min_depth', 'max_depth', 'num_classes', 'bins')
frame_stats = jax.jit(metrics.frame_stats, static_argnames=STATIC)
reference_frame_stats = jax.jit(metrics.reference_frame_stats, static_argnames=('num_classes',))


def _frames(pairs, shape=(4, 4), fill_pred=7.0):
  """[(g_values, p_values), ...] -> (pred, gt) [N, H, W]: the first pixels of each frame, rest gt 0."""
  n = len(pairs)
  g = np.zeros((n, shape[0] * shape[1]), np.float32)
  p = np.full((n, shape[0] * shape[1]), fill_pred, np.float32)
  for i, (gv, pv) in enumerate(pairs):
    g[i, :len(gv)] = gv
    p[i, :len(pv)] = pv
  return p.reshape(n, *shape), g.reshape(n, *shape)


def _result(pred, gt, seg_pred=None, gt_seg=None, mask=None, min_valid_pixels=1, min_depth=0.1, max_depth=10.0):
  mask = np.ones(len(pred), bool) if mask is None else mask
  acc = metrics.MetricAccumulator(min_valid_pixels=min_valid_pixels, bins=metrics.depth_bins((min_depth, max_depth)))
  acc.update(frame_stats(pred, gt, seg_pred, gt_seg, mask, min_depth=min_depth, max_depth=max_depth))
  return acc, acc.result()


def _approx(d, expected):
  for k, v in expected.items():
    if v is None:
      assert d[k] is None, k
    else:
      assert d[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k


def _by_hand(p, g):
  """The depth metrics of Eigen et al.'s set + MAE for listed (already clipped) p and g, each
  written out as its formula."""
  p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
  ratio = np.maximum(p / g, g / p)
  return dict(rmse=math.sqrt(np.mean((p - g) ** 2)), mae=np.mean(np.abs(p - g)), abs_rel=np.mean(np.abs(p - g) / g),
              sq_rel=np.mean((p - g) ** 2 / g), rmse_log=math.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)),
              log10=np.mean(np.abs(np.log10(p) - np.log10(g))),
              **{f'delta{k}': np.mean(ratio < 1.25**k) for k in (1, 2, 3)})


# Frame A: 4 valid pixels (16 = gt 20 beyond max_depth 10, rest 0). Frame B: 3 valid pixels.
A = ([1.0, 2.0, 2.0, 4.0, 20.0], [1.0, 1.0, 3.0, 2.0, 5.0])
B = ([0.5, 3.0, 5.0], [0.5, 6.0, 1.0])
A_METRICS = dict(rmse=math.sqrt(6 / 4), mae=1.0, abs_rel=0.375, sq_rel=(0 + 1 / 2 + 1 / 2 + 4 / 4) / 4,
                 rmse_log=math.sqrt((0 + math.log(2) ** 2 + math.log(1.5) ** 2 + math.log(2) ** 2) / 4),
                 log10=(0 + math.log10(2) + math.log10(1.5) + math.log10(2)) / 4, delta1=0.25, delta2=0.5, delta3=0.5)
# B: errors 0, 3, -4; ratios 1, 2, 5.
B_METRICS = dict(rmse=math.sqrt(25 / 3), mae=7 / 3, abs_rel=(0 + 1 + 0.8) / 3, sq_rel=(0 + 9 / 3 + 16 / 5) / 3,
                 rmse_log=math.sqrt((math.log(2) ** 2 + math.log(5) ** 2) / 3),
                 log10=(math.log10(2) + math.log10(5)) / 3,
                 delta1=1 / 3, delta2=1 / 3, delta3=1 / 3)
# A median-scaled: median(g) = 2 (even count), median(p) = 1.5 -> p * 4/3 = 4/3, 4/3, 4, 8/3.
A_MS = _by_hand([4 / 3, 4 / 3, 4, 8 / 3], [1, 2, 2, 4])
# B median-scaled: median(g) = 3, median(p) = 1 (odd count) -> p * 3 = 1.5, 18, 3, and 18 clipped to
# the window's 10: errors 1, 7, -2; ratios 3, 10/3, 5/3.
B_MS = _by_hand([1.5, 10.0, 3.0], [0.5, 3.0, 5.0])


def test_hand_values_are_the_formulas():
  """The hand-derived constants above agree with the formulas written out."""
  for written, (g, p) in ((A_METRICS, A), (B_METRICS, B)):
    valid = [(pv, gv) for gv, pv in zip(g, p) if gv <= 10]
    _approx(written, _by_hand([pv for pv, _ in valid], [gv for _, gv in valid]))
  assert B_MS['rmse'] == pytest.approx(math.sqrt((1 + 49 + 4) / 3))
  assert (B_MS['delta1'], B_MS['delta2'], B_MS['delta3']) == (0.0, 0.0, pytest.approx(1 / 3))


def test_depth_metrics_per_frame_and_median_scale():
  pred, gt = _frames([A, B])
  acc, _ = _result(pred, gt)
  per_frame = acc.frame_metrics()
  s = acc.stats()
  np.testing.assert_array_equal(s['n_valid'], [4, 3])
  np.testing.assert_allclose(s['median_scale'], [4 / 3, 3.0], rtol=1e-6)
  for i, (plain, ms) in enumerate([(A_METRICS, A_MS), (B_METRICS, B_MS)]):
    for k in metrics.DEPTH_METRICS:
      assert per_frame[k][i] == pytest.approx(plain[k], rel=1e-6, abs=1e-7), k
      assert per_frame['ms_' + k][i] == pytest.approx(ms[k], rel=1e-6, abs=1e-7), k


def test_frame_mean_vs_pooled_and_bins():
  pred, gt = _frames([A, B])
  _, r = _result(pred, gt)
  _approx(r['depth']['frame_mean'], {k: (A_METRICS[k] + B_METRICS[k]) / 2 for k in A_METRICS})
  _approx(r['depth']['pooled'], _by_hand([1, 1, 3, 2, 0.5, 6, 1], [1, 2, 2, 4, 0.5, 3, 5]))
  _approx(r['depth']['median_scaled']['frame_mean'], {k: (A_MS[k] + B_MS[k]) / 2 for k in A_MS})
  _approx(r['depth']['median_scaled']['pooled'],
          _by_hand([4 / 3, 4 / 3, 4, 8 / 3, 1.5, 10, 3], [1, 2, 2, 4, 0.5, 3, 5]))
  # The NYU window's bins; (g, p): 0-1: (0.5, 0.5); 1-2: (1, 1); 2-3: (2, 1), (2, 3); 3-4: (3, 6);
  # 4-6: (4, 2), (5, 1); none beyond 6 m (g = 20 is outside the window).
  bins = r['depth']['bins']
  assert list(bins) == ['0-1 m', '1-2 m', '2-3 m', '3-4 m', '4-6 m', '6-8 m', '8-10 m']
  expected = {'0-1 m': ([0.5], [0.5]), '1-2 m': ([1], [1]), '2-3 m': ([1, 3], [2, 2]), '3-4 m': ([6], [3]),
              '4-6 m': ([2, 1], [4, 5])}
  for name, (p, g) in expected.items():
    hand = _by_hand(p, g)
    _approx(bins[name], {'rmse': hand['rmse'], 'abs_rel': hand['abs_rel'], 'delta1': hand['delta1'],
                         'n_pixels': len(p)})
  assert bins['6-8 m'] == bins['8-10 m'] == {'rmse': None, 'abs_rel': None, 'delta1': None, 'n_pixels': 0}
  assert r['num_frames'] == 2 and r['num_frames_skipped'] == 0
  g_all = np.array([1, 2, 2, 4, 0.5, 3, 5])
  assert r['baselines']['mean_depth_rmse'] == pytest.approx(np.std(g_all), rel=1e-6)


@pytest.mark.parametrize('name', ['nyu', 'lilocbench', 'corridor'])
def test_depth_bins_cover_each_sets_window(name):
  """Labelled metre bins from 0 to the set's maximum depth: contiguous, and every valid depth
  (the maximum included) in exactly one of them, by frame_stats as by the bins' edges."""
  lo, hi = domains.DEPTH_WINDOWS[name]
  bins = metrics.depth_bins((lo, hi))
  assert bins[0][1] == 0.0 and bins[-1][2] == hi
  assert all(a[2] == b[1] for a, b in zip(bins, bins[1:]))
  assert all(label == f'{b_lo:g}-{b_hi:g} m' for label, b_lo, b_hi in bins)
  assert {'nyu': 7, 'lilocbench': 8, 'corridor': 5}[name] == len(bins)
  g = np.concatenate([np.linspace(lo, hi, 97), [lo, hi, 1.0, 2.0, 4.0]]).astype(np.float32)
  counts = [int(np.sum((g >= b_lo) & ((g < b_hi) | ((g == hi) & (b_hi == hi))))) for _, b_lo, b_hi in bins]
  assert sum(counts) == len(g)
  gt = g.reshape(1, 2, -1)
  stats = frame_stats(gt + 0.25, gt, None, None, np.ones(1, bool), min_depth=lo, max_depth=hi)
  np.testing.assert_array_equal(np.asarray(stats['bin_n'])[0], counts)


def test_mismatched_bins_are_refused():
  pred, gt = _frames([A])
  stats = frame_stats(pred, gt, None, None, np.ones(1, bool), min_depth=0.1, max_depth=5.0)
  with pytest.raises(ValueError, match='depth bins'):
    metrics.MetricAccumulator().update(stats)  # the NYU window's 7 bins, not the corridor's 5


def test_masked_median_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 5, size=(6, 9)).astype(np.float32)  # many ties
  mask = rng.random((6, 9)) < 0.6
  mask[0] = False
  mask[1, :4] = True
  mask[1, 4:] = False  # even count
  mask[2, :5] = True
  mask[2, 5:] = False  # odd count
  med, n = jax.jit(metrics.masked_median)(x, mask)
  for i in range(6):
    assert n[i] == mask[i].sum()
    expected = np.median(x[i][mask[i]]) if mask[i].any() else 0.0
    assert float(med[i]) == pytest.approx(expected), i


def test_skipped_frames_and_no_valid_pixels():
  gt = np.zeros((3, 10, 10), np.float32)
  gt[0] = 2.0
  gt[1].flat[:99] = 2.0
  pred = np.full((3, 10, 10), 3.0, np.float32)
  pred[1] = 4.0
  _, r = _result(pred, gt, min_valid_pixels=metrics.MIN_VALID_PIXELS)
  assert r['num_frames'] == 3 and r['num_frames_skipped'] == 2
  assert r['depth']['frame_mean']['rmse'] == pytest.approx(1.0)  # frame 0 only
  assert r['depth']['pooled']['rmse'] == pytest.approx(math.sqrt((100 + 99 * 4) / 199))
  assert r['depth']['median_scaled']['pooled']['rmse'] == pytest.approx(0.0, abs=1e-6)


def test_no_valid_depth_and_no_seg_is_explicit_and_json_safe():
  pred = np.ones((2, 4, 4), np.float32)
  gt = np.zeros((2, 4, 4), np.float32)
  gt[1] = 50.0  # beyond max_depth
  seg = np.zeros((2, 4, 4), np.int32)
  _, r = _result(pred, gt, seg, np.full_like(seg, 255))
  assert r['num_frames'] == 2 and r['num_frames_skipped'] == 2
  d = r['depth']
  for part in (d['frame_mean'], d['pooled'], d['median_scaled']['frame_mean'], d['median_scaled']['pooled']):
    assert set(part) == set(metrics.DEPTH_METRICS) and all(v is None for v in part.values())
  assert d['bins'] == {name: {'rmse': None, 'abs_rel': None, 'delta1': None, 'n_pixels': 0}
                       for name, _, _ in metrics.depth_bins((0.1, 10.0))}
  assert 'seg' not in r
  assert r['baselines'] == {'mean_depth_rmse': None, 'majority_class_miou': None}
  json.dumps(r, allow_nan=False)
  empty = metrics.MetricAccumulator().result()
  assert empty['num_frames'] == 0 and empty['depth']['pooled']['rmse'] is None
  json.dumps(empty, allow_nan=False)


def test_zero_and_negative_predictions_are_clipped_to_the_window_and_skip_median_scaling():
  # Clipped to min_depth 0.1 (the logarithms need p > 0); unclipped, p = -1 would even give
  # max(p/g, g/p) = -1 < 1.25: a "correct" pixel.
  pred = np.zeros((1, 4, 4), np.float32)
  pred[0, 0, 0] = -1.0
  gt = np.zeros((1, 4, 4), np.float32)
  gt[0, 0, :2] = [1.0, 2.0]
  acc, r = _result(pred, gt)
  _approx(r['depth']['pooled'], _by_hand([0.1, 0.1], [1.0, 2.0]))
  assert r['depth']['pooled']['delta3'] == 0.0
  assert r['depth']['median_scaled']['frame_mean']['rmse'] is None
  assert r['depth']['median_scaled']['pooled']['rmse'] is None
  assert acc.num_frames_median_skipped == 1
  json.dumps(r, allow_nan=False)


def test_predictions_beyond_the_window_are_clipped_to_its_maximum():
  pred = np.full((1, 4, 4), 30.0, np.float32)
  gt = np.full((1, 4, 4), 4.0, np.float32)
  _, r = _result(pred, gt, max_depth=5.0)
  _approx(r['depth']['pooled'], _by_hand([5.0] * 16, [4.0] * 16))


def test_segmentation_absent_classes_and_majority_baseline():
  pred = np.ones((1, 2, 3), np.float32)
  gt = np.ones((1, 2, 3), np.float32)
  gt_seg = np.array([[[0, 0, 1], [1, 1, 255]]], np.int32)
  seg_pred = np.array([[[0, 1, 1], [1, 1, 2]]], np.int32)
  acc, r = _result(pred, gt, seg_pred, gt_seg)
  iou = r['seg']['iou']
  assert list(iou) == list(classes.CLASS_NAMES)
  assert iou['floor'] == pytest.approx(0.5)  # TP 1, FN 1
  assert iou['wall'] == pytest.approx(0.75)  # TP 3, FP 1
  assert all(iou[c] is None for c in ('person', 'furniture', 'glass', 'other'))  # person only on a 255 pixel
  assert r['seg']['miou'] == pytest.approx((0.5 + 0.75) / 2)
  # Accuracy: floor 1 of 2 labelled pixels, wall 3 of 3; the others have no labelled pixel.
  accuracy = r['seg']['class_accuracy']
  assert (accuracy['floor'], accuracy['wall']) == (pytest.approx(0.5), pytest.approx(1.0))
  assert all(accuracy[c] is None for c in ('person', 'furniture', 'glass', 'other'))
  assert r['seg']['mean_class_accuracy'] == pytest.approx(0.75)
  assert r['seg']['fw_iou'] == pytest.approx((2 * 0.5 + 3 * 0.75) / 5)
  assert r['seg']['pixel_accuracy'] == pytest.approx(4 / 5)
  # majority = wall (3 of 5 labelled pixels); floor gets IoU 0 -> (3/5 + 0) / 2.
  assert r['baselines']['majority_class_miou'] == pytest.approx(0.3)
  json.dumps(r, allow_nan=False)


def test_padding_frames_contribute_nothing():
  rng = np.random.default_rng(1)
  pred, gt = rng.uniform(0.5, 5, (2, 3, 10, 10)).astype(np.float32)
  seg_pred, gt_seg = rng.integers(0, 6, (2, 3, 10, 10)).astype(np.int32)
  mask = np.array([True, True, False])
  _, padded = _result(pred, gt, seg_pred, gt_seg, mask=mask)
  _, plain = _result(pred[:2], gt[:2], seg_pred[:2], gt_seg[:2])
  _assert_close(padded, plain)
  acc = metrics.ReferenceAccumulator(batch_size=16)
  acc.update(reference_frame_stats(pred, gt, seg_pred, gt_seg, mask))
  ref = metrics.ReferenceAccumulator(batch_size=16)
  ref.update(reference_frame_stats(pred[:2], gt[:2], seg_pred[:2], gt_seg[:2], mask[:2]))
  assert acc.result() == ref.result() and acc.result()['num_frames'] == 2


def test_reference_protocol():
  # Batch 1 (frames 0, 1) and batch 2 (frame 2) with batch_size 2; fed as one update to check grouping.
  gt = np.zeros((3, 2, 3), np.float32)
  gt[0, 0] = [1.0, 2.0, 20.0]  # no upper window: 20 counts
  gt[1, 0, 0] = 1.0
  pred = np.ones((3, 2, 3), np.float32)
  gt_seg = np.full((3, 2, 3), 255, np.int32)
  gt_seg[0] = [[0, 0, 1], [1, 1, 255]]
  seg_pred = np.zeros((3, 2, 3), np.int32)
  seg_pred[0] = [[0, 1, 1], [1, 1, 2]]
  acc = metrics.ReferenceAccumulator(batch_size=2)
  acc.update(reference_frame_stats(pred, gt, seg_pred, gt_seg, np.ones(3, bool)))
  r = acc.result()
  assert r['num_frames'] == 3 and r['num_batches'] == 2
  # Batch 1 RMSE over 4 pixels: errors 0, 1, 19, 0; batch 2 has no gt > 0 -> 0 (as the reference).
  assert r['depth']['rmse'] == pytest.approx((math.sqrt(362 / 4) + 0.0) / 2)
  # Batch 1: floor I 1 U 2 + frame 1's 6 floor predictions -> 1/8; wall 3/4; person (on the 255
  # pixel) 0/1. Batch 2: floor predicted on 255 pixels only -> 0.
  assert r['seg']['miou'] == pytest.approx(((1 / 8 + 3 / 4 + 0) / 3 + 0) / 2)


def test_frames_reference_protocol():
  """Per frame over 0.1 < g < 5 (both ends excluded), >= 100 pixels, g and p clipped at 0.01 in the
  ratios; then plain means and population deviations over the counted frames (hand-computed)."""
  h, w = 12, 12
  gt = np.zeros((3, h, w), np.float32)
  pred = np.full((3, h, w), 2.0, np.float32)
  gt[0, :10] = 1.0  # 120 valid pixels: p = 2 everywhere -> |e| 1, ratio 2
  gt[0, 10, :6] = [0.1, 5.0, np.nan, 0.05, 7.0, 0.0]  # none of these counts
  gt[1, :10] = 2.5  # 120 valid pixels, half predicted 2.5
  pred[1, :5] = 2.5
  pred[1, 0, 0] = 0.0  # clipped to 0.01 in the ratio: still > 1.25
  gt[2, :8] = 1.0  # 96 valid pixels: skipped
  acc = metrics.FramesReferenceAccumulator()
  stats = {'frame_mask': np.array([True, True, True, False]), 'index': np.arange(4),
           'depth': np.concatenate([pred, pred[:1]]), 'gt_depth': np.concatenate([gt, gt[:1]])}
  acc.update(stats)
  r = acc.result()
  assert (r['num_frames'], r['num_frames_skipped']) == (3, 1)
  f0, f1, f2 = r['frames']
  assert (f0['valid_pixels'], f1['valid_pixels'], f2['valid_pixels']) == (120, 120, 96)
  assert f2['rmse'] is None and f2['index'] == 2
  _approx(f0, dict(rmse=1.0, mae=1.0, abs_rel=1.0, delta1=0.0))
  # Frame 1: 60 pixels exact (one of them predicted 0: error 2.5), 60 with error 0.5.
  e = np.array([0.0] * 59 + [2.5] + [0.5] * 60)
  _approx(f1, dict(rmse=math.sqrt(np.mean(e ** 2)), mae=np.mean(e), abs_rel=np.mean(e / 2.5), delta1=100 * 59 / 120))
  rmses, d1 = [1.0, math.sqrt(np.mean(e ** 2))], [0.0, 100 * 59 / 120]
  _approx(r['depth'], dict(rmse=np.mean(rmses), delta1=np.mean(d1) / 100))
  _approx(r['std'], dict(rmse=np.std(rmses), delta1=np.std(d1) / 100))
  json.dumps(r, allow_nan=False)
  assert metrics.FramesReferenceAccumulator().result()['depth']['rmse'] is None


def _numpy_seg(seg_pred, gt_seg, num_classes=6):
  """Long et al.'s segmentation metrics from the label maps with per-class masks (no confusion
  matrix): IoU, per-class accuracy and their means, frequency-weighted IoU, pixel accuracy."""
  labelled = gt_seg != 255
  iou, accuracy, freq = [], [], []
  for c in range(num_classes):
    gt_c, pred_c = (gt_seg == c) & labelled, (seg_pred == c) & labelled
    union = np.sum(gt_c | pred_c)
    iou.append(np.sum(gt_c & pred_c) / union if union else None)
    accuracy.append(np.sum(gt_c & pred_c) / np.sum(gt_c) if gt_c.any() else None)
    freq.append(np.sum(gt_c) / np.sum(labelled))
  return {'miou': np.mean([x for x in iou if x is not None]),
          'mean_class_accuracy': np.mean([x for x in accuracy if x is not None]),
          'fw_iou': sum(f * x for f, x in zip(freq, iou) if f > 0),
          'pixel_accuracy': np.sum((seg_pred == gt_seg) & labelled) / np.sum(labelled),
          'iou': dict(zip(classes.CLASS_NAMES, iou)), 'class_accuracy': dict(zip(classes.CLASS_NAMES, accuracy))}


def _numpy_reference(pred, gt, seg_pred, gt_seg, lo, hi, min_pixels):
  """Independent float64 recomputation of the ours-protocol numbers: BTS's compute_errors on the
  prediction clipped to the window, per frame and over the split."""
  def metric_set(p, g):
    p = np.clip(p, lo, hi)
    thresh = np.maximum(g / p, p / g)
    return dict(rmse=np.sqrt(np.mean((g - p) ** 2)), mae=np.mean(np.abs(g - p)), abs_rel=np.mean(np.abs(g - p) / g),
                sq_rel=np.mean((g - p) ** 2 / g), rmse_log=np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
                log10=np.mean(np.abs(np.log10(p) - np.log10(g))),
                **{f'delta{k}': np.mean(thresh < 1.25**k) for k in (1, 2, 3)})

  frames, ms_frames, all_p, all_g, ms_p, ms_g = [], [], [], [], [], []
  skipped = 0
  for p, g in zip(pred.astype(np.float64), gt.astype(np.float64)):
    v = (g >= lo) & (g <= hi)
    p, g = p[v], g[v]
    all_p.append(p)
    all_g.append(g)
    ok = len(p) > 0 and np.median(p) > 1e-6
    if ok:
      ms_p.append(p * np.median(g) / np.median(p))
      ms_g.append(g)
    if len(p) < min_pixels:
      skipped += 1
      continue
    frames.append(metric_set(p, g))
    if ok:
      ms_frames.append(metric_set(ms_p[-1], g))
  p, g = np.concatenate(all_p), np.concatenate(all_g)
  edges = [e for e in (0, 1, 2, 3, 4, 6, 8, 10, 15) if e < hi] + [hi]
  bins = {}
  for b_lo, b_hi in zip(edges, edges[1:]):
    b = (g >= b_lo) & ((g < b_hi) if b_hi < hi else (g <= b_hi))
    m = metric_set(p[b], g[b]) if b.any() else {}
    bins[f'{b_lo:g}-{b_hi:g} m'] = {'rmse': m.get('rmse'), 'abs_rel': m.get('abs_rel'), 'delta1': m.get('delta1'),
                                    'n_pixels': int(b.sum())}
  keys = metrics.DEPTH_METRICS
  labelled = gt_seg != 255
  conf = np.zeros((6, 6), np.int64)
  np.add.at(conf, (gt_seg[labelled], seg_pred[labelled]), 1)
  gt_counts = np.array([np.sum(gt_seg == c) for c in range(6)])
  return {
      'num_frames': len(pred), 'num_frames_skipped': skipped,
      'depth': {
          'frame_mean': {k: np.mean([f[k] for f in frames]) for k in keys},
          'pooled': metric_set(p, g),
          'median_scaled': {'frame_mean': {k: np.mean([f[k] for f in ms_frames]) for k in keys},
                            'pooled': metric_set(np.concatenate(ms_p), np.concatenate(ms_g))},
          'bins': bins,
      },
      'seg': {**_numpy_seg(seg_pred, gt_seg), 'classes': list(classes.CLASS_NAMES), 'confusion': conf.tolist()},
      'baselines': {'mean_depth_rmse': np.std(g),
                    'majority_class_miou': gt_counts.max() / gt_counts.sum() / np.count_nonzero(gt_counts)},
  }


def _assert_close(actual, expected, path=''):
  if isinstance(expected, dict):
    assert set(actual) == set(expected), path
    for k in expected:
      _assert_close(actual[k], expected[k], f'{path}.{k}')
  elif expected is None:
    assert actual is None, path
  elif isinstance(expected, list):
    assert actual == expected, path
  else:
    assert actual == pytest.approx(float(expected), rel=2e-5, abs=1e-6), path


def _random_batch(rng, n, h, w):
  gt = rng.uniform(0.2, 6.0, (n, h, w)).astype(np.float32)
  gt[rng.random((n, h, w)) < 0.3] = 0.0
  gt[1, :, :] = 0.0
  gt[1, 0, :5] = 1.5  # a frame under 100 valid pixels
  pred = (gt * rng.uniform(0.7, 1.4, gt.shape) + rng.normal(0, 0.2, gt.shape)).clip(0).astype(np.float32)
  pred[2] = 0.0  # median(p) = 0: median scaling skipped
  gt_seg = rng.integers(0, 6, (n, h, w)).astype(np.int32)
  gt_seg[gt_seg == 4] = 3  # glass never in the ground truth ...
  gt_seg[rng.random((n, h, w)) < 0.2] = 255
  seg_pred = np.where(rng.random((n, h, w)) < 0.6, gt_seg, rng.integers(0, 6, (n, h, w))).astype(np.int32)
  seg_pred[(seg_pred == 255) | (seg_pred == 4) | (seg_pred == 5)] = 0  # ... nor predicted; other never predicted
  return pred, gt, seg_pred, gt_seg


def test_jitted_path_matches_numpy_recomputation():
  rng = np.random.default_rng(2)
  pred, gt, seg_pred, gt_seg = _random_batch(rng, 6, 16, 16)
  acc = metrics.MetricAccumulator(bins=metrics.depth_bins((0.3, 5.0)))
  for sl in (slice(0, 4), slice(4, 6)):  # two updates, the second padded with two masked frames
    pad = 4 - (sl.stop - sl.start)
    args = [np.concatenate([x[sl], np.zeros_like(x[:pad])]) for x in (pred, gt, seg_pred, gt_seg)]
    mask = np.arange(4) < sl.stop - sl.start
    acc.update(frame_stats(*args, mask, min_depth=0.3, max_depth=5.0))
  r = acc.result()
  expected = _numpy_reference(pred, gt, seg_pred, gt_seg, 0.3, 5.0, metrics.MIN_VALID_PIXELS)
  assert r['num_frames_skipped'] == 1 and r['seg']['iou']['glass'] is None and r['seg']['iou']['other'] == 0.0
  _assert_close(r, expected)
  assert acc.num_frames_median_skipped == 1


SHARDED_SCRIPT = textwrap.dedent('''
  import json, sys
  import jax, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  sys.path.insert(0, sys.argv[1])
  from efficientvit_jax import metrics
  from tests.test_metrics import _random_batch

  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(3)
  n = 13
  arrays = _random_batch(rng, n, 16, 16)
  padded = [np.concatenate([x, np.zeros_like(x[:16 - n])]) for x in arrays]
  mask = np.arange(16) < n
  mesh = Mesh(np.array(jax.devices()), ('data',))
  sharded = [jax.device_put(x, NamedSharding(mesh, P('data'))) for x in (*padded, mask)]
  fn = jax.jit(lambda *a: metrics.frame_stats(*a, min_depth=0.3, max_depth=5.0))
  ref_fn = jax.jit(metrics.reference_frame_stats)
  out = {}
  for name, args in (('sharded', sharded), ('single', (*arrays, np.ones(n, bool)))):
    stats = fn(*args)
    if name == 'sharded':
      assert stats['n_valid'].sharding.spec == P('data'), stats['n_valid'].sharding
    acc = metrics.MetricAccumulator(bins=metrics.depth_bins((0.3, 5.0))); acc.update(stats)
    racc = metrics.ReferenceAccumulator(batch_size=4); racc.update(ref_fn(*args))
    out[name] = {'ours': acc.result(), 'reference': racc.result()}
  print(json.dumps(out))
''')


def test_sharded_over_mesh_matches_unsharded():
  from conftest import xla_flags  # here: the script below imports this module, without tests/ on its path

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT, root], env=env, cwd=root,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['sharded']['ours']['num_frames'] == 13
  _assert_close(out['sharded'], out['single'])

"""eval.py end to end: numbers equal an independent numpy computation from the saved predictions;
a .pt and its converted folder agree; 1 and 8 devices agree."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA
from conftest import ROOT
from conftest import random_checkpoint
from conftest import run_command
from conftest import xla_flags
from PIL import Image

from efficientvit_jax import checkpointing
from efficientvit_jax import eval as eval_script

PT = str(DATA / 'student_random.pt')
SIZE = '96x128'
# NYU40 -> 6 classes (docs/data.md), written out independently.
_SIX = np.full(41, 5)
_SIX[0] = 255
for _ids, _c in (((2, 20), 0), ((1, 8, 9, 22), 1), ((31,), 2),
                 ((3, 4, 5, 6, 7, 10, 12, 14, 15, 17, 24, 32, 33, 34, 36, 39), 3), ((19,), 4)):
  _SIX[list(_ids)] = _c


def _run(tmp_path, name, *args):
  out = tmp_path / f'{name}.json'
  assert eval_script.main([*args, '--out', str(out), '--size', SIZE, '--batch-size', '4']) == 0
  return json.loads(out.read_text()), out


WINDOWS = {'nyu': (0.1, 10.0), 'corridor': (0.1, 5.0)}  # docs/data.md#depth-windows
BINS = {'nyu': (0, 1, 2, 3, 4, 6, 8, 10), 'corridor': (0, 1, 2, 3, 4, 5)}  # docs/evaluation.md#metrics
KEYS = ('rmse', 'mae', 'abs_rel', 'sq_rel', 'rmse_log', 'log10', 'delta1', 'delta2', 'delta3')


def _errors(p, g):
  """BTS's compute_errors (and MAE) on valid pixels, p already clipped."""
  thresh = np.maximum(g / p, p / g)
  return dict(rmse=np.sqrt(np.mean((g - p) ** 2)), mae=np.mean(np.abs(g - p)), abs_rel=np.mean(np.abs(g - p) / g),
              sq_rel=np.mean((g - p) ** 2 / g), rmse_log=np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
              log10=np.mean(np.abs(np.log10(g) - np.log10(p))),
              **{f'delta{k}': np.mean(thresh < 1.25 ** k) for k in (1, 2, 3)})


def _numpy_metrics(pred_dir, dataset):
  """Every number of eval.py's JSON from the saved predictions, written independently."""
  lo, hi = WINDOWS[dataset]
  stems = sorted(f[:-len('_gt_depth.npy')] for f in os.listdir(pred_dir) if f.endswith('_gt_depth.npy'))
  frames, ms_frames, all_p, all_g, ms_p, ms_g = [], [], [], [], [], []
  conf = np.zeros((6, 6), np.int64)
  for stem in stems:
    p = np.load(pred_dir / f'{stem}_depth.npy').astype(np.float64)
    g = np.load(pred_dir / f'{stem}_gt_depth.npy').astype(np.float64)
    m = g > 0
    pv, gv = p[m], g[m]
    all_p.append(np.clip(pv, lo, hi))
    all_g.append(gv)
    if len(gv) >= 100:
      frames.append(_errors(all_p[-1], gv))
    if len(gv) and np.median(pv) > 1e-6:
      ms_p.append(np.clip(pv * np.median(gv) / np.median(pv), lo, hi))
      ms_g.append(gv)
      if len(gv) >= 100:
        ms_frames.append(_errors(ms_p[-1], gv))
    seg = np.asarray(Image.open(pred_dir / f'{stem}_seg.png')).astype(int)
    gt = np.asarray(Image.open(pred_dir / f'{stem}_gt_seg.png')).astype(int)
    keep = gt != 255
    np.add.at(conf, (gt[keep], seg[keep]), 1)
  p, g = np.concatenate(all_p), np.concatenate(all_g)
  edges = BINS[dataset]
  bins = {}
  for b_lo, b_hi in zip(edges, edges[1:]):
    b = (g >= b_lo) & ((g < b_hi) if b_hi < hi else (g <= b_hi))
    bins[f'{b_lo}-{b_hi} m'] = (_errors(p[b], g[b]) if b.any() else None, int(b.sum()))

  out = {'frame_mean': {k: np.mean([f[k] for f in frames]) for k in KEYS}, 'pooled': _errors(p, g),
         'ms_frame_mean': {k: np.mean([f[k] for f in ms_frames]) for k in KEYS},
         'ms_pooled': _errors(np.concatenate(ms_p), np.concatenate(ms_g)), 'bins': bins, 'num_frames': len(stems)}
  inter, gt_counts = np.diag(conf), conf.sum(1)
  union = conf.sum(0) + gt_counts - inter
  if union.any():
    out['seg'] = {'miou': np.mean(inter[union > 0] / union[union > 0]),
                  'mean_class_accuracy': np.mean(inter[gt_counts > 0] / gt_counts[gt_counts > 0]),
                  'fw_iou': np.sum(inter[gt_counts > 0] * gt_counts[gt_counts > 0] / union[gt_counts > 0]) / conf.sum(),
                  'pixel_accuracy': inter.sum() / conf.sum()}
  return out


@pytest.mark.parametrize('dataset,data', [('nyu', 'nyu'), ('corridor', 'corridor/manifest.jsonl')])
def test_numbers_equal_numpy_recomputation(tmp_path, synthetic_tiny, dataset, data):
  preds = tmp_path / 'preds'
  result, out = _run(tmp_path, 'r', '--checkpoint', PT, '--dataset', dataset, '--data', str(synthetic_tiny / data),
                     '--split', 'all', '--save-predictions', str(preds))
  expected = _numpy_metrics(preds, dataset)
  assert result['num_frames'] == expected['num_frames'] > 0
  depth = result['depth']
  for key in ('frame_mean', 'pooled'):
    for metric, value in expected[key].items():
      assert depth[key][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, metric)
  for key in ('frame_mean', 'pooled'):
    for metric, value in expected[f'ms_{key}'].items():
      assert depth['median_scaled'][key][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, metric)
  assert list(depth['bins']) == list(expected['bins'])
  for name, (values, n) in expected['bins'].items():
    assert depth['bins'][name]['n_pixels'] == n
    for metric in ('rmse', 'abs_rel', 'delta1'):
      assert depth['bins'][name][metric] == (None if values is None else pytest.approx(values[metric], rel=1e-5)), name
  assert ('seg' in result) == ('seg' in expected)
  for metric, value in expected.get('seg', {}).items():
    assert result['seg'][metric] == pytest.approx(value, rel=1e-6), metric
  assert set(result) >= {'dataset', 'split', 'checkpoint', 'protocol', 'num_frames', 'num_frames_skipped',
                         'depth', 'baselines'}
  assert out.with_suffix('.md').read_text().startswith('| checkpoint |')
  assert any(f.endswith('_panel.png') for f in os.listdir(preds))


@pytest.mark.e2e
def test_pt_and_converted_folder_agree(tmp_path, synthetic_tiny, reference_folder):
  args = ['--dataset', 'nyu', '--data', str(synthetic_tiny / 'nyu'), '--split', 'all']
  both, _ = _run(tmp_path, 'both', '--checkpoint', PT, '--checkpoint', str(reference_folder), *args)
  assert isinstance(both, list) and len(both) == 2
  a, b = ({k: v for k, v in r.items() if k not in ('checkpoint', 'step')} for r in both)
  assert a == b


def _reference_batch_metrics(pred, gt, seg_pred, gt_seg, num_classes=6):
  """The reference train.py's `compute_metrics` of one validation batch, in numpy: RMSE over gt > 0
  pooled over the batch; per class IoU = |pred = c & gt = c| / |pred = c | gt = c| over all pixels
  (255 counted as no class), mean over classes with a non-empty union."""
  valid = gt > 0
  rmse = float(np.sqrt(np.mean((pred[valid] - gt[valid]) ** 2))) if valid.any() else 0.0
  ious = [np.sum((seg_pred == c) & (gt_seg == c)) / np.sum((seg_pred == c) | (gt_seg == c))
          for c in range(num_classes) if np.sum((seg_pred == c) | (gt_seg == c))]
  return rmse, float(np.mean(ious)) if ious else 0.0


@pytest.mark.e2e
def test_reference_protocol(tmp_path, synthetic_tiny):
  """The reference's NYU validation recomputed from its loader's description: ground-truth depth
  `Image.fromarray(depth).resize((W, H), Image.BILINEAR)` (PIL, antialiased), labels the SAM2
  teacher's resized by PIL's nearest, then its batch metrics (one batch of 16 holds all 5 frames)."""
  preds = tmp_path / 'preds'
  result, out = _run(tmp_path, 'ref', '--checkpoint', PT, '--dataset', 'nyu', '--data', str(synthetic_tiny / 'nyu'),
                     '--split', 'all', '--protocol', 'reference', '--save-predictions', str(preds))
  assert result['protocol'] == 'reference' and result['num_frames'] == 5
  h, w = (int(v) for v in SIZE.split('x'))
  nyu = synthetic_tiny / 'nyu'
  lines = (nyu / 'teacher' / 'manifest.jsonl').read_text().splitlines()
  teacher = {json.loads(line)['stem']: json.loads(line) for line in lines}
  stems = sorted(f[:-len('_gt_depth.npy')] for f in os.listdir(preds) if f.endswith('_gt_depth.npy'))
  pred, gt, seg_pred, gt_seg = [], [], [], []
  for stem in stems:
    frame = stem.split('_')[1]
    depth = np.load(nyu / 'nyu_cache' / 'depth' / f'{frame}.npy')
    gt.append(np.array(Image.fromarray(depth).resize((w, h), Image.BILINEAR), dtype=np.float32))
    sam2 = teacher.get(frame, {}).get('sam2_seg')  # else the reference falls back to the human labels
    labels = (np.load(nyu / 'teacher' / sam2) if sam2 else _SIX[np.load(nyu / 'nyu_cache' / 'seg' / f'{frame}.npy')])
    labels = labels.astype(np.int32)
    gt_seg.append(np.array(Image.fromarray(labels).resize((w, h), Image.NEAREST)))
    pred.append(np.load(preds / f'{stem}_depth.npy'))
    seg_pred.append(np.asarray(Image.open(preds / f'{stem}_seg.png')).astype(np.int32))
    np.testing.assert_array_equal(np.load(preds / f'{stem}_gt_depth.npy'), gt[-1])  # as used
  rmse, miou = _reference_batch_metrics(*(np.stack(x) for x in (pred, gt, seg_pred, gt_seg)))
  assert result['depth']['rmse'] == pytest.approx(rmse, rel=1e-6)
  assert result['seg']['miou'] == pytest.approx(miou, rel=1e-12)
  assert 'PIL\'s antialiased bilinear' in out.with_suffix('.md').read_text()


def _student_evaluation(frames, size):
  """The reference's run_student_evaluation.py on our predictions: per frame the sensor depth resized
  by OpenCV's nearest (source index floor(i * n_in / n_out)), valid 0.1 < g < 5 and not NaN, at least
  100 valid pixels; RMSE, MAE, AbsRel with g clipped at 0.01, delta1 in percent; means over frames."""
  h, w = size
  rows = []
  for depth_file, pred in frames:
    sensor = np.load(depth_file)
    ys, xs = np.arange(h) * sensor.shape[0] // h, np.arange(w) * sensor.shape[1] // w
    g = sensor[ys][:, xs]
    valid = (g > 0.1) & (g < 5.0) & ~np.isnan(g)
    if valid.sum() < 100:
      rows.append(None)
      continue
    p, g = pred[valid], g[valid]
    diff = np.abs(p - g)
    ratio = np.maximum(p / np.clip(g, 0.01, None), g / np.clip(p, 0.01, None))
    rows.append({'rmse': float(np.sqrt(np.mean(diff ** 2))), 'mae': float(np.mean(diff)),
                 'abs_rel': float(np.mean(diff / np.clip(g, 0.01, None))),
                 'delta1': float((ratio < 1.25).mean() * 100.0), 'valid_pixels': int(valid.sum())})
  counted = [r for r in rows if r]
  means = {k: float(np.mean([r[k] for r in counted])) for k in ('rmse', 'mae', 'abs_rel', 'delta1')}
  return rows, means


@pytest.mark.e2e
@pytest.mark.parametrize('dataset', ['corridor', 'nyu'])
def test_reference_frames_protocol(tmp_path, synthetic_tiny, dataset):
  preds = tmp_path / 'preds'
  data = synthetic_tiny / dataset
  result, out = _run(tmp_path, 'frames', '--checkpoint', PT, '--dataset', dataset, '--data', str(data),
                     '--split', 'all', '--protocol', 'reference-frames', '--save-predictions', str(preds))
  if dataset == 'corridor':  # the frames folder the reference reads: rgb/<stem>.png, depth/<stem>.npy
    lines = [json.loads(line) for line in (data / 'manifest.jsonl').read_text().splitlines()]
    depth_file = lambda i: data / lines[i]['sensor_depth']
  else:
    depth_file = lambda i: data / 'nyu_cache' / 'depth' / f'{i:05d}.npy'
  stems = [f'{dataset}_{r["index"]:05d}' for r in result['frames']]
  frames = [(depth_file(r['index']), np.load(preds / f'{stem}_depth.npy')) for r, stem in zip(result['frames'], stems)]
  rows, means = _student_evaluation(frames, tuple(int(v) for v in SIZE.split('x')))
  assert result['num_frames'] == len(rows) and result['num_frames_skipped'] == rows.count(None)
  assert rows.count(None) < len(rows)
  for ours, ref in zip(result['frames'], rows):
    if ref is None:
      assert ours['rmse'] is None
    else:
      assert {k: ours[k] for k in ref} == ref  # to the last bit
  for k, v in means.items():
    assert result['depth'][k] * (100.0 if k == 'delta1' else 1.0) == pytest.approx(v, rel=1e-14, abs=1e-14)
  assert 'Reference per-frame protocol' in out.with_suffix('.md').read_text()


@pytest.mark.e2e
def test_eight_devices_agree_with_one(tmp_path, synthetic_tiny):
  """7 LILocBench frames in batches of 8: the last batch is padded, sharded over 8 devices."""
  args = ['--checkpoint', PT, '--dataset', 'lilocbench', '--data', str(synthetic_tiny / 'lilocbench'),
          '--split', 'all', '--size', SIZE, '--batch-size', '8']
  one = tmp_path / 'one.json'
  assert eval_script.main([*args, '--out', str(one)]) == 0
  eight = tmp_path / 'eight.json'
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS='cpu')
  cache = tmp_path / 'xla'
  proc = subprocess.run([sys.executable, 'eval.py', *args, '--out', str(eight), '--compilation-cache', str(cache)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert any(cache.iterdir())  # the persistent compilation cache holds the compiled evaluation step
  a, b = json.loads(one.read_text()), json.loads(eight.read_text())
  assert a['num_frames'] == b['num_frames'] == 7

  def close(x, y):
    if isinstance(x, dict):
      assert x.keys() == y.keys()
      for k in x:
        close(x[k], y[k])
    elif isinstance(x, float):
      assert x == pytest.approx(y, rel=1e-5, abs=1e-7)
    else:
      assert x == y

  close(a, b)


def test_bad_arguments(tmp_path, synthetic_tiny, capsys):
  assert eval_script.main(['--checkpoint', str(tmp_path / 'none'), '--dataset', 'nyu', '--data',
                           str(synthetic_tiny / 'nyu'), '--out', str(tmp_path / 'x.json')]) == 2
  assert 'none' in capsys.readouterr().err
  assert eval_script.main(['--checkpoint', PT, '--dataset', 'corridor', '--data', str(tmp_path),
                           '--out', str(tmp_path / 'x.json')]) == 2
  assert 'manifest' in capsys.readouterr().err
  assert not (tmp_path / 'x.json').exists()


@pytest.mark.e2e
@pytest.mark.parametrize('case', ['out_read_only', 'predictions_read_only', 'batch_size_0', 'out_is_a_folder',
                                  'absurd_size'])
def test_command_line_refusals_before_the_evaluation(tmp_path, synthetic_tiny, read_only_dir, case):
  """Exit 2 and one line naming the flag; the checkpoint named does not exist, so each refusal
  came before anything was loaded or evaluated, and nothing was written."""
  out = tmp_path / 'r.json'
  argv = {'--checkpoint': tmp_path / 'none.pt', '--dataset': 'nyu', '--data': synthetic_tiny / 'nyu', '--out': out}
  extra, expect = {
      'out_read_only': ({'--out': read_only_dir / 'r.json'}, f'cannot write --out: {read_only_dir}'),
      'predictions_read_only': ({'--save-predictions': read_only_dir / 'p'}, 'cannot write --save-predictions'),
      'batch_size_0': ({'--batch-size': '0'}, '--batch-size must be at least 1, got 0'),
      'out_is_a_folder': ({'--out': tmp_path, '--overwrite': None}, 'is a folder; give the JSON file'),
      'absurd_size': ({'--size': '240x99999'}, '--size: each side must be at most 4096'),
  }[case]
  argv.update(extra)
  _, line = run_command(['eval.py', *[x for kv in argv.items() for x in kv if x is not None]], 2)
  assert expect in line, line
  assert not out.exists() and not any(read_only_dir.iterdir())


@pytest.mark.e2e
def test_checkpoint_size_and_backbone_are_the_defaults(tmp_path, synthetic_tiny, capsys):
  """A MobileNetV3-Small checkpoint of a model trained at 96x128 is evaluated, predicted and exported
  at 96x128 without --size (said on the console); --size still overrides. (That training records
  both in the checkpoint is tests/test_train.py's; here the checkpoint is written directly.)"""
  from efficientvit_jax import export
  from efficientvit_jax import predict

  workdir = tmp_path / 'run'
  checkpointing.write_folder(workdir, random_checkpoint('mobilenet_v3_small', step=1, epoch=0, input_size=[96, 128]))
  args = ['--checkpoint', str(workdir), '--dataset', 'nyu', '--data', str(synthetic_tiny / 'nyu'), '--split', 'all',
          '--batch-size', '4']
  assert eval_script.main([*args, '--out', str(tmp_path / 'a.json')]) == 0
  line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith(str(workdir)))
  assert 'mobilenet_v3_small, input 96x128 (the training input size recorded in the checkpoint' in line
  result = json.loads((tmp_path / 'a.json').read_text())
  assert result['input_size'] == [96, 128] and result['backbone'] == 'mobilenet_v3_small'
  assert eval_script.main([*args, '--size', '64x96', '--out', str(tmp_path / 'b.json')]) == 0
  assert 'input 64x96 (from --size; trained at 96x128)' in capsys.readouterr().out
  assert json.loads((tmp_path / 'b.json').read_text())['input_size'] == [64, 96]

  assert predict.load(workdir).size == (96, 128) and predict.load(workdir).backbone == 'mobilenet_v3_small'
  image = tmp_path / 'frame.png'
  Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(image)
  assert predict.main(['--checkpoint', str(workdir), '--out', str(tmp_path / 'pred'), str(image)]) == 0
  assert 'input 96x128' in capsys.readouterr().out
  assert np.load(tmp_path / 'pred' / 'frame_depth.npy').shape == (96, 128)
  assert export.main(['--checkpoint', str(workdir), '--format', 'stablehlo', '--out', str(tmp_path / 'm.bin')]) == 0
  assert 'image [1, 96, 128, 3] uint8' in capsys.readouterr().out

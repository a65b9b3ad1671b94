"""eval.py end to end: numbers equal an independent numpy computation from the saved predictions;
a .pt and its converted folder agree; 1 and 8 devices agree."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import eval as eval_script
from conftest import DATA, ROOT

PT = str(DATA / 'student_random.pt')
SIZE = '96x128'


def _run(tmp_path, name, *args):
  out = tmp_path / f'{name}.json'
  assert eval_script.main([*args, '--out', str(out), '--size', SIZE, '--batch-size', '4']) == 0
  return json.loads(out.read_text()), out


def _numpy_metrics(pred_dir, dataset):
  """Every number of eval.py's JSON from the saved predictions, written independently."""
  stems = sorted(f[:-len('_gt_depth.npy')] for f in os.listdir(pred_dir) if f.endswith('_gt_depth.npy'))
  frames, pooled, ms_frames, ms_pooled = [], [], [], []
  bins = {'near': [], 'mid': [], 'far': []}
  conf = np.zeros((6, 6), np.int64)
  for stem in stems:
    p = np.load(pred_dir / f'{stem}_depth.npy').astype(np.float64)
    g = np.load(pred_dir / f'{stem}_gt_depth.npy').astype(np.float64)
    m = g > 0
    pv, gv = p[m], g[m]

    def metrics(pv, gv):
      ratio = np.maximum(np.maximum(pv, 1e-6) / gv, gv / np.maximum(pv, 1e-6))
      return np.array([np.sum((pv - gv) ** 2), np.sum(np.abs(pv - gv)), np.sum(np.abs(pv - gv) / gv),
                       *(np.sum(ratio < 1.25 ** k) for k in (1, 2, 3)), len(gv)])

    sums = metrics(pv, gv)
    pooled.append(sums)
    if len(gv) >= 100:
      frames.append(sums)
    if len(gv) and np.median(pv) > 1e-6:
      s = metrics(pv * np.median(gv) / np.median(pv), gv)
      ms_pooled.append(s)
      if len(gv) >= 100:
        ms_frames.append(s)
    for name, lo, hi in (('near', 0.3, 1.0), ('mid', 1.0, 2.0), ('far', 2.0, 4.0)):
      b = (gv >= lo) & (gv < hi)
      bins[name].append((np.sum((pv[b] - gv[b]) ** 2), b.sum()))
    seg = np.asarray(Image.open(pred_dir / f'{stem}_seg.png')).astype(int)
    gt = np.asarray(Image.open(pred_dir / f'{stem}_gt_seg.png')).astype(int)
    keep = gt != 255
    np.add.at(conf, (gt[keep], seg[keep]), 1)

  def finish(rows, per_frame):
    rows = np.array(rows)
    if per_frame:
      vals = np.stack([np.sqrt(rows[:, 0] / rows[:, 6]), rows[:, 1] / rows[:, 6], rows[:, 2] / rows[:, 6],
                       *(rows[:, k] / rows[:, 6] for k in (3, 4, 5))], 1).mean(0)
    else:
      t = rows.sum(0)
      vals = [np.sqrt(t[0] / t[6]), t[1] / t[6], t[2] / t[6], t[3] / t[6], t[4] / t[6], t[5] / t[6]]
    return dict(zip(('rmse', 'mae', 'abs_rel', 'delta1', 'delta2', 'delta3'), vals))

  out = {'frame_mean': finish(frames, True), 'pooled': finish(pooled, False),
         'ms_frame_mean': finish(ms_frames, True), 'ms_pooled': finish(ms_pooled, False),
         'bins': {k: np.sqrt(sum(a for a, _ in v) / max(sum(n for _, n in v), 1)) for k, v in bins.items()},
         'num_frames': len(stems)}
  inter = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - inter
  out['miou'] = np.mean(inter[union > 0] / union[union > 0]) if union.any() else None
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
  for name, value in expected['bins'].items():
    if depth['bins'][name]['n_pixels']:
      assert depth['bins'][name]['rmse'] == pytest.approx(value, rel=1e-5)
  if expected['miou'] is not None:
    assert result['seg']['miou'] == pytest.approx(expected['miou'], rel=1e-6)
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


@pytest.mark.e2e
def test_reference_protocol(tmp_path, synthetic_tiny):
  preds = tmp_path / 'preds'
  result, _ = _run(tmp_path, 'ref', '--checkpoint', PT, '--dataset', 'nyu', '--data', str(synthetic_tiny / 'nyu'),
                   '--split', 'all', '--protocol', 'reference', '--save-predictions', str(preds))
  assert result['protocol'] == 'reference'
  # One batch of 16 holds all 5 frames: the pooled RMSE over gt > 0 of that batch.
  sq = n = 0
  for f in sorted(os.listdir(preds)):
    if f.endswith('_gt_depth.npy'):
      g = np.load(preds / f)
      p = np.load(preds / f.replace('_gt_depth', '_depth'))
      sq += np.sum((p[g > 0] - g[g > 0]) ** 2)
      n += np.sum(g > 0)
  assert result['depth']['rmse'] == pytest.approx(np.sqrt(sq / n), rel=1e-5)
  assert 0 <= result['seg']['miou'] <= 1


@pytest.mark.e2e
def test_eight_devices_agree_with_one(tmp_path, synthetic_tiny):
  """7 LILocBench frames in batches of 8: the last batch is padded, sharded over 8 devices."""
  args = ['--checkpoint', PT, '--dataset', 'lilocbench', '--data', str(synthetic_tiny / 'lilocbench'),
          '--split', 'all', '--size', SIZE, '--batch-size', '8']
  one = tmp_path / 'one.json'
  assert eval_script.main([*args, '--out', str(one)]) == 0
  eight = tmp_path / 'eight.json'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
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
def test_checkpoint_size_and_backbone_are_the_defaults(tmp_path, synthetic_tiny, capsys):
  """A MobileNetV3-Small model trained at 96x128 is evaluated, predicted and exported at 96x128
  without --size (said on the console); --size still overrides."""
  from configs import quickstart
  from efficientvit_jax import export, predict, train_loop

  config = quickstart.get_config()
  config.model.backbone = 'mobilenet_v3_small'
  config.data.root = str(synthetic_tiny)
  config.data.input_size = (96, 128)
  config.data.eval_sets = ()
  config.data.num_threads = 2
  config.batch_size = 2
  config.num_train_steps = 1
  workdir = tmp_path / 'run'
  train_loop.train_and_evaluate(config, workdir)
  capsys.readouterr()
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

"""eval.py's report: per-class IoU, pixel accuracy and the confusion matrix in the table and JSON,
the pictures, `--compare`, and the reference's corridor evaluation recomputed as its script does."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, run_command
from efficientvit_jax import eval as eval_script

PT = str(DATA / 'student_random.pt')


@pytest.fixture(scope='module')
def nyu_result(tmp_path_factory, synthetic_tiny):
  out = tmp_path_factory.mktemp('report') / 'nyu.json'
  assert eval_script.main(['--checkpoint', PT, '--dataset', 'nyu', '--data', str(synthetic_tiny / 'nyu'),
                           '--split', 'all', '--size', '96x128', '--batch-size', '4', '--out', str(out)]) == 0
  return out


def test_report_has_per_class_iou_pixel_accuracy_confusion_and_pictures(nyu_result):
  result = json.loads(nyu_result.read_text())
  seg = result['seg']
  conf = np.array(seg['confusion'])
  assert conf.shape == (6, 6) and conf.sum() > 0 and seg['classes'][0] == 'floor'
  assert seg['pixel_accuracy'] == pytest.approx(np.trace(conf) / conf.sum())
  tp = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - tp
  for c, name in enumerate(seg['classes']):
    assert seg['iou'][name] == (pytest.approx(tp[c] / union[c]) if union[c] else None)
  table = nyu_result.with_suffix('.md').read_text().splitlines()
  head = [c.strip() for c in table[0].strip('|').split('|')]
  row = [c.strip() for c in table[2].strip('|').split('|')]
  assert len(row) == len(head) and {'pixel acc.', 'IoU floor', 'IoU other', 'mIoU'} <= set(head)
  assert row[head.index('pixel acc.')] == f"{100 * seg['pixel_accuracy']:.1f}"
  for name in ('confusion', 'depth_bins'):
    with Image.open(nyu_result.with_name(f'nyu_{name}.png')) as img:
      assert img.size[0] > 200 and np.asarray(img).std() > 0


def test_compare_prints_one_table_of_both(tmp_path, nyu_result, capsys):
  other = json.loads(nyu_result.read_text())
  other['depth']['frame_mean']['rmse'] = 0.123
  b = tmp_path / 'b.json'
  b.write_text(json.dumps([other, other]))
  capsys.readouterr()
  assert eval_script.main(['--compare', str(nyu_result), str(b)]) == 0
  lines = capsys.readouterr().out.splitlines()
  rows = [line for line in lines if line.startswith('| ') and not line.startswith('| result')]
  assert [r.split('|')[1].strip() for r in rows] == ['nyu', 'b: student_random.pt', 'b: student_random.pt',
                                                     'baseline: mean depth / majority class']
  assert '0.123' in rows[1] and '0.123' not in rows[0]
  assert eval_script.main(['--compare', str(nyu_result), str(tmp_path / 'missing.json')]) == 2
  assert 'missing.json' in capsys.readouterr().err
  (tmp_path / 'bad.json').write_text('{"x": 1}')
  assert eval_script.main(['--compare', str(tmp_path / 'bad.json')]) == 2
  assert 'bad.json: not an eval.py result' in capsys.readouterr().err


def _reference_corridor(manifest, preds, stems, size, min_depth=0.1, max_depth=5.0):
  """The reference's eval_corridor_depth.py computation, from its description, on our predictions."""
  h, w = size
  entries = [json.loads(line) for line in manifest.read_text().splitlines()]
  all_pred, all_gt = [], []
  for entry, stem in zip(entries, stems):
    sensor = np.load(manifest.parent / entry['sensor_depth']).astype(np.float32)  # the key it reads
    all_gt.append(np.array(Image.fromarray(sensor).resize((w, h), Image.NEAREST), dtype=np.float32))
    all_pred.append(np.load(preds / f'{stem}_depth.npy'))
  all_pred, all_gt = np.array(all_pred), np.array(all_gt)
  valid = (all_gt >= min_depth) & (all_gt <= max_depth)

  def metrics(mask):
    p, g = all_pred[mask], all_gt[mask]
    if not len(p):
      return {'n_pixels': 0}
    ratio = np.maximum(p / (g + 1e-8), g / (p + 1e-8))
    return {'rmse': float(np.sqrt(np.mean((p - g) ** 2))), 'mae': float(np.mean(np.abs(p - g))),
            'abs_rel': float(np.mean(np.abs(p - g) / (g + 1e-8))), 'delta1': float(np.mean(ratio < 1.25)),
            'n_pixels': int(len(p))}

  top = np.zeros_like(valid)
  top[:, :h * 2 // 3] = True
  failure = (all_gt == 0) | (all_gt > max_depth)
  return {'depth': metrics(valid),
          'bins': {n: metrics(valid & (all_gt >= lo) & (all_gt < hi))
                   for n, lo, hi in (('near', 0.3, 1.0), ('mid', 1.0, 2.0), ('far', 2.0, 4.0))},
          'regions': {'top': metrics(valid & top), 'bottom': metrics(valid & ~top)},
          'zero_fraction': float(np.mean(all_gt == 0)), 'far_fraction': float(np.mean(all_gt > max_depth)),
          'failure_mean': float(all_pred[failure].mean())}


def test_reference_corridor_protocol_equals_its_script(tmp_path, synthetic_tiny):
  preds, out = tmp_path / 'preds', tmp_path / 'corridor.json'
  assert eval_script.main(['--checkpoint', PT, '--dataset', 'corridor', '--data', str(synthetic_tiny / 'corridor'),
                           '--protocol', 'reference', '--split', 'all', '--size', '96x128', '--batch-size', '4',
                           '--out', str(out), '--save-predictions', str(preds)]) == 0
  result = json.loads(out.read_text())
  manifest = synthetic_tiny / 'corridor' / 'manifest.jsonl'
  n = len(manifest.read_text().splitlines())
  assert result['num_frames'] == n and result['protocol'] == 'reference'
  expected = _reference_corridor(manifest, preds, [f'corridor_{i:05d}' for i in range(n)], (96, 128))
  assert expected['depth']['n_pixels'] > 0 and expected['zero_fraction'] > 0

  def close(ours, ref):
    assert ours['n_pixels'] == ref['n_pixels']
    for k in ('rmse', 'mae', 'abs_rel', 'delta1'):
      if ref['n_pixels']:
        assert ours[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-7), k

  close(result['depth'], expected['depth'])
  for group in ('bins', 'regions'):
    for name, ref in expected[group].items():
      close(result[group][name], ref)
  assert result['sensor']['zero_fraction'] == pytest.approx(expected['zero_fraction'])
  assert result['sensor']['far_fraction'] == pytest.approx(expected['far_fraction'])
  assert result['sensor']['failure_prediction']['mean'] == pytest.approx(expected['failure_mean'], rel=1e-5)
  notes = out.with_suffix('.md').read_text().split('\n\n', 1)[1]
  assert 'Reference corridor protocol' in notes and 'pooled over all pixels' in notes
  assert 'means over frames with' not in notes  # the default protocol's note would be wrong here


def test_compare_refuses_hand_edited_results_naming_the_key(tmp_path, nyu_result):
  """`--compare` on results edited by hand: each refused naming the file and the key."""
  good = json.loads(nyu_result.read_text())
  edits = {
      'depth.frame_mean.rmse': (lambda r: r['depth']['frame_mean'].update(rmse='0.5'), "must be a number or null, got '0.5'"),
      'depth': (lambda r: r.update(depth=[1, 2]), 'depth must be an object'),
      'depth.median_scaled': (lambda r: r['depth'].update(median_scaled=3), 'depth.median_scaled must be an object'),
      'seg': (lambda r: r.update(seg='none'), 'seg must be an object'),
      'seg.iou.floor': (lambda r: r['seg']['iou'].update(floor=[1]), 'seg.iou.floor must be a number or null'),
      'seg.classes': (lambda r: r['seg'].update(classes='floor'), 'seg.classes must be a list of class names'),
      'num_frames': (lambda r: r.update(num_frames='5'), "num_frames must be an integer, got '5'"),
      'dataset': (lambda r: r.update(dataset=None), 'dataset must be a string'),
      'baselines': (lambda r: r.update(baselines={'mean_depth_rmse': True}), 'baselines.mean_depth_rmse must be'),
  }
  for key, (edit, expect) in edits.items():
    result = json.loads(json.dumps(good))
    edit(result)
    path = tmp_path / f'{key}.json'
    path.write_text(json.dumps(result))
    table, errors = eval_script.compare([str(nyu_result), str(path)])
    assert not table and len(errors) == 1 and errors[0].startswith(f'{path}: ') and expect in errors[0], (key, errors)
  # Values left out (null) or absent are shown as '—'.
  result = json.loads(json.dumps(good))
  result['depth']['frame_mean']['mae'] = None
  del result['seg']['miou']
  (tmp_path / 'sparse.json').write_text(json.dumps(result))
  table, errors = eval_script.compare([str(tmp_path / 'sparse.json')])
  assert not errors and '—' in table


@pytest.mark.e2e
def test_compare_command_line_on_a_hand_edited_result(tmp_path, nyu_result):
  result = json.loads(nyu_result.read_text())
  result['depth']['frame_mean']['rmse'] = '0.5'
  path = tmp_path / 'edited.json'
  path.write_text(json.dumps(result))
  proc, line = run_command(['eval.py', '--compare', nyu_result, path], 2)
  assert line == f"error: {path}: depth.frame_mean.rmse must be a number or null, got '0.5'" and not proc.stdout

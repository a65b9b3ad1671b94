"""eval.py's report: the depth and segmentation metrics of the field, per class and by distance, in
the tables and JSON; the pictures, `--compare`, and the reference's corridor evaluation recomputed
as its script does."""

import json

import numpy as np
import pytest
from conftest import DATA
from conftest import run_command
from PIL import Image

from efficientvit_jax import eval as eval_script

PT = str(DATA / 'student_random.pt')


@pytest.fixture(scope='module')
def nyu_result(tmp_path_factory, synthetic_tiny):
  out = tmp_path_factory.mktemp('report') / 'nyu.json'
  assert eval_script.main(['--checkpoint', PT, '--dataset', 'nyu', '--data', str(synthetic_tiny / 'nyu'),
                           '--split', 'all', '--size', '96x128', '--batch-size', '4', '--out', str(out)]) == 0
  return out


def _tables(text):
  """The Markdown tables of a report: [(header cells, rows of cells)], in order."""
  tables = []
  for block in text.split('\n\n'):
    lines = [line for line in block.splitlines() if line.startswith('|')]
    if lines:
      cells = [[c.strip() for c in line.strip('|').split('|')] for line in lines]
      tables.append((cells[0], cells[2:]))
  return tables


def test_report_has_the_fields_metrics_confusion_and_pictures(nyu_result):
  result = json.loads(nyu_result.read_text())
  seg = result['seg']
  conf = np.array(seg['confusion'])
  assert conf.shape == (6, 6) and conf.sum() > 0 and seg['classes'][0] == 'floor'
  tp, labelled = np.diag(conf), conf.sum(1)
  union = conf.sum(0) + labelled - tp
  assert seg['pixel_accuracy'] == pytest.approx(tp.sum() / conf.sum())
  for c, name in enumerate(seg['classes']):
    assert seg['iou'][name] == (pytest.approx(tp[c] / union[c]) if union[c] else None)
    assert seg['class_accuracy'][name] == (pytest.approx(tp[c] / labelled[c]) if labelled[c] else None)
  present = labelled > 0
  assert seg['mean_class_accuracy'] == pytest.approx(np.mean(tp[present] / labelled[present]))
  assert seg['fw_iou'] == pytest.approx(np.sum(labelled[present] / labelled.sum() * tp[present] / union[present]))
  (head, rows), (class_head, class_rows), (bin_head, bin_rows) = _tables(nyu_result.with_suffix('.md').read_text())
  row = rows[0]
  assert head[0] == 'checkpoint' and len(row) == len(head)
  assert {'AbsRel', 'SqRel', 'RMSE', 'RMSE log', 'log10', 'δ1', 'δ2', 'δ3', 'mIoU', 'mean class acc.', 'fwIoU',
          'pixel acc.'} <= set(head)
  fm = result['depth']['frame_mean']
  for column, key in (('AbsRel', 'abs_rel'), ('SqRel', 'sq_rel'), ('RMSE log', 'rmse_log'), ('log10', 'log10')):
    assert row[head.index(column)] == f'{fm[key]:.3f}', column
  assert row[head.index('δ3')] == f"{100 * fm['delta3']:.1f}"
  for column, key in (('pixel acc.', 'pixel_accuracy'), ('mean class acc.', 'mean_class_accuracy'),
                      ('fwIoU', 'fw_iou')):
    assert row[head.index(column)] == f'{100 * seg[key]:.1f}', column
  assert rows[1][0] == 'baseline: mean depth / majority class'
  assert class_head[2:] == [f'IoU {c}' for c in seg['classes']] + [f'acc. {c}' for c in seg['classes']]
  assert class_rows[0][class_head.index('acc. wall')] == f"{100 * seg['class_accuracy']['wall']:.1f}"
  # Depth by distance: the NYU window's bins, 0 to 10 m.
  assert [r[bin_head.index('distance')] for r in bin_rows] == list(result['depth']['bins']) == [
      '0-1 m', '1-2 m', '2-3 m', '3-4 m', '4-6 m', '6-8 m', '8-10 m']
  for name, values in result['depth']['bins'].items():
    r = next(r for r in bin_rows if r[bin_head.index('distance')] == name)
    assert r[bin_head.index('pixels')] == f"{values['n_pixels']:,}"
    assert r[bin_head.index('RMSE')] == ('—' if values['rmse'] is None else f"{values['rmse']:.3f}")
  for name in ('confusion', 'depth_bins'):
    with Image.open(nyu_result.with_name(f'nyu_{name}.png')) as img:
      assert img.size[0] > 200 and np.asarray(img).std() > 0


def test_sets_without_labels_have_no_segmentation_columns(nyu_result):
  """A result without segmentation (a set without labels): no segmentation column and no per-class
  table; beside a labelled one, the per-class table holds the labelled result only."""
  labelled = json.loads(nyu_result.read_text())
  depth_only = json.loads(nyu_result.read_text())
  del depth_only['seg']
  depth_only['baselines']['majority_class_miou'] = None
  tables = _tables(eval_script.markdown_table([depth_only], ['depth only']))
  assert len(tables) == 2  # the main table and the distance bins
  head, rows = tables[0]
  assert not {'mIoU', 'mean class acc.', 'fwIoU', 'pixel acc.'} & set(head)
  assert rows[1][0] == 'baseline: mean depth' and len(rows[1]) == len(head)
  assert not any(c.startswith(('IoU', 'acc.')) for c in tables[1][0])
  tables = _tables(eval_script.markdown_table([depth_only, labelled], ['depth only', 'labelled']))
  (head, rows), (class_head, class_rows) = tables[:2]
  assert rows[0][head.index('mIoU')] == '—' and rows[1][head.index('mIoU')] != '—'
  assert [r[0] for r in class_rows] == ['labelled'] and class_head[2] == 'IoU floor'


def test_compare_prints_one_table_of_both(tmp_path, nyu_result, capsys):
  other = json.loads(nyu_result.read_text())
  other['depth']['frame_mean']['rmse'] = 0.123
  b = tmp_path / 'b.json'
  b.write_text(json.dumps([other, other]))
  capsys.readouterr()
  assert eval_script.main(['--compare', str(nyu_result), str(b)]) == 0
  (head, rows), (_, class_rows), (_, bin_rows) = _tables(capsys.readouterr().out)
  assert head[0] == 'result'
  assert [r[0] for r in rows] == ['nyu', 'b: student_random.pt', 'b: student_random.pt',
                                  'baseline: mean depth / majority class']
  assert rows[1][head.index('RMSE')] == '0.123' and rows[0][head.index('RMSE')] != '0.123'
  assert [r[0] for r in class_rows] == ['nyu', 'b: student_random.pt', 'b: student_random.pt']
  assert len(bin_rows) == 3 * 7
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
      'depth.frame_mean.rmse': (lambda r: r['depth']['frame_mean'].update(rmse='0.5'),
                                "must be a number or null, got '0.5'"),
      'depth': (lambda r: r.update(depth=[1, 2]), 'depth must be an object'),
      'depth.median_scaled': (lambda r: r['depth'].update(median_scaled=3), 'depth.median_scaled must be an object'),
      'seg': (lambda r: r.update(seg='none'), 'seg must be an object'),
      'seg.iou.floor': (lambda r: r['seg']['iou'].update(floor=[1]), 'seg.iou.floor must be a number or null'),
      'seg.classes': (lambda r: r['seg'].update(classes='floor'), 'seg.classes must be a list of class names'),
      'num_frames': (lambda r: r.update(num_frames='5'), "num_frames must be an integer, got '5'"),
      'dataset': (lambda r: r.update(dataset=None), 'dataset must be a string'),
      'baselines': (lambda r: r.update(baselines={'mean_depth_rmse': True}), 'baselines.mean_depth_rmse must be'),
      'depth.frame_mean.log10': (lambda r: r['depth']['frame_mean'].update(log10='x'),
                                 'depth.frame_mean.log10 must be'),
      'seg.fw_iou': (lambda r: r['seg'].update(fw_iou=[0.5]), 'seg.fw_iou must be a number'),
      'seg.class_accuracy.glass': (lambda r: r['seg']['class_accuracy'].update(glass='1'),
                                   'seg.class_accuracy.glass must be a number'),
      'depth.bins': (lambda r: r['depth'].update(bins=[1]), 'depth.bins must be an object'),
      'depth.bins.1-2 m': (lambda r: r['depth']['bins'].update({'1-2 m': 3}), 'depth.bins.1-2 m must be an object'),
      'depth.bins.2-3 m.rmse': (lambda r: r['depth']['bins']['2-3 m'].update(rmse='0.1'),
                                "depth.bins.2-3 m.rmse must be a number or null, got '0.1'"),
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

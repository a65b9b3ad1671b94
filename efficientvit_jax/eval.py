"""Evaluates checkpoints on NYU, LILocBench or the corridor set; writes a JSON and a Markdown table.
The `evit-eval` command (`python eval.py` in a checkout):

  evit-eval --checkpoint SRC [--checkpoint SRC2 ...] --dataset nyu|lilocbench|corridor
      --data PATH [--teacher-manifest M] --out R.json [--split val|train|all]
      [--protocol ours|reference|reference-frames] [--save-predictions DIR]
  evit-eval --compare A.json B.json ...   # one table of several results side by side

SRC: a checkpoint folder, a training workdir (latest step, or --step N) or a reference .pt; its
backbone and the input size it was trained at come from the checkpoint (240x320 when it records
none; one line per checkpoint says which), `--size HxW` overrides the size.
PATH: the NYU root (holding nyu_cache/), or the folder / manifest.jsonl of LILocBench (extracted) or
of the corridor set. `--protocol ours` (default) uses the definitions of docs/evaluation.md#metrics
(nearest-neighbour ground truth, the set's depth window, human labels); `--protocol reference`
reproduces the reference's NYU validation (per-batch averages over batches of 16, gt > 0,
ground-truth depth resized by PIL's antialiased bilinear, the SAM2 labels of the teacher manifest)
for comparison with its published numbers, and for the corridor set its corridor evaluation (every
frame; pooled over the pixels with sensor depth in [0.1, 5] m, nearest-resized, no confidence test;
also by depth bin, image top 2/3 / bottom 1/3, and the sensor's failures);
`--protocol reference-frames` (any set) its run_student_evaluation.py (per-frame numbers over sensor
depth in (0.1, 5) m, OpenCV-resized RGB and sensor depth, averaged over frames). Use
`--split all --size 240x320` for the reference's numbers.
Beside R.json: R.md (the tables: depth and segmentation metrics, per class, by distance),
R_confusion.png and R_depth_bins.png. Several processes (each evaluates its share of every batch):
the flags of train.py, `--coordinator_address`, `--num_processes`, `--process_id` (docs/commands.md).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import numpy as np

from efficientvit_jax import classes
from efficientvit_jax import domains
from efficientvit_jax import images
from efficientvit_jax import runtime

PANELS_PER_CHECKPOINT = 6


def data_paths(args: argparse.Namespace) -> dict[str, Any]:
  """The `datasets.resolve_paths`-style dict for one evaluation set given on the command line."""
  data = pathlib.Path(args.data)
  paths: dict[str, Any] = {'format': args.format, 'tfds_dir': str(data) if args.format == 'tfds' else None,
                           'nyu_class_mapping': args.class_mapping}
  if args.dataset == 'nyu':
    paths['nyu_root'] = str(data)
    teacher = args.teacher_manifest
    if teacher is None and (data / 'teacher' / 'manifest.jsonl').is_file():
      teacher = str(data / 'teacher' / 'manifest.jsonl')
    paths['nyu_teacher_manifest'] = None if teacher in (None, 'none') else teacher
  else:
    manifest = data if data.suffix == '.jsonl' else data / 'manifest.jsonl'
    paths[f'{args.dataset}_manifest'] = str(manifest)
  return paths


# (column, dotted key in a result, percent); the depth keys are read from `depth.frame_mean`, or
# from the one flat depth block of the reference protocols.
_DEPTH_COLUMNS = (('AbsRel', 'abs_rel', False), ('SqRel', 'sq_rel', False), ('RMSE', 'rmse', False),
                  ('RMSE log', 'rmse_log', False), ('log10', 'log10', False), ('δ1', 'delta1', True),
                  ('δ2', 'delta2', True), ('δ3', 'delta3', True), ('MAE', 'mae', False))
_SEG_COLUMNS = (('mIoU', 'seg.miou'), ('mean class acc.', 'seg.mean_class_accuracy'), ('fwIoU', 'seg.fw_iou'),
                ('pixel acc.', 'seg.pixel_accuracy'))
_BIN_COLUMNS = (('RMSE', 'rmse', False), ('AbsRel', 'abs_rel', False), ('δ1', 'delta1', True))


def _get(result: dict[str, Any], dotted: str) -> Any:
  """result['a']['b'] for 'a.b'; None where a part is absent."""
  value: Any = result
  for key in dotted.split('.'):
    value = value.get(key) if isinstance(value, dict) else None
  return value


def _fmt(v: Any, pct: bool = False) -> str:
  return '—' if v is None else (f'{100 * v:.1f}' if pct else f'{v:.3f}')


def _row(cells: list[str]) -> str:
  return '| ' + ' | '.join(cells) + ' |'


def _head(cells: list[str]) -> list[str]:
  return [_row(cells), '|' + '---|' * len(cells)]


def markdown_table(results: list[dict[str, Any]], labels: list[str] | None = None) -> str:
  """The report of one or several results (checkpoints), like the reference's results table
  (docs/evaluation.md): the main table (the depth metrics of Eigen et al.'s set, the median-scaled
  and pooled RMSE, the segmentation metrics; one row per result, plus the split's baselines), then
  per-class IoU and accuracy (results with labels only) and the depth error by distance bin.

  labels: the first column (default: each result's checkpoint).
  """
  first = 'checkpoint' if labels is None else 'result'
  labels = labels or [r['checkpoint'] for r in results]
  with_seg = [bool(r.get('seg')) for r in results]
  seg_columns = _SEG_COLUMNS if any(with_seg) else ()
  rows = _head([first, 'dataset', 'split', 'protocol', 'frames', *(c for c, _, _ in _DEPTH_COLUMNS),
                'RMSE (median-scaled)', 'RMSE (pooled)', *(c for c, _ in seg_columns)])
  for label, r in zip(labels, results):
    depth = r.get('depth') or {}
    fm = depth.get('frame_mean', depth)  # the reference protocols have one flat depth block
    rows.append(_row([str(label), r['dataset'], r['split'], r['protocol'], str(r['num_frames']),
                      *(_fmt(fm.get(k), pct) for _, k, pct in _DEPTH_COLUMNS),
                      _fmt(_get(r, 'depth.median_scaled.frame_mean.rmse')), _fmt(_get(r, 'depth.pooled.rmse')),
                      *(_fmt(_get(r, k), True) for _, k in seg_columns)]))
  same_split = len({(r['dataset'], r['split'], r['protocol']) for r in results}) == 1
  base = results[0].get('baselines')
  if base and same_split:
    r = results[0]
    cells = ['baseline: mean depth' + (' / majority class' if seg_columns else ''), r['dataset'], r['split'],
             r['protocol'], str(r['num_frames']), *([''] * (len(_DEPTH_COLUMNS) + 1)),
             _fmt(base.get('mean_depth_rmse'))]
    if seg_columns:
      cells += [_fmt(base.get('majority_class_miou'), True)] + [''] * (len(seg_columns) - 1)
    rows.append(_row(cells))
  rows += ['', 'Metres; δ' + (', mIoU, accuracies and IoU' if seg_columns else '') + ' in percent.']
  rows += _notes(results, bool(seg_columns))

  names = next((r['seg'].get('classes') for r in results if (r.get('seg') or {}).get('classes')), None)
  names = names or list(classes.CLASS_NAMES)
  if any(with_seg):
    rows += ['', 'Per class (IoU, then accuracy = the fraction of its labelled pixels predicted as it):', '']
    rows += _head([first, 'dataset', *(f'IoU {c}' for c in names), *(f'acc. {c}' for c in names)])
    for label, r, seg in zip(labels, results, with_seg):
      if seg:
        rows.append(_row([str(label), r['dataset'], *(_fmt(_get(r, f'seg.iou.{c}'), True) for c in names),
                          *(_fmt(_get(r, f'seg.class_accuracy.{c}'), True) for c in names)]))

  bins = [(label, r, (r.get('depth') or {}).get('bins') or r.get('bins')) for label, r in zip(labels, results)]
  bins = [(label, r, b) for label, r, b in bins if b]
  if bins:
    rows += ['', 'Depth by distance (pooled over the valid pixels whose ground truth is in the bin; δ1 in '
             'percent):', '']
    rows += _head([first, 'dataset', 'distance', 'pixels', *(c for c, _, _ in _BIN_COLUMNS)])
    for label, r, b in bins:
      for name, values in b.items():
        rows.append(_row([str(label), r['dataset'], name, f"{values.get('n_pixels') or 0:,}",
                          *(_fmt(values.get(k), pct) for _, k, pct in _BIN_COLUMNS)]))
  return '\n'.join(rows) + '\n'


def _notes(results: list[dict[str, Any]], with_seg: bool) -> list[str]:
  """What the numbers of each protocol present are."""
  notes = []
  protocols = {(r['protocol'], r['dataset'] == 'corridor' and r['protocol'] == 'reference') for r in results}
  if ('ours', False) in protocols:
    notes.append('Default protocol: the prediction clipped to the set\'s depth window; AbsRel to MAE and the '
                 'median-scaled RMSE are means over frames with >= 100 valid pixels (as NYU papers report them); '
                 'RMSE (pooled): over all valid pixels of the split, the measure of the mean-depth baseline'
                 + ('; segmentation: one confusion matrix over the split.' if with_seg else '.'))
  if ('reference', False) in protocols:
    notes.append('Reference protocol: means over batches of 16 of each batch\'s pooled RMSE (gt > 0, ground truth '
                 'resized by PIL\'s antialiased bilinear) and mIoU against the SAM2 labels; not comparable with '
                 'the default protocol.')
  if ('reference', True) in protocols:
    notes.append('Reference corridor protocol: RMSE, MAE, AbsRel, δ1 pooled over all pixels with sensor depth in '
                 '[0.1, 5] m (no confidence test), not means over frames, as the reference\'s corridor evaluation.')
  if ('reference-frames', False) in protocols:
    notes.append('Reference per-frame protocol (its run_student_evaluation.py): RMSE, MAE, AbsRel, δ1 means over '
                 'frames with >= 100 pixels of sensor depth in (0.1, 5) m (OpenCV-resized RGB and sensor depth); '
                 'not comparable with the default protocol.')
  return notes


def write_pictures(out: pathlib.Path, results: list[dict[str, Any]]) -> list[pathlib.Path]:
  """`<out>_confusion.png` (results with segmentation) and `<out>_depth_bins.png`; returns the paths."""
  from efficientvit_jax import panels

  label = lambda r: pathlib.Path(str(r['checkpoint']).rstrip('/')).name or str(r['checkpoint'])
  written = []
  matrices = [(label(r), r['seg']['classes'], r['seg']['confusion']) for r in results
              if (r.get('seg') or {}).get('confusion')]
  if matrices:
    written.append(out.with_name(out.stem + '_confusion.png'))
    panels.confusion_figure(written[-1], matrices)
  bins = [(label(r), r['depth'].get('bins') or r.get('bins')) for r in results
          if r['depth'].get('bins') or r.get('bins')]
  if bins:
    written.append(out.with_name(out.stem + '_depth_bins.png'))
    panels.depth_bins_figure(written[-1], bins, title=f"{results[0]['dataset']} {results[0]['split']}")
  return written


_TABLE_NUMBERS = (*(f'depth.frame_mean.{k}' for _, k, _ in _DEPTH_COLUMNS), 'depth.median_scaled.frame_mean.rmse',
                  'depth.pooled.rmse', *(k for _, k in _SEG_COLUMNS), 'baselines.mean_depth_rmse',
                  'baselines.majority_class_miou')


def _table_problem(result: dict[str, Any]) -> str | None:
  """The first value of a loaded result that `markdown_table` cannot show, named (a hand-edited
  file), or None. Absent values are shown as '—'."""
  def lookup(dotted: str) -> tuple[Any, str | None]:  # (value, the first non-object on the way)
    value: Any = result
    for i, key in enumerate(dotted.split('.')):
      if value is None:
        return None, None
      if not isinstance(value, dict):
        return None, '.'.join(dotted.split('.')[:i])
      value = value.get(key)
    return value, None

  for key in ('dataset', 'split', 'protocol'):
    if not isinstance(result.get(key, ''), str):
      return f'{key} must be a string, got {result[key]!r}'
  if type(result['num_frames']) is not int:  # not a bool
    return f'num_frames must be an integer, got {result["num_frames"]!r}'
  depth = result['depth']
  if isinstance(depth, dict) and 'frame_mean' not in depth:  # the reference protocol: one flat block
    result = {**result, 'depth': {**depth, 'frame_mean': depth}}
  classes_, bad = lookup('seg.classes')
  if bad is None and classes_ is not None and not (isinstance(classes_, list)
                                                   and all(isinstance(c, str) for c in classes_)):
    return f'seg.classes must be a list of class names, got {classes_!r}'
  names = classes_ or list(classes.CLASS_NAMES)
  where = 'bins' if 'bins' in result else 'depth.bins'  # the reference corridor protocol: top level
  bins, bad = lookup(where)
  if bad is None and bins is not None and not isinstance(bins, dict):
    return f'{where} must be an object (a JSON dict), got {bins!r}'
  numbers = []
  for dotted in (*_TABLE_NUMBERS, *(f'seg.{part}.{c}' for part in ('iou', 'class_accuracy') for c in names)):
    value, bad = lookup(dotted)
    if bad is not None:
      return f'{bad} must be an object (a JSON dict), got {lookup(bad)[0]!r}'
    numbers.append((dotted, value))
  for name, values in (bins or {}).items():  # bin names hold dots ('0.5-1 m'): not looked up by path
    if not isinstance(values, dict):
      return f'{where}.{name} must be an object (a JSON dict), got {values!r}'
    numbers += [(f'{where}.{name}.{k}', values.get(k)) for k in ('n_pixels', *(k for _, k, _ in _BIN_COLUMNS))]
  for dotted, value in numbers:
    if value is not None and (type(value) not in (int, float)):
      return f'{dotted} must be a number or null, got {value!r}'
  return None


def compare(paths: list[str]) -> tuple[str, list[str]]:
  """The table of the results in several eval JSON files, one row per result; (table, errors)."""
  results, labels, errors = [], [], []
  for path in paths:
    try:
      loaded = json.loads(pathlib.Path(path).read_text())
    except OSError as e:
      errors.append(f'{path}: {e.strerror or e}')
      continue
    except json.JSONDecodeError as e:
      errors.append(f'{path}: not an eval.py result (invalid JSON: {e})')
      continue
    items = loaded if isinstance(loaded, list) else [loaded]
    if not items or not all(isinstance(r, dict) and {'dataset', 'depth', 'num_frames'} <= set(r) for r in items):
      errors.append(f'{path}: not an eval.py result (no dataset / depth / num_frames)')
      continue
    problems = [p for p in map(_table_problem, items) if p]
    if problems:
      errors.append(f'{path}: {problems[0]}')
      continue
    for r in items:
      r.setdefault('split', '?')
      r.setdefault('protocol', 'ours')
      r.setdefault('checkpoint', path)
      results.append(r)
      stem = pathlib.Path(path).stem
      labels.append(stem if len(items) == 1 else f"{stem}: {pathlib.Path(str(r['checkpoint']).rstrip('/')).name}")
  return (markdown_table(results, labels) if results and not errors else ''), errors


def _write_whole(path: pathlib.Path, text: str) -> None:
  """Writes `path` whole or not at all (a full disk leaves the previous file, or none)."""
  tmp = path.with_name(f'.{path.name}.tmp')
  try:
    tmp.write_text(text)
    tmp.replace(path)
  finally:
    tmp.unlink(missing_ok=True)


class PredictionWriter:
  """Writes what is needed to recompute every number: per frame `<stem>_depth.npy`, `<stem>_gt_depth.npy`
  (as used: excluded pixels 0), `<stem>_seg.png`, `<stem>_gt_seg.png`, and a few `<stem>_panel.png`."""

  def __init__(self, out: pathlib.Path, dataset: str, window: tuple[float, float]):
    self.out, self.dataset = out, dataset
    self.window = window
    self.panels = 0
    out.mkdir(parents=True, exist_ok=True)

  def __call__(self, batch: dict[str, np.ndarray], preds: dict[str, np.ndarray]) -> None:
    from PIL import Image

    from efficientvit_jax import panels

    lo, hi = self.window
    for i in np.flatnonzero(batch['frame_mask']):
      stem = f"{self.dataset}_{int(batch['index'][i]):05d}"
      gt = batch['gt_depth'][i]
      gt = np.where((gt >= lo) & (gt <= hi), gt, 0.0).astype(np.float32)
      np.save(self.out / f'{stem}_depth.npy', preds['depth'][i].astype(np.float32))
      np.save(self.out / f'{stem}_gt_depth.npy', gt)
      Image.fromarray(preds['seg'][i].astype(np.uint8)).save(self.out / f'{stem}_seg.png')
      Image.fromarray(batch['gt_seg'][i].astype(np.uint8)).save(self.out / f'{stem}_gt_seg.png')
      if self.panels < PANELS_PER_CHECKPOINT:
        rgb = batch['image'][i]
        has_labels = bool((batch['gt_seg'][i] != classes.IGNORE_LABEL).any())
        panels.evaluation_panel(self.out / f'{stem}_panel.png', rgb, gt, preds['depth'][i], preds['seg'][i],
                                batch['gt_seg'][i] if has_labels else None)
        self.panels += 1


def _parser() -> argparse.ArgumentParser:
  from efficientvit_jax import parallel

  parser = argparse.ArgumentParser(prog='python eval.py', description=__doc__.split('\n\n')[0])
  parser.add_argument('--compare', nargs='+', metavar='R.json', default=None,
                      help='print one table of these eval results side by side (no evaluation)')
  parser.add_argument('--checkpoint', action='append', help='checkpoint folder, workdir or .pt (repeatable)')
  parser.add_argument('--step', type=int, default=None, help='step of a checkpoint folder / workdir (default: latest)')
  parser.add_argument('--dataset', choices=domains.SETS)
  parser.add_argument('--data', help='NYU root, or LILocBench / corridor folder or manifest.jsonl')
  parser.add_argument('--teacher-manifest', default=None,
                      help="NYU teacher manifest (default: <data>/teacher/manifest.jsonl if present; 'none')")
  parser.add_argument('--class-mapping', default=None, help='classMapping40.mat for raw 894-class NYU labels')
  parser.add_argument('--format', default='files', choices=('files', 'tfds'), help='tfds: --data is the TFDS data dir')
  parser.add_argument('--split', default='val', choices=('val', 'train', 'all'))
  parser.add_argument('--protocol', default='ours', choices=('ours', 'reference', 'reference-frames'))
  parser.add_argument('--out', help='metrics JSON; the Markdown table (.md) and pictures (.png) go beside it')
  parser.add_argument('--save-predictions', default=None, metavar='DIR')
  parser.add_argument('--batch-size', type=int, default=16,
                      help=f'global evaluation batch (default 16; at most {images.MAX_BATCH_PIXELS:,} pixels a batch)')
  parser.add_argument('--size', type=images.parse_size, default=None,
                      help=f"model input size, {images.SIZE_HELP} (default: each checkpoint's training size, else "
                           '240x320)')
  parser.add_argument('--allow-pickle', action='store_true', help='for .pt files that weights_only loading refuses')
  parser.add_argument('--compilation-cache', default='', metavar='DIR',
                      help="JAX's persistent compilation cache (default ~/.cache/efficientvit_jax/xla; 'none': off)")
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out (and its .md) and '
                      'the files of a non-empty --save-predictions folder')
  parser.add_argument('-v', '--verbose', action='store_true',
                      help="also show the INFO log records, ours and the libraries'")
  parallel.add_distributed_args(parser)
  return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
  """Exits (argparse's usage error) for flags that do not go together; returns the error line for
  outputs that cannot be written (existing, not empty, read-only), else None."""
  missing = [f'--{k}' for k in ('checkpoint', 'dataset', 'data', 'out') if not getattr(args, k)]
  if missing:
    parser.error(f'the following arguments are required: {", ".join(missing)} (or --compare)')
  if args.protocol == 'reference' and args.dataset == 'lilocbench':
    parser.error('--protocol reference reproduces the reference\'s NYU validation and corridor evaluation; '
                 'use it with --dataset nyu or corridor')
  if args.batch_size < 1:
    parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
  try:
    if args.size is not None:  # else checked per checkpoint, at the size it records
      images.check_batch_pixels(args.size, args.batch_size)
  except ValueError as e:
    parser.error(str(e))
  if pathlib.Path(args.out).is_dir():
    return f'--out {args.out} is a folder; give the JSON file to write (R.json)'
  for out in (pathlib.Path(args.out), pathlib.Path(args.out).with_suffix('.md')):
    if out.exists() and not args.overwrite:
      return f'{out} already exists; choose another --out or pass --overwrite'
  saved = pathlib.Path(args.save_predictions) if args.save_predictions else None
  if saved is not None and saved.is_dir() and any(saved.iterdir()) and not args.overwrite:
    return f'--save-predictions {saved} is not empty; choose another folder or pass --overwrite'
  # Before the evaluation, not after it: outputs in a read-only (or full, or missing) place.
  from efficientvit_jax import checkpointing

  for flag, folder in (('--out', pathlib.Path(args.out).absolute().parent), ('--save-predictions', saved)):
    try:
      if folder is not None:
        checkpointing.check_writable(folder)
    except OSError as e:
      return f'cannot write {flag}: {e}'
  return None


def _prediction_window(args: argparse.Namespace) -> tuple[float, float]:
  """The depth window of the saved predictions' ground truth, as the protocol counts it."""
  if args.protocol == 'reference-frames':  # 0.1 < gt < 5 in float32: the float32 neighbours inside
    return tuple(float(np.nextafter(np.float32(v), np.float32(to))) for v, to in ((0.1, 1), (5.0, 0)))
  if args.protocol == 'reference' and args.dataset != 'corridor':  # every pixel with gt > 0
    return (1e-12, float('inf'))
  return domains.DEPTH_WINDOWS[args.dataset]


def _evaluate_checkpoint(args: argparse.Namespace, src: str, paths: dict[str, Any], mesh: Any) -> dict[str, Any]:
  """One checkpoint's result (the JSON's object) on this process's share of the split."""
  import jax
  from flax import nnx

  from data_pipelines import datasets
  from efficientvit_jax import console
  from efficientvit_jax import convert
  from efficientvit_jax import evaluation
  from efficientvit_jax import parallel

  process, num_processes = jax.process_index(), jax.process_count()
  loaded = convert.load_model(src, args.step, allow_pickle=args.allow_pickle)
  ckpt, size = loaded.ckpt, loaded.input_size(args.size)
  images.check_batch_pixels(size, args.batch_size)
  if process == 0:
    print(loaded.describe(args.size), flush=True)
  graphdef, params, batch_stats = nnx.split(loaded.model, nnx.Param, nnx.BatchStat)
  params, batch_stats = parallel.put_replicated((params, batch_stats), mesh)
  if args.protocol == 'reference' and args.dataset == 'corridor':  # sensor depth, nearest-resized; metric windows it
    reader = evaluation.SensorDepthAsGroundTruth(datasets.make_reader(paths, args.dataset, args.split))
    batches = datasets.EvalIterator(reader, args.batch_size, process, num_processes, input_size=size)
  else:
    batches = datasets.eval_iterator(paths, args.dataset, args.split, batch_size=args.batch_size,
                                     process_index=process, process_count=num_processes, input_size=size,
                                     protocol=args.protocol)
  writer = None
  if args.save_predictions:
    name = pathlib.Path(src.rstrip('/')).name if len(args.checkpoint) > 1 else ''
    writer = PredictionWriter(pathlib.Path(args.save_predictions) / name, args.dataset, _prediction_window(args))
  bar = console.Progress(len(batches), f'eval {args.dataset} {pathlib.Path(src.rstrip("/")).name}',
                         unit='batch', batch_size=args.batch_size, quiet=process != 0)

  def on_batch(local, preds):
    if writer is not None:
      writer(local, preds)
    bar.update()

  try:
    metrics = evaluation.evaluate(graphdef, params, batch_stats, batches, mesh, set_name=args.dataset,
                                  protocol=args.protocol, with_seg=domains.has_seg_labels(args.dataset),
                                  on_batch=on_batch)
  finally:
    bar.close()
    batches.close()
  return {'dataset': args.dataset, 'split': args.split, 'checkpoint': src, 'step': ckpt.step,
          'backbone': loaded.backbone, 'input_size': list(size), 'protocol': args.protocol, **metrics}


def _write_results(out: pathlib.Path, results: list[dict[str, Any]]) -> int:
  """R.json, R.md and the pictures; prints the table. 0, or 1 when they cannot be written."""
  table = markdown_table(results)
  try:
    _write_whole(out, json.dumps(results[0] if len(results) == 1 else results, indent=2, allow_nan=False) + '\n')
    _write_whole(out.with_suffix('.md'), table)
    pictures = write_pictures(out, results)
  except OSError as e:  # the place was checked at the start: a disk that filled up or went away since
    print(f'error: cannot write the results: {e}', file=sys.stderr)
    return 1
  print(table, end='')
  print(f'wrote {out}, {out.with_suffix(".md")}' + ''.join(f', {p}' for p in pictures))
  return 0


@runtime.reporting_missing_extras  # torch (a reference .pt), tensorflow-datasets (--format tfds)
def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.compare:
    table, errors = compare(args.compare)
    for error in errors:
      print(f'error: {error}', file=sys.stderr)
    if errors:
      return 2
    print(table, end='')
    return 0
  error = _check_args(parser, args)
  if error is not None:
    print(f'error: {error}', file=sys.stderr)
    return 2

  import jax

  from efficientvit_jax import checkpointing
  from efficientvit_jax import console
  from efficientvit_jax import parallel

  console.setup(args.verbose)
  try:
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  runtime.enable_compilation_cache(args.compilation_cache)
  mesh = parallel.make_mesh()
  if args.batch_size % jax.device_count():
    parser.error(f'--batch-size {args.batch_size} is not divisible by the {jax.device_count()} devices')
  paths = data_paths(args)
  try:
    results = [_evaluate_checkpoint(args, src, paths, mesh) for src in args.checkpoint]
  except (checkpointing.CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
    print(f'error: {runtime.missing_extra(e) or e}', file=sys.stderr)  # a missing extra: which to install
    return 2
  return _write_results(pathlib.Path(args.out), results) if jax.process_index() == 0 else 0


def run():
  """The `evit-eval` command."""
  from efficientvit_jax import host_memory  # before JAX starts its CPU threads

  host_memory.retain_freed_memory_on_cpu_hosts()
  sys.exit(main())


if __name__ == '__main__':
  run()

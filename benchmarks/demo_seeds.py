"""The demo's recipe (`make demo`) over several generator seeds, as one table with the mean, the
standard deviation and the worst seed of every column.

  python benchmarks/demo_seeds.py [--seeds 0-9] [--workdir demo_seeds] [--md T.md] [--json F]
      [--synthetic-size demo] [--train-flag=--config.k=v ...]

Per seed n, in WORKDIR/seed<n>/, the steps of `make demo DEMO_SEED=n`: synthetic data
(`data_pipelines.synthetic --seed n --size demo`) in `data/`, its decode-once copy at the demo's size,
`train.py --config quickstart` on it in `run/`, `eval.py` on each validation split at
that size in `report/<set>.json`. As with `make demo`, data already written is kept, an
interrupted training resumes and a finished one is only evaluated again, so rerunning the command
after an interruption (or with more seeds) costs only what is missing. Seeds run one after
another: each step uses every core. Each step's output goes to `seed<n>/logs/<step>.log`; the
seconds each step took (None when it was skipped) go into the JSON. `--train-flag` passes a flag
to train.py (repeatable) and `--synthetic-size` picks another generator size (`default`: the demo
before it had 160 training rooms); either is a variant of the recipe, for its own --workdir.

Columns (`COLUMNS`): pooled = over all valid pixels of the split, the measure of the mean-depth
baseline (the split's best constant); per frame = the mean of the frames' values; ratio =
pooled RMSE / baseline. The summary rows are over seeds: mean, standard deviation (ddof=1) and
the worst value with its seed (largest error, smallest mIoU; none for the baselines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from data_pipelines import synthetic

ROOT = pathlib.Path(__file__).resolve().parent.parent

CONFIG = 'quickstart'  # the Makefile's preset
SYNTHETIC_SIZE = 'demo'  # the Makefile's generator size
SIZE = '96x128'  # the Makefile's DEMO_SIZE
SETS = ('nyu', 'lilocbench', 'corridor')


@dataclasses.dataclass(frozen=True)
class Column:
  """One column: header, value from a seed's {set: eval JSON}, format, and which end is worse
  ('high', 'low'; None: a reference value such as a baseline, no worst seed)."""
  header: str
  value: Callable[[dict], float | None]
  fmt: str = '{:.3f}'
  worse: str | None = 'high'


def _get(*keys: str) -> Callable[[dict], float | None]:
  def get(results: dict) -> float | None:
    x = results
    for k in keys:
      if not isinstance(x, dict) or x.get(k) is None:
        return None
      x = x[k]
    return float(x)
  return get


def _ratio(results: dict) -> float | None:
  rmse, base = _get('nyu', 'depth', 'pooled', 'rmse')(results), _get('nyu', 'baselines', 'mean_depth_rmse')(results)
  return None if rmse is None or not base else rmse / base


COLUMNS = (
  Column('NYU-like RMSE pooled, m', _get('nyu', 'depth', 'pooled', 'rmse')),
  Column('per frame, m', _get('nyu', 'depth', 'frame_mean', 'rmse')),
  Column('mean-depth baseline, m', _get('nyu', 'baselines', 'mean_depth_rmse'), worse=None),
  Column('ratio', _ratio, fmt='{:.2f}x'),
  Column('median-scaled RMSE per frame, m', _get('nyu', 'depth', 'median_scaled', 'frame_mean', 'rmse')),
  Column('AbsRel per frame', _get('nyu', 'depth', 'frame_mean', 'abs_rel')),
  Column('δ1 per frame, %', lambda r: _percent(_get('nyu', 'depth', 'frame_mean', 'delta1')(r)), fmt='{:.1f}',
         worse='low'),
  Column('mIoU, %', lambda r: _percent(_get('nyu', 'seg', 'miou')(r)), fmt='{:.1f}', worse='low'),
  Column('mean class acc., %', lambda r: _percent(_get('nyu', 'seg', 'mean_class_accuracy')(r)), fmt='{:.1f}',
         worse='low'),
  Column('majority class, %', lambda r: _percent(_get('nyu', 'baselines', 'majority_class_miou')(r)),
         fmt='{:.1f}', worse=None),
  Column('LILocBench-like RMSE pooled, m', _get('lilocbench', 'depth', 'pooled', 'rmse'), fmt='{:.2f}'),
  Column('baseline, m', _get('lilocbench', 'baselines', 'mean_depth_rmse'), fmt='{:.2f}', worse=None),
  Column('corridor RMSE pooled, m', _get('corridor', 'depth', 'pooled', 'rmse'), fmt='{:.2f}'),
  Column('baseline, m', _get('corridor', 'baselines', 'mean_depth_rmse'), fmt='{:.2f}', worse=None),
)


def _percent(x: float | None) -> float | None:
  return None if x is None else 100.0 * x


def parse_seeds(text: str) -> list[int]:
  """'0-9' / '0,3,5' / '2-4,8' -> sorted distinct seeds; ValueError on anything else."""
  seeds = set()
  for part in text.split(','):
    lo, sep, hi = part.strip().partition('-')
    if not lo.isdigit() or (sep and not hi.isdigit()):
      raise ValueError(f'bad --seeds {text!r}: expected e.g. 0-9 or 0,3,5')
    a, b = int(lo), int(hi) if sep else int(lo)
    if b < a:
      raise ValueError(f'bad --seeds {text!r}: range {part} is empty')
    seeds.update(range(a, b + 1))
  return sorted(seeds)


def summary(rows: dict[int, dict]) -> dict[str, list]:
  """{seed: {set: eval JSON}} -> per column: 'mean', 'std' (ddof=1; None for one seed) and
  'worst' ((value, seed) or None), over the seeds where the column has a value."""
  out = {'mean': [], 'std': [], 'worst': []}
  for col in COLUMNS:
    values = [(col.value(r), s) for s, r in sorted(rows.items())]
    values = [(v, s) for v, s in values if v is not None]
    xs = [v for v, _ in values]
    n = len(xs)
    mean = sum(xs) / n if n else None
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    worst = None
    if col.worse and values:
      worst = (max if col.worse == 'high' else min)(values, key=lambda vs: vs[0])
    out['mean'].append(mean)
    out['std'].append(std)
    out['worst'].append(worst)
  return out


def table(rows: dict[int, dict], per_seed: bool = True) -> str:
  """The Markdown table: one row per seed (unless not per_seed), then mean, std and worst seed."""
  def cell(col: Column, v: float | None) -> str:
    return '-' if v is None else col.fmt.format(v)

  lines = ['| generator seed | ' + ' | '.join(c.header for c in COLUMNS) + ' |',
           '|---' * (len(COLUMNS) + 1) + '|']
  if per_seed:
    for s, r in sorted(rows.items()):
      lines.append(f'| {s} | ' + ' | '.join(cell(c, c.value(r)) for c in COLUMNS) + ' |')
  stats = summary(rows)
  lines.append(f'| mean of {len(rows)} | ' + ' | '.join(cell(c, v) for c, v in zip(COLUMNS, stats['mean'])) + ' |')
  lines.append('| std | ' + ' | '.join(cell(c, v) for c, v in zip(COLUMNS, stats['std'])) + ' |')
  lines.append('| worst (seed) | ' + ' | '.join('-' if w is None else f'{cell(c, w[0])} ({w[1]})'
                                                 for c, w in zip(COLUMNS, stats['worst'])) + ' |')
  return '\n'.join(lines)


Step = tuple[str, list[str], pathlib.Path | None]


def steps(seed: int, folder: pathlib.Path, train_flags: Sequence[str],
          synthetic_size: str = SYNTHETIC_SIZE) -> list[Step]:
  """The demo's commands for one seed: (name, argv, a file whose presence means done, or None)."""
  py = sys.executable
  data, run, report = folder / 'data', folder / 'run', folder / 'report'
  out = [
    ('synthetic', [py, '-m', 'data_pipelines.synthetic', '--out', str(data), '--seed', str(seed),
                   '--size', synthetic_size], data / 'synthetic_info.json'),
    ('decoded', [py, '-m', 'data_pipelines.decoded', '--root', str(data), '--input-size', SIZE],
     data / 'decoded' / 'decoded.json'),
    ('train', [py, 'train.py', '--config', CONFIG, '--workdir', str(run), f'--config.data.root={data}',
               '--config.data.format=decoded', *train_flags], None),
  ]
  for name in SETS:
    out.append((f'eval_{name}', [py, 'eval.py', '--checkpoint', str(run), '--dataset', name, '--data', str(data / name),
                                 '--size', SIZE, '--out', str(report / f'{name}.json'), '--overwrite'], None))
  return out


def run_seed(seed: int, folder: pathlib.Path, train_flags: Sequence[str],
             synthetic_size: str = SYNTHETIC_SIZE) -> tuple[dict, dict]:
  """Runs what is missing of one seed's recipe; ({set: eval JSON}, {step: seconds or None}).
  ValueError: the folder holds data of another seed or size; RuntimeError: a step failed."""
  info = folder / 'data' / 'synthetic_info.json'
  if info.exists():
    held = json.loads(info.read_text())
    if (held.get('seed'), held.get('size')) != (seed, synthetic_size):
      raise ValueError(f'{info}: data of seed {held.get("seed")}, size {held.get("size")}, not seed {seed}, '
                       f'size {synthetic_size}; use another --workdir')
  (folder / 'logs').mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  seconds = {}
  for name, argv, done in steps(seed, folder, train_flags, synthetic_size):
    if done is not None and done.exists():
      seconds[name] = None
      continue
    log = folder / 'logs' / f'{name}.log'
    t = time.perf_counter()
    with open(log, 'w') as f:
      rc = subprocess.call(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds[name] = time.perf_counter() - t
    if rc != 0:
      raise RuntimeError(f'seed {seed}: {name} failed (exit {rc}); see {log}')
    print(f'seed {seed}: {name} {seconds[name]:.0f} s', flush=True)
  results = {name: json.loads((folder / 'report' / f'{name}.json').read_text()) for name in SETS}
  return results, seconds


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--seeds', default='0-9', help='generator seeds: 0-9, 0,3,5, 2-4,8 (default 0-9)')
  parser.add_argument('--workdir', default='demo_seeds', help='one folder per seed, seed<n>/ (default demo_seeds)')
  parser.add_argument('--md', default='', help='also write the table here')
  parser.add_argument('--json', default='', help='also write every seed\'s eval results and step times here')
  parser.add_argument('--synthetic-size', default=SYNTHETIC_SIZE, choices=sorted(synthetic.SIZES),
                      help=f'the generator size (default {SYNTHETIC_SIZE}, as make demo)')
  parser.add_argument('--train-flag', action='append', default=[], metavar='FLAG',
                      help='a flag for train.py, e.g. --train-flag=--config.num_train_steps=800 (repeatable)')
  args = parser.parse_args(argv)
  try:
    seeds = parse_seeds(args.seeds)
  except ValueError as e:
    parser.error(str(e))
  workdir = pathlib.Path(args.workdir).resolve()
  rows, times = {}, {}
  start = time.perf_counter()
  for seed in seeds:
    try:
      rows[seed], times[seed] = run_seed(seed, workdir / f'seed{seed}', args.train_flag, args.synthetic_size)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    except RuntimeError as e:
      print(f'error: {e}', file=sys.stderr)
      return 1
  md = table(rows)
  flags = '' if args.synthetic_size == SYNTHETIC_SIZE else f' --synthetic-size {args.synthetic_size}'
  flags += ''.join(f' --train-flag={f}' for f in args.train_flag)
  print(f'\n`python benchmarks/demo_seeds.py --seeds {args.seeds}{flags}` ({os.cpu_count()} CPUs, '
        f'{time.perf_counter() - start:.0f} s):\n\n{md}')
  if args.md:
    pathlib.Path(args.md).write_text(md + '\n')
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
      {'config': CONFIG, 'size': SIZE, 'synthetic_size': args.synthetic_size, 'train_flags': args.train_flag,
       'seeds': {str(s): {'results': rows[s], 'seconds': times[s]} for s in seeds}}, indent=1) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())

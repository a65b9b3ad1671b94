"""The domain-mixing study: source-only, sequential and joint protocols, one table, one plot.

  python -m studies.domain_mixing --config configs/study_synthetic.py --workdir STUDY_DIR [--config.k=v ...]

Source-only pretraining (V5-like) on the source set, then from that one checkpoint (`init_from`: a
fresh optimiser and schedule) and with the same number of optimiser steps each: sequential
fine-tuning on the target (V7-like; V9-like from `v6_checkpoint`), joint training at each source
share of the ratio sweep (V8 = 0.5, source upsampled), joint downsampled, concatenation and a
source-only control, each over every seed. Every run is an ordinary `python train.py` in its own
workdir, every evaluation an ordinary `python eval.py`; rerunning the command skips what is
finished and resumes what is not. Under STUDY_DIR:

- `runs/<row>/seed_<s>/`: the training workdirs (`runs/source_only/` for the pretraining), with
  `study_run.json` (the flags it was started with) and `train.log`; with `backbones` (the
  capacity axis) the whole ladder once per backbone under `runs/<backbone>/...`, each from its own
  pretraining (`runs/<backbone>/source_only/`), and `evals/<backbone>/...` likewise;
- `evals/<row>/seed_<s>/{deployment,source,target}.json`: eval.py's JSON for the run's final
  checkpoint on the deployment set (all frames) and the source and target validation splits (one
  eval.py process per set evaluates every pending checkpoint: one start-up and compilation);
- `study.md`: the table (mean ± sample standard deviation over seeds) beside the reference's
  published rows, and the differences the reference's finding is about;
- `study.json`: every number, per seed; `pareto.png`: source error against target and
  deployment error; `plan.json`: every command. With `backbones`: `study.md` opens with the capacity
  table (each backbone's protocols side by side and which rows dominate joint training),
  `capacity.png` puts every backbone in one plot, `pareto_<backbone>.png` one per backbone.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import app
from absl import flags
from ml_collections import config_flags

from efficientvit_jax import backbones as model_backbones
from efficientvit_jax import trees

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Study configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Study directory: runs, evaluations, table, plot.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the plan (every command) and exit.')
flags.mark_flags_as_required(['config', 'workdir'])

ROOT = pathlib.Path(__file__).resolve().parents[1]
# eval.py sets: role -> (dataset, split).
SETS = {'deployment': ('corridor', 'all'), 'source': ('nyu', 'val'), 'target': ('lilocbench', 'val')}
# Table columns: (key, role, path in eval.py's JSON, header, scale, decimals).
COLUMNS = (
    ('deployment_rmse', 'deployment', ('depth', 'frame_mean', 'rmse'), 'corridor RMSE (m)', 1.0, 3),
    ('deployment_rmse_ms', 'deployment', ('depth', 'median_scaled', 'frame_mean', 'rmse'),
     'corridor RMSE, median-scaled (m)', 1.0, 3),
    ('source_rmse', 'source', ('depth', 'frame_mean', 'rmse'), 'source val RMSE (m)', 1.0, 3),
    ('source_miou', 'source', ('seg', 'miou'), 'source val mIoU (%)', 100.0, 1),
    ('target_rmse', 'target', ('depth', 'frame_mean', 'rmse'), 'target val RMSE (m)', 1.0, 3),
)
# The reference's published results (docs/evaluation.md#the-references-published-results): its documents,
# real data, its own protocols.
REFERENCE = {
    'V5': {'deployment_rmse': 2.186, 'source_rmse': 0.572, 'source_miou': 0.637},
    'V7': {'deployment_rmse': 1.982, 'source_rmse': 1.315, 'source_miou': 0.475, 'target_rmse': 0.445},
    'V8': {'deployment_rmse': 2.266, 'source_rmse': 0.592, 'source_miou': 0.629},
    'V9': {'deployment_rmse': 1.589, 'source_rmse': 1.553, 'source_miou': 0.316, 'target_rmse': 0.382},
}
REFERENCE_LABELS = {'V5': 'NYU only', 'V7': 'V5 -> LILocBench', 'V8': 'V5 -> NYU + LILocBench 50/50',
                    'V9': 'V6 -> LILocBench'}


class StudyError(Exception):
  """A run that failed or a study directory that does not match the config; the message says which."""


# --------------------------------------------------------------------------------------------------
# The plan: pure functions of the study config.


@dataclasses.dataclass(frozen=True)
class Row:
  """One table row: a protocol at one source share (`ratio`), or a start checkpoint."""
  name: str  # 'source_only', 'sequential', 'joint@0.25', ...
  label: str
  protocol: str  # key of config.protocols; '' for a start checkpoint
  ratio: float | None = None


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run (or, with no preset, a given checkpoint) and where its results go."""
  row: str
  seed: int | None  # None: the row's single start checkpoint
  checkpoint: str  # what eval.py evaluates: the workdir, or a given checkpoint
  preset: str = ''  # training config file; '' = nothing to train
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # flat train-config keys
  backbone: str = ''  # the capacity axis' value; '' = no backbone axis (the presets' backbone)

  @property
  def id(self) -> str:
    row = f'{self.backbone}/{self.row}' if self.backbone else self.row
    return row if self.seed is None else f'{row}/seed_{self.seed}'

  @property
  def trains(self) -> bool:
    return bool(self.preset)


def flag_value(value: Any) -> str:
  """A config value as `--config.k=v` text that ml_collections parses back to the same value."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def train_command(run: Run, workdir: pathlib.Path) -> list[str]:
  """The `python train.py ...` command of a run (run from the repository root)."""
  return [sys.executable, 'train.py', '--config', run.preset, '--workdir', str(workdir),
          *(f'--config.{k}={flag_value(v)}' for k, v in run.overrides.items())]


def _path(p: str) -> str:
  return str(pathlib.Path(p).expanduser().absolute()) if p else ''


def data_overrides(config: ml_collections.ConfigDict) -> dict[str, str]:
  """The three sets of the study as training-config keys (absolute paths)."""
  out = {'data.root': _path(config.data_root)}
  for key, train_key in (('source', 'data.nyu.root'), ('target', 'data.lilocbench.manifest'),
                         ('deployment', 'data.corridor.manifest')):
    if config[key]:
      out[train_key] = _path(config[key])
  return out


def rows(config: ml_collections.ConfigDict) -> list[Row]:
  """The table's rows in order: the start checkpoints, then each protocol (one row per ratio)."""
  out = [Row('source_only', 'source only (pretraining, V5-like)', '')]
  if config.v6_checkpoint:
    out.append(Row('v6', 'V6-style start checkpoint (given)', ''))
  for name in config.order:
    if name not in config.protocols:
      raise StudyError(f'order names {name!r}, which is not in protocols ({", ".join(config.protocols.keys())})')
    p = config.protocols[name]
    if p.start not in ('source', 'v6'):
      raise StudyError(f'protocols.{name}.start must be source or v6, got {p.start!r}')
    if p.start == 'v6' and not config.v6_checkpoint:
      continue
    if p.ratios:
      out.extend(Row(f'{name}@{r:g}', f'{p.label}, source share {r:g}', name, float(r)) for r in p.ratios)
    else:
      out.append(Row(name, p.label, name))
  return out


def backbone_axis(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The capacity axis: `config.backbones`, or ('',) for one ladder with the presets' backbone."""
  names = tuple(config.backbones)
  if not names:
    return ('',)
  if len(set(names)) != len(names):
    raise StudyError(f'backbones names a backbone twice: {names}')
  for name in names:
    if name not in model_backbones.BACKBONES:
      raise StudyError(f'backbones: unknown backbone {name!r} (one of {", ".join(model_backbones.BACKBONES)})')
  if config.source_checkpoint or config.v6_checkpoint:
    raise StudyError('backbones: source_checkpoint and v6_checkpoint give one model, which cannot start '
                     'several backbones; leave them empty (each backbone is pretrained) or backbones empty')
  return names


def plan(config: ml_collections.ConfigDict, study_dir: pathlib.Path) -> list[Run]:
  """Every run of the study, the pretraining(s) first. Each run after it starts from its backbone's
  source (or V6) checkpoint with `init_from` and takes `finetune_steps` steps (resolved to > 0 by
  then)."""
  if config.finetune_steps <= 0:
    raise StudyError('finetune_steps must be resolved to a positive number before planning')
  if not config.seeds:
    raise StudyError('seeds is empty: give at least one seed (3 or more to see the spread)')
  study_dir = study_dir.absolute()
  runs, starts, common = [], {}, {}
  for backbone in backbone_axis(config):
    root = study_dir / 'runs' / backbone if backbone else study_dir / 'runs'
    common[backbone] = {**trees.flatten(config.common), **data_overrides(config),
                        **({'model.backbone': backbone} if backbone else {})}
    if config.source_checkpoint:
      source = _path(config.source_checkpoint)
      runs.append(Run('source_only', None, source))
    else:
      source = str(root / 'source_only')
      overrides = {**common[backbone], **trees.flatten(config.pretrain.overrides), 'seed': config.pretrain.seed}
      if config.pretrain.init_from:  # '{backbone}' in it: one encoder per backbone
        overrides['init_from'] = _path(config.pretrain.init_from.replace('{backbone}', backbone))
      if config.pretrain.steps > 0:
        overrides['num_train_steps'] = config.pretrain.steps
      runs.append(Run('source_only', None, source, config.pretrain.preset, overrides, backbone))
    starts[backbone] = {'source': source}
    if config.v6_checkpoint:
      starts[backbone]['v6'] = _path(config.v6_checkpoint)
      runs.append(Run('v6', None, starts[backbone]['v6']))
  # Seed-major, then backbone: a study stopped early has every backbone and protocol at its first seeds.
  for seed in config.seeds:
    for backbone in backbone_axis(config):
      root = study_dir / 'runs' / backbone if backbone else study_dir / 'runs'
      for row in rows(config):
        if not row.protocol:
          continue
        p = config.protocols[row.protocol]
        overrides = {**common[backbone], **trees.flatten(p.overrides), 'seed': int(seed),
                     'num_train_steps': int(config.finetune_steps), 'init_from': starts[backbone][p.start]}
        if row.ratio is not None:
          overrides['data.weights.nyu'] = row.ratio
          overrides['data.weights.lilocbench'] = round(1.0 - row.ratio, 10)
        workdir = root / row.name / f'seed_{seed}'
        runs.append(Run(row.name, int(seed), str(workdir), p.preset, overrides, backbone))
  return runs


def run_status(steps_done: Sequence[int], total_steps: int) -> str:
  """'finished' (a checkpoint at >= total_steps: skip), 'partial' (resume) or 'new'."""
  if not steps_done:
    return 'new'
  return 'finished' if max(steps_done) >= total_steps else 'partial'


# --------------------------------------------------------------------------------------------------
# Aggregation and the table: pure functions of eval.py's JSON.


def metric(result: Mapping[str, Any], path: Sequence[str]) -> float | None:
  """The number at `path` of one eval.py JSON object, or None where it is absent."""
  value: Any = result
  for key in path:
    if not isinstance(value, Mapping) or value.get(key) is None:
      return None
    value = value[key]
  return float(value)


def aggregate(values: Sequence[float | None]) -> dict[str, Any] | None:
  """Mean, sample standard deviation (ddof 1; 0 for one value), min, max and n of the non-None
  values; None when there are none."""
  v = [float(x) for x in values if x is not None]
  if not v:
    return None
  mean = sum(v) / len(v)
  std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
  return {'mean': mean, 'std': std, 'min': min(v), 'max': max(v), 'n': len(v), 'values': v}


def cell(stats: Mapping[str, Any] | None, scale: float = 1.0, decimals: int = 3) -> str:
  """'0.512 ± 0.013' (mean ± sample std), '0.512' for a single value, '—' for none."""
  if stats is None:
    return '—'
  if stats['n'] == 1:
    return f"{scale * stats['mean']:.{decimals}f}"
  return f"{scale * stats['mean']:.{decimals}f} ± {scale * stats['std']:.{decimals}f}"


def summarise(row_list: Sequence[Row], runs: Sequence[Run],
              results: Mapping[tuple[str, str], Mapping[str, Any]], backbone: str = '') -> dict[str, dict[str, Any]]:
  """{row: {'label', 'seeds', column: aggregate}} from results[(run id, role)] = eval.py JSON, over
  the runs of one backbone ('' = no backbone axis)."""
  out = {}
  for row in row_list:
    members = [r for r in runs if r.row == row.name and r.backbone == backbone]
    entry: dict[str, Any] = {'label': row.label, 'protocol': row.protocol, 'ratio': row.ratio,
                             'seeds': [r.seed for r in members]}
    for key, role, path, *_ in COLUMNS:
      entry[key] = aggregate([metric(results[(r.id, role)], path) if (r.id, role) in results else None
                              for r in members])
    out[row.name] = entry
  return out


def markdown_table(summary: Mapping[str, Mapping[str, Any]], reference_rows: Mapping[str, str],
                   with_reference: bool = True) -> str:
  """Our rows, then the reference's published rows (docs/evaluation.md), marked as real data and other protocols."""
  analogue = {ours: ref for ref, ours in reference_rows.items()}
  header = ['row', 'seeds', *(c[3] for c in COLUMNS)]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, entry in summary.items():
    label = f"{entry['label']} `{name}`" + (f' ~ {analogue[name]}' if name in analogue else '')
    cells = [cell(entry[k], s, d) for k, _, _, _, s, d in COLUMNS]
    lines.append(f"| {label} | {len(entry['seeds'])} | " + ' | '.join(cells) + ' |')
  for ref, values in REFERENCE.items() if with_reference else ():
    stats = {k: {'mean': v, 'n': 1} for k, v in values.items()}
    lines.append(f'| *reference {ref}: {REFERENCE_LABELS[ref]} (published; real data, other protocol)* | — | '
                 + ' | '.join(f'*{cell(stats.get(k), s, d)}*' for k, _, _, _, s, d in COLUMNS) + ' |')
  return '\n'.join(lines) + '\n'


def difference(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> tuple[float, float] | None:
  """mean(a) - mean(b) and its standard error sqrt(s_a²/n_a + s_b²/n_b) (a single value counts as
  exact), or None when either is missing."""
  if a is None or b is None:
    return None
  return a['mean'] - b['mean'], math.sqrt(a['std'] ** 2 / a['n'] + b['std'] ** 2 / b['n'])


def comparisons(summary: Mapping[str, Mapping[str, Any]], reference_rows: Mapping[str, str]) -> list[str]:
  """The differences the reference's finding is about, as Markdown bullet lines."""
  v5, v7, v8 = (reference_rows.get(k) for k in ('V5', 'V7', 'V8'))
  checks = (
      ('source val RMSE', 'source_rmse', 1.0, 3, 'm', ((v8, v5), (v8, v7))),
      ('source val mIoU', 'source_miou', 100.0, 1, 'pp', ((v8, v5), (v8, v7))),
      ('target val RMSE', 'target_rmse', 1.0, 3, 'm', ((v7, v8), (v7, v5))),
      ('corridor RMSE', 'deployment_rmse', 1.0, 3, 'm', ((v7, v8), (v7, v5))),
      ('corridor RMSE, median-scaled', 'deployment_rmse_ms', 1.0, 3, 'm', ((v7, v8),)),
  )
  out = []
  for title, key, scale, decimals, unit, pairs in checks:
    for a, b in pairs:
      if a not in summary or b not in summary:
        continue
      d = difference(summary[a][key], summary[b][key])
      if d is not None:
        out.append(f'- {title}: `{a}` − `{b}` = {scale * d[0]:+.{decimals}f} ± {scale * d[1]:.{decimals}f} {unit}')
  return out


def report(summary: Mapping[str, Mapping[str, Any]], reference_rows: Mapping[str, str],
           steps: Mapping[str, int], sets: Mapping[str, str]) -> str:
  """study.md: the table, its reading aids and the differences."""
  start = f"pretraining {steps['pretrain']} steps" if steps.get('pretrain') else 'source model given'
  lines = [
      '# Domain-mixing study', '',
      f"Source `{sets['source']}`, target `{sets['target']}`, deployment `{sets['deployment']}`; "
      f"{start}, every other row {steps['finetune']} steps from it.", '',
      markdown_table(summary, reference_rows),
      'Cells: mean ± sample standard deviation (ddof 1) over the seeds (`study.json` holds every '
      'value, min and max). RMSE: mean over frames; source and target on their validation splits, '
      'the corridor set (never trained on) on all frames, 0.1-5 m, confidence >= 0.5. `~ Vn`: the '
      "reference's analogous protocol. The reference rows are its published numbers (docs/evaluation.md) on real "
      'data with its own protocol (V7/V8/V9 trained 50 epochs of different lengths, LILocBench on a '
      'leaky random split, NYU by per-batch averages): a different protocol, beside ours for the '
      'shape of the trade-off only.', '',
      '## Differences (± standard error of the difference of means)', '',
      *(comparisons(summary, reference_rows) or ['- (not enough rows)']), '',
  ]
  return '\n'.join(lines)


# The capacity question: on which two errors a row can be beaten (lower is better on both).
PLANES = {'source-target': ('source_rmse', 'target_rmse'), 'source-corridor': ('source_rmse', 'deployment_rmse')}


def dominating(summary: Mapping[str, Mapping[str, Any]], name: str, plane: Sequence[str]) -> list[dict[str, Any]]:
  """The rows that Pareto-dominate row `name` on the two columns of `plane`: mean no higher on both
  and lower on at least one. Each: {'row', 'differences': [(mean difference, its standard error)
  per column], 'clear': every difference more than 2 standard errors below 0}."""
  this = summary[name]
  out = []
  for other, entry in summary.items():
    if other == name:
      continue
    diffs = [difference(entry[k], this[k]) for k in plane]
    if any(d is None for d in diffs):
      continue
    if all(d <= 0 for d, _ in diffs) and any(d < 0 for d, _ in diffs):
      out.append({'row': other, 'differences': diffs, 'clear': all(d + 2 * se < 0 for d, se in diffs)})
  return out


def _dominance_cell(found: Sequence[Mapping[str, Any]]) -> str:
  if not found:
    return 'none'
  return '; '.join(f"{'**clearly** ' if f['clear'] else ''}`{f['row']}` ("
                   + ', '.join(f'{d:+.3f} ± {se:.3f}' for d, se in f['differences']) + ')' for f in found)


def capacity_table(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
  """One line per backbone and row: the errors, and the rows that dominate it on (source, target)
  and on (source, corridor) RMSE with the differences ± standard errors."""
  keys = ('source_rmse', 'target_rmse', 'deployment_rmse', 'source_miou')
  titles = {c[0]: (c[3], c[4], c[5]) for c in COLUMNS}
  header = ['backbone', 'row', 'seeds', *(titles[k][0] for k in keys),
            'dominated on (source, target) by', 'dominated on (source, corridor) by']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for backbone, summary in summaries.items():
    for name, entry in summary.items():
      cells = [cell(entry[k], titles[k][1], titles[k][2]) for k in keys]
      dominance = [_dominance_cell(dominating(summary, name, plane)) for plane in PLANES.values()]
      lines.append(f"| {backbone} | `{name}` | {len(entry['seeds'])} | " + ' | '.join(cells + dominance) + ' |')
  return '\n'.join(lines) + '\n'


def capacity_report(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], reference_rows: Mapping[str, str],
                    steps: Mapping[str, int], sets: Mapping[str, str]) -> str:
  """study.md with a backbone axis: the capacity table, then each backbone's table and differences."""
  joint = reference_rows.get('V8', '')
  lines = [
      '# Domain-mixing study: the capacity axis', '',
      f"Source `{sets['source']}`, target `{sets['target']}`, deployment `{sets['deployment']}`; backbones "
      f"{', '.join(summaries)}; per backbone one pretraining of {steps['pretrain']} steps, every other row "
      f"{steps['finetune']} steps from that backbone's pretraining.", '',
      '## Is joint training Pareto-dominated, and does that change with capacity?', '',
      capacity_table(summaries),
      'A row is dominated on a plane when another row of the same backbone has a mean error no higher on '
      'both and lower on one; the numbers are those differences (other − this, m) ± their standard errors; '
      '**clearly**: both more than 2 standard errors below 0. The pretraining row is one run: its spread is '
      'not measured and counts as 0. Errors: mean ± sample standard deviation (ddof 1) over the seeds.', '',
  ]
  if joint:
    lines += [f'`{joint}` (the V8-like row) per backbone:', '']
    for backbone, summary in summaries.items():
      if joint in summary:
        found = {plane: dominating(summary, joint, cols) for plane, cols in PLANES.items()}
        lines.append(f'- {backbone}: ' + '; '.join(f'{plane}: {_dominance_cell(f)}' for plane, f in found.items()))
    lines.append('')
  for backbone, summary in summaries.items():
    lines += [f'## {backbone}', '', markdown_table(summary, reference_rows, with_reference=False),
              *(comparisons(summary, reference_rows) or ['- (not enough rows)']), '']
  return '\n'.join(lines)


def capacity_plot(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], out: pathlib.Path) -> None:
  """Every backbone's rows in the two planes of PLANES: colour = backbone, marker = row, error bars
  = sample std over seeds."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
  names = list(dict.fromkeys(n for s in summaries.values() for n in s))
  markers = dict(zip(names, 'osD^vP*Xh<>' * 3))
  for ax, (xkey, ykey) in zip(axes, PLANES.values()):
    for b, (backbone, summary) in enumerate(summaries.items()):
      colour = f'C{b}'
      for name, e in summary.items():
        if not e[xkey] or not e[ykey]:
          continue
        ax.errorbar(e[xkey]['mean'], e[ykey]['mean'], xerr=e[xkey]['std'], yerr=e[ykey]['std'], color=colour,
                    marker=markers[name], markersize=9 if name == 'source_only' else 7, capsize=3, linestyle='none',
                    label=f'{backbone}: {name}')
    ax.set_xlabel('source val RMSE (m)')
    ax.set_ylabel({'target_rmse': 'target val RMSE (m)', 'deployment_rmse': 'deployment (corridor) RMSE (m)'}[ykey])
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, ncol=2)
  fig.suptitle('Each backbone\'s protocols (colour = backbone, marker = row); lower left is better; '
               'error bars = std over seeds', fontsize=10)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def pareto_plot(summary: Mapping[str, Mapping[str, Any]], out: pathlib.Path) -> None:
  """Source val RMSE against target val RMSE (left) and corridor RMSE (right); protocols with a
  ratio sweep as curves through their ratios; error bars = sample std over seeds."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
  groups: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
  for name, entry in summary.items():
    groups.setdefault(entry['protocol'] or name, []).append((name, entry))
  markers = 'osD^vP*Xh<>'
  for ax, ykey, ylabel in ((axes[0], 'target_rmse', 'target val RMSE (m)'),
                           (axes[1], 'deployment_rmse', 'deployment (corridor) RMSE (m)')):
    for g, (group, members) in enumerate(groups.items()):
      pts = [(n, e) for n, e in members if e['source_rmse'] and e[ykey]]
      if not pts:
        continue
      pts.sort(key=lambda p: p[1]['ratio'] if p[1]['ratio'] is not None else -1)
      xs = [e['source_rmse']['mean'] for _, e in pts]
      ys = [e[ykey]['mean'] for _, e in pts]
      xerr = [e['source_rmse']['std'] for _, e in pts]
      yerr = [e[ykey]['std'] for _, e in pts]
      start = not members[0][1]['protocol']
      ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker='*' if start else markers[g % len(markers)],
                  markersize=14 if start else 7, capsize=3, linestyle='-' if len(pts) > 1 else 'none',
                  label=group if len(pts) > 1 else pts[0][0])
      if len(pts) > 1:
        for (_, e), x, y in zip(pts, xs, ys):
          ax.annotate(f"{e['ratio']:g}", (x, y), textcoords='offset points', xytext=(5, 5), fontsize=8)
    ax.set_xlabel('source val RMSE (m)')
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle('Source vs target error (lower left is better); curve labels = source share; '
               'error bars = std over seeds', fontsize=10)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Running: train.py and eval.py subprocesses.


def _load_preset(preset: str) -> ml_collections.ConfigDict:
  from efficientvit_jax import config_checks

  # train.py runs in the repository root (`configs/v7.py`: the packaged preset v7); an absolute preset stays as it is
  path = pathlib.Path(config_checks.config_file(str(ROOT / preset)))
  if not path.is_file():
    raise StudyError(f'training preset {preset!r} not found')
  spec = importlib.util.spec_from_file_location(f'_preset_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def train_config(run: Run) -> ml_collections.ConfigDict:
  """The training config train.py will build for a run (a typo in the overrides fails here)."""
  config = _load_preset(run.preset)
  config.lock()
  try:
    config.update_from_flattened_dict(dict(run.overrides))
  except (KeyError, TypeError, AttributeError) as e:
    raise StudyError(f'{run.id}: overrides do not fit {run.preset}: {e}') from e
  return config


def resolve_finetune_steps(config: ml_collections.ConfigDict) -> int:
  """finetune_steps, or finetune_epochs passes of the target alone at the common batch size."""
  if config.finetune_steps > 0:
    return int(config.finetune_steps)
  from efficientvit_jax import train_loop

  probe = Run('probe', 0, '', 'configs/v7.py', {**trees.flatten(config.common), **data_overrides(config),
                                                 'data.mode': 'lilocbench'})
  return int(config.finetune_epochs) * train_loop.steps_plan(train_config(probe))['steps_per_epoch']


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))  # runs share their compilations
  return env


def _tail(path: pathlib.Path, n: int = 30) -> str:
  return '\n'.join(path.read_text(errors='replace').splitlines()[-n:]) if path.exists() else ''


def train(run: Run, total_steps: int, log: Any) -> str:
  """Trains a run unless finished; returns what it did ('skipped', 'trained', 'resumed')."""
  from efficientvit_jax import checkpointing

  workdir = pathlib.Path(run.checkpoint)
  record = workdir / 'study_run.json'
  command = train_command(run, workdir)
  flags_now = command[2:]
  if record.exists() and json.loads(record.read_text())['flags'] != flags_now:
    raise StudyError(f'{workdir} was started with other flags than this study config gives now '
                     f'(see {record}); delete that workdir to rerun it, or restore the config')
  try:
    done = checkpointing.steps(workdir) if (workdir / 'checkpoints').exists() else []
  except checkpointing.CheckpointError:
    done = []
  status = run_status(done, total_steps)
  if status == 'finished':
    return 'skipped'
  workdir.mkdir(parents=True, exist_ok=True)
  record.write_text(json.dumps({'flags': flags_now, 'total_steps': total_steps}, indent=1) + '\n')
  log_path = workdir / 'train.log'
  print(f'  $ {shlex.join(command[1:])}', file=log, flush=True)
  with open(log_path, 'a') as f:
    proc = subprocess.run(command, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, check=False)
  if proc.returncode != 0:
    raise StudyError(f'{run.id}: train.py exited with {proc.returncode}; log {log_path}:\n{_tail(log_path)}')
  return 'resumed' if status == 'partial' else 'trained'


def eval_path(study_dir: pathlib.Path, run: Run, role: str) -> pathlib.Path:
  return study_dir / 'evals' / run.id / f'{role}.json'


def evaluate(study_dir: pathlib.Path, runs: Sequence[Run], role: str, expected_step: Mapping[str, int | None],
             data: str, size: tuple[int, int], batch_size: int, log: Any) -> int:
  """Evaluates every run without a current result for `role` in one eval.py call (one process, one
  compilation), then writes each checkpoint's JSON object to evals/<run>/<role>.json. Returns
  the number of checkpoints evaluated."""
  dataset, split = SETS[role]
  pending = []
  for run in runs:
    path = eval_path(study_dir, run, role)
    if path.exists():
      old = json.loads(path.read_text())
      if old.get('checkpoint') == run.checkpoint and expected_step[run.id] in (None, old.get('step')):
        continue
    pending.append(run)
  if not pending:
    return 0
  batch = study_dir / 'evals' / f'_{role}.json'
  command = [sys.executable, 'eval.py', *(a for r in pending for a in ('--checkpoint', r.checkpoint)),
             '--dataset', dataset, '--data', data, '--split', split, '--size', f'{size[0]}x{size[1]}',
             '--batch-size', str(batch_size), '--out', str(batch), '--overwrite']
  print(f'  $ {shlex.join(command[1:])}', file=log, flush=True)
  log_path = study_dir / 'evals' / f'_{role}.log'
  log_path.parent.mkdir(parents=True, exist_ok=True)
  with open(log_path, 'w') as f:
    proc = subprocess.run(command, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, check=False)
  if proc.returncode != 0:
    raise StudyError(f'eval.py on {dataset} exited with {proc.returncode}; log {log_path}:\n{_tail(log_path)}')
  results = json.loads(batch.read_text())
  results = results if isinstance(results, list) else [results]
  for run, result in zip(pending, results, strict=True):
    if result['checkpoint'] != run.checkpoint:
      raise StudyError(f'eval.py returned {result["checkpoint"]} where {run.checkpoint} was expected')
    path = eval_path(study_dir, run, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + '\n')
  batch.unlink()
  batch.with_suffix('.md').unlink(missing_ok=True)
  return len(pending)


def _train_all(trained: Sequence[Run], total: Mapping[str, int], log: Any, t0: float) -> None:
  """Trains the runs in order (the pretraining first, then every run that starts from it), printing
  each run's time and the study's rate; t0: the study's start (time.time())."""
  from efficientvit_jax import console

  progress = console.Progress(sum(total[r.id] for r in trained), 'study', unit='step', quiet=True)
  for i, run in enumerate(trained, 1):
    t = time.time()
    print(f'[{i}/{len(trained)}] {run.id} ({total[run.id]} steps) ...', flush=True)
    what = train(run, total[run.id], log)
    progress.update(total[run.id])
    rates = progress.describe()  # training steps of the whole study, from the end of the first run
    print(f'[{i}/{len(trained)}] {run.id}: {what} in {(time.time() - t) / 60:.1f} min '
          f'(study {(time.time() - t0) / 60:.1f} min' + (f'; {rates}' if rates else '') + ')', flush=True)


def _write_report(config: ml_collections.ConfigDict, study_dir: pathlib.Path, runs: Sequence[Run],
                  row_list: Sequence[Row], pretrain_steps: int | None, data: Mapping[str, str]) -> list[str]:
  """Writes and prints the table (study.md), the numbers (study.json) and the plots from the runs'
  evaluations; returns the plots' file names."""
  results = {(r.id, role): json.loads(eval_path(study_dir, r, role).read_text()) for r in runs for role in SETS}
  axis = backbone_axis(config)
  steps = {'pretrain': pretrain_steps, 'finetune': config.finetune_steps}
  sets = {role: data[role] for role in SETS}
  if axis == ('',):
    summary = summarise(row_list, runs, results)
    text, plots = report(summary, dict(config.reference_rows), steps, sets), ['pareto.png']
    pareto_plot(summary, study_dir / 'pareto.png')
  else:
    summary = {b: summarise(row_list, runs, results, b) for b in axis}
    text = capacity_report(summary, dict(config.reference_rows), steps, sets)
    capacity_plot(summary, study_dir / 'capacity.png')
    for b in axis:
      pareto_plot(summary[b], study_dir / f'pareto_{b}.png')
    plots = ['capacity.png', *(f'pareto_{b}.png' for b in axis)]
  (study_dir / 'study.md').write_text(text)
  (study_dir / 'study.json').write_text(json.dumps(
      {'rows': summary, 'backbones': [b for b in axis if b], 'steps': steps, 'sets': sets,
       'spread': 'sample standard deviation (ddof 1)', 'reference': REFERENCE,
       'runs': {r.id: r.checkpoint for r in runs}}, indent=1) + '\n')
  print(text)
  return plots


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  study_dir = pathlib.Path(_WORKDIR.value).absolute()
  t0 = time.time()
  log = sys.stdout
  try:
    with config.unlocked():
      config.finetune_steps = resolve_finetune_steps(config)
    runs = plan(config, study_dir)
    row_list = rows(config)
    configs = {r.id: train_config(r) for r in runs if r.trains}
  except (StudyError, ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  from data_pipelines import datasets
  from efficientvit_jax import train_loop

  try:
    total = {rid: train_loop.steps_plan(c)['num_steps'] for rid, c in configs.items()}
  except (ValueError, FileNotFoundError) as e:
    print(f'error: the training data: {e}', file=sys.stderr)
    return 2
  any_config = next(iter(configs.values()), None) or train_config(
      Run('probe', 0, '', 'configs/default.py', {**trees.flatten(config.common), **data_overrides(config)}))
  paths = datasets.resolve_paths(any_config.data)
  data = {'source': paths['nyu_root'], 'target': paths['lilocbench_manifest'],
          'deployment': paths['corridor_manifest']}
  size = tuple(int(s) for s in any_config.data.input_size)
  study_dir.mkdir(parents=True, exist_ok=True)
  commands = [{'run': r.id, 'total_steps': total.get(r.id),
               'command': shlex.join(train_command(r, pathlib.Path(r.checkpoint))[1:]) if r.trains else None,
               'checkpoint': r.checkpoint} for r in runs]
  (study_dir / 'plan.json').write_text(json.dumps(commands, indent=1) + '\n')
  trained = [r for r in runs if r.trains]
  axis = ', '.join(b for b in backbone_axis(config) if b)
  print(f'{len(trained)} training runs ({len(config.seeds)} seeds' + (f'; backbones {axis}' if axis else '')
        + f'; {config.finetune_steps} steps after the source model), evaluation on '
        + ', '.join(f'{k}={v}' for k, v in data.items()) + f'; plan in {study_dir}/plan.json', flush=True)
  if _DRY_RUN.value:
    for c in commands:
      print(f"{c['run']}: {c['command'] or 'given checkpoint ' + c['checkpoint']}")
    return 0

  try:
    _train_all(trained, total, log, t0)
    expected = {r.id: total.get(r.id) for r in runs}
    for role in SETS:
      t = time.time()
      n = evaluate(study_dir, runs, role, expected, data[role], size, config.eval.batch_size, log)
      print(f'eval {role} ({SETS[role][0]}): {n} checkpoints in {(time.time() - t) / 60:.1f} min', flush=True)
  except StudyError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  plots = _write_report(config, study_dir, runs, row_list, total.get(runs[0].id), data)
  print(f"wrote {study_dir}/study.md, study.json, {', '.join(plots)} in {(time.time() - t0) / 60:.1f} min")
  return 0


def run():
  """The `evit-study` command."""
  from efficientvit_jax import config_checks

  app.run(lambda argv: sys.exit(main(argv)), flags_parser=config_checks.parse_flags)


if __name__ == '__main__':
  run()

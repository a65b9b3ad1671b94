"""The domain-mixing study: its plan, skip logic and table (fast), and a toy study end to end whose
table equals eval.py rerun on the saved checkpoints (slow)."""

import io
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from conftest import ROOT
from ml_collections import config_flags

from configs import study_synthetic
from efficientvit_jax import checkpointing
from efficientvit_jax import config_checks
from efficientvit_jax import convert
from efficientvit_jax import eval as eval_script
from studies import domain_mixing as dm


def _config(**changes):
  c = study_synthetic.get_config()
  for k, v in changes.items():
    c[k] = v
  return c


def test_plan_pretrains_once_then_every_protocol_takes_the_same_steps_from_it(tmp_path):
  config = _config(data_root='/data/syn', seeds=(0, 1, 2))
  runs = dm.plan(config, tmp_path)
  pre, rest = runs[0], runs[1:]
  assert pre.id == 'source_only' and pre.trains
  assert pre.overrides['num_train_steps'] == config.pretrain.steps and 'init_from' not in pre.overrides
  source = str(tmp_path / 'runs' / 'source_only')
  assert pre.checkpoint == source
  assert all(r.overrides['num_train_steps'] == config.finetune_steps for r in rest)
  assert all(r.overrides['init_from'] == source for r in rest)
  assert all(r.overrides['data.root'] == '/data/syn' for r in runs)
  ids = [r.id for r in rest]
  assert len(ids) == len(set(ids)) == 7 * 3
  by_row = {}
  for r in rest:
    by_row.setdefault(r.row, []).append(r.seed)
  assert list(by_row) == ['source_continued', 'sequential', 'joint@0.25', 'joint@0.5', 'joint@0.75',
                          'downsample@0.5', 'concat']
  assert all(seeds == [0, 1, 2] for seeds in by_row.values())
  assert [r.overrides['seed'] for r in rest[:7]] == [0] * 7  # seed-major order
  modes = {r.row: r.overrides.get('data.mode') for r in rest}
  assert modes['source_continued'] == 'nyu' and modes['downsample@0.5'] == 'downsample' and modes['concat'] == 'concat'
  for r in rest:
    if r.row.startswith(('joint@', 'downsample@')):
      share = float(r.row.split('@')[1])
      assert r.overrides['data.weights.nyu'] == share
      assert r.overrides['data.weights.nyu'] + r.overrides['data.weights.lilocbench'] == pytest.approx(1)
  assert not any(r.row == 'sequential_v6' for r in runs)


def test_plan_with_given_source_and_v6_checkpoints(tmp_path):
  config = _config(source_checkpoint='/ckpt/v5.pt', v6_checkpoint='/ckpt/v6', seeds=(3,))
  runs = dm.plan(config, tmp_path)
  starts = [r for r in runs if not r.trains]
  assert [(r.id, r.checkpoint) for r in starts] == [('source_only', '/ckpt/v5.pt'), ('v6', '/ckpt/v6')]
  v9 = [r for r in runs if r.row == 'sequential_v6']
  assert len(v9) == 1 and v9[0].overrides['init_from'] == '/ckpt/v6' and v9[0].preset == 'configs/v9.py'
  assert all(r.overrides['init_from'] == '/ckpt/v5.pt' for r in runs if r.trains and r.row != 'sequential_v6')
  assert [row.name for row in dm.rows(config)][:3] == ['source_only', 'v6', 'source_continued']


def test_plan_refuses_unknown_protocols_and_no_seeds(tmp_path):
  with pytest.raises(dm.StudyError, match='nope'):
    dm.plan(_config(order=('sequential', 'nope')), tmp_path)
  with pytest.raises(dm.StudyError, match='seeds'):
    dm.plan(_config(seeds=()), tmp_path)


def test_command_line_flags_give_the_config_the_study_checks(tmp_path, monkeypatch):
  """Each run's `--config.k=v` text, parsed as train.py parses it, equals the in-process config."""
  for run in dm.plan(_config(), tmp_path):
    if not run.trains:
      continue
    expected = dm.train_config(run)
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True)
    flags_text = [a for a in dm.train_command(run, tmp_path) if a.startswith('--config.')]
    argv = ['train.py', f'--config={config_checks.config_file(str(ROOT / run.preset))}', *flags_text]
    monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads its overrides from sys.argv
    fv(argv)
    assert fv.config.to_dict() == expected.to_dict(), run.id
  assert expected.num_train_steps == study_synthetic.get_config().finetune_steps


def test_overrides_that_do_not_fit_the_preset_fail_before_any_run(tmp_path):
  config = _config()
  config.common['optimiser'] = {'encoder_lr': 1.0}
  run = dm.plan(config, tmp_path)[0]
  with pytest.raises(dm.StudyError, match='optimiser'):
    dm.train_config(run)


def test_run_status():
  assert dm.run_status([], 150) == 'new'
  assert dm.run_status([50, 100], 150) == 'partial'
  assert dm.run_status([100, 150], 150) == 'finished'


def _tiny_checkpoint(root, step):
  ckpt = checkpointing.Checkpoint(params={'w': np.zeros((2,), np.float32)}, batch_stats={},
                                  kendall=checkpointing.default_kendall(), meta={'step': step})
  checkpointing.write_folder(root, ckpt)


def test_finished_runs_are_skipped_and_partial_ones_resumed(tmp_path, monkeypatch):
  run = dm.Run('sequential', 0, str(tmp_path / 'w'), 'configs/v7.py', {'num_train_steps': 5, 'seed': 0})
  calls = []
  monkeypatch.setattr(dm.subprocess, 'run',
                      lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
  log = io.StringIO()
  assert dm.train(run, 5, log) == 'trained' and len(calls) == 1  # new: launched
  _tiny_checkpoint(tmp_path / 'w' / 'checkpoints', 3)
  assert dm.train(run, 5, log) == 'resumed' and len(calls) == 2
  assert calls[1][1:4] == ['train.py', '--config', 'configs/v7.py']
  assert dm.train(run, 3, log) == 'skipped' and len(calls) == 2  # finished: nothing launched
  changed = dm.Run('sequential', 0, run.checkpoint, 'configs/v7.py', {'num_train_steps': 5, 'seed': 1})
  with pytest.raises(dm.StudyError, match='other flags'):
    dm.train(changed, 5, log)


def test_evaluations_with_a_current_result_are_skipped(tmp_path, monkeypatch):
  runs = [dm.Run('sequential', s, f'/w/{s}', 'configs/v7.py') for s in (0, 1)]
  done = dm.eval_path(tmp_path, runs[0], 'source')
  done.parent.mkdir(parents=True)
  done.write_text(json.dumps({'checkpoint': '/w/0', 'step': 150}))
  calls = []

  def fake_eval(cmd, **kw):
    calls.append(cmd)
    out = pathlib.Path(cmd[cmd.index('--out') + 1])
    out.write_text(json.dumps({'checkpoint': cmd[cmd.index('--checkpoint') + 1], 'step': 150}))
    return subprocess.CompletedProcess(cmd, 0)

  monkeypatch.setattr(dm.subprocess, 'run', fake_eval)
  expected = {r.id: 150 for r in runs}
  assert dm.evaluate(tmp_path, runs, 'source', expected, '/d/nyu', (96, 128), 8, io.StringIO()) == 1
  assert calls[0].count('--checkpoint') == 1 and '/w/1' in calls[0]
  assert calls[0][calls[0].index('--dataset') + 1] == 'nyu' and calls[0][calls[0].index('--split') + 1] == 'val'
  assert json.loads(dm.eval_path(tmp_path, runs[1], 'source').read_text())['checkpoint'] == '/w/1'
  assert dm.evaluate(tmp_path, runs, 'source', expected, '/d/nyu', (96, 128), 8, io.StringIO()) == 0
  expected[runs[0].id] = 300  # retrained to another length: evaluated again
  assert dm.evaluate(tmp_path, runs, 'source', expected, '/d/nyu', (96, 128), 8, io.StringIO()) == 1


def test_aggregate_and_cells():
  stats = dm.aggregate([1.0, None, 2.0, 3.0])
  assert stats['mean'] == 2.0 and stats['std'] == 1.0 and (stats['min'], stats['max'], stats['n']) == (1.0, 3.0, 3)
  assert dm.cell(stats) == '2.000 ± 1.000'
  assert dm.cell(dm.aggregate([0.6371]), 100.0, 1) == '63.7'
  assert dm.aggregate([None]) is None and dm.cell(None) == '—'
  assert dm.metric({'seg': {'miou': 0.5}}, ('seg', 'miou')) == 0.5
  assert dm.metric({'seg': None}, ('seg', 'miou')) is None


def _summary():
  def row(label, protocol, ratio, src, tgt, miou=(0.6, 0.62, 0.64), corridor=(2.0, 2.1, 2.2)):
    return {'label': label, 'protocol': protocol, 'ratio': ratio, 'seeds': [0, 1, 2] if protocol else [None],
            'deployment_rmse': dm.aggregate(corridor), 'deployment_rmse_ms': dm.aggregate([1.0] * len(corridor)),
            'source_rmse': dm.aggregate(src), 'source_miou': dm.aggregate(miou), 'target_rmse': dm.aggregate(tgt)}

  return {'source_only': row('source only', '', None, [0.5], [3.0], [0.63], [2.3]),
          'sequential': row('sequential', 'sequential', None, [1.0, 1.1, 1.2], [0.4, 0.5, 0.6]),
          'joint@0.5': row('joint', 'joint', 0.5, [0.5, 0.6, 0.7], [0.9, 1.0, 1.1])}


def test_table_marks_the_reference_rows_and_reports_differences():
  refs = {'V5': 'source_only', 'V7': 'sequential', 'V8': 'joint@0.5', 'V9': 'sequential_v6'}
  table = dm.markdown_table(_summary(), refs)
  lines = table.splitlines()
  assert lines[0].startswith('| row | seeds | corridor RMSE (m) | corridor RMSE, median-scaled (m) |')
  assert ('| sequential `sequential` ~ V7 | 3 | 2.100 ± 0.100 | 1.000 ± 0.000 | 1.100 ± 0.100 | 62.0 ± 2.0 | '
          '0.500 ± 0.100 |') in lines
  assert '| source only `source_only` ~ V5 | 1 | 2.300 | 1.000 | 0.500 | 63.0 | 3.000 |' in lines
  ref = [line for line in lines if 'reference V8' in line]
  assert len(ref) == 1 and 'real data, other protocol' in ref[0] and '*0.592*' in ref[0] and '*62.9*' in ref[0]
  diffs = dm.comparisons(_summary(), refs)
  assert '- source val RMSE: `joint@0.5` − `source_only` = +0.100 ± 0.058 m' in diffs
  assert '- target val RMSE: `sequential` − `joint@0.5` = -0.500 ± 0.082 m' in diffs
  text = dm.report(_summary(), refs, {'pretrain': 500, 'finetune': 150},
                   {'source': 's', 'target': 't', 'deployment': 'd'})
  assert 'sample standard deviation' in text and 'pretraining 500 steps, every other row 150 steps' in text


def test_pareto_plot_writes_a_png(tmp_path):
  dm.pareto_plot(_summary(), tmp_path / 'p.png')
  assert (tmp_path / 'p.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# --------------------------------------------------------------------------------------------------
# The whole study at toy size.

TOY = ['--config.pretrain.steps=2', '--config.finetune_steps=2', '--config.seeds=(0, 1)',
       '--config.common.data.input_size=(48, 64)', '--config.common.batch_size=4', '--config.eval.batch_size=4',
       "--config.order=('sequential', 'joint', 'concat')", '--config.protocols.joint.ratios=(0.25, 0.5)']


def _study(study_dir, data):
  cmd = [sys.executable, '-m', 'studies.domain_mixing', '--config', 'configs/study_synthetic.py',
         '--workdir', str(study_dir), f'--config.data_root={data}', *TOY]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3000)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_toy_study_table_equals_eval_rerun_on_the_saved_checkpoints(tmp_path, synthetic_tiny):
  study_dir = tmp_path / 'study'
  _study(study_dir, synthetic_tiny)
  table = (study_dir / 'study.md').read_text()
  assert (study_dir / 'pareto.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  summary = json.loads((study_dir / 'study.json').read_text())
  rows = summary['rows']
  assert list(rows) == ['source_only', 'sequential', 'joint@0.25', 'joint@0.5', 'concat']
  assert 'reference V8' in table and '`joint@0.5` ~ V8' in table
  # Every run took its steps from the one pretrained checkpoint.
  pre = convert.load_any(study_dir / 'runs' / 'source_only')
  assert pre.step == 2
  for name in ('sequential', 'joint@0.25', 'joint@0.5', 'concat'):
    for seed in (0, 1):
      ckpt = convert.load_any(study_dir / 'runs' / name / f'seed_{seed}')
      assert ckpt.step == 2 and ckpt.meta['source'] == f"init_from:{study_dir / 'runs' / 'source_only'}"
  # eval.py rerun on the saved checkpoints gives the table's numbers.
  for name in ('source_only', 'joint@0.5'):
    runs = [study_dir / 'runs' / name] if name == 'source_only' else [
        study_dir / 'runs' / name / f'seed_{s}' for s in (0, 1)]
    rerun = {}
    for role, (dataset, split) in dm.SETS.items():
      data = {'nyu': synthetic_tiny / 'nyu', 'lilocbench': synthetic_tiny / 'lilocbench' / 'manifest.jsonl',
              'corridor': synthetic_tiny / 'corridor' / 'manifest.jsonl'}[dataset]
      out = tmp_path / 'rerun' / f'{name}_{role}.json'
      assert eval_script.main([*(a for r in runs for a in ('--checkpoint', str(r))), '--dataset', dataset,
                               '--data', str(data), '--split', split, '--size', '48x64', '--batch-size', '4',
                               '--out', str(out)]) == 0
      result = json.loads(out.read_text())
      rerun[role] = result if isinstance(result, list) else [result]
    for key, role, path, _, scale, decimals in dm.COLUMNS:
      values = [dm.metric(r, path) for r in rerun[role]]
      stats = rows[name][key]
      if values[0] is None:
        assert stats is None
        continue
      np.testing.assert_allclose(stats['values'], values, rtol=1e-6, err_msg=f'{name} {key}')
      expected = dm.aggregate(values)
      assert f'| {dm.cell(expected, scale, decimals)} |' in next(
          line for line in table.splitlines() if f'`{name}`' in line), (name, key)
  # Rerunning the study trains and evaluates nothing and writes the same table.
  out = _study(study_dir, synthetic_tiny)
  assert out.count(': skipped in') == 9 and out.count(': 0 checkpoints') == 3
  assert (study_dir / 'study.md').read_text() == table


# --------------------------------------------------------------------------------------------------
# The backbone axis (the capacity question).

B = ('efficientvit_b0', 'efficientvit_b2')


def test_backbone_axis_pretrains_each_backbone_once_and_starts_its_runs_from_it(tmp_path):
  config = _config(seeds=(0, 1), backbones=B, order=('source_continued', 'sequential', 'joint'))
  config.protocols.joint.ratios = (0.5,)
  config.pretrain.init_from = '/enc/imagenet_{backbone}'
  runs = dm.plan(config, tmp_path)
  pre = [r for r in runs if r.row == 'source_only']
  assert [r.id for r in runs[:2]] == [f'{b}/source_only' for b in B]  # every pretraining first
  assert [r.checkpoint for r in pre] == [str(tmp_path / 'runs' / b / 'source_only') for b in B]
  assert [r.overrides['init_from'] for r in pre] == [f'/enc/imagenet_{b}' for b in B]
  rest = runs[2:]
  assert len(rest) == len({r.id for r in rest}) == 2 * 3 * 2
  for r in runs:
    assert r.overrides['model.backbone'] == r.backbone and r.id.startswith(r.backbone + '/')
  for r in rest:
    assert r.overrides['init_from'] == str(tmp_path / 'runs' / r.backbone / 'source_only')
    assert r.checkpoint == str(tmp_path / 'runs' / r.backbone / r.row / f'seed_{r.seed}')
    assert dm.train_config(r).model.backbone == r.backbone
  # Seed-major, then backbone: a study stopped after its first third has both backbones at seed 0.
  assert [(r.seed, r.backbone) for r in rest[:6]] == [(0, B[0])] * 3 + [(0, B[1])] * 3
  assert dm.eval_path(tmp_path, rest[0], 'source') == (
      tmp_path / 'evals' / B[0] / 'source_continued' / 'seed_0' / 'source.json')
  # No axis: the layout and flags of a study without one, so its runs resume.
  plain = dm.plan(_config(seeds=(0,)), tmp_path)
  assert all(r.backbone == '' and 'model.backbone' not in r.overrides for r in plain)
  assert plain[1].checkpoint == str(tmp_path / 'runs' / 'source_continued' / 'seed_0')


def test_backbone_axis_refusals(tmp_path):
  with pytest.raises(dm.StudyError, match="unknown backbone 'efficientvit_b9'"):
    dm.plan(_config(backbones=('efficientvit_b0', 'efficientvit_b9')), tmp_path)
  with pytest.raises(dm.StudyError, match='twice'):
    dm.plan(_config(backbones=('efficientvit_b0', 'efficientvit_b0')), tmp_path)
  with pytest.raises(dm.StudyError, match='source_checkpoint'):
    dm.plan(_config(backbones=B, source_checkpoint='/ckpt/v5.pt'), tmp_path)


def test_the_capacity_presets_plan_three_protocols_per_backbone(tmp_path):
  from configs import study_backbones
  from configs import study_backbones_full

  cpu = study_backbones.get_config()
  runs = dm.plan(cpu, tmp_path)
  assert cpu.backbones == ('efficientvit_b0', 'efficientvit_b1', 'efficientvit_b2') and tuple(cpu.seeds) == (0, 1, 2)
  assert sorted({r.row for r in runs}) == ['joint@0.5', 'sequential', 'source_continued', 'source_only']
  assert len(runs) == 3 * (1 + 3 * 3)
  full = study_backbones_full.get_config()
  assert 'efficientvit_b3' in full.backbones and full.common.data.input_size == (240, 320)
  assert len(dm.plan(full, tmp_path)) == 4 * (1 + 5 * 3)
  # What each run's command line gives train.py is the config the study checked (one backbone's runs).
  for run in [r for r in runs if r.backbone == 'efficientvit_b2'][:2]:
    assert dm.train_config(run).model.backbone == 'efficientvit_b2'
    assert '--config.model.backbone=efficientvit_b2' in dm.train_command(run, tmp_path)


def _stats(*values):
  return dm.aggregate(values)


def test_dominating_rows_and_the_capacity_table():
  def row(src, tgt, corridor, seeds=3):
    return {'label': '', 'protocol': 'p', 'ratio': None, 'seeds': list(range(seeds)), 'source_rmse': src,
            'target_rmse': tgt, 'deployment_rmse': corridor, 'deployment_rmse_ms': None, 'source_miou': None}

  small = {'source_only': row(_stats(0.60), _stats(2.0), _stats(1.0), seeds=1),
           'sequential': row(_stats(1.0, 1.1, 1.2), _stats(0.3, 0.4, 0.5), _stats(0.5, 0.6, 0.7)),
           'joint@0.5': row(_stats(0.6, 0.7, 0.8), _stats(0.5, 0.6, 0.7), _stats(1.1, 1.2, 1.3))}
  # joint: worse than the pretraining on source (0.7 vs 0.6) and corridor (1.2 vs 1.0): dominated
  # there; on (source, target) neither sequential nor the pretraining beats it on both.
  assert dm.dominating(small, 'joint@0.5', dm.PLANES['source-target']) == []
  found = dm.dominating(small, 'joint@0.5', dm.PLANES['source-corridor'])
  assert [f['row'] for f in found] == ['source_only']
  (d_src, se_src), (d_cor, se_cor) = found[0]['differences']
  assert (d_src, d_cor) == pytest.approx((-0.1, -0.2)) and se_src == pytest.approx(0.1 / np.sqrt(3))
  assert not found[0]['clear']  # -0.1 is less than 2 standard errors (0.115) below 0
  big = {k: dict(v) for k, v in small.items()}
  big['sequential'] = row(_stats(0.5, 0.5, 0.5), _stats(0.3, 0.3, 0.3), _stats(0.5, 0.5, 0.5))
  found = dm.dominating(big, 'joint@0.5', dm.PLANES['source-target'])
  assert [f['row'] for f in found] == ['sequential'] and found[0]['clear']
  table = dm.capacity_table({'efficientvit_b0': small, 'efficientvit_b2': big})
  lines = table.splitlines()
  assert lines[0].startswith('| backbone | row | seeds | source val RMSE (m) | target val RMSE (m) |')
  assert ('| efficientvit_b0 | `joint@0.5` | 3 | 0.700 ± 0.100 | 0.600 ± 0.100 | 1.200 ± 0.100 | — | none | '
          '`source_only` (-0.100 ± 0.058, -0.200 ± 0.058) |') in lines
  assert any(line.startswith('| efficientvit_b2 | `joint@0.5` |') and '**clearly** `sequential`' in line
             for line in lines)
  text = dm.capacity_report({'efficientvit_b0': small, 'efficientvit_b2': big}, {'V8': 'joint@0.5'},
                            {'pretrain': 300, 'finetune': 100}, {'source': 's', 'target': 't', 'deployment': 'd'})
  assert '## efficientvit_b2' in text and 'one pretraining of 300 steps' in text
  assert '- efficientvit_b0: source-target: none; source-corridor: `source_only`' in text


def test_capacity_plot_writes_a_png(tmp_path):
  dm.capacity_plot({'efficientvit_b0': _summary(), 'efficientvit_b1': _summary()}, tmp_path / 'c.png')
  assert (tmp_path / 'c.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
@pytest.mark.e2e
def test_toy_study_with_a_backbone_axis(tmp_path, synthetic_tiny):
  """Two backbones, each pretrained once and fine-tuned from its own pretraining; every evaluated
  checkpoint is the backbone its row says; a rerun does nothing."""
  study_dir = tmp_path / 'study'
  args = [*TOY[:2], *TOY[4:6], "--config.order=('sequential', 'joint')", '--config.protocols.joint.ratios=(0.5,)',
          '--config.seeds=(0,)', "--config.backbones=('efficientvit_b0', 'mobilenet_v3_small')",
          '--config.common.data.input_size=(32, 32)']
  cmd = [sys.executable, '-m', 'studies.domain_mixing', '--config', 'configs/study_synthetic.py',
         '--workdir', str(study_dir), f'--config.data_root={synthetic_tiny}', *args]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3000)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  summary = json.loads((study_dir / 'study.json').read_text())
  assert summary['backbones'] == ['efficientvit_b0', 'mobilenet_v3_small']
  for b in summary['backbones']:
    assert list(summary['rows'][b]) == ['source_only', 'sequential', 'joint@0.5']
    assert (study_dir / f'pareto_{b}.png').exists()
    for name in ('sequential', 'joint@0.5'):
      ckpt = convert.load_any(study_dir / 'runs' / b / name / 'seed_0')
      assert ckpt.meta['source'] == f"init_from:{study_dir / 'runs' / b / 'source_only'}"
      for role in dm.SETS:
        result = json.loads((study_dir / 'evals' / b / name / 'seed_0' / f'{role}.json').read_text())
        assert result['backbone'] == b and result['checkpoint'] == str(study_dir / 'runs' / b / name / 'seed_0')
  text = (study_dir / 'study.md').read_text()
  assert '| efficientvit_b0 | `joint@0.5` | 1 |' in text and '| mobilenet_v3_small | `sequential` | 1 |' in text
  assert (study_dir / 'capacity.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3000)
  assert proc.returncode == 0 and proc.stdout.count(': skipped in') == 6 and proc.stdout.count(': 0 checkpoints') == 3

"""Smoke tests of the benchmark scripts on tiny inputs (the figures themselves are in benchmarks/README.md)."""

import dataclasses
import importlib.util
import json
import pathlib
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

from efficientvit_jax import ops

INTERFACE_KEYS = {'images_per_s', 'step_s', 'compile_s', 'batch_size', 'dtype', 'device'}


def _load(name):
  spec = importlib.util.spec_from_file_location(f'bench_{name}', ROOT / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


@pytest.fixture(autouse=True)
def _ops_by_backend_after():
  yield
  assert ops._IMPL is None  # the benchmarks' --impl applies inside them only


@pytest.mark.e2e
def test_train_step_sweep_json_with_torch(tmp_path, capsys):
  out = tmp_path / 'step.json'
  # The device check's CPU step size and formulation: its float32 batch-2 step is this program.
  _load('train_step').main(['--sweep', '1,2', '--steps', '2', '--warmup', '1', '--size', '64x96', '--impl', 'native',
                            '--torch', '--release-memory', '--json', str(out)])
  result = json.loads(out.read_text())
  assert INTERFACE_KEYS | {'torch_images_per_s', 'speedup'} <= set(result)
  assert result['batch_size'] == 2 and result['dtype'] == 'float32'  # the largest batch's entry
  assert [row['batch_size'] for row in result['sweep']] == [1, 2]
  for row in result['sweep']:
    assert row['images_per_s'] > 0 and row['torch_images_per_s'] > 0 and row['compile_s'] > 0
    assert row['speedup'] == pytest.approx(row['images_per_s'] / row['torch_images_per_s'])
    assert row['mfu'] is None  # no known peak for a CPU
  assert '| batch |' in capsys.readouterr().out


def test_train_step_rejects_bad_size():
  with pytest.raises(SystemExit):
    _load('train_step').parse_args(['--size', '64'])


def test_peak_table():
  bench = _load('train_step')
  assert bench.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.0
  assert bench.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') == 756.0
  assert bench.peak_tflops('TPU v4', 'float32') == 275.0
  assert bench.peak_tflops('cpu', 'float32') is None


def test_forward_table(tmp_path, capsys):
  out = tmp_path / 'forward.json'
  rows = _load('forward').main(['--batch-sizes', '1,2', '--steps', '2', '--size', '64x64', '--torch',
                                '--release-memory', '--json', str(out)])
  assert [r['batch_size'] for r in json.loads(out.read_text())] == [1, 2]
  assert all(r['images_per_s'] > 0 and r['compile_s'] > 0 and r['torch_images_per_s'] > 0 for r in rows)
  assert '| batch | ms/batch |' in capsys.readouterr().out


@pytest.mark.parametrize('platforms, on_cpu', [('cpu', True), ('cpu,cuda', True), ('cuda', False), ('tpu,cpu', False)])
def test_freed_memory_is_retained_only_when_jax_runs_on_cpu(monkeypatch, platforms, on_cpu):
  from efficientvit_jax import host_memory

  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert host_memory.jax_runs_on_cpu() is on_cpu
  monkeypatch.setattr(host_memory, 'retain_freed_memory', lambda: True)
  assert host_memory.retain_freed_memory_on_cpu_hosts() is on_cpu


@pytest.mark.e2e
def test_train_step_profile_sums_op_time_per_kind(tmp_path, capsys):
  result = _load('train_step').main(['--batch-size', '2', '--steps', '2', '--warmup', '1', '--size', '64x96',
                                     '--impl', 'native', '--release-memory', '--profile', str(tmp_path)])
  prof = result['profile']
  assert prof['trace'].startswith(str(tmp_path)) and prof['kinds'] and prof['busy_s'] > 0
  assert sum(k['s_per_step'] for k in prof['kinds']) <= prof['busy_s'] * (1 + 1e-9)
  assert any(k['kind'].startswith(('dot', 'ynn_fusion', 'convolution')) for k in prof['kinds'])
  assert '| op kind | s/step | share |' in capsys.readouterr().out


@pytest.mark.e2e
def test_device_check_cpu_mode_reports_every_part(tmp_path):
  """`make device-check`'s script in its CPU mode: every part runs in its own process and reports."""
  check = _load('device_check')
  out = tmp_path / 'out'
  code = check.main(['--cpu', '--out', str(out), '--work', str(tmp_path / 'work')])
  report = json.loads((out / 'device_check.json').read_text())
  assert list(report['parts']) == ['data', *check.PARTS]
  decoded = check.has_decoded()  # until the decode-once command exists, data and train may fail
  for name, part in report['parts'].items():
    if name in ('data', 'train') and not decoded:
      assert part['status'] == 'failed' and 'data_pipelines.decoded is missing' in part['error'], part
    else:
      assert part['status'] == 'ok', (name, part)
  assert code == (0 if decoded else 1)
  parts = report['parts']
  assert {'jax', 'flax', 'torch'} <= set(parts['env']['versions'])
  # Here every import works and `make setup`'s versions meet every range of the walk.
  assert parts['env']['import_failures'] == {} and parts['env']['requirements'] == []
  assert set(parts['env']['carried']) == {'grain', 'array-record', 'ml-collections', 'tensorboardx', 'portpicker'}
  assert [r['variant'] for r in parts['parity']['rows']] == ['float32', 'bfloat16']
  assert all(r['within_tolerance'] for r in parts['parity']['rows'])
  for dtype in ('bfloat16', 'float32'):
    step = parts[f'step_{dtype}']
    assert step['dtype'] == dtype and step['batch_size'] == 2
    assert step['images_per_s'] > 0 and step['torch_images_per_s'] > 0 and step['compile_s'] > 0
  train = parts['train']
  assert train['last_step'] == 4 and train['images_per_s'] > 0 and train['loss_last'] > 0
  assert train['format'] == ('decoded' if decoded else 'files')
  if decoded:
    assert 0 <= train['input_wait'] <= 1
  assert [r['backbone'] for r in parts['parity']['backbones']] == ['efficientvit_b0', 'mobilenet_v3_small']
  assert all(r['within_tolerance'] for r in parts['parity']['backbones'])
  assert [r['backbone'] for r in parts['backbones']['rows']] == ['efficientvit_b0', 'mobilenet_v3_small']
  assert all(r['forward_images_per_s'] > 0 and r['forward_gflop'] > 0 for r in parts['backbones']['rows'])
  nyu = parts['eval']['sets']['nyu']
  assert nyu['frames'] == 5 and nyu['frames_per_s'] > 0 and parts['eval']['forward_images_per_s'] > 0
  md = (out / 'device_check.md').read_text()
  for name in report['parts']:
    assert f'| {name} | ' in md
  for heading in ('## Parity', '## Training step', '## train.py run', '## Evaluation', '## Every backbone'):
    assert heading in md
  assert '==== step_float32' in (out / 'device_check.log').read_text()


def test_device_check_stops_a_hung_part_and_reports_a_failed_one(tmp_path, monkeypatch):
  check = _load('device_check')
  hang = 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'
  commands = {'env': hang, 'parity': 'raise SystemExit(3)'}
  monkeypatch.setattr(check, 'part_command', lambda name, args, result: [sys.executable, '-c', commands[name]])
  monkeypatch.setattr(check, 'KILL_GRACE_S', 1.0)
  monkeypatch.setitem(check.MODES, 'cpu', dataclasses.replace(check.MODES['cpu'], limits={'env': 2, 'parity': 30}))
  start = time.monotonic()
  code = check.main(['--cpu', '--out', str(tmp_path), '--parts', 'env,parity'])
  assert time.monotonic() - start < 20
  parts = json.loads((tmp_path / 'device_check.json').read_text())['parts']
  assert code == 1 and list(parts) == ['env', 'parity']
  assert parts['env']['status'] == 'timeout' and parts['env']['limit_s'] == 2
  assert parts['parity']['status'] == 'failed' and parts['parity']['error'].startswith('exit code 3')
  md = (tmp_path / 'device_check.md').read_text()
  assert '| env | timeout |' in md and '| parity | failed |' in md


def test_device_check_skips_parts_past_the_budget(tmp_path, monkeypatch):
  check = _load('device_check')
  monkeypatch.setattr(check, 'part_command', lambda name, args, result: [sys.executable, '-c', 'pass'])
  assert check.main(['--cpu', '--out', str(tmp_path), '--parts', 'env', '--budget-s', '5']) == 1
  env = json.loads((tmp_path / 'device_check.json').read_text())['parts']['env']
  assert env['status'] == 'skipped' and 'budget' in env['error']


def test_device_check_rejects_unknown_part(tmp_path, capsys):
  assert _load('device_check').main(['--cpu', '--out', str(tmp_path), '--parts', 'env,nope']) == 2
  assert 'nope' in capsys.readouterr().err
  assert not (tmp_path / 'device_check.json').exists()


def test_device_check_markdown_of_a_gpu_report():
  """The GPU-only fields (torch.compile, TF32 parity, input wait) reach the tables."""
  check = _load('device_check')
  parity = {'eval_depth_max_err': 2e-4, 'eval_seg_logits_max_err': 1e-4, 'train_depth_max_err': 1e-3,
            'train_seg_logits_max_err': 1e-3, 'eval_depth_rel_err': 1e-5}
  row = {'dtype': 'bfloat16', 'batch_size': 64, 'size': [240, 320], 'images_per_s': 3000.0, 'mfu': 0.0191,
         'compile_s': 41.0, 'device_peak_mb': 9000.0, 'torch_images_per_s': 1500.0, 'torch_mfu': 0.01,
         'torch_device_peak_mb': 7000.0, 'speedup': 2.0, 'torch_compile_images_per_s': 2000.0,
         'torch_compile_mfu': 0.0127, 'torch_compile_s': 80.0, 'torch_compile_device_peak_mb': 6000.0,
         'speedup_vs_compile': 1.5, 'backbone': 'efficientvit_b1', 'forward_gflop': 2.1934}
  report = {'date': '2026-12-01T00:00:00+00:00', 'command': 'make device-check', 'mode': 'gpu', 'budget_s': 470,
            'wall_s': 400.0, 'parts': {
                'env': {'status': 'ok', 'wall_s': 9, 'limit_s': 60, 'python': '3.12.3', 'torch_device': 'NVIDIA H200',
                        'jax_devices': ['gpu:NVIDIA H200'], 'nvidia_smi': 'NVIDIA H200, 580.159.03, 143771 MiB',
                        'torch_cuda': '13.0', 'cudnn': 91300, 'versions': {'jax': '0.11.2', 'torch': '2.11.0'},
                        'carried': {'grain': '0.2.18', 'portpicker': '1.6.0'}, 'import_failures': {},
                        'requirements': [{'requirement': 'jax<0.11,>=0.10.2', 'required_by': 'pyproject.toml',
                                          'found': '0.11.2'},
                                         {'requirement': 'protobuf>=5.28.3', 'required_by': 'grain', 'found': None}]},
                'parity': {'status': 'ok', 'wall_s': 30, 'limit_s': 90, 'rows': [
                    {'variant': 'float32', 'precision': 'default', 'within_tolerance': False, **parity},
                    {'variant': 'float32_highest', 'precision': 'highest', 'within_tolerance': True, **parity}]},
                'step_bfloat16': {'status': 'timeout', 'wall_s': 200, 'limit_s': 200,
                                  'error': 'stopped at its 200 s limit',
                                  **row, 'sweep': [row]},
                'train': {'status': 'ok', 'wall_s': 130, 'limit_s': 165, 'format': 'decoded', 'batch_size': 16,
                          'train_wall_s': 125,
                          'size': [240, 320], 'last_step': 5000, 'images_per_s': 900.0, 'input_wait': 0.25,
                          'loss_first': 3.0, 'loss_last': 1.0, 'command': 'train.py --config configs/quickstart.py'},
                'step_float32': {'status': 'skipped', 'wall_s': 0, 'limit_s': 4,
                                 'error': 'no time left in --budget-s'}}}
  md = check.markdown(report)
  assert '- device: NVIDIA H200 (JAX: gpu:NVIDIA H200)' in md and 'jax 0.11.2, torch 2.11.0' in md
  assert '| float32 | highest | 2.00e-04 |' in md and '| NO |' in md
  assert ('| bfloat16 | 64 | 3000.0 | 1.9% | 41.0 | 9000 | 1500.0 | 1.0% | 7000 | 2.00 '
          '| 2000.0 | 1.3% | 80.0 | 6000 | 1.50 |') in md
  assert '| decoded | 16 | 240x320 | 5000 | 125 | 900.0 | 25.0% |' in md
  assert 'MFU: 3x the forward GFLOP (XLA cost analysis; efficientvit_b1 at 240x320: 2.19)' in md  # the run's count
  assert '| step_bfloat16 | timeout | 200 | 200 | stopped at its 200 s limit |' in md
  assert 'Carried (`make wheels`): grain 0.2.18, portpicker 1.6.0.' in md
  assert '| `jax<0.11,>=0.10.2` | pyproject.toml | 0.11.2 |' in md and '| `protobuf>=5.28.3` | grain | missing |' in md


def test_input_pipeline_table_on_given_data(tmp_path, synthetic_tiny, capsys):
  out = tmp_path / 'pipeline.json'
  _load('input_pipeline').main(['--root', str(synthetic_tiny), '--format', 'files', '--modes', 'nyu', '--threads', '1',
                                '--batches', '2', '--batch-size', '2', '--size', '48x64', '--json', str(out)])
  result = json.loads(out.read_text())
  assert [(r['format'], r['mode'], r['workers'], r['threads']) for r in result['results']] == [('files', 'nyu', 0, 1)]
  assert result['results'][0]['images_per_s'] > 0 and result['png_decode_frames_per_s'] > 0
  assert '| files | nyu | 0 |' in capsys.readouterr().out
  assert not (synthetic_tiny / 'decoded').exists()  # --format files writes nothing into the root


@pytest.mark.e2e
def test_input_pipeline_with_worker_processes_repeated(tmp_path, synthetic_tiny, capsys):
  out = tmp_path / 'pipeline.json'
  _load('input_pipeline').main(['--root', str(synthetic_tiny), '--format', 'files', '--modes', 'nyu', '--threads', '1',
                                '--workers', '0,1', '--repeats', '2', '--batches', '2', '--batch-size', '2',
                                '--size', '48x64', '--json', str(out)])
  result = json.loads(out.read_text())
  assert [(r['workers'], len(r['runs'])) for r in result['results']] == [(0, 2), (1, 2)]
  assert all(r['images_per_s'] > 0 for r in result['results'])
  text = capsys.readouterr().out
  assert '| files | nyu | 0 |' in text and '| files | nyu | 1 |' in text and 'median of 2' in text


@pytest.mark.parametrize('args', [['--workers', '-1'], ['--threads', '0'], ['--workers', 'two'], ['--repeats', '0']])
def test_input_pipeline_rejects_bad_counts(args, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _load('input_pipeline').main(args)
  assert exit_info.value.code == 2 and args[0] in capsys.readouterr().err


def test_latency_rejects_bad_batch_sizes(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _load('latency').main(['--batch-sizes', '0,8'])
  assert exit_info.value.code == 2 and "bad --batch-sizes '0,8'" in capsys.readouterr().err


def test_forward_flop_is_xla_cost_analysis_of_the_model():
  """Close to torch's FLOP counter on the twin (which counts convolutions and matrix products only;
  XLA also counts elementwise ops, and the transposed convolutions its own way); the training count
  is 3x the forward."""
  torch = pytest.importorskip('torch')
  from torch.utils.flop_counter import FlopCounterMode

  from efficientvit_jax import torch_model

  bench = _load('train_step')
  for backbone in ('efficientvit_b1', 'mobilenet_v3_small'):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
      torch_model.DepthSegNet(backbone=backbone).eval()(torch.rand(1, 3, 96, 128))
    ours = bench.forward_flop(backbone, (96, 128))
    assert 0.95 < ours / counter.get_total_flops() < 1.15, backbone
    assert bench.train_flop_per_image(backbone, (96, 128)) == 3 * ours


@pytest.mark.e2e
def test_backbones_table(tmp_path, capsys):
  out = tmp_path / 'backbones.json'
  rows = _load('backbones').main(['--backbones', 'mobilenet_v3_small', '--size', '64x64', '--forward-batch', '1',
                                  '--train-batch', '2', '--steps', '1', '--warmup', '0', '--release-memory',
                                  '--json', str(out)])
  assert json.loads(out.read_text())['rows'] == rows
  assert [(r['backbone'], r['params']) for r in rows] == [('mobilenet_v3_small', 1_507_927)]
  for r in rows:
    assert r['forward_gflop'] > 0 and r['forward_images_per_s'] > 0 and r['torch_forward_images_per_s'] > 0
    assert r['train_images_per_s'] > 0 and r['torch_train_images_per_s'] > 0 and r['onnx_ms'] > 0
    assert r['mfu'] is None  # no known peak for a CPU
  assert '| backbone | params M | GFLOP |' in capsys.readouterr().out


def test_backbones_rejects_unknown_backbone(capsys):
  with pytest.raises(SystemExit):
    _load('backbones').main(['--backbones', 'efficientvit_b9'])
  assert 'efficientvit_b9' in capsys.readouterr().err


def _eval_json(set_name, rmse, frame_rmse, baseline, miou=None):
  """The parts of an eval.py JSON that demo_seeds.py's columns read."""
  out = {'dataset': set_name, 'depth': {'pooled': {'rmse': rmse}, 'frame_mean': {'rmse': frame_rmse},
                                        'median_scaled': {'frame_mean': {'rmse': 0.8 * frame_rmse}}},
         'baselines': {'mean_depth_rmse': baseline, 'majority_class_miou': None if miou is None else 0.08}}
  if miou is not None:
    out['seg'] = {'miou': miou}
  return out


def _seed_results(rmse, baseline, miou):
  return {'nyu': _eval_json('nyu', rmse, rmse - 0.02, baseline, miou),
          'lilocbench': _eval_json('lilocbench', 0.4, 0.38, 1.6),
          'corridor': _eval_json('corridor', 0.2, 0.21, 0.45, miou=0.3)}


def test_demo_seeds_summary_rows(capsys):
  """Mean, sample standard deviation and worst seed of each column, against numpy."""
  bench = _load('demo_seeds')
  rmse, base, miou = {0: 0.55, 3: 0.72, 7: 0.60}, {0: 0.80, 3: 0.84, 7: 0.90}, {0: 0.48, 3: 0.29, 7: 0.45}
  rows = {s: _seed_results(rmse[s], base[s], miou[s]) for s in rmse}
  stats = bench.summary(rows)
  headers = [c.header for c in bench.COLUMNS]
  ratio = np.array([rmse[s] / base[s] for s in (0, 3, 7)])
  k = headers.index('ratio')
  assert stats['mean'][k] == pytest.approx(ratio.mean()) and stats['std'][k] == pytest.approx(ratio.std(ddof=1))
  assert stats['worst'][k] == (pytest.approx(ratio.max()), 3)
  k = headers.index('mIoU, %')
  assert stats['worst'][k] == (pytest.approx(29.0), 3)  # the lowest mIoU is the worst
  assert stats['mean'][k] == pytest.approx(100 * np.mean(list(miou.values())))
  assert stats['worst'][headers.index('mean-depth baseline, m')] is None  # a baseline has no worst seed
  table = bench.table(rows).splitlines()
  assert len(table) == 2 + 3 + 3
  assert table[3].startswith('| 3 | 0.720 | 0.700 | 0.840 | 0.86x |')
  assert table[-3].startswith('| mean of 3 | 0.623 |')
  assert table[-1].startswith('| worst (seed) | 0.720 (3) | 0.700 (3) | - | 0.86x (3) |')
  assert all(line.count('|') == len(headers) + 2 for line in table)
  assert len(bench.table(rows, per_seed=False).splitlines()) == 5


@pytest.mark.parametrize('text, seeds', [('0-9', list(range(10))), ('3', [3]), ('2-4,8,3', [2, 3, 4, 8])])
def test_demo_seeds_parses_seed_lists(text, seeds):
  assert _load('demo_seeds').parse_seeds(text) == seeds


@pytest.mark.parametrize('text', ['', 'a', '3-1', '0-', '1,,2', '-2'])
def test_demo_seeds_rejects_bad_seed_lists(text, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _load('demo_seeds').main(['--seeds', text])
  assert exit_info.value.code == 2 and f'bad --seeds {text!r}' in capsys.readouterr().err


def test_demo_seeds_runs_the_makefiles_demo(tmp_path):
  """Each step of the script is the command `make demo` runs (`make -n`: printed, not run)."""
  import shutil
  import subprocess

  if shutil.which('make') is None:
    pytest.skip('no make')
  folder = tmp_path / 'seed5'
  proc = subprocess.run(['make', '-n', 'demo', f'DEMO={folder}', 'DEMO_SEED=5', 'PY=PYTHON'], cwd=ROOT,
                        capture_output=True, text=True, check=True)
  made = ' '.join(proc.stdout.replace('\\\n', ' ').split())
  bench = _load('demo_seeds')
  commands = {name: ' '.join(['PYTHON', *argv[1:]]) for name, argv, _ in bench.steps(5, folder, [])}
  for name in ('synthetic', 'decoded', 'train'):
    assert commands[name] in made, name
  assert f'for set in {" ".join(bench.SETS)};' in made
  ev = commands['eval_nyu'].replace('nyu', '$set').replace(' --overwrite', '')
  assert ev in made


def test_demo_seeds_skips_what_is_done_and_names_a_failed_step(tmp_path, monkeypatch, capsys):
  bench = _load('demo_seeds')
  calls = []

  def fake_call(argv, cwd, env, stdout, stderr):
    calls.append(argv)
    if 'eval.py' in argv[1]:
      name = argv[argv.index('--dataset') + 1]
      out = pathlib.Path(argv[argv.index('--out') + 1])
      out.parent.mkdir(parents=True, exist_ok=True)
      seed = int(out.parent.parent.name[len('seed'):])
      out.write_text(json.dumps(_seed_results(0.5 + 0.1 * seed, 0.8, 0.4)[name]))
    return 7 if 'train.py' in argv[1] and '--config.fail=1' in argv else 0

  monkeypatch.setattr(bench.subprocess, 'call', fake_call)
  (tmp_path / 'seed1' / 'data' / 'decoded').mkdir(parents=True)
  (tmp_path / 'seed1' / 'data' / 'synthetic_info.json').write_text('{"seed": 1, "size": "demo"}')
  (tmp_path / 'seed1' / 'data' / 'decoded' / 'decoded.json').write_text('{}')
  md, js = tmp_path / 't.md', tmp_path / 't.json'
  assert bench.main(['--seeds', '0-1', '--workdir', str(tmp_path), '--md', str(md), '--json', str(js)]) == 0
  steps = [(a[2] if a[1] == '-m' else a[1]) for a in calls]
  assert steps == ['data_pipelines.synthetic', 'data_pipelines.decoded', 'train.py', 'eval.py', 'eval.py', 'eval.py',
                   'train.py', 'eval.py', 'eval.py', 'eval.py']  # seed 1's data were there
  assert '| 1 | 0.600 |' in md.read_text() and '| worst (seed) | 0.600 (1) |' in md.read_text()
  seconds = json.loads(js.read_text())['seeds']['1']['seconds']
  assert seconds['synthetic'] is None and seconds['train'] >= 0
  assert bench.main(['--seeds', '2', '--workdir', str(tmp_path), '--train-flag=--config.fail=1']) == 1
  assert f'seed 2: train failed (exit 7); see {tmp_path / "seed2" / "logs" / "train.log"}' in capsys.readouterr().err
  # Data of another size in a seed's folder: refused (exit 2), not evaluated as if it were the demo's.
  calls.clear()
  assert bench.main(['--seeds', '1', '--workdir', str(tmp_path), '--synthetic-size', 'default']) == 2
  assert 'data of seed 1, size demo, not seed 1, size default; use another --workdir' in capsys.readouterr().err
  assert not calls
  assert bench.main(['--seeds', '3', '--workdir', str(tmp_path / 'before'), '--synthetic-size', 'default']) == 0
  assert calls[0][calls[0].index('--size') + 1] == 'default'

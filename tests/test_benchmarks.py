"""Smoke tests of the benchmark scripts on tiny inputs (the figures themselves are in benchmarks/README.md)."""

import importlib.util
import json

import pytest

from conftest import ROOT
from efficientvit_jax import ops

INTERFACE_KEYS = {'images_per_s', 'step_s', 'compile_s', 'batch_size', 'dtype', 'device'}


def _load(name):
  spec = importlib.util.spec_from_file_location(f'bench_{name}', ROOT / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(autouse=True)
def _reset_ops_impl():
  yield
  ops.set_impl(None)


def test_train_step_sweep_json_with_torch(tmp_path, capsys):
  out = tmp_path / 'step.json'
  _load('train_step').main(['--sweep', '1,2', '--steps', '2', '--warmup', '1', '--size', '64x64',
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
  assert bench.train_flop_per_image((240, 320)) == pytest.approx(6.3e9)


def test_forward_table(tmp_path, capsys):
  out = tmp_path / 'forward.json'
  rows = _load('forward').main(['--batch-sizes', '1,2', '--steps', '2', '--size', '64x64', '--torch',
                                '--release-memory', '--json', str(out)])
  assert [r['batch_size'] for r in json.loads(out.read_text())] == [1, 2]
  assert all(r['images_per_s'] > 0 and r['compile_s'] > 0 and r['torch_images_per_s'] > 0 for r in rows)
  assert '| batch | ms/batch |' in capsys.readouterr().out


@pytest.mark.parametrize('platforms, on_cpu', [('cpu', True), ('cpu,cuda', True), ('cuda', False), ('tpu,cpu', False)])
def test_freed_memory_is_retained_only_when_jax_runs_on_cpu(monkeypatch, platforms, on_cpu):
  from efficientvit_jax import host_memory  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  assert host_memory.jax_runs_on_cpu() is on_cpu
  monkeypatch.setattr(host_memory, 'retain_freed_memory', lambda: True)
  assert host_memory.retain_freed_memory_on_cpu_hosts() is on_cpu


def test_train_step_profile_sums_op_time_per_kind(tmp_path, capsys):
  result = _load('train_step').main(['--batch-size', '2', '--steps', '2', '--warmup', '1', '--size', '64x64',
                                     '--release-memory', '--profile', str(tmp_path)])
  prof = result['profile']
  assert prof['trace'].startswith(str(tmp_path)) and prof['kinds'] and prof['busy_s'] > 0
  assert sum(k['s_per_step'] for k in prof['kinds']) <= prof['busy_s'] * (1 + 1e-9)
  assert any(k['kind'].startswith(('dot', 'ynn_fusion', 'convolution')) for k in prof['kinds'])
  assert '| op kind | s/step | share |' in capsys.readouterr().out

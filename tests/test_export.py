"""ONNX and StableHLO exports against JAX predict; the export CLI's refusals."""

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DATA
from conftest import run_command

from efficientvit_jax import convert
from efficientvit_jax import export
from efficientvit_jax import images
from efficientvit_jax import predict

PT = str(DATA / 'student_random.pt')


@pytest.fixture(scope='module')
def jax_model():
  return convert.load_model(PT).model


def _jax_predict(model, images):
  """JAX predict's outputs for uint8 images [N, H, W, 3], labels added."""
  out = predict.Predictor(model, images.shape[1:3], batch_size=len(images))(images.astype(np.float32) / 255.0)
  return {**out, 'labels': np.argmax(out['seg_logits'], -1).astype(np.uint8)}


def _run_onnx(model_or_path, images):
  data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
  session = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
  return dict(zip(export.OUTPUT_NAMES, session.run(None, {export.INPUT_NAME: images})))


def _errors(out, ref):
  return {'depth': np.abs(out['depth'] - ref['depth']).max(),
          'seg_logits': np.abs(out['seg_logits'] - ref['seg_logits']).max(),
          'labels': (out['labels'] == ref['labels']).mean()}


@pytest.mark.e2e
def test_onnx_on_fixture_fp32_and_fp16(reference_ckpt, reference_io, jax_model):
  model = export.onnx_model(reference_ckpt, (240, 320))
  assert [o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')] == [export.ONNX_OPSET] >= [17]
  assert [i.name for i in model.graph.input] == ['image']
  assert [o.name for o in model.graph.output] == ['depth', 'seg_logits', 'labels']
  ops = {n.op_type for n in model.graph.node}
  assert 'BatchNormalization' not in ops and len(model.graph.node) < 400, sorted(ops)  # folded, lean
  assert model.ByteSize() < 1.1 * 4 * 5.31e6  # the float32 weights and little else
  image = np.round(reference_io['image'] * 255).astype(np.uint8)  # the fixture as camera bytes
  ref = _jax_predict(jax_model, image)
  out = _run_onnx(model, image)
  assert out['labels'].dtype == np.uint8 and out['depth'].shape == (1, 240, 320)
  err = _errors(out, ref)
  assert err['depth'] < 1e-4 and err['seg_logits'] < 1e-4 and err['labels'] > 0.999, err
  # fp16: weights and activations in half, Resize in float32; measured 1.7e-3 m, 2.2e-4, 99.9 %.
  half = export.float16_model(model)
  onnx.checker.check_model(half, full_check=True)
  assert half.ByteSize() < 0.6 * model.ByteSize()
  err16 = _errors(_run_onnx(half, image), ref)
  assert 1e-6 < err16['depth'] < 1e-2 and err16['seg_logits'] < 2e-3 and err16['labels'] > 0.99, err16


@pytest.mark.e2e
def test_onnx_cli_dynamic_batch_at_another_size(tmp_path, jax_model):
  out_file = tmp_path / 'b1.onnx'
  assert export.main(['--checkpoint', PT, '--format', 'onnx', '--out', str(out_file), '--size', '96x128',
                      '--dynamic-batch']) == 0
  model = onnx.load(out_file)
  onnx.checker.check_model(model, full_check=True)
  dims = model.graph.input[0].type.tensor_type.shape.dim
  assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [96, 128, 3]
  images = np.random.default_rng(0).integers(0, 256, (3, 96, 128, 3), np.uint8)
  ref = _jax_predict(jax_model, images)
  for n in (3, 1):  # one file, two batch sizes
    err = _errors(_run_onnx(out_file, images[:n]), {k: v[:n] for k, v in ref.items()})
    assert err['depth'] < 1e-4 and err['seg_logits'] < 1e-4 and err['labels'] > 0.999, (n, err)


@pytest.mark.e2e
def test_stablehlo_in_a_fresh_process(tmp_path, jax_model):
  out_file = tmp_path / 'b1.stablehlo'
  assert export.main(['--checkpoint', PT, '--format', 'stablehlo', '--out', str(out_file), '--size', '64x96',
                      '--dynamic-batch']) == 0
  images = np.random.default_rng(1).integers(0, 256, (2, 64, 96, 3), np.uint8)
  np.save(tmp_path / 'images.npy', images)
  script = textwrap.dedent(f'''
      import sys
      import jax, numpy as np
      exported = jax.export.deserialize(bytearray(open({str(out_file)!r}, 'rb').read()))
      out = exported.call(np.load({str(tmp_path / 'images.npy')!r}))
      np.savez({str(tmp_path / 'out.npz')!r}, **{{k: np.asarray(v) for k, v in out.items()}})
      assert not {{'efficientvit_jax', 'flax', 'torch'}} & set(sys.modules), 'imports beyond jax and numpy'
      print(exported.platforms, exported.in_avals)
  ''')
  run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                       env={'JAX_PLATFORMS': 'cpu', 'PATH': '/usr/bin:/bin'}, cwd=tmp_path)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "'cuda'" in run.stdout and 'batch' in run.stdout, run.stdout
  with np.load(tmp_path / 'out.npz') as z:
    out = {k: z[k] for k in z.files}
  ref = _jax_predict(jax_model, images)
  np.testing.assert_allclose(out['depth'], ref['depth'], atol=1e-5, rtol=0)
  np.testing.assert_allclose(out['seg_logits'], ref['seg_logits'], atol=1e-5, rtol=0)
  assert (out['labels'] == ref['labels']).mean() > 0.999


@pytest.mark.parametrize('args, expect', [
    (['--format', 'tflite'], "--format: invalid choice: 'tflite'"),
    (['--checkpoint', '{tmp}/none.pt'], 'none.pt: no such file'),
    (['--size', '16x320'], '--size: the network needs at least 32x32, got 16x320'),
    (['--size', '240xwide'], "--size: must be HxW"),
    (['--out', '{tmp}/exists.onnx'], 'exists.onnx exists (pass --overwrite'),
    (['--out', '{tmp}/no/such/dir/m.onnx'], 'does not exist'),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, expect):
  (tmp_path / 'exists.onnx').write_bytes(b'keep me')
  argv = {'--checkpoint': PT, '--format': 'onnx', '--out': str(tmp_path / 'new.onnx')}
  for flag, value in zip(args[::2], args[1::2]):
    argv[flag] = value.format(tmp=tmp_path)
  with pytest.raises(SystemExit) as exit_info:
    code = export.main([x for kv in argv.items() for x in kv])
    raise SystemExit(code)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and expect in err and 'Traceback' not in err, err
  assert (tmp_path / 'exists.onnx').read_bytes() == b'keep me'
  assert not (tmp_path / 'new.onnx').exists()


@pytest.mark.e2e
def test_latency_benchmark_smoke(tmp_path, capsys):
  import importlib.util
  import json

  from conftest import ROOT

  spec = importlib.util.spec_from_file_location('bench_latency', ROOT / 'benchmarks' / 'latency.py')
  latency = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(latency)
  out = tmp_path / 'latency.json'
  latency.main(['--size', '64x96', '--batch-sizes', '2', '--steps', '2', '--warmup', '1', '--release-memory',
                '--json', str(out)])
  rows = json.loads(out.read_text())
  runtimes = ['jax', 'onnxruntime fp32', 'onnxruntime fp16', 'torch']
  assert [(r['runtime'], r['batch_size']) for r in rows] == [(n, 2) for n in runtimes]
  for r in rows:
    assert 0 < r['median_ms'] <= r['p90_ms'] and r['threads'] >= 1
    assert r['ms_per_image'] == pytest.approx(r['median_ms'] / r['batch_size'])
  assert '| runtime | batch | median ms | p90 ms |' in capsys.readouterr().out


@pytest.mark.e2e
@pytest.mark.parametrize('case', ['read_only', 'absurd_size'])
def test_command_line_refuses_before_exporting(tmp_path, read_only_dir, case):
  """Through the command line: exit 2 and one line naming --out or --size, before the checkpoint is
  read (it does not exist) and before anything is allocated or written."""
  out = read_only_dir / 'm.onnx' if case == 'read_only' else tmp_path / 'm.onnx'
  extra = ['--size', '65536x65536'] if case == 'absurd_size' else []
  _, line = run_command(['-m', 'efficientvit_jax.export', '--checkpoint', tmp_path / 'none.pt', '--format', 'stablehlo',
                         '--out', out, *extra], 2)
  expect = (f'--out {out}: cannot write there' if case == 'read_only'
            else f'--size: each side must be at most {images.MAX_SIDE}, got 65536x65536')
  assert expect in line, line
  assert not out.exists() and not any(read_only_dir.iterdir())

"""Fault injection through the real command lines: each fault ends in one `error:` line naming the
file, key or step, with exit code 2 (bad input) or 1 (a failed run), never a traceback; the last
good checkpoint restores with the values it was saved with; killed runs resume bit-identically."""

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import DATA
from conftest import ROOT
from conftest import mount_namespace

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import trees

STEPS = 6


def _args(workdir, data, *overrides):
  # EfficientViT-B0: faults are the same for every backbone, and B0's program compiles and loads fastest.
  return [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir', str(workdir),
          f'--config.data.root={data}', '--config.model.backbone=efficientvit_b0', '--config.batch_size=2',
          '--config.data.input_size=(64,64)',
          '--config.data.eval_sets=()', '--config.log_every_steps=1', '--config.checkpoint_every_steps=1',
          '--config.keep_checkpoints=10', '--config.best_metric=', '--config.data.num_threads=2',
          f'--config.num_train_steps={STEPS}', *overrides]


def _env():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
  return env


def _run(cmd, expect, timeout=600):
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == expect, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return proc


def _error(proc):
  """The one `error:` line of a failed command."""
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


def _values(src, step=None):
  ckpt = convert.load_any(src, step)
  return {**trees.flatten(ckpt.params), **{f'stats.{k}': v for k, v in trees.flatten(ckpt.batch_stats).items()},
          **{f'kendall.{k}': v for k, v in ckpt.kendall.items()}}


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _metric_steps(workdir, strict=True):
  steps = []
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    try:
      steps.append(json.loads(line)['step'])
    except ValueError:
      if strict:
        raise
  return steps


@pytest.fixture(scope='module')
def reference(tmp_path_factory, synthetic_tiny):
  """An uninterrupted run: every step 1..STEPS kept."""
  workdir = tmp_path_factory.mktemp('faults') / 'reference'
  _run(_args(workdir, synthetic_tiny), 0)
  assert checkpointing.steps(workdir) == list(range(1, STEPS + 1))
  return workdir


@pytest.fixture(scope='module')
def reference_values(reference):
  return {step: _values(reference, step) for step in range(1, STEPS + 1)}


# --------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize('override, named', [
    ('--config.num_train_step=3', 'did you mean num_train_steps'),
    ('--config.optimiser.encoder_lr=1', 'did you mean optimizer.encoder_lr'),
    ('--config.num_train_steps=-3', 'num_train_steps must be >= 0'),
    ('--config.optimizer.decoder_lr=nan', 'optimizer.decoder_lr must be a finite number'),
    ('--config.data.weights.nyu=-1', 'data.weights.nyu must be >= 0'),
    ('--config.batch_size=abc', '--config.batch_size=abc'),
])
def test_bad_configuration_is_one_line_naming_the_key(tmp_path, override, named):
  proc = _run(_args(tmp_path / 'w', tmp_path, override, '--dry_run'), 2)
  assert named in _error(proc)
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('module', ['train.py', '-m data_pipelines.preview', '-m studies.domain_mixing'])
def test_config_file_that_is_missing_or_a_folder_is_one_line(tmp_path, module):
  command = [sys.executable, *module.split(), '--workdir' if 'preview' not in module else '--out',
             str(tmp_path / 'out')]
  for path, named in ((tmp_path / 'nope.py', 'no such file'), (ROOT / 'configs', 'a folder, not a config file')):
    proc = _run([*command, '--config', str(path)], 2, timeout=120)
    assert _error(proc) == f'error: --config {path}: {named}' + (
        ' (give a preset name, e.g. default, or a .py file)' if 'folder' in named else '')
  assert not (tmp_path / 'out').exists()


def test_a_config_key_given_twice_takes_its_last_value(tmp_path):
  from efficientvit_jax import config_checks

  # ml_collections alone would join two tuples into ('nyu', 'corridor', 'nyu').
  argv = ['train.py', "--config.data.eval_sets=('nyu','corridor')", '--workdir=w', "--config.data.eval_sets=('nyu',)"]
  assert config_checks.last_overrides(argv) == ['train.py', '--workdir=w', "--config.data.eval_sets=('nyu',)"]
  with pytest.raises(ValueError, match='--config.batch_size is given more than once'):
    config_checks.last_overrides(['x', '--config.batch_size', '2', '--config.batch_size=3'])
  proc = _run(_args(tmp_path / 'w', tmp_path, '--config.num_train_steps=3', '--config.num_train_steps=-3', '--dry_run'),
              2, timeout=120)
  assert _error(proc) == 'error: num_train_steps must be >= 0, got -3'


# --------------------------------------------------------------------------------------------------
# Data


def _bad_copy(src, dst, damage):
  shutil.copytree(src, dst)
  damage(dst)
  return dst


@pytest.mark.e2e
def test_missing_file_is_found_at_start_also_under_dry_run(tmp_path, synthetic_tiny):
  data = _bad_copy(synthetic_tiny, tmp_path / 'data', lambda d: (d / 'nyu/nyu_cache/depth/00002.npy').unlink())
  proc = _run(_args(tmp_path / 'w', data, '--dry_run'), 2)
  assert '00002.npy' in _error(proc) and 'no such file' in _error(proc)


@pytest.mark.e2e
def test_bad_frame_in_training_and_evaluation_stops_naming_the_file(tmp_path, synthetic_tiny):
  # Frame 3 is a training frame, frame 0 the validation frame (nyu_cache/*_indices.txt).
  def damage(d):
    for stem in ('00003', '00000'):
      png = d / f'nyu/nyu_cache/rgb/{stem}.png'
      png.write_bytes(png.read_bytes()[:200])
  data = _bad_copy(synthetic_tiny, tmp_path / 'data', damage)
  workdir = tmp_path / 'w'
  proc = _run(_args(workdir, data), 2)
  assert '00003.png' in _error(proc) and 'cannot decode image' in _error(proc)
  # Nothing after the bad batch was saved; what was saved is intact.
  saved = checkpointing.steps(workdir) if (workdir / 'checkpoints').exists() else []
  assert len(saved) < STEPS
  for step in saved:
    assert checkpointing.verify(workdir / 'checkpoints' / str(step))
  out = tmp_path / 'eval.json'
  proc = _run([sys.executable, 'eval.py', '--checkpoint', str(DATA / 'student_random.pt'), '--dataset', 'nyu',
               '--data', str(data / 'nyu'), '--size', '64x64', '--batch-size', '2', '--out', str(out)], 2)
  assert '00000.png' in _error(proc)
  assert not out.exists()


def test_lilocbench_extraction_checks_depth_against_colour(tmp_path, synthetic_tiny):
  raw = tmp_path / 'raw'
  seq = next(p for p in (synthetic_tiny / 'lilocbench_raw').iterdir() if p.is_dir())
  shutil.copytree(seq, raw)
  from PIL import Image

  depths = sorted(raw.glob('camera_*/depth/*.png'))
  for depth in depths:  # a depth camera at another resolution
    Image.fromarray(np.zeros((10, 12), np.uint16)).save(depth)
  proc = _run([sys.executable, '-m', 'data_pipelines.lilocbench', 'extract', '--input', str(raw),
               '--output', str(tmp_path / 'out')], 2)
  assert any(str(d) in _error(proc) for d in depths) and 'does not match its colour frame' in _error(proc)
  assert not (tmp_path / 'out').exists()


# --------------------------------------------------------------------------------------------------
# Checkpoints: integrity, one writer, save errors


def _flip_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x55
  path.write_bytes(bytes(data))


def _largest(folder):
  return max((p for p in folder.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.e2e
def test_damaged_steps_are_refused_by_commands_and_skipped_by_training(tmp_path, synthetic_tiny, reference,
                                                                       reference_values):
  workdir = tmp_path / 'w'
  shutil.copytree(reference, workdir)
  ckpts = workdir / 'checkpoints'
  altered = _largest(ckpts / '6' / 'params')
  _flip_byte(altered)
  truncated = _largest(ckpts / '4' / 'opt_state')
  truncated.write_bytes(truncated.read_bytes()[:-10])
  shutil.rmtree(ckpts / '3' / 'kendall')  # a missing item
  (ckpts / '7.orbax-checkpoint-tmp-1700000000').mkdir()  # an unfinished save
  (workdir / checkpointing.LOCK_FILE).write_text(json.dumps({'pid': 999999, 'host': 'gone', 'started': 'then'}))
  # Commands given the step or folder refuse with one line naming the file.
  for step, named in ((6, altered.name), (3, 'kendall'), (7, 'never finished')):
    dst = tmp_path / f'{step}.pt'
    proc = _run([sys.executable, '-m', 'efficientvit_jax.convert', 'orbax-to-torch', str(workdir), str(dst),
                 '--step', str(step)], 2)
    assert named in _error(proc) and f'/{step}' in _error(proc), proc.stderr
    assert not dst.exists()
  proc = _run([sys.executable, '-m', 'efficientvit_jax.convert', 'orbax-to-torch', str(workdir),
               str(tmp_path / 'latest.pt')], 2)  # the latest step (6) is damaged: no silent fallback
  assert altered.name in _error(proc)
  # Training warns, naming step and file, and resumes from the newest intact step (5); the
  # warnings a user must see are plain lines on the console.
  proc = _run(_args(workdir, synthetic_tiny, '--config.log_every_steps=2'), 0)
  assert 'checkpoint step 6 is damaged' in proc.stderr and altered.name in proc.stderr
  assert f'warning: {workdir}/config.json differs from this run\'s config: log_every_steps 1 -> 2; ' in proc.stderr
  assert 'taking over the lock of train.py process 999999 on host gone' in proc.stderr
  assert 'orbax-checkpoint-tmp-1700000000: the temporary folder of a save that never finished' in proc.stderr
  assert not (ckpts / '7.orbax-checkpoint-tmp-1700000000').exists()
  assert any(p.name.startswith('6-') for p in (workdir / 'damaged').iterdir())
  _assert_same(_values(workdir, 6), reference_values[6])
  _assert_same(_values(workdir, 5), reference_values[5])
  # Logs: the redone step 6 is logged once; older rows stay.
  assert _metric_steps(workdir) == list(range(1, STEPS + 1))


@pytest.mark.e2e
def test_workdir_whose_checkpoints_are_all_damaged_is_never_trained_afresh(tmp_path, synthetic_tiny, reference):
  workdir = tmp_path / 'w'
  shutil.copytree(reference, workdir)
  for step in checkpointing.steps(workdir):
    _flip_byte(_largest(workdir / 'checkpoints' / str(step) / 'params'))
  rows = (workdir / 'metrics.jsonl').read_text()
  proc = _run(_args(workdir, synthetic_tiny), 1)
  line = _error(proc)
  assert 'no intact checkpoint to resume from: step 6 (' in line and 'step 1 (' in line and 'checksum mismatch' in line
  assert f'to start over, delete {workdir}/damaged' in line
  assert sorted(p.name.split('-')[0] for p in (workdir / 'damaged').iterdir()) == [str(s) for s in range(1, STEPS + 1)]
  # The rerun finds W/checkpoints empty and still refuses: W/damaged/ holds the run.
  proc = _run(_args(workdir, synthetic_tiny), 1)
  assert 'holds steps set aside as damaged' in _error(proc) and f'delete {workdir}/damaged' in _error(proc)
  assert not any((workdir / 'checkpoints').iterdir()) and (workdir / 'metrics.jsonl').read_text() == rows


@pytest.mark.e2e
def test_restore_error_that_is_not_damage_stops_and_moves_nothing(tmp_path, synthetic_tiny, reference):
  """The newest step has no integrity record and orbax cannot read it: not proof of damage (an
  I/O error or another orbax version read the same way): exit 1, the step stays."""
  workdir = tmp_path / 'w'
  shutil.copytree(reference, workdir)
  step = workdir / 'checkpoints' / str(STEPS)
  (step / checkpointing.INTEGRITY_FILE).unlink()
  (step / 'params' / '_METADATA').write_text('{"not": "orbax metadata"')
  proc = _run(_args(workdir, synthetic_tiny), 1)
  line = _error(proc)
  assert f'cannot resume from checkpoint step {STEPS}: {step}: unreadable' in line and 'nothing was moved' in line
  assert f'move {step} out of {workdir}/checkpoints' in line
  assert checkpointing.steps(workdir) == list(range(1, STEPS + 1)) and not (workdir / 'damaged').exists()


def _nan_folder(path, sealed):
  ckpt = convert.checkpoint_from_torch_file(DATA / 'student_random.pt')
  flat = trees.flatten(ckpt.params)
  flat['depth_head.kernel'] = np.full_like(flat['depth_head.kernel'], np.nan)
  ckpt.params = trees.unflatten(flat)
  checkpointing.write_folder(path, ckpt)
  if not sealed:  # what altered bytes without a seal look like to a reader
    (path / '0' / checkpointing.INTEGRITY_FILE).unlink()
  return path


@pytest.mark.e2e
def test_every_consumer_refuses_non_finite_weights_sealed_or_not(tmp_path, synthetic_tiny, capsys):
  from PIL import Image

  from efficientvit_jax import predict

  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / 'img.png')
  for sealed in (True, False):
    src = _nan_folder(tmp_path / f'nan_sealed_{sealed}', sealed)
    named = f'{src}/0: params.depth_head.kernel holds'
    out = tmp_path / f'pred_{sealed}'
    assert predict.main(['--checkpoint', str(src), '--out', str(out), str(tmp_path / 'img.png')]) == 2
    assert named in capsys.readouterr().err and not out.exists()
    code, err = _convert(capsys, 'orbax-to-torch', str(src), str(tmp_path / f'{sealed}.pt'))
    assert code == 2 and named in err.err and not (tmp_path / f'{sealed}.pt').exists()
    report = tmp_path / f'eval_{sealed}.json'
    proc = _run([sys.executable, 'eval.py', '--checkpoint', str(src), '--dataset', 'nyu', '--data',
                 str(synthetic_tiny / 'nyu'), '--size', '64x64', '--batch-size', '2', '--out', str(report)], 2)
    assert named in _error(proc) and not report.exists()
    # init_from: named as non-finite weights, not as a learning-rate problem (the folder holds a B1)
    proc = _run(_args(tmp_path / f'w_{sealed}', synthetic_tiny, f'--config.init_from={src}',
                      '--config.model.backbone=efficientvit_b1'), 2)
    assert _error(proc).startswith(f'error: init_from: {named}') and 'learning rate' not in proc.stderr
    checkpoints = tmp_path / f'w_{sealed}' / 'checkpoints'
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


@pytest.mark.e2e
def test_disk_full_during_an_asynchronous_save_is_one_line(tmp_path, synthetic_tiny, reference_values):
  """W/checkpoints on a disk that holds one checkpoint (a tmpfs in the command's own mount
  namespace): the asynchronous save of step 2 fails; one line, no traceback, step 1 intact."""
  unshare = mount_namespace()
  if unshare is None:
    pytest.skip('no mount namespaces here (unshare)')
  workdir = tmp_path / 'w'
  (workdir / 'checkpoints').mkdir(parents=True)
  command = ' '.join(shlex.quote(a) for a in _args(workdir, synthetic_tiny))
  script = (f'mount -t tmpfs -o size=20m tmpfs {workdir}/checkpoints && {{ {command}; code=$?; '
            f'cp -r {workdir}/checkpoints {workdir}/left; exit $code; }}')
  proc = subprocess.run([*unshare, 'sh', '-c', script], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr, proc.stderr[-3000:]
  line = _error(proc)
  assert f'cannot write checkpoint step 2 to {workdir}/checkpoints/2 (No space left on device)' in line
  assert f'the last good checkpoint is step 1 in {workdir}/checkpoints' in line
  left = workdir / 'left'
  assert [p.name for p in left.iterdir() if p.name.isdigit()] == ['1'] and checkpointing.verify(left / '1')
  _assert_same(_values(left, 1), reference_values[1])


@pytest.mark.e2e
def test_second_writer_is_refused_naming_the_first(tmp_path, synthetic_tiny):
  workdir = tmp_path / 'w'
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from efficientvit_jax import checkpointing as c; '
       f'c.WorkdirLock({str(workdir)!r}).acquire(); print("locked", flush=True); time.sleep(300)'],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    proc = _run(_args(workdir, synthetic_tiny), 2)
    assert f'is in use by train.py process {holder.pid}' in _error(proc)
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.e2e
def test_unwritable_workdir_is_refused_at_start(tmp_path, synthetic_tiny):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'checkpoints').write_text('a file where the folder should be')
  proc = _run(_args(workdir, synthetic_tiny), 2)
  assert f'{workdir}/checkpoints' in _error(proc)


@pytest.mark.e2e
def test_save_error_mid_run_names_path_and_last_good_step(tmp_path, synthetic_tiny, reference_values):
  """The checkpoint folder vanishes (an unmounted disk) while training: one line, exit 1, and the
  steps saved before restore with their values."""
  workdir = tmp_path / 'w'
  ckpts = workdir / 'checkpoints'
  # Saves at steps 3 and 6: step 3 is sealed at least a step before step 6 is saved.
  proc = subprocess.Popen(_args(workdir, synthetic_tiny, '--config.checkpoint_every_steps=3'), cwd=ROOT,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 600
    while not (ckpts / '3' / checkpointing.INTEGRITY_FILE).exists():
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
      time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)
    os.rename(ckpts, workdir / 'moved')
    ckpts.write_text('the mount is gone')
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=600)
  finally:
    proc.kill()
  assert proc.returncode == 1, err[-3000:]
  assert 'Traceback' not in err, err[-3000:]
  line = next(line for line in err.splitlines() if line.startswith('error:'))
  assert str(ckpts) in line and 'the last good checkpoint is step 3 in' in line, line
  ckpts.unlink()
  os.rename(workdir / 'moved', ckpts)
  assert checkpointing.steps(workdir) == [3]
  _assert_same(_values(workdir, 3), reference_values[3])


# --------------------------------------------------------------------------------------------------
# Signals


@pytest.mark.e2e
def test_random_kills_then_resume_equal_an_uninterrupted_run(tmp_path, synthetic_tiny, reference, reference_values):
  """SIGKILL and SIGTERM at random moments (start-up, compilation, steps, saves), then a rerun."""
  workdir = tmp_path / 'w'
  rng = random.Random(int(os.environ.get('FAULTS_SEED', '0')))
  plan = [(signal.SIGKILL, 'steps'), (signal.SIGTERM, 'start-up'), (signal.SIGKILL, 'steps'),
          (signal.SIGTERM, 'steps')]
  for sig, when in plan:
    saved = checkpointing.finished_steps(workdir / 'checkpoints')  # none after a kill in the first save
    done = saved[-1] if saved else 0
    if done >= STEPS - 1:
      break
    proc = subprocess.Popen(_args(workdir, synthetic_tiny), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    start = time.time()
    if when == 'steps':  # a random moment after this run's first step: in a step, a save or a seal
      while time.time() - start < 600 and proc.poll() is None:
        logged = _metric_steps(workdir, strict=False) if (workdir / 'metrics.jsonl').exists() else []
        if logged and logged[-1] > done:
          break
        time.sleep(0.01)
      time.sleep(rng.uniform(0.0, 2.0))
    else:  # imports, restore, compilation
      time.sleep(rng.uniform(0.5, 10.0))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert 'Traceback' not in err, err[-3000:]
    assert proc.returncode in (0, -signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGTERM), (sig, when, err[-3000:])
  _run(_args(workdir, synthetic_tiny), 0)
  _assert_same(_values(workdir), reference_values[STEPS])
  assert _metric_steps(workdir) == list(range(1, STEPS + 1))
  for step in checkpointing.steps(workdir):
    _assert_same(_values(workdir, step), reference_values[step])


# --------------------------------------------------------------------------------------------------
# Conversion and outputs


def _convert(capsys, *argv):
  code = convert.main(list(argv))
  return code, capsys.readouterr()


def test_conversion_refuses_damaged_non_finite_and_wrong_dtype(tmp_path, capsys):
  obj = torch.load(DATA / 'student_random.pt', weights_only=True)
  key = 'encoder.stem_in_conv.0.weight' if 'encoder.stem_in_conv.0.weight' in obj['model'] else next(
      k for k in obj['model'] if k.endswith('conv.weight'))
  cases = {}
  damaged = tmp_path / 'damaged.pt'
  shutil.copy(DATA / 'student_random.pt', damaged)
  _flip_byte(damaged)
  cases[damaged] = 'fails its CRC-32 check'
  nan = {**obj, 'model': {**obj['model'], key: obj['model'][key].clone().fill_(float('nan'))}}
  torch.save(nan, tmp_path / 'nan.pt')
  cases[tmp_path / 'nan.pt'] = f'{key} holds'
  # float64 with NaN: the dtype is reported first.
  f64 = {**obj, 'model': {**obj['model'], key: obj['model'][key].double().fill_(float('nan'))}}
  torch.save(f64, tmp_path / 'f64.pt')
  cases[tmp_path / 'f64.pt'] = f'{key} has dtype float64'
  torch.save({**obj, 'args': argparse.Namespace(lr=1.0)}, tmp_path / 'pickled.pt')
  cases[tmp_path / 'pickled.pt'] = '--allow-pickle'
  for src, named in cases.items():
    code, out = _convert(capsys, 'torch-to-orbax', str(src), str(tmp_path / f'{src.stem}_out'))
    assert code == 2 and named in out.err, (src, out.err)
    assert not (tmp_path / f'{src.stem}_out').exists()


@pytest.mark.e2e
def test_reference_numpy_metrics_load_without_allow_pickle_and_nothing_is_overwritten(tmp_path, capsys):
  obj = torch.load(DATA / 'student_random.pt', weights_only=True)
  obj.update(best_rmse=np.float64(0.41), best_miou=np.float32(0.5), epoch=np.int64(7))
  src = tmp_path / 'reference_style.pt'
  torch.save(obj, src)
  dst = tmp_path / 'out'
  code, out = _convert(capsys, 'torch-to-orbax', str(src), str(dst))
  assert code == 0, out.err
  first = _values(dst)
  assert convert.load_any(dst).meta['metrics']['best_rmse'] == pytest.approx(0.41)
  assert checkpointing.verify(dst / '0')
  code, out = _convert(capsys, 'torch-to-orbax', str(DATA / 'student_random.pt'), str(dst))
  assert code == 2 and '--overwrite' in out.err
  _assert_same(_values(dst), first)
  code, out = _convert(capsys, 'torch-to-orbax', str(DATA / 'student_random.pt'), str(dst), '--overwrite')
  assert code == 0 and 'best_rmse' not in convert.load_any(dst).meta['metrics']
  pt = tmp_path / 'back.pt'
  pt.write_bytes(b'precious')
  code, out = _convert(capsys, 'orbax-to-torch', str(dst), str(pt))
  assert code == 2 and '--overwrite' in out.err and pt.read_bytes() == b'precious'
  code, out = _convert(capsys, 'orbax-to-torch', str(dst), str(pt), '--overwrite')
  assert code == 0 and pt.read_bytes() != b'precious' and 'model' in torch.load(pt, weights_only=True)
  # eval.py and predict refuse to replace their outputs too.
  report = tmp_path / 'r.json'
  report.write_text('{}')
  proc = _run([sys.executable, 'eval.py', '--checkpoint', str(dst), '--dataset', 'nyu', '--data', str(tmp_path),
               '--out', str(report)], 2)
  assert str(report) in _error(proc) and report.read_text() == '{}'
  from PIL import Image

  from efficientvit_jax import predict

  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / 'img.png')
  (tmp_path / 'pred').mkdir()
  (tmp_path / 'pred' / 'img_depth.npy').write_bytes(b'old')
  assert predict.main(['--checkpoint', str(dst), '--out', str(tmp_path / 'pred'), str(tmp_path / 'img.png')]) == 2
  assert 'img_depth.npy already exists' in capsys.readouterr().err
  assert (tmp_path / 'pred' / 'img_depth.npy').read_bytes() == b'old'


def test_non_finite_checkpoint_is_not_converted(tmp_path, capsys):
  ckpt = convert.checkpoint_from_torch_file(DATA / 'student_random.pt')
  flat = trees.flatten(ckpt.params)
  name = sorted(flat)[0]
  flat[name] = np.full_like(flat[name], np.nan)
  ckpt.params = trees.unflatten(flat)
  checkpointing.write_folder(tmp_path / 'nan', ckpt)
  code, out = _convert(capsys, 'orbax-to-torch', str(tmp_path / 'nan'), str(tmp_path / 'nan.pt'))
  assert code == 2 and f'params.{name} holds' in out.err and not (tmp_path / 'nan.pt').exists()

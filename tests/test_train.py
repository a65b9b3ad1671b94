"""train.py end to end, in real subprocesses: learning, SIGTERM + resume == uninterrupted,
8 simulated devices == 1, init_from, non-finite stop, conversion of a trained checkpoint."""

import json
import os
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
from conftest import xla_flags

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import torch_model
from efficientvit_jax import trees
from efficientvit_jax.configs import quickstart

pytestmark = pytest.mark.e2e
PT = str(DATA / 'student_random.pt')
# Global batch 8 (it splits over 8 devices): the 8-devices run is compared with `uninterrupted`, and
# tests/test_console.py's run trains the same program (the compilation cache serves it). The per-epoch
# cosine makes the rates independent of a run's length, so runs of any length share that program.
BATCH = 8
_OPT = quickstart.get_config().optimizer
LR = max(_OPT.encoder_lr, _OPT.decoder_lr, _OPT.kendall_lr)  # the largest first step of AdamW


def _args(workdir, data, *overrides):
  return [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir', str(workdir),
          f'--config.data.root={data}', f'--config.batch_size={BATCH}', '--config.data.input_size=(48,64)',
          "--config.data.eval_sets=('nyu',)", '--config.log_every_steps=1', '--config.checkpoint_every_steps=4',
          '--config.eval_every_steps=0', '--config.data.num_threads=2', '--config.optimizer.lr_per_epoch=True',
          *overrides]


def _env(devices=1):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
  if devices > 1:
    env['XLA_FLAGS'] = xla_flags(devices)
  return env


def _train(workdir, data, *overrides, devices=1, expect=0):
  proc = subprocess.run(_args(workdir, data, *overrides), cwd=ROOT, env=_env(devices), capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == expect, proc.stderr[-3000:]
  return proc


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _params(src):
  ckpt = convert.load_any(src)
  return {**trees.flatten(ckpt.params), **{f'stats.{k}': v for k, v in trees.flatten(ckpt.batch_stats).items()},
          **{f'kendall.{k}': v for k, v in ckpt.kendall.items()}}


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, synthetic_tiny):
  workdir = tmp_path_factory.mktemp('train') / 'full'
  _train(workdir, synthetic_tiny, '--config.num_train_steps=16')
  return workdir


def test_short_run_learns(uninterrupted):
  lines = [m for m in _metrics(uninterrupted) if 'train/loss' in m]
  assert [m['step'] for m in lines] == list(range(1, 17))
  first, last = lines[:4], lines[-4:]
  for key in ('train/depth', 'train/seg'):
    assert np.mean([m[key] for m in last]) < np.mean([m[key] for m in first]), key
  for key in ('lr/encoder', 'lr/decoder', 'lr/kendall', 'train/edge', 'train/log_sigma_d', 'train/log_sigma_s'):
    assert key in lines[0]
  # Throughput leaves out the step that compiled (the first); every later row has it.
  assert 'train/images_per_s' not in lines[0] and all('train/images_per_s' in m for m in lines[1:])
  val = [m for m in _metrics(uninterrupted) if 'val/nyu/rmse' in m]
  assert val and val[-1]['step'] == 16
  assert json.loads((uninterrupted / 'config.json').read_text())['batch_size'] == BATCH
  assert os.listdir(uninterrupted / 'tb')
  assert checkpointing.steps(uninterrupted) == [12, 16] or checkpointing.steps(uninterrupted)[-1] == 16
  meta = convert.load_any(uninterrupted).meta
  assert meta['step'] == 16 and set(meta['num_batches_tracked'].values()) == {16}


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, synthetic_tiny, uninterrupted):
  workdir = tmp_path / 'resumed'
  proc = subprocess.Popen(_args(workdir, synthetic_tiny, '--config.num_train_steps=16'), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  try:
    while time.time() < deadline:
      if (workdir / 'metrics.jsonl').exists() and any(m['step'] >= 5 for m in _metrics(workdir)):
        break
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == 0, err[-3000:]
  assert 'preempted: saved step' in out
  stopped = checkpointing.steps(workdir)[-1]
  assert 5 <= stopped < 16
  _train(workdir, synthetic_tiny, '--config.num_train_steps=16')
  a, b = _params(uninterrupted), _params(workdir)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The resumed steps log the same losses as the uninterrupted run.
  full = {m['step']: m['train/loss'] for m in _metrics(uninterrupted) if 'train/loss' in m}
  for m in _metrics(workdir):
    if 'train/loss' in m and m['step'] > stopped:
      assert m['train/loss'] == full[m['step']]


def test_eight_devices_give_the_losses_of_one(tmp_path, synthetic_tiny, uninterrupted):
  # No evaluation here (not compared; saves compiling it for 8 devices). The first 4 steps: 4 epochs of
  # the tiny data at batch 8, so 4 per-epoch rates.
  workdir = tmp_path / 'devices_8'
  _train(workdir, synthetic_tiny, '--config.num_train_steps=4', '--config.data.eval_sets=()', devices=8)
  eight, one = ([m['train/loss'] for m in _metrics(w) if 'train/loss' in m] for w in (workdir, uninterrupted))
  assert len(eight) == 4
  np.testing.assert_allclose(eight, one[:4], rtol=1e-4)


def test_trained_checkpoint_converts_to_pt_and_back(tmp_path, uninterrupted):
  pt = tmp_path / 'trained.pt'
  assert convert.main(['orbax-to-torch', str(uninterrupted), str(pt)]) == 0
  obj = torch.load(pt, weights_only=True)
  assert obj['epoch'] == convert.load_any(uninterrupted).meta['epoch'] - 1  # the reference's: last finished
  torch_model.DepthSegNet().load_state_dict(obj['model'], strict=True)
  assert int(obj['model']['neck.1.num_batches_tracked']) == 16
  back = tmp_path / 'back'
  assert convert.main(['torch-to-orbax', str(pt), str(back)]) == 0
  a, b = _params(uninterrupted), _params(back)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_init_from_copies_weights(tmp_path, synthetic_tiny):
  # One step at the usual rates (the usual program): AdamW's first update moves a weight by at most
  # lr * (1 + weight_decay * |w|), whereas the fixture's weights and a fresh initialisation differ by ~0.1.
  workdir = tmp_path / 'init'
  _train(workdir, synthetic_tiny, '--config.num_train_steps=1', f'--config.init_from={PT}')
  trained, init = convert.load_any(workdir), convert.load_any(PT)
  got = trees.flatten(trained.params)
  for k, v in trees.flatten(init.params).items():
    np.testing.assert_allclose(got[k], v, rtol=LR * _OPT.weight_decay + 1e-6, atol=LR * (1 + 1e-6), err_msg=k)
  np.testing.assert_allclose(trained.kendall['log_sigma_d'], init.kendall['log_sigma_d'], atol=LR * (1 + 1e-6))
  assert trained.meta['num_batches_tracked']['neck.1'] == 1001  # the fixture's 1000 + one step


def test_preset_without_init_from_fails_naming_the_key(tmp_path):
  proc = subprocess.run([sys.executable, 'train.py', '--config', 'configs/v8.py', '--workdir', str(tmp_path / 'w')],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and 'init_from' in proc.stderr
  proc = subprocess.run([sys.executable, 'train.py', '--config', 'configs/v8.py', '--workdir', str(tmp_path / 'w'),
                         '--config.optimiser.encoder_lr=1'], cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode != 0 and 'optimiser' in proc.stderr


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_tiny, uninterrupted):
  workdir = tmp_path / 'nan'
  import shutil

  shutil.copytree(uninterrupted, workdir)
  proc = _train(workdir, synthetic_tiny, '--config.num_train_steps=20', '--config.optimizer.decoder_lr=1e38', expect=1)
  assert 'non-finite loss at step 17' in proc.stderr
  assert checkpointing.steps(workdir)[-1] == 16
  a, b = _params(uninterrupted), _params(workdir)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_missing_or_unreadable_data_is_one_line_naming_it(tmp_path):
  for override, named in ((f'--config.data.root={tmp_path / "nowhere"}', 'nowhere'),
                          ('--config.data.tfds_dir=gs://bucket/tfds', 'data.tfds_dir')):
    proc = _train(tmp_path / 'w', tmp_path / 'nowhere', '--config.data.format=tfds', override, '--dry_run', expect=2)
    assert 'error: data:' in proc.stderr and named in proc.stderr and 'Traceback' not in proc.stderr


def test_backbone_is_recorded_and_checked(tmp_path, synthetic_tiny, uninterrupted):
  meta = convert.load_any(uninterrupted).meta
  assert meta['backbone'] == 'efficientvit_b1' and meta['input_size'] == [48, 64]
  # Resuming with another backbone, starting from another backbone's weights, an unknown backbone:
  # one line naming the key, exit 2, before any step.
  resumed = tmp_path / 'resumed'
  shutil.copytree(uninterrupted, resumed)
  proc = _train(resumed, synthetic_tiny, '--config.num_train_steps=20', '--config.model.backbone=efficientvit_b0',
                expect=2)
  assert 'a efficientvit_b1 model but model.backbone is efficientvit_b0' in proc.stderr
  assert checkpointing.steps(resumed) == checkpointing.steps(uninterrupted)
  proc = _train(tmp_path / 'init', synthetic_tiny, '--config.num_train_steps=1',
                '--config.model.backbone=mobilenet_v3_small', f'--config.init_from={PT}', expect=2)
  assert 'holds a efficientvit_b1 model but model.backbone is mobilenet_v3_small' in proc.stderr
  proc = _train(tmp_path / 'bad', synthetic_tiny, '--config.model.backbone=resnet50', expect=2)
  assert 'model.backbone must be one of' in proc.stderr

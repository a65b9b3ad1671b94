"""What a user sees: a short training run's console output and its TensorBoard event files;
the progress display and the library log filter."""

import io
import logging
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from efficientvit_jax import console

LOG_LINE = re.compile(r'^step \d+/\d+ loss ')


def _events(tb_dir):
  """Every Event of the TFRecord event files under `tb_dir` (tensorboardX's own protos)."""
  from tensorboardX.proto import event_pb2

  events = []
  for name in sorted(os.listdir(tb_dir)):
    data = (tb_dir / name).read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      pos += 12  # length + its crc
      event = event_pb2.Event()
      event.ParseFromString(data[pos:pos + length])
      events.append(event)
      pos += length + 4  # data + its crc
  return events


@pytest.fixture(scope='module')
def run(tmp_path_factory, synthetic_tiny):
  workdir = tmp_path_factory.mktemp('console') / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
  proc = subprocess.run(
      [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir', str(workdir),
       f'--config.data.root={synthetic_tiny}', '--config.batch_size=4', '--config.data.input_size=(48,64)',
       "--config.data.eval_sets=('nyu',)", '--config.log_every_steps=2',
       '--config.checkpoint_every_steps=10', '--config.eval_every_steps=10', '--config.num_train_steps=20',
       '--config.data.num_threads=2'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:]
  return workdir, proc.stdout.splitlines()


@pytest.mark.e2e
def test_twenty_steps_print_few_lines_with_a_compile_line(run):
  _, lines = run
  log_lines = [line for line in lines if LOG_LINE.match(line)]
  other = [line for line in lines if not LOG_LINE.match(line)]
  assert len(log_lines) == 10
  assert len(other) < 15, '\n'.join(other)
  assert any(re.match(r'compiling the training step \.\.\. done in [\d.]+ s', line) for line in other), other
  assert sum('saving checkpoint' in line for line in other) == 2  # one line per save (steps 10, 20)
  assert not any('orbax' in line or 'checkpoint_manager' in line for line in lines)
  # Rates and an ETA after compilation.
  assert re.search(r'step/s, [\d.]+ images/s, eta \d', log_lines[-1])


@pytest.mark.e2e
def test_event_files_hold_images_text_hparams_and_scalars(run):
  workdir, _ = run
  events = _events(workdir / 'tb')
  kinds = {}
  for event in events:
    for value in event.summary.value:
      plugin = value.metadata.plugin_data.plugin_name
      kind = 'image' if value.HasField('image') else plugin or ('scalar' if value.HasField('simple_value') else '?')
      kinds.setdefault(kind, set()).add(value.tag)
  images = [(e.step, v.tag, v.image) for e in events for v in e.summary.value if v.HasField('image')]
  assert kinds['image'] and all(tag.startswith('val/nyu/') for tag in kinds['image'])
  # The same frames at both evaluations (the tiny set has one NYU validation frame).
  assert sorted((step, tag) for step, tag, _ in images) == [(s, t) for s in (10, 20) for t in sorted(kinds['image'])]
  from PIL import Image

  png = Image.open(io.BytesIO(images[0][2].encoded_image_string))
  assert png.size[0] > 400 and np.asarray(png).std() > 0
  assert 'config/text_summary' in kinds['text']
  assert {'_hparams_/experiment', '_hparams_/session_start_info'} <= kinds['hparams']
  assert {'lr/encoder', 'lr/decoder', 'lr/kendall', 'train/loss', 'train/steps_per_s', 'val/nyu/rmse',
          'val/nyu/abs_rel', 'val/nyu/delta3', 'val/nyu/fw_iou', 'val/nyu/loss'} <= kinds['scalar']
  # The hparams' metrics: validation scalars this run writes, and only those.
  from tensorboardX.proto import plugin_hparams_pb2

  declared = []
  for event in events:
    for value in event.summary.value:
      if value.tag == '_hparams_/experiment':
        data = plugin_hparams_pb2.HParamsPluginData()
        data.ParseFromString(value.metadata.plugin_data.content)
        declared += [m.name.tag for m in data.experiment.metric_infos]
  assert {'val/nyu/rmse', 'val/nyu/miou', 'val/nyu/loss'} <= set(declared) <= kinds['scalar'], declared


def test_progress_lines_off_a_terminal(capsys, monkeypatch):
  clock = iter(range(0, 10_000, 20))  # 20 s per call
  monkeypatch.setattr(console.time, 'perf_counter', lambda: float(next(clock)))
  bar = console.Progress(10, 'eval nyu', unit='batch', batch_size=16)
  for _ in range(10):
    bar.update()
  bar.close()
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 8 + 1  # every 10 % from the second unit (rates known) to 90 %, then 'done'
  assert lines[0] == 'eval nyu: 2/10 (20%) 0.05 batch/s, 0.8 images/s, eta 2.7 min'
  assert lines[-1].startswith('eval nyu: done, 10/10 in')


def test_a_short_task_prints_nothing(capsys):
  with console.Progress(100, 'quick', unit='frame') as bar:
    for _ in range(100):
      bar.update()
  assert capsys.readouterr().out == ''


def test_library_info_is_filtered_and_verbose_brings_it_back(caplog):
  # As orbax logs through absl: a record made in a library file.
  record = lambda: logging.getLogger('absl').handle(logging.LogRecord(
      'absl', logging.INFO, '/venv/site-packages/orbax/checkpoint.py', 1, 'Finished saving checkpoint', None, None))
  console.setup(verbose=False)
  with caplog.at_level(logging.INFO):
    record()
    logging.getLogger('absl').warning('disk almost full')
  assert [r.getMessage() for r in caplog.records] == ['disk almost full']
  caplog.clear()
  console.setup(verbose=True)
  with caplog.at_level(logging.INFO):
    record()
  assert [r.getMessage() for r in caplog.records] == ['Finished saving checkpoint']

"""What a user sees: a short training run's console output and its TensorBoard event files, the
TFDS builder's and export's output when redirected; the progress display, the log records on the
console, the training throughput."""

import io
import json
import logging
import os
import re
import statistics
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import DATA
from conftest import ROOT
from conftest import run_command

from efficientvit_jax import console
from efficientvit_jax import train_loop

LOG_LINE = re.compile(r'^step \d+/\d+ loss ')
ABSL_LINE = re.compile(r'^[IWEF]\d{4} ')  # absl's (and glog's) record prefix: I1205 12:00:00.000000 ...
VALIDATION_LINE = re.compile(r'^step (\d+) validation (\w+): ')
EVAL_SETS = ('nyu', 'lilocbench')


def _assert_plain(text):
  """No carriage-return progress bars, escape codes, absl-format records or warnings of libraries."""
  assert '\r' not in text and '\x1b' not in text, repr(text[-2000:])
  lines = text.splitlines()
  assert not [line for line in lines if ABSL_LINE.match(line)], text[-3000:]
  assert not [line for line in lines if 'warning' in line.lower()], text[-3000:]


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
  # JAX picks its platform as for a user (its notices about absent backends must stay off the console).
  env = dict(os.environ, JAX_PLATFORMS='')
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
  proc = subprocess.run(
      [sys.executable, 'train.py', '--config', 'configs/quickstart.py', '--workdir', str(workdir),
       f'--config.data.root={synthetic_tiny}', '--config.batch_size=8', '--config.data.input_size=(48,64)',
       f'--config.data.eval_sets={EVAL_SETS}', '--config.log_every_steps=2',
       '--config.checkpoint_every_steps=8', '--config.eval_every_steps=8', '--config.num_train_steps=16',
       '--config.data.num_threads=2', '--config.optimizer.lr_per_epoch=True'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:]
  return workdir, proc.stdout


@pytest.mark.e2e
def test_sixteen_steps_print_few_lines_with_a_compile_line(run):
  _, text = run
  lines = text.splitlines()
  log_lines = [line for line in lines if LOG_LINE.match(line)]
  other = [line for line in lines if not LOG_LINE.match(line)]
  assert len(log_lines) == 8
  assert len(other) < 15, '\n'.join(other)
  _assert_plain(text)
  assert any(re.match(r'compiling the training step \.\.\. done in [\d.]+ s', line) for line in other), other
  assert sum('saving checkpoint' in line for line in other) == 2  # one line per save (steps 8, 16)
  assert not any('orbax' in line or 'checkpoint_manager' in line for line in lines)
  # Rates and an ETA after compilation.
  assert re.search(r'step/s, [\d.]+ images/s, eta \d', log_lines[-1])


@pytest.mark.e2e
def test_two_validations_compile_once_and_print_a_short_line_per_set(run):
  _, text = run
  lines = text.splitlines()
  for name in EVAL_SETS:  # compiled at the first validation only
    assert sum(line.startswith(f'compiling the evaluation step ({name}) ... done in') for line in lines) == 1, text
  validation = [(m.group(1), m.group(2), line) for line in lines if (m := VALIDATION_LINE.match(line))]
  assert sorted(v[:2] for v in validation) == sorted((step, name) for step in ('8', '16') for name in EVAL_SETS)
  assert all(len(line) < 120 for *_, line in validation), validation
  nyu = next(line for step, name, line in validation if (step, name) == ('16', 'nyu'))
  row = next(r for r in map(json.loads, (run[0] / 'metrics.jsonl').read_text().splitlines())
             if r['step'] == 16 and 'val/nyu/rmse' in r)
  assert f"rmse {row['val/nyu/rmse']:.4f}" in nyu and f"miou {row['val/nyu/miou']:.4f}" in nyu, nyu


@pytest.mark.e2e
def test_images_per_s_of_the_console_and_the_metrics_are_one_number(run):
  workdir, text = run
  printed = {int(m.group(1)): (float(m.group(2)), float(m.group(3)))
             for m in re.finditer(r'^step (\d+)/\d+ .* ([\d.]+) step/s, ([\d.]+) images/s', text, re.M)}
  timed = {r['step']: r for r in map(json.loads, (workdir / 'metrics.jsonl').read_text().splitlines())
           if 'train/images_per_s' in r}
  assert sorted(printed) == sorted(timed) == list(range(2, 17, 2))
  for step, (steps_per_s, images_per_s) in printed.items():
    assert images_per_s == pytest.approx(timed[step]['train/images_per_s'], abs=0.051), step
    assert steps_per_s == pytest.approx(timed[step]['train/steps_per_s'], rel=0.01, abs=0.0051), step
    assert timed[step]['train/images_per_s'] == pytest.approx(8 * timed[step]['train/steps_per_s'])
  rows = {step: r['train/images_per_s'] for step, r in timed.items()}
  # Neither the first step's compilation (in the window of step 2) nor a validation with its
  # compilation and a save (before step 10) counts: those windows are as fast as the others,
  # where counting them would make them several times slower.
  typical = statistics.median(rows.values())
  assert rows[2] > typical / 4 and rows[10] > typical / 4, rows


def test_throughput_windows():
  clock = iter([0.0, 1.0, 3.0, 5.0, 9.0]).__next__
  window = train_loop.Throughput(0, clock=clock)  # t = 0
  window.input_wait += 0.5
  assert window.read(4, batch_size=8) == {'train/steps_per_s': 4.0, 'train/images_per_s': 32.0,
                                          'train/input_wait': 0.5}  # t = 1
  window.restart(6)  # t = 3: e.g. after a validation
  assert window.read(8, batch_size=8) == {'train/steps_per_s': 1.0, 'train/images_per_s': 8.0,
                                          'train/input_wait': 0.0}  # t = 5
  assert window.read(8, batch_size=8) == {}  # t = 9: no step since (a step that compiled, then a log line)


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
  assert kinds['image'] and all(tag.startswith(('val/nyu/', 'val/lilocbench/')) for tag in kinds['image'])
  # The same frames at both evaluations.
  assert sorted((step, tag) for step, tag, _ in images) == [(s, t) for s in (8, 16) for t in sorted(kinds['image'])]
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


@pytest.fixture
def console_log(capsys):
  """Emits records as libraries and our code do; returns what reached stderr. Restores the root level."""
  root = logging.getLogger()
  level = root.level

  def emit():
    logging.getLogger('jax._src.xla_bridge').info("Unable to initialize backend 'tpu'")
    logging.getLogger('absl').info('compilation cache: /tmp/cache')
    logging.getLogger('absl').warning('disk almost full')
    console.warn('the config changed')
    logging.getLogger('orbax').error('save failed')
    return capsys.readouterr().err.splitlines()

  yield emit
  console.setup(verbose=False)
  root.setLevel(level)


def test_log_records_reach_the_console_as_plain_warnings(console_log):
  console.setup(verbose=False)
  lines = console_log()
  assert lines[:2] == ['warning: disk almost full', 'warning: the config changed']  # the latter once
  assert len(lines) == 3 and re.match(r'E\d{4} .*\] save failed$', lines[2]), lines  # a failure's report


def test_verbose_shows_every_record_with_its_prefix(console_log):
  console.setup(verbose=True)
  lines = console_log()
  assert [line.split('] ', 1)[-1] for line in lines if ABSL_LINE.match(line)] == [
      "Unable to initialize backend 'tpu'", 'compilation cache: /tmp/cache', 'disk almost full',
      'the config changed', 'save failed'], lines
  assert 'warning: the config changed' in lines


@pytest.mark.e2e
def test_tfds_builder_redirected_is_plain(synthetic_tiny, tmp_path):
  pytest.importorskip('tensorflow_datasets')
  proc, _ = run_command(['-m', 'data_pipelines.tfds_builders', '--root', synthetic_tiny, '--out', tmp_path], 0)
  _assert_plain(proc.stdout + proc.stderr)
  sets = ('nyu', 'lilocbench', 'corridor')
  assert proc.stdout.splitlines() == [f'{name}: {tmp_path}/evit_{name}/1.0.0' for name in sets]
  assert proc.stderr == ''


@pytest.mark.e2e
def test_onnx_export_redirected_is_plain(tmp_path):
  pytest.importorskip('onnx')
  out = tmp_path / 'm.onnx'
  proc, _ = run_command(['-m', 'efficientvit_jax.export', '--checkpoint', DATA / 'student_random.pt',
                         '--format', 'onnx', '--out', out, '--size', '32x32'], 0)
  _assert_plain(proc.stdout + proc.stderr)
  assert len(proc.stdout.splitlines()) == 2 and proc.stdout.splitlines()[-1].startswith(f'wrote {out} (onnx')
  assert proc.stderr == ''


class _Terminal(io.StringIO):
  """A terminal that records each write."""

  def __init__(self):
    super().__init__()
    self.writes = []

  def isatty(self):
    return True

  def write(self, text):
    self.writes.append(text)
    return super().write(text)


def test_a_line_is_one_write_and_never_lands_inside_an_open_compile_line(monkeypatch):
  term = _Terminal()
  monkeypatch.setattr(sys, 'stdout', term)
  monkeypatch.setattr(sys, 'stderr', term)
  console.line('process 0 of 2 (flags)')
  assert term.writes == ['process 0 of 2 (flags)\n']  # print() would write the newline apart
  with pytest.raises(RuntimeError):
    with console.compiling('the training step'):
      # What the multi-process watchdog's thread prints while this one compiles.
      console.line('error: process 1 stopped the run: cannot decode image', sys.stderr)
      raise RuntimeError('compilation failed')
  with pytest.raises(RuntimeError):
    with console.compiling('the evaluation step (nyu)'):
      raise RuntimeError('compilation failed')
  console.line('error: out of memory', sys.stderr)  # this thread's own error after a failed compile
  assert term.getvalue().splitlines() == [
      'process 0 of 2 (flags)', 'compiling the training step ...',
      'error: process 1 stopped the run: cannot decode image', 'compiling the evaluation step (nyu) ...',
      'error: out of memory']

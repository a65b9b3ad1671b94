"""train.py in 2 and 3 processes on 127.0.0.1 (jax.distributed, gloo CPU collectives).

Every run trains the same program where it can (EfficientViT-B0, global batch 4 at 32x32, the
per-epoch cosine so that a run's rates do not depend on its length), so that the compilation cache
serves all but the first of each topology. B0, not the default B1: what is tested here is the same
for every backbone, and B0's program compiles and loads fastest (each of the ~20 processes here
traces, lowers and loads it; B1 training runs: tests/test_train.py).
  full: 2 processes (one CPU device each, 2 samples each per batch), steps 1-6, checkpoints at 2, 4
    and 6, NYU validation at the end;
  one: 1 process with 2 devices, steps 1-8, uninterrupted;
  resumed: 1 process with 2 devices continuing a copy of `full`'s workdir, steps 7-8.
`full` must log the losses of `one` (BatchNorm statistics and gradients are all-reduced over the
processes), and `resumed` must end with `one`'s parameters. The comparison uses 2 devices in one
process because that computes exactly what 2 processes of one device do (the same per-device
program, the same two-term sums), whereas 1 device sums in another order: rounding differences of
~1e-7 that Adam's first steps turn into differences of up to the learning rate wherever a
gradient is ~0 (its update is lr * g / (|g| + 1e-8)), too large for a parameter comparison. That 1
device logs the losses of several (within that rounding) is tests/test_train.py's 8-devices test.

Then one outcome for several processes, each fault real and on one process only: SIGTERM to both
processes and then to one (the reruns end bit-identical to `full`), a bad frame only process 1
reads, a data file missing on one of 3 processes, a config value on one, the workdir lock held,
step 6 unreadable for process 1 only (its own mount namespace), a disk too small for the second
checkpoint (a tmpfs), a non-finite loss, and `--dry_run`'s plan.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from conftest import mount_namespace
from conftest import random_checkpoint
from conftest import xla_flags

from efficientvit_jax import checkpointing
from efficientvit_jax import convert
from efficientvit_jax import trees

pytestmark = pytest.mark.e2e
TIMEOUT_S = 600
# Processes start through tests/one_cache_key.py, which lets process 1 read the programs process 0
# wrote to the compilation cache (see there).
LAUNCH = [sys.executable, str(ROOT / 'tests' / 'one_cache_key.py')]
TRAIN_KEYS = ('train/loss', 'train/depth', 'train/seg', 'train/edge', 'train/log_sigma_d',
              'train/log_sigma_s', 'lr/encoder', 'lr/decoder', 'lr/kendall')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
  env['XLA_FLAGS'] = xla_flags(devices)
  return env


def _run(commands, logdir, devices=1):
  """Starts every command at once; waits for all; on any failure or timeout kills the rest and
  fails with each process's log tail."""
  logdir.mkdir(parents=True, exist_ok=True)
  procs, logs = [], []
  try:
    for i, cmd in enumerate(commands):
      log = open(logdir / f'process_{i}.log', 'w')
      logs.append(log)
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(devices), stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for log in logs:
      log.close()
  codes = [p.returncode for p in procs]
  if any(codes):
    tails = '\n'.join(f'--- process {i} (exit {c}):\n' + (logdir / f'process_{i}.log').read_text()[-2500:]
                      for i, c in enumerate(codes))
    pytest.fail(f'{len(commands)}-process run failed or timed out after {TIMEOUT_S} s, exit codes {codes}\n{tails}')


def _metrics(workdir):
  lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {m['step']: m for m in lines if 'train/loss' in m}


def _val(workdir):
  lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [m for m in lines if 'val/nyu/rmse' in m]


def _state(workdir):
  ckpt = convert.load_any(workdir)
  return {**{f'params.{k}': v for k, v in trees.flatten(ckpt.params).items()},
          **{f'stats.{k}': v for k, v in trees.flatten(ckpt.batch_stats).items()},
          **{f'kendall.{k}': v for k, v in ckpt.kendall.items()}}


# --------------------------------------------------------------------------------------------------
# The runs and their processes.

STEPS = 6
EVAL = ["--config.data.eval_sets=('nyu',)"]  # after the others: overrides them


def _command(workdir, data, *extra, steps=STEPS):
  """train.py on `data` without evaluation (each evaluation set is one more program to compile)."""
  return [*LAUNCH, 'train.py', '--config', 'configs/quickstart.py', '--workdir', str(workdir),
          f'--config.data.root={data}', '--config.model.backbone=efficientvit_b0', '--config.batch_size=4',
          '--config.data.input_size=(32,32)',
          '--config.data.eval_sets=()', '--config.best_metric=', '--config.log_every_steps=1',
          '--config.checkpoint_every_steps=2', '--config.keep_checkpoints=10', '--config.eval_every_steps=0',
          '--config.data.num_threads=2', '--config.optimizer.lr_per_epoch=True', f'--config.num_train_steps={steps}',
          *extra]


def _fault_command(workdir, data, process, num_processes, port, *extra):
  return _command(workdir, data, f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}',
                  f'--process_id={process}', *extra)


class _Processes:
  """`n` train.py processes of one run, started at once, their output in `logdir/process_<i>.log`."""

  def __init__(self, logdir, workdir, data, n=2, extra=None, wrap=None, env=None):
    self.logdir = logdir
    logdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    self.procs, self.paths = [], []
    for i in range(n):
      data_i = data[i] if isinstance(data, (list, tuple)) else data
      cmd = _fault_command(workdir, data_i, i, n, port, *((extra or {}).get(i, ())))
      cmd = (wrap or {}).get(i, lambda c: c)(cmd)
      path = logdir / f'process_{i}.log'
      with open(path, 'w') as log:
        self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**_env(1), **(env or {})}, stdout=log,
                                           stderr=subprocess.STDOUT))
      self.paths.append(path)
    self.start = time.monotonic()

  def logs(self):
    return [p.read_text() for p in self.paths]

  def wait_for(self, text, processes=None, timeout=TIMEOUT_S):
    """Waits until each of `processes` (default: all) has printed `text`."""
    processes = range(len(self.procs)) if processes is None else processes
    deadline = time.monotonic() + timeout
    while not all(text in self.logs()[i] for i in processes):
      if time.monotonic() > deadline or any(self.procs[i].poll() is not None for i in processes):
        self.kill()
        pytest.fail(f'{text!r} not printed\n{self.tails()}')
      time.sleep(0.1)

  def signal(self, sig, processes):
    for i in processes:
      self.procs[i].send_signal(sig)

  def finish(self, timeout=TIMEOUT_S):
    """Exit codes once all have ended (fails, killing them, when one is still running after `timeout`)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in self.procs):
      if time.monotonic() > deadline:
        self.kill()
        pytest.fail(f'processes still running after {timeout} s\n{self.tails()}')
      time.sleep(0.1)
    self.wall_s = time.monotonic() - self.start
    return [p.returncode for p in self.procs]

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
      p.wait()

  def tails(self):
    return '\n'.join(f'--- process {i} (exit {p.poll()}):\n{log[-3000:]}'
                     for i, (p, log) in enumerate(zip(self.procs, self.logs())))


def _errors(log):
  return [line for line in log.splitlines() if line.startswith('error:')]


def _assert_clean_stop(group, code, cause, within_s=None):
  """Every process exited with `code`, printed one `error:` line and no traceback; the line of
  one process names `cause`, the others name that process and the cause."""
  codes = group.finish()
  logs = group.logs()
  assert codes == [code] * len(codes), group.tails()
  for log in logs:
    assert 'Traceback' not in log and len(_errors(log)) == 1, group.tails()
  saw = [i for i, log in enumerate(logs) if cause in _errors(log)[0] and 'stopped the run' not in _errors(log)[0]]
  assert saw, group.tails()
  for i, log in enumerate(logs):
    if i not in saw:
      assert f'error: process {saw[0]} stopped the run: ' in log and cause in _errors(log)[0], group.tails()
  if within_s is not None:
    assert group.wall_s < within_s, f'took {group.wall_s:.0f} s\n{group.tails()}'
  return logs


@pytest.fixture(scope='module')
def fault_root(tmp_path_factory):
  return tmp_path_factory.mktemp('faults2')


@pytest.fixture(scope='module')
def full(fault_root, synthetic_tiny):
  """An uninterrupted 2-process run: steps 1..STEPS, checkpoints at 2, 4, 6, NYU validation at 6."""
  workdir = fault_root / 'full'
  group = _Processes(fault_root / 'logs_full', workdir, synthetic_tiny, extra={0: EVAL, 1: EVAL})
  assert group.finish() == [0, 0], group.tails()
  assert checkpointing.steps(workdir) == [2, 4, 6]
  return workdir


@pytest.fixture(scope='module')
def one(fault_root, synthetic_tiny):
  """1 process of 2 devices, steps 1..STEPS + 2 uninterrupted."""
  workdir = fault_root / 'one'
  _run([_command(workdir, synthetic_tiny, steps=STEPS + 2)], fault_root / 'logs_one', devices=2)
  return workdir


def test_two_processes_log_the_losses_of_one(full, one):
  two, one = _metrics(full), _metrics(one)
  assert sorted(two) == list(range(1, STEPS + 1))
  for step in two:  # 2 processes == 1 process of 2 devices
    for key in TRAIN_KEYS:
      np.testing.assert_allclose(two[step][key], one[step][key], rtol=1e-6, err_msg=f'step {step} {key}')
  # Evaluation with the validation frames split over the processes ran and was logged once.
  (val,) = _val(full)
  assert val['step'] == STEPS and np.isfinite(val['val/nyu/rmse']) and np.isfinite(val['val/nyu/loss'])


def test_two_process_run_resumed_by_one_process_ends_where_one_process_does(fault_root, synthetic_tiny, full, one):
  resumed = fault_root / 'resumed'
  shutil.copytree(full, resumed)
  _run([_command(resumed, synthetic_tiny, steps=STEPS + 2)], fault_root / 'logs_resumed', devices=2)
  assert checkpointing.steps(resumed)[-1] == STEPS + 2
  want, got = _metrics(one), _metrics(resumed)
  for step in (STEPS + 1, STEPS + 2):
    for key in TRAIN_KEYS:
      np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-6, err_msg=f'step {step} {key}')
  a, b = _state(one), _state(resumed)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
  meta = convert.load_any(resumed).meta
  assert meta['step'] == STEPS + 2 and set(meta['num_batches_tracked'].values()) == {STEPS + 2}


def _preempted(group, workdir):
  """Both processes saved the same step and exited 0 with the documented line; the step."""
  codes = group.finish()
  logs = group.logs()
  assert codes == [0, 0], group.tails()
  saved = {int(line.split()[3]) for log in logs for line in log.splitlines()
           if line.startswith('preempted: saved step')}
  assert len(saved) == 1, group.tails()
  (step,) = saved
  assert 0 < step < STEPS and checkpointing.steps(workdir)[-1] == step
  return step


def test_sigterm_to_all_then_to_one_process_resumes_bit_identically(fault_root, synthetic_tiny, full):
  workdir = fault_root / 'preempted'
  # SIGTERM to both processes once they are connected (JAX's preemption notifier holds SIGTERM
  # from then on): both finish the step they are at, save it and exit 0.
  group = _Processes(fault_root / 'logs_term_all', workdir, synthetic_tiny)
  group.wait_for('of 2 (flags)')
  group.signal(signal.SIGTERM, [0, 1])
  first = _preempted(group, workdir)
  # The rerun resumes there; SIGTERM to process 1 alone (one host's maintenance event) stops both.
  group = _Processes(fault_root / 'logs_term_one', workdir, synthetic_tiny)
  group.wait_for('of 2 (flags)')
  group.signal(signal.SIGTERM, [1])
  second = _preempted(group, workdir)
  assert second > first
  group = _Processes(fault_root / 'logs_rest', workdir, synthetic_tiny)
  assert group.finish() == [0, 0], group.tails()
  a, b = _state(full), _state(workdir)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(b[key], a[key], err_msg=key)
  want, got = _metrics(full), _metrics(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  for step in want:
    for key in TRAIN_KEYS:
      assert got[step][key] == want[step][key], (step, key)


def test_bad_frame_on_one_process_stops_both_at_once(fault_root, synthetic_tiny):
  # Frame 00003 is read by process 1 alone, in the first batch (data_pipelines.preview shows the
  # global batches); process 0 is then compiling or waiting in the first step's collective.
  data = fault_root / 'bad_frame_data'
  shutil.copytree(synthetic_tiny, data)
  png = data / 'nyu/nyu_cache/rgb/00003.png'
  png.write_bytes(png.read_bytes()[:200])
  group = _Processes(fault_root / 'logs_bad_frame', fault_root / 'bad_frame', data)
  logs = _assert_clean_stop(group, 2, '00003.png', within_s=300)
  assert 'cannot decode image' in _errors(logs[1])[0] and 'process 1 stopped the run' in _errors(logs[0])[0]


def test_start_up_check_failing_on_one_of_three_processes_stops_all(fault_root, synthetic_tiny):
  data = fault_root / 'missing_file_data'
  shutil.copytree(synthetic_tiny, data)
  (data / 'nyu/nyu_cache/depth/00002.npy').unlink()
  six = ['--config.batch_size=6']  # 2 per process
  group = _Processes(fault_root / 'logs_three', fault_root / 'three', [synthetic_tiny, synthetic_tiny, data], n=3,
                     extra={0: six, 1: six, 2: six})
  logs = _assert_clean_stop(group, 2, '00002.npy', within_s=240)
  assert 'process 2 stopped the run: data:' in _errors(logs[0])[0]
  assert not list((fault_root / 'three' / 'checkpoints').glob('[0-9]*'))


def test_config_check_failing_on_one_process_stops_both(fault_root, synthetic_tiny):
  group = _Processes(fault_root / 'logs_config', fault_root / 'config', synthetic_tiny,
                     extra={1: ['--config.optimizer.decoder_lr=-1']})
  _assert_clean_stop(group, 2, 'optimizer.decoder_lr must be >= 0', within_s=240)


def test_workdir_lock_not_taken_stops_both(fault_root, synthetic_tiny):
  workdir = fault_root / 'locked'
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import time; from efficientvit_jax import checkpointing as c; '
       f'c.WorkdirLock({str(workdir)!r}).acquire(); print("locked", flush=True); time.sleep(600)'],
      cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    group = _Processes(fault_root / 'logs_locked', workdir, synthetic_tiny)
    _assert_clean_stop(group, 2, f'is in use by train.py process {holder.pid}', within_s=240)
  finally:
    holder.kill()
    holder.wait()


def test_restore_failing_on_one_process_stops_both_and_moves_nothing(fault_root, full, synthetic_tiny):
  """Process 1 sees step 6 without its params (its own mount namespace): a restore error there,
  not proof of damage for the run: exit 1 on both, step 6 stays."""
  unshare = mount_namespace()
  if unshare is None:
    pytest.skip('no mount namespaces here (unshare)')
  workdir = fault_root / 'restore'
  shutil.copytree(full, workdir)
  params = workdir / 'checkpoints/6/params'
  hide = lambda cmd: [*unshare, 'sh', '-c', f'mount -t tmpfs tmpfs {params} && exec "$0" "$@"', *cmd]
  group = _Processes(fault_root / 'logs_restore', workdir, synthetic_tiny, wrap={1: hide})
  logs = _assert_clean_stop(group, 1, 'cannot resume from checkpoint step 6', within_s=300)
  assert 'nothing was moved' in _errors(logs[1])[0] and 'missing' in _errors(logs[1])[0]
  assert checkpointing.steps(workdir) == [2, 4, 6] and not (workdir / 'damaged').exists()
  assert checkpointing.verify(workdir / 'checkpoints/6')


def test_failed_save_stops_both_and_keeps_the_last_finished_step(fault_root, synthetic_tiny):
  """W/checkpoints on a disk that holds one checkpoint (a tmpfs both processes see): the save of
  step 4 fails for lack of space; both exit 1 naming it; step 2 restores."""
  unshare = mount_namespace()
  if unshare is None:
    pytest.skip('no mount namespaces here (unshare)')
  workdir = fault_root / 'disk_full'
  (workdir / 'checkpoints').mkdir(parents=True)
  port = _free_port()
  logdir = fault_root / 'logs_disk_full'
  logdir.mkdir()
  commands = [' '.join(shlex.quote(a) for a in _fault_command(workdir, synthetic_tiny, i, 2, port))
              + f' > {logdir}/process_{i}.log 2>&1' for i in range(2)]
  # Inside the namespace: the two processes, their exit codes, and a copy of what they left.
  script = (f'mount -t tmpfs -o size=20m tmpfs {workdir}/checkpoints && '
            f'({commands[0]}; echo $? > {logdir}/code_0) & ({commands[1]}; echo $? > {logdir}/code_1); wait; '
            f'cp -r {workdir}/checkpoints {workdir}/left')
  proc = subprocess.run([*unshare, 'sh', '-c', script], cwd=ROOT, env=_env(1), timeout=TIMEOUT_S)
  assert proc.returncode == 0
  logs = [(logdir / f'process_{i}.log').read_text() for i in range(2)]
  codes = [int((logdir / f'code_{i}').read_text()) for i in range(2)]
  tails = '\n'.join(log[-3000:] for log in logs)
  assert codes == [1, 1], tails
  for log in logs:
    assert 'Traceback' not in log and 'Event loop is closed' not in log and len(_errors(log)) == 1, tails
  line = _errors(logs[0])[0]
  assert 'cannot write checkpoint step 4' in line and 'No space left on device' in line, tails
  assert f'the last good checkpoint is step 2 in {workdir}/checkpoints' in line
  assert _errors(logs[1])[0] == f'error: process 0 stopped the run: {line[len("error: "):]}'
  left = workdir / 'left'
  assert [p.name for p in left.iterdir() if p.name.isdigit()] == ['2'] and checkpointing.verify(left / '2')


def test_non_finite_loss_stops_both_with_one_code(fault_root, synthetic_tiny):
  # Finite weights whose first loss is not (a depth of 1e30 everywhere: its berHu term overflows), so
  # that the run trains `full`'s program rather than compiling one with another learning rate.
  init = random_checkpoint('efficientvit_b0')
  flat = trees.flatten(init.params)
  flat['depth_head.bias'] = np.full_like(flat['depth_head.bias'], 1e30)
  init.params = trees.unflatten(flat)
  checkpointing.write_folder(fault_root / 'huge', init)
  huge = [f'--config.init_from={fault_root / "huge"}']
  group = _Processes(fault_root / 'logs_nan', fault_root / 'nan', synthetic_tiny, extra={0: huge, 1: huge})
  logs = _assert_clean_stop(group, 1, 'non-finite loss at step 1', within_s=TIMEOUT_S)
  assert 'step None' not in ''.join(logs)
  assert all('no checkpoint was saved in' in _errors(log)[0] for log in logs)


def test_dry_run_prints_the_mesh_batches_and_memory(fault_root, synthetic_tiny):
  group = _Processes(fault_root / 'logs_dry', fault_root / 'dry', synthetic_tiny,
                     extra={0: ['--dry_run'], 1: ['--dry_run']})
  assert group.finish() == [0, 0], group.tails()
  out = group.logs()[0]
  assert "mesh: 2 cpu devices in 2 process(es), one 'data' axis; batch 4 = 2 per process (host) = 2 per device" in out
  assert re.search(r'compiled train step: [0-9.]+ MiB per device \(arguments [0-9.]+, outputs', out), out
  assert 'mesh:' not in group.logs()[1]
  assert not (fault_root / 'dry').exists()

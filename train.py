"""Trains the depth + segmentation network.

  python train.py --config configs/v8.py --workdir W [--config.key=value ...]

Rerunning the same command in the same workdir resumes from its latest checkpoint, exactly. The
start is, in this order: the workdir's own latest checkpoint, else `init_from` (weights, BatchNorm
statistics and Kendall log-sigmas; fresh optimiser and schedule), else random initialisation.
Outputs in W: `config.json`, `metrics.jsonl`, `tb/` (TensorBoard), `checkpoints/` (latest steps,
with optimiser and data state), `best/` (the best step by `best_metric`).

Several processes (hosts, or local CPU processes for testing): pass `--coordinator_address`,
`--num_processes`, `--process_id` to each; on Cloud TPU pod slices and SLURM they are detected.
"""

import atexit
import json
import os
import pathlib
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs, metrics.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 (multi-process runs).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index (multi-process runs).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Check the flags, the config and the data, print the plan, exit.')
_VERBOSE = flags.DEFINE_bool('verbose', False, "Also show the libraries' INFO logs (orbax, grain, absl).")
flags.mark_flags_as_required(['config', 'workdir'])

TB_KEYS = ('train/', 'lr/', 'val/')
TB_PANELS = 3  # evaluation pictures per validation set in TensorBoard (its first frames)


class RunError(Exception):
  """A configuration or run condition that stops training; the message says what to change."""


_LOCK = []  # the workdir lock while held, released by `_interrupted`


def _interrupted(signum, _):
  """SIGTERM or SIGINT outside the training loop (start-up, restore, compilation): exit at once.

  Raising instead would be swallowed where the signal lands in a finaliser or a garbage-collection
  callback. Everything written so far is written atomically, so this is as safe as SIGKILL."""
  print(f'error: stopped by {signal.Signals(signum).name}; steps after the last checkpoint (if any) are not '
        'saved; rerun the same command to continue', file=sys.stderr, flush=True)
  for lock in _LOCK:
    lock.release()
  os._exit(128 + signum)  # pylint: disable=protected-access


def run_main(argv) -> int:
  """`main`, with failures that orbax's background threads would delay turned into a prompt exit."""
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, _interrupted)
  code = main(argv)
  if code == 1:  # a failed save can leave orbax threads waiting for their timeout: do not wait
    atexit._run_exitfuncs()  # pylint: disable=protected-access  # the workdir lock, log flushes
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  return code


def check_config(config) -> None:
  """Fails early, naming the config key, on values that cannot work."""
  from efficientvit_jax import checkpointing, config_checks  # pylint: disable=g-import-not-at-top

  try:
    config_checks.check_ranges(config)
    if config.best_metric:
      checkpointing.lower_is_better(config.best_metric)
  except ValueError as e:
    raise RunError(str(e)) from None
  if config.requires_init_from and not config.init_from:
    raise RunError('this preset starts from a previous stage: set --config.init_from to a checkpoint '
                   'folder, training workdir or reference .pt (e.g. the V5 weights)')
  if config.compute_dtype not in ('float32', 'bfloat16'):
    raise RunError(f'compute_dtype must be float32 or bfloat16, got {config.compute_dtype!r}')
  if config.batch_size < 1:
    raise RunError(f'batch_size must be >= 1, got {config.batch_size}')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise RunError('set num_epochs or num_train_steps to a positive value')
  for key in ('log_every_steps', 'checkpoint_every_steps'):
    if config[key] < 1:
      raise RunError(f'{key} must be >= 1, got {config[key]}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Imports after absl parsed the flags: grain's worker processes need them parsed.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from data_pipelines import datasets  # pylint: disable=g-import-not-at-top
  from data_pipelines import readers  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import console  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import convert  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import evaluation  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import runtime  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import summaries  # pylint: disable=g-import-not-at-top
  from efficientvit_jax import training  # pylint: disable=g-import-not-at-top

  console.setup(_VERBOSE.value)
  config = _CONFIG.value
  workdir = pathlib.Path(_WORKDIR.value).absolute()
  try:
    check_config(config)
  except RunError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2

  # ---------------------------------------------------------------------------------------------
  # Processes and devices.
  training.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  cache = runtime.enable_compilation_cache(config.compilation_cache_dir)
  logging.info('compilation cache: %s', cache or 'off')
  process, num_processes = jax.process_index(), jax.process_count()
  is_main = process == 0
  if not _DRY_RUN.value:  # one writer per workdir: process 0 holds W/train.lock until exit
    lock = checkpointing.WorkdirLock(workdir)
    try:
      if is_main:
        lock.acquire()
        atexit.register(lock.release)
        _LOCK.append(lock)
        checkpointing.check_writable(workdir / 'checkpoints')  # now, not at the first save
    except (checkpointing.LockError, OSError) as e:
      print(f'error: {e}' if isinstance(e, checkpointing.LockError) else f'error: cannot write the workdir: {e}',
            file=sys.stderr)
      return 2
  mesh = training.make_mesh()
  if config.batch_size % jax.device_count():
    print(f'error: batch_size={config.batch_size} is not divisible by the {jax.device_count()} devices',
          file=sys.stderr)
    return 2
  logging.info('process %d of %d, %d local / %d global devices (%s)', process, num_processes,
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)

  # ---------------------------------------------------------------------------------------------
  # Input.
  try:  # the readers' errors name the file or config key at fault: print them, not a traceback
    sched = datasets.schedule(config)
    paths = datasets.resolve_paths(config.data)
    eval_sets = tuple(config.data.eval_sets)
    for name in eval_sets:  # fail now, not after hours of training
      datasets.make_reader(paths, name, 'val')
    datasets.check_files(config)  # every file the splits name exists (cheap: no decoding)
  except (OSError, ValueError, ImportError) as e:
    print(f'error: data: {e}', file=sys.stderr)
    return 2
  steps_per_epoch, total_steps = sched['steps_per_epoch'], sched['num_steps']
  freeze_steps = int(config.freeze_encoder_epochs) * steps_per_epoch
  plan = (f'{config.data.mode}: sets {sched["sizes"]}, {steps_per_epoch} steps/epoch, {total_steps} steps '
          f'of batch {config.batch_size}; encoder frozen for {freeze_steps} steps; eval on {list(eval_sets)}')
  if _DRY_RUN.value:
    print(plan)
    return 0
  if is_main:
    console.say(plan)

  # ---------------------------------------------------------------------------------------------
  # Model, optimiser, and where the run starts.
  dtype = jnp.bfloat16 if config.compute_dtype == 'bfloat16' else jnp.float32
  model = model_lib.create(dtype=dtype, seed=config.seed)
  tx = optimizer_lib.make_optimizer(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  try:
    ckptr = checkpointing.TrainCheckpointer(workdir, keep=config.keep_checkpoints, best_metric=config.best_metric)
  except (OSError, ValueError) as e:  # e.g. a file where W/best should be
    print(f'error: cannot use the workdir\'s checkpoint folders: {e}', file=sys.stderr)
    return 2
  kendall = checkpointing.default_kendall()
  _, bn_stats = checkpointing.model_trees(model)
  counters = {bn: 0 for bn in convert.bn_prefixes(bn_stats)}
  start_step, source, restored_opt = 0, 'scratch', None
  resumed = None
  if ckptr.latest_step() is not None:
    opt_like = jax.eval_shape(tx.init, {'model': nnx.state(model, nnx.Param), 'kendall': kendall})
    try:  # damaged steps are moved aside with a warning; a mismatching configuration is an error
      resumed = ckptr.restore_newest_intact(opt_like)
    except checkpointing.CheckpointError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    if resumed is None:
      checkpointing.warn(f'no intact checkpoint left in {workdir}/checkpoints; starting afresh')
  if resumed is not None:
    latest, (ckpt, restored_opt, data_state) = resumed
    checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats, source=f'{workdir}/checkpoints/{latest}')
    kendall = ckpt.kendall
    start_step = int(data_state.get('step', latest))
    counters = dict(ckpt.meta.get('init_num_batches_tracked', counters))
    source = ckpt.meta.get('source', 'scratch')
    logging.info('resuming %s from step %d', workdir, start_step)
  elif config.init_from:
    try:
      init = checkpointing.load_any(config.init_from)
      copied = checkpointing.load_into_model(model, init.params, init.batch_stats, partial=True,
                                             source=config.init_from)
    except checkpointing.CheckpointError as e:
      print(f'error: init_from: {e}', file=sys.stderr)
      return 2
    kendall = init.kendall
    counters.update({k: int(v) for k, v in (init.meta.get('num_batches_tracked') or {}).items() if k in counters})
    source = f'init_from:{config.init_from}'
    logging.info('init_from %s: copied %d arrays (weights, BatchNorm statistics), Kendall log-sigmas %s',
                 config.init_from, len(copied), {k: float(v[0]) for k, v in kendall.items()})
  graphdef, state = training.create_state(model, kendall, tx, mesh)
  if restored_opt is not None:
    state['opt_state'] = training.put_replicated(restored_opt, mesh)
    state['step'] = training.put_replicated(np.asarray(start_step, np.int32), mesh)
  if start_step >= total_steps:
    print(f'{workdir}: already trained for {start_step} of {total_steps} steps; nothing to do')
    ckptr.close()
    return 0

  # ---------------------------------------------------------------------------------------------
  # Steps.
  def compile_step(encoder_bn_train):
    return console.announce_compile(training.jit_train_step(
        training.make_train_step(graphdef, tx, config.loss, seed=config.seed,
                                 color_jitter=datasets.color_jitter_flags(config.data),
                                 freeze_steps=freeze_steps,
                                 freeze_bn_when_frozen=config.freeze_bn_when_frozen,
                                 encoder_bn_train=encoder_bn_train),
        mesh, state), 'the training step' + ('' if encoder_bn_train else ' (encoder BatchNorm frozen)'))

  train_step = compile_step(True)
  frozen_step = compile_step(False) if config.freeze_bn_when_frozen and freeze_steps else train_step

  def num_batches_tracked(step):
    """Initial counters + train-mode steps (encoder BNs not counted while frozen in eval mode)."""
    frozen = min(step, freeze_steps) if frozen_step is not train_step else 0
    return {bn: int(n) + step - (frozen if bn.startswith(('encoder.', 'neck.')) else 0)
            for bn, n in counters.items()}

  def model_checkpoint(step, metrics):
    params = checkpointing.state_to_tree(state['params'])
    stats = checkpointing.state_to_tree(state['batch_stats'])
    kend = {k: checkpointing.to_host(v) for k, v in state['kendall'].items()}
    meta = {'step': step, 'epoch': step // steps_per_epoch, 'num_batches_tracked': num_batches_tracked(step),
            'init_num_batches_tracked': counters, 'source': source,
            'config': json.loads(config.to_json()), 'metrics': metrics}
    return checkpointing.Checkpoint(params=params, batch_stats=stats, kendall=kend, meta=meta)

  # ---------------------------------------------------------------------------------------------
  # Outputs.
  writer = None
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    previous = workdir / 'config.json'
    current = json.loads(config.to_json())
    if previous.exists() and json.loads(previous.read_text() or '{}') != current:
      logging.warning('%s differs from this run\'s config; the new one replaces it', previous)
    tmp = workdir / '.config.json.tmp'
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
    tmp.replace(previous)
    # Steps after the restored one are redone: their old rows go (each step is logged once).
    checkpointing.truncate_metrics(workdir / 'metrics.jsonl', start_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    writer = SummaryWriter(str(workdir / 'tb'), purge_step=start_step + 1 if start_step else None)
    summaries.write_config(writer, current, [f'val/{name}/{m}' for name in eval_sets for m in ('rmse', 'miou')])

  def write_metrics(step, values):
    if not is_main:
      return
    line = {'step': step, **{k: float(v) for k, v in values.items()}}
    with open(workdir / 'metrics.jsonl', 'a') as f:
      f.write(json.dumps(line) + '\n')
    for k, v in values.items():
      if k.startswith(TB_KEYS):
        writer.add_scalar(k, float(v), step)
    writer.flush()

  def run_eval(step):
    values, results = {}, {}
    for name in eval_sets:
      batches = datasets.eval_iterator(config, name, 'val', batch_size=config.batch_size,
                                       process_index=process, process_count=num_processes)
      bar = console.Progress(len(batches), f'eval {name}', unit='batch', batch_size=config.batch_size,
                             quiet=not is_main)
      frames = evaluation.FirstFrames(TB_PANELS if writer is not None else 0)
      try:
        res = evaluation.evaluate(graphdef, state['params'], state['batch_stats'], batches, mesh,
                                  set_name=name, with_seg=name != 'lilocbench',
                                  on_batch=lambda local, preds: (frames(local, preds), bar.update()))
      finally:
        bar.close()
        batches.close()
      if writer is not None:
        summaries.write_panels(writer, f'val/{name}', frames.frames, step)
      results[name] = res
      fm = res['depth']['frame_mean']
      for metric in ('rmse', 'mae', 'abs_rel', 'delta1'):
        if fm.get(metric) is not None:
          values[f'val/{name}/{metric}'] = fm[metric]
      if res.get('seg') and res['seg'].get('miou') is not None:
        values[f'val/{name}/miou'] = res['seg']['miou']
    write_metrics(step, values)
    if is_main:
      console.say(f'step {step} validation: ' + ', '.join(f'{k} {v:.4f}' for k, v in values.items()))
    return values

  def check_finite():
    bad = int(checkpointing.to_host(state['nonfinite_step']))
    if bad >= 0:
      raise RunError(f'non-finite loss at step {bad + 1}; stopped. The last good checkpoint is step '
                     f'{ckptr.latest_step()} in {workdir}/checkpoints (lower the learning rate or check the data)')

  def save(step, metrics, force=False):
    check_finite()
    ckpt = model_checkpoint(step, metrics)
    try:
      ckptr.save(step, ckpt, state['opt_state'], {'step': step, 'epoch': step // steps_per_epoch}, force=force)
      best = bool(metrics) and ckptr.maybe_save_best(step, ckpt)
    except checkpointing.SaveError as e:
      raise RunError(str(e)) from None
    if is_main:
      console.say(f'step {step}: saving checkpoint to {workdir}/checkpoints'
                  + (f' and best/ ({config.best_metric} {metrics[config.best_metric]:.4f})' if best else ''))

  # ---------------------------------------------------------------------------------------------
  # Preemption: SIGTERM saves the current step and exits 0 (multi-process runs use orbax's
  # preemption sync point, which needs every process to stop at the same step).
  stop = {'signal': False}
  if num_processes == 1:
    for signum in (signal.SIGTERM, signal.SIGINT):
      signal.signal(signum, lambda *_: stop.update(signal=True))

  # ---------------------------------------------------------------------------------------------
  # Loop. The next global batch is read and its transfer to the devices started while the current
  # step runs (the step is dispatched asynchronously); `train/input_wait` is the fraction of wall
  # time the loop spent waiting for the host pipeline.
  data = datasets.train_iterator(config, start_step, process, num_processes)

  def next_batch():
    return training.global_batch(next(data), mesh, training.TRAIN_KEYS)

  # A bar on a terminal; elsewhere the log lines below are the progress (lines=False).
  progress = console.Progress(total_steps, 'train', unit='step', batch_size=config.batch_size,
                              initial=start_step, lines=False, quiet=not is_main)
  pending, last_metrics = [], {}
  tick, tick_step = time.perf_counter(), start_step
  step = start_step
  exit_code = 0
  data_error = None  # an error reading batch t + 1, raised once step t is logged and saved
  saved_step = start_step
  try:
    batch = next_batch()
    input_wait = time.perf_counter() - tick
    while step < total_steps:
      if data_error is not None:
        raise data_error
      step_fn = frozen_step if step < freeze_steps else train_step
      state, metrics = step_fn(state, batch)
      step += 1
      if step < total_steps:
        wait_start = time.perf_counter()
        try:
          batch = next_batch()
        except readers.BadFrameError as e:
          data_error = e
        input_wait += time.perf_counter() - wait_start
      pending.append(metrics)
      ckptr.poll()  # seals a finished save (integrity record), then drops old steps
      progress.update(1)
      if step % config.log_every_steps == 0 or step == total_steps:
        fetched = jax.device_get(pending)
        pending = []
        check_finite()
        now = time.perf_counter()
        values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        values['train/images_per_s'] = (step - tick_step) * config.batch_size / (now - tick)
        values['train/input_wait'] = input_wait / (now - tick)
        tick, tick_step, input_wait = now, step, 0.0
        write_metrics(step, values)
        losses = (f"loss {values['train/loss']:.4f} depth {values['train/depth']:.4f} "
                  f"seg {values['train/seg']:.4f}")
        losses += f", input wait {values['train/input_wait']:.0%}"
        if progress.bar is not None:
          progress.bar.set_postfix_str(f"{losses} {values['train/images_per_s']:.1f} img/s")
        elif is_main:
          print(f'step {step}/{total_steps} {losses}, {progress.describe() or "eta after the next step"}',
                flush=True)
      evaluated = (config.eval_every_steps and step % config.eval_every_steps == 0) or step == total_steps
      if evaluated and eval_sets:
        last_metrics = run_eval(step)
      if step % config.checkpoint_every_steps == 0 or step == total_steps or evaluated:
        save(step, last_metrics if evaluated else {})
        saved_step = step
      if evaluated or step % config.checkpoint_every_steps == 0:
        # images/s and input_wait measure training steps only
        tick, tick_step, input_wait = time.perf_counter(), step, 0.0
      preempted = stop['signal'] or (num_processes > 1 and ckptr.reached_preemption(step))
      if preempted and step < total_steps:
        if saved_step != step:
          save(step, {}, force=True)
        ckptr.wait()
        print(f'preempted: saved step {step} in {workdir}/checkpoints; rerun the same command to resume',
              flush=True)
        break
  except (RunError, checkpointing.SaveError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    exit_code = 1
  except OSError as e:  # metrics.jsonl or TensorBoard on a full or vanished disk
    print(f'error: {e}; the last good checkpoint is step {ckptr.last_good_step()} in {workdir}/checkpoints',
          file=sys.stderr)
    exit_code = 1
  except readers.BadFrameError as e:  # nothing of this step is saved
    logging.error('%s', e)
    print(f'error: data: {e} (set data.skip_bad_frames=True to skip such frames)', file=sys.stderr)
    exit_code = 2
  finally:
    progress.close()
    data.close()
    try:
      ckptr.wait()
    except checkpointing.SaveError as e:
      if exit_code == 0:
        print(f'error: {e}', file=sys.stderr)
        exit_code = 1
    ckptr.close()
    if writer is not None:
      writer.close()
  return exit_code


def run():
  """The `evit-train` command."""
  from efficientvit_jax import host_memory  # before JAX starts its CPU threads  # pylint: disable=g-import-not-at-top

  host_memory.retain_freed_memory_on_cpu_hosts()
  from efficientvit_jax import config_checks  # pylint: disable=g-import-not-at-top

  app.run(lambda argv: sys.exit(run_main(argv)), flags_parser=config_checks.parse_flags)


if __name__ == '__main__':
  run()

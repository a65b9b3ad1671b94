"""The training loop: `train_and_evaluate(config, workdir)`; `train.py` is its command line.

Where a run starts, in this order: the workdir's newest intact checkpoint (bit-exact resumption),
else `config.init_from` (weights, BatchNorm statistics and Kendall log-sigmas; fresh optimiser and
schedule), else random initialisation. Then steps (`training.py`'s jitted step) with the logged
means every `log_every_steps` (`metrics.jsonl`, TensorBoard `tb/`), validation every
`eval_every_steps` and at the end, checkpoints every `checkpoint_every_steps`, after each
validation and at the end (`checkpoints/`, and `best/` by `best_metric`), until the last step or a
stop request, which saves the current step: SIGTERM / SIGINT with `catch_signals` (one process),
JAX's preemption sync point (several processes, which must stop at the same step). With several
processes, process 0 chooses the checkpoint step to resume from and every process restores it.

The state is passed explicitly: the helpers below take the train state (`training.State`) and the
run's fixed parts (`_Run`) and return what they change.

Errors: `UserError` (configuration, data or workdir; the message says what to change) and
`RunError` (a run that failed on the way: non-finite loss, failed save, full disk); train.py exits
with 2 and 1 on them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from data_pipelines import datasets
from data_pipelines import readers
from efficientvit_jax import checkpointing
from efficientvit_jax import config_checks
from efficientvit_jax import console
from efficientvit_jax import convert
from efficientvit_jax import domains
from efficientvit_jax import evaluation
from efficientvit_jax import model as model_lib
from efficientvit_jax import optimizer as optimizer_lib
from efficientvit_jax import parallel
from efficientvit_jax import summaries
from efficientvit_jax import training
from efficientvit_jax import trees

TB_KEYS = ('train/', 'lr/', 'val/')
TB_PANELS = 3  # evaluation pictures per validation set in TensorBoard (its first frames)
CONSOLE_METRICS = ('rmse', 'abs_rel', 'delta1', 'miou', 'loss')  # of each set, on the validation line


class UserError(Exception):
  """A configuration, data or workdir problem found before or while training; the message names it."""


class RunError(Exception):
  """A run that stopped on the way (non-finite loss, failed save, full disk); the message names the
  last good checkpoint."""


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a `train_and_evaluate` call did."""

  start_step: int  # the step it started from (0, or the restored step)
  step: int  # the last step trained (== start_step when there was nothing left to do)
  total_steps: int
  preempted: bool  # stopped early by a signal or a preemption; `step` is saved
  metrics: dict[str, float]  # the last validation metrics of this call ({} if none ran)


@dataclasses.dataclass(frozen=True)
class _Run:
  """The parts of a run that stay fixed while it trains."""

  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  mesh: Mesh
  graphdef: nnx.GraphDef
  ckptr: checkpointing.TrainCheckpointer
  writer: Any  # the TensorBoard SummaryWriter on process 0, else None
  eval_sets: tuple[str, ...]
  steps_per_epoch: int
  total_steps: int
  freeze_steps: int
  bn_frozen: bool  # encoder + neck BatchNorm in eval mode while the encoder is frozen
  counters: dict[str, int]  # BatchNorm `num_batches_tracked` at step 0 of this run
  source: str  # 'scratch' or 'init_from:<path>'
  process: int
  num_processes: int
  hparams_metrics: list[str] = dataclasses.field(default_factory=list)  # declared at the first validation

  @property
  def is_main(self) -> bool:
    return self.process == 0


@dataclasses.dataclass(frozen=True)
class _Start:
  """Where a run starts: the model is loaded in place, these are the rest."""

  step: int
  kendall: dict[str, np.ndarray]
  opt_state: Any  # restored optimiser state (numpy), or None for a fresh one
  counters: dict[str, int]
  source: str


class Throughput:
  """The training loop's clock for `train/steps_per_s`, `train/images_per_s` and `train/input_wait`
  (console and metrics).

  steps/s = the steps since the window started / the wall time since then; images/s = steps/s x
  batch_size (global images, all processes together). The window restarts at each log line, after each validation
  and checkpoint save, and after a step that compiled, so it counts training steps, their input
  waits and the logging, never compilation, validation or saving.
  """

  def __init__(self, step: int, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self.restart(step)

  def restart(self, step: int, now: float | None = None) -> None:
    self.start, self.step, self.input_wait = self._clock() if now is None else now, step, 0.0

  def read(self, step: int, batch_size: int) -> dict[str, float]:
    """The three values over the window (none while it holds no step); restarts it."""
    now = self._clock()
    seconds, steps, wait = now - self.start, step - self.step, self.input_wait
    self.restart(step, now)
    if steps <= 0 or seconds <= 0:
      return {}
    return {'train/steps_per_s': steps / seconds, 'train/images_per_s': steps * batch_size / seconds,
            'train/input_wait': wait / seconds}


# --------------------------------------------------------------------------------------------------
# Start


def steps_plan(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'sizes': {set: frames}, 'steps_per_epoch', 'num_steps'}: the run's length from a training
  config (`num_train_steps` > 0 overrides `num_epochs * steps_per_epoch`) and its sets' frames."""
  sizes = datasets.train_sizes(config.data)
  spe = datasets.steps_per_epoch(config.data, sizes, config.batch_size)
  steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * spe
  return {'sizes': sizes, 'steps_per_epoch': spe, 'num_steps': int(steps)}


def _plan(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The plan (`steps_plan`) after checking that every file the run reads exists."""
  try:  # the readers' errors name the file or config key at fault
    sched = steps_plan(config)
    paths = datasets.resolve_paths(config.data)
    for name in config.data.eval_sets:  # fail now, not after hours of training
      datasets.make_reader(paths, name, 'val')
    datasets.check_files(config)  # every file the splits name exists (cheap: no decoding)
  except (OSError, ValueError, ImportError) as e:
    raise UserError(f'data: {e}') from None
  return sched


def _restore_or_init(config: ml_collections.ConfigDict, workdir: pathlib.Path, model: model_lib.DepthSegNet,
                     tx: Any, ckptr: checkpointing.TrainCheckpointer) -> _Start:
  """Loads the start of the run into `model`: the workdir's checkpoint that process 0 chose (the
  newest intact one; every process restores that step), else `init_from`."""
  kendall = checkpointing.default_kendall()
  _, bn_stats = checkpointing.model_trees(model)
  try:
    step = parallel.share('restore_step', ckptr.choose_step() if jax.process_index() == 0 else None)
  except (checkpointing.CheckpointError, OSError) as e:
    raise RunError(str(e)) from None
  if step is not None:
    source = f'{workdir}/checkpoints/{step}'
    opt_like = jax.eval_shape(tx.init, {'model': nnx.state(model, nnx.Param), 'kendall': kendall})
    try:
      ckpt, opt_state, data_state = ckptr.restore(step, opt_like)
      checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats, source=source)
    except checkpointing.MismatchError as e:  # another configuration or version
      _check_backbone(config, ckptr.root, step, f'{source} holds')  # named when that is the cause
      raise UserError(str(e)) from None
    except (checkpointing.CheckpointError, OSError) as e:  # not proof of damage: keep the step
      raise RunError(f'cannot resume from checkpoint step {step}: {e}; nothing was moved. Rerun once the cause '
                     f'is fixed, or move {source} out of {workdir}/checkpoints to resume from the step before'
                     ) from None
    step = int(data_state.get('step', step))
    if jax.process_index() == 0:
      console.say(f'resuming {workdir} from step {step}')
    return _Start(step=step, kendall=ckpt.kendall, opt_state=opt_state,
                  counters=convert.start_counters(bn_stats, resumed=ckpt.meta),
                  source=ckpt.meta.get('source', 'scratch'))
  if not config.init_from:
    return _Start(step=0, kendall=kendall, opt_state=None, counters=convert.start_counters(bn_stats),
                  source='scratch')
  try:  # refuses non-finite weights, damaged files and shapes the model does not have
    init = convert.load_any(config.init_from)
    backbone = convert.checkpoint_backbone(init, config.init_from)
    if backbone != config.model.backbone:
      raise checkpointing.CheckpointError(
          f'{config.init_from} holds a {backbone} model but model.backbone is {config.model.backbone}; set '
          f'--config.model.backbone={backbone} or choose another checkpoint')
    copied = checkpointing.load_into_model(model, init.params, init.batch_stats, partial=True,
                                           source=config.init_from)
  except checkpointing.CheckpointError as e:
    raise UserError(f'init_from: {e}') from None
  if jax.process_index() == 0:
    console.say(f'init_from {config.init_from}: copied {len(copied)} arrays (weights, BatchNorm statistics) '
                'and the Kendall log-sigmas')
  logging.info('init_from Kendall log-sigmas: %s', {k: float(v[0]) for k, v in init.kendall.items()})
  return _Start(step=0, kendall=init.kendall, opt_state=None,
                counters=convert.start_counters(bn_stats, init_from=init.meta), source=f'init_from:{config.init_from}')


def _jit_step(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, tx: Any, mesh: Mesh,
              state: training.State, freeze_steps: int, encoder_bn_train: bool = True) -> Callable:
  """The jitted train step of this run (compiled at its first call or `.lower(...).compile()`)."""
  return training.jit_train_step(
      training.make_train_step(graphdef, tx, config.loss, seed=config.seed,
                               color_jitter=datasets.color_jitter_flags(config.data), freeze_steps=freeze_steps,
                               freeze_bn_when_frozen=config.freeze_bn_when_frozen,
                               encoder_bn_train=encoder_bn_train),
      mesh, state)


def _check_backbone(config: ml_collections.ConfigDict, root: pathlib.Path, step: int, what: str) -> None:
  """UserError when checkpoint `step` in `root` records another backbone than the config's."""
  try:
    _, items = checkpointing.restore_items(root, step, ('meta',))
  except checkpointing.CheckpointError:
    return  # restoring the step reports it
  recorded = (items.get('meta') or {}).get('backbone')
  if recorded is not None and recorded != config.model.backbone:
    raise UserError(f'{what} a {recorded} model but model.backbone is {config.model.backbone}; resume with '
                    f'--config.model.backbone={recorded} or use another --workdir')


def _compile_steps(config: ml_collections.ConfigDict, graphdef: nnx.GraphDef, tx: Any, mesh: Mesh,
                   state: training.State, freeze_steps: int) -> tuple[Callable, Callable]:
  """(train step, step of the frozen phase): the same unless the encoder BatchNorm is frozen in
  eval mode then. Each prints a `compiling` line at its first call."""

  def compile_step(encoder_bn_train):
    return console.announce_compile(_jit_step(config, graphdef, tx, mesh, state, freeze_steps, encoder_bn_train),
                                    'the training step' + ('' if encoder_bn_train else ' (encoder BatchNorm frozen)'))

  train_step = compile_step(True)
  frozen_step = compile_step(False) if config.freeze_bn_when_frozen and freeze_steps else train_step
  return train_step, frozen_step


def _dry_run(config: ml_collections.ConfigDict, model: model_lib.DepthSegNet, tx: Any, mesh: Mesh,
             freeze_steps: int, total_steps: int) -> list[str]:
  """The lines `--dry_run` adds to the plan: the mesh, the batch per process and per device, and
  the memory per device of the train step compiled for this mesh (reads one batch, compiles)."""
  processes, devices = jax.process_count(), jax.device_count()
  data = datasets.train_iterator(config, 0, jax.process_index(), processes, num_steps=total_steps)
  try:
    local = next(data)
  except readers.BadFrameError as e:
    raise UserError(f'data: {e} (set data.skip_bad_frames=True to skip such frames)') from None
  finally:
    data.close()
  graphdef, state = training.create_state(model, checkpointing.default_kendall(), tx, mesh)
  sharding = parallel.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((local[k].shape[0] * processes, *local[k].shape[1:]), local[k].dtype,
                                   sharding=sharding) for k in training.TRAIN_KEYS}
  with console.compiling('the training step'):
    memory = _jit_step(config, graphdef, tx, mesh, state, freeze_steps).lower(state, batch).compile().memory_analysis()
  lines = [f'mesh: {devices} {jax.devices()[0].platform} devices in {processes} process(es), one \'data\' axis; '
           f'batch {config.batch_size} = {config.batch_size // processes} per process (host) = '
           f'{config.batch_size // devices} per device']
  if memory is not None:
    mib = lambda n: n / 2**20
    args, out, alias, temp = (memory.argument_size_in_bytes, memory.output_size_in_bytes,
                              memory.alias_size_in_bytes, memory.temp_size_in_bytes)
    lines.append(f'compiled train step: {mib(args + out - alias + temp):.1f} MiB per device (arguments '
                 f'{mib(args):.1f}, outputs {mib(out):.1f} of which {mib(alias):.1f} reuse the donated state, '
                 f'temporaries {mib(temp):.1f})')
  return lines


def _changed_keys(previous: pathlib.Path, current: dict[str, Any]) -> str:
  """'num_train_steps 4 -> 6, ...' (at most 5 keys) between a saved config.json and `current`."""
  try:
    before = trees.flatten(json.loads(previous.read_text() or '{}'))
  except ValueError:
    return 'unreadable before'
  now = trees.flatten(current)
  changed = [f'{k} {before.get(k, "(none)")} -> {now.get(k, "(none)")}'
             for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
  return ', '.join(changed[:5]) + (f', ... ({len(changed)} keys)' if len(changed) > 5 else '')


def _open_outputs(config: ml_collections.ConfigDict, workdir: pathlib.Path, start_step: int) -> Any:
  """Process 0: writes `config.json`, drops the `metrics.jsonl` rows the run redoes; returns the
  TensorBoard writer."""
  workdir.mkdir(parents=True, exist_ok=True)
  previous = workdir / 'config.json'
  current = json.loads(config.to_json())
  if previous.exists() and json.loads(previous.read_text() or '{}') != current:
    console.warn(f'{previous} differs from this run\'s config: {_changed_keys(previous, current)}; '
                 'the new one replaces it')
  tmp = workdir / '.config.json.tmp'
  tmp.write_text(json.dumps(current, indent=2, sort_keys=True))
  tmp.replace(previous)
  # Steps after the restored one are redone: their old rows go (each step is logged once).
  checkpointing.truncate_metrics(workdir / 'metrics.jsonl', start_step)
  from tensorboardX import SummaryWriter

  writer = SummaryWriter(str(workdir / 'tb'), purge_step=start_step + 1 if start_step else None)
  summaries.write_config(writer, current)
  return writer


# --------------------------------------------------------------------------------------------------
# Step helpers: the state in, what changed out.


def _model_checkpoint(run: _Run, state: training.State, step: int,
                      metrics: dict[str, float]) -> checkpointing.Checkpoint:
  params = checkpointing.state_to_tree(state['params'])
  stats = checkpointing.state_to_tree(state['batch_stats'])
  kendall = {k: parallel.to_host(v) for k, v in state['kendall'].items()}
  frozen_steps = run.freeze_steps if run.bn_frozen else 0  # encoder BatchNorms in eval mode meanwhile
  meta = {'step': step, 'epoch': step // run.steps_per_epoch,
          'steps_per_epoch': run.steps_per_epoch, 'num_steps': run.total_steps,  # the plan (convert.planned_epochs)
          **convert.counters_meta(run.counters, step, frozen_steps=frozen_steps), 'source': run.source,
          'backbone': run.config.model.backbone, 'input_size': list(run.config.data.input_size),
          'config': json.loads(run.config.to_json()), 'metrics': metrics}
  return checkpointing.Checkpoint(params=params, batch_stats=stats, kendall=kendall, meta=meta)


def _check_finite(run: _Run, state: training.State) -> None:
  bad = int(parallel.to_host(state['nonfinite_step']))
  if bad >= 0:
    raise RunError(f'non-finite loss at step {bad + 1}; stopped; {run.ckptr.last_good()} (lower the learning '
                   'rate or check the data)')


def _save(run: _Run, state: training.State, step: int, metrics: dict[str, float], force: bool = False) -> None:
  """Checkpoints `step` (and best/ when `metrics` beat it); RunError on a non-finite state or a
  failed save."""
  _check_finite(run, state)
  ckpt = _model_checkpoint(run, state, step, metrics)
  try:
    run.ckptr.save(step, ckpt, state['opt_state'], {'step': step, 'epoch': step // run.steps_per_epoch},
                   force=force)
    best = bool(metrics) and run.ckptr.maybe_save_best(step, ckpt)
  except checkpointing.SaveError as e:
    raise RunError(str(e)) from None
  if run.is_main:
    console.say(f'step {step}: saving checkpoint to {run.workdir}/checkpoints'
                + (f' and best/ ({run.config.best_metric} {metrics[run.config.best_metric]:.4f})' if best else ''))


def _write_metrics(run: _Run, step: int, values: dict[str, float]) -> None:
  """One `metrics.jsonl` row and the TensorBoard scalars (process 0)."""
  if not run.is_main:
    return
  line = {'step': step, **{k: float(v) for k, v in values.items()}}
  with open(run.workdir / 'metrics.jsonl', 'a') as f:
    f.write(json.dumps(line) + '\n')
  for k, v in values.items():
    if k.startswith(TB_KEYS):
      run.writer.add_scalar(k, float(v), step)
  run.writer.flush()


def _report_train(run: _Run, progress: console.Progress, step: int, values: dict[str, float]) -> None:
  """Logs the training means of the last steps: metrics.jsonl, TensorBoard, the console."""
  _write_metrics(run, step, values)
  losses = (f"loss {values['train/loss']:.4f} depth {values['train/depth']:.4f} "
            f"seg {values['train/seg']:.4f}")
  rates = ''
  if 'train/images_per_s' in values:  # the same number as metrics.jsonl's (`Throughput`)
    losses += f", input wait {values['train/input_wait']:.0%}"
    rates = console.rates_text(values['train/steps_per_s'], 'step', run.config.batch_size)
  if progress.bar is not None:
    progress.bar.set_postfix_str(f'{losses} {rates}'.rstrip())
  elif run.is_main:
    tail = ', '.join(part for part in (rates, progress.eta() or 'eta after the next step') if part)
    print(f'step {step}/{run.total_steps} {losses}, {tail}', flush=True)


def _validation_values(name: str, res: dict[str, Any]) -> dict[str, float]:
  """One set's `evaluation.evaluate` result -> the `val/<name>/...` values train.py logs: the depth
  metrics' frame means, `rmse_median_scaled`, the segmentation metrics (`iou/<class>`,
  `class_accuracy/<class>` per class), and the validation loss and its parts; undefined ones left out."""
  depth, seg = res['depth'], res.get('seg') or {}
  values = {**depth['frame_mean'], 'rmse_median_scaled': depth['median_scaled']['frame_mean']['rmse'],
            **{k: seg.get(k) for k in ('miou', 'mean_class_accuracy', 'fw_iou', 'pixel_accuracy')},
            **{f'{part}/{c}': v for part in ('iou', 'class_accuracy') for c, v in (seg.get(part) or {}).items()},
            **{k: v for k, v in (res.get('loss') or {}).items() if k in evaluation.LOSS_PARTS}}
  return {f'val/{name}/{k}': float(v) for k, v in values.items() if v is not None}


def _evaluate(run: _Run, state: training.State, step: int) -> dict[str, float]:
  """Validation on every `eval_sets` split: logged, written, pictures in TensorBoard; the values."""
  config = run.config
  values = {}
  for name in run.eval_sets:
    batches = datasets.eval_iterator(config, name, 'val', batch_size=config.batch_size,
                                     process_index=run.process, process_count=run.num_processes)
    bar = console.Progress(len(batches), f'eval {name}', unit='batch', batch_size=config.batch_size,
                           quiet=not run.is_main)
    frames = evaluation.FirstFrames(TB_PANELS if run.writer is not None else 0)

    def on_batch(local, preds, frames=frames, bar=bar):
      frames(local, preds)
      bar.update()

    try:
      res = evaluation.evaluate(run.graphdef, state['params'], state['batch_stats'], batches, run.mesh,
                                set_name=name, with_seg=domains.has_seg_labels(name), on_batch=on_batch,
                                kendall=state['kendall'], loss_config=config.loss)
    finally:
      bar.close()
      batches.close()
    if run.writer is not None:
      summaries.write_panels(run.writer, f'val/{name}', frames.frames, step)
    values.update(_validation_values(name, res))
  _write_metrics(run, step, values)
  if run.writer is not None and not run.hparams_metrics:
    run.hparams_metrics.extend(k for k in values if k.count('/') == 2)  # not the per-class ones
    summaries.write_hparams(run.writer, json.loads(config.to_json()), run.hparams_metrics)
  if run.is_main:
    for line in _validation_lines(step, values):
      console.say(line)
  return values


def _validation_lines(step: int, values: dict[str, float]) -> list[str]:
  """The console's validation summary: the key numbers, one line per set (all of them are in
  metrics.jsonl and TensorBoard), e.g. 'step 300 validation nyu: rmse 0.6123, abs_rel 0.2011, ...'."""
  lines = []
  for name in dict.fromkeys(key.split('/')[1] for key in values if key.count('/') == 2):
    shown = [f'{metric} {values[key]:.4f}' for metric in CONSOLE_METRICS
             if (key := f'val/{name}/{metric}') in values]
    lines.append(f'step {step} validation {name}: ' + ', '.join(shown))
  return lines


# --------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class _Loop:
  """What the loop carries between steps: the last step run and saved, the metrics not yet logged,
  the last validation's values, the throughput clock and the step functions already compiled."""
  step: int
  saved_step: int
  clock: Throughput
  pending: list[Any] = dataclasses.field(default_factory=list)
  last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  compiled: set[Callable] = dataclasses.field(default_factory=set)


def _train(run: _Run, state: training.State, train_step: Callable, frozen_step: Callable, start_step: int,
           stop: threading.Event) -> Outcome:
  """Steps `start_step` .. `total_steps` (or up to a stop request); saves, logs and evaluates.

  The next global batch is read and its transfer to the devices started while the current step
  runs (the step is dispatched asynchronously); `train/input_wait` is the fraction of wall time the
  loop spent waiting for the host pipeline. A bad frame in that next batch stops the run before the
  next step: the current step goes through its schedule (log, evaluation, save), then, in a
  one-process run, is saved if the schedule did not (as on preemption), so that the rerun after
  fixing the data resumes from it. (In a multi-process run the other processes do not see the bad
  frame and cannot join a save: resuming repeats the steps after the last scheduled save.)
  """
  data = datasets.train_iterator(run.config, start_step, run.process, run.num_processes, num_steps=run.total_steps)
  # A bar on a terminal; elsewhere the log lines of `_report_train` are the progress (lines=False).
  # Rates come from `Throughput` (the bar's postfix), the ETA from the bar's average pace.
  progress = console.Progress(run.total_steps, 'train', unit='step', initial=start_step, lines=False,
                              quiet=not run.is_main)
  loop = _Loop(step=start_step, saved_step=start_step, clock=Throughput(start_step))
  preempted = False
  error = None
  try:
    preempted = _steps(run, state, train_step, frozen_step, data, progress, loop, stop)
  except (RunError, checkpointing.SaveError) as e:  # train.py prints the one error line
    error = RunError(str(e))
  except OSError as e:  # metrics.jsonl or TensorBoard on a full or vanished disk
    error = RunError(f'{e}; {run.ckptr.last_good()}')
  except readers.BadFrameError as e:  # the steps before the bad batch are saved (one process)
    error = UserError(f'data: {e} (set data.skip_bad_frames=True to skip such frames)')
  finally:
    progress.close()
    data.close()
    try:
      run.ckptr.wait()
    except checkpointing.SaveError as e:
      error = error or RunError(str(e))
  if error is not None:
    raise error
  return Outcome(start_step=start_step, step=loop.step, total_steps=run.total_steps, preempted=preempted,
                 metrics=loop.last_metrics)


def _steps(run: _Run, state: training.State, train_step: Callable, frozen_step: Callable, data: Any,
           progress: console.Progress, loop: _Loop, stop: threading.Event) -> bool:
  """The loop of `_train`: runs the steps and their schedule; True when stopped by preemption."""
  batch = parallel.global_batch(next(data), run.mesh, training.TRAIN_KEYS)
  while loop.step < run.total_steps:
    step_fn = frozen_step if loop.step < run.freeze_steps else train_step
    state, metrics = step_fn(state, batch)
    loop.step += 1
    if step_fn not in loop.compiled:  # its first call compiled (and waited for it)
      loop.compiled.add(step_fn)
      loop.clock.restart(loop.step)
    data_error = None  # an error reading batch t + 1, raised after step t went through its schedule
    if loop.step < run.total_steps:
      batch, data_error = _next_batch(run, data, loop.clock)
    loop.pending.append(metrics)
    run.ckptr.poll()  # seals a finished save (integrity record), then drops old steps
    progress.update(1)
    _on_schedule(run, state, loop, progress)
    preempted = stop.is_set() or (run.num_processes > 1 and parallel.reached_preemption(loop.step))
    if preempted and loop.step < run.total_steps:
      _save_unsaved(run, state, loop)
      run.ckptr.wait()
      print(f'preempted: saved step {loop.step} in {run.workdir}/checkpoints; rerun the same command to resume',
            flush=True)
      return True
    if data_error is not None:
      if run.num_processes == 1:
        _save_unsaved(run, state, loop)
      raise data_error
  return False


def _next_batch(run: _Run, data: Any, clock: Throughput) -> tuple[Any, readers.BadFrameError | None]:
  """The next global batch, its transfer started (None and the error for a bad frame); the wait
  counts as input wait."""
  wait_start = time.perf_counter()
  try:
    return parallel.global_batch(next(data), run.mesh, training.TRAIN_KEYS), None
  except readers.BadFrameError as e:
    return None, e
  finally:
    clock.input_wait += time.perf_counter() - wait_start


def _on_schedule(run: _Run, state: training.State, loop: _Loop, progress: console.Progress) -> None:
  """Step `loop.step`'s log line, validation and checkpoint where the config's schedule says so."""
  config, step = run.config, loop.step
  last = step == run.total_steps
  if step % config.log_every_steps == 0 or last:
    fetched = jax.device_get(loop.pending)
    loop.pending = []
    _check_finite(run, state)
    values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    values.update(loop.clock.read(step, config.batch_size))
    _report_train(run, progress, step, values)
  evaluated = (config.eval_every_steps and step % config.eval_every_steps == 0) or last
  if evaluated and run.eval_sets:
    loop.last_metrics = _evaluate(run, state, step)
  if step % config.checkpoint_every_steps == 0 or last or evaluated:
    _save(run, state, step, loop.last_metrics if evaluated else {})
    loop.saved_step = step
  if evaluated or step % config.checkpoint_every_steps == 0:
    loop.clock.restart(step)  # images/s and input_wait measure training steps only


def _save_unsaved(run: _Run, state: training.State, loop: _Loop) -> None:
  """Saves `loop.step` now (a stop off the schedule) unless the schedule just did."""
  if loop.saved_step != loop.step:
    _save(run, state, loop.step, {}, force=True)
    loop.saved_step = loop.step


def _checked_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """The devices' mesh, after refusing (UserError) a config that cannot work or whose batch does not
  divide over the devices."""
  try:
    config_checks.check_config(config)
  except ValueError as e:
    raise UserError(str(e)) from None
  mesh = parallel.make_mesh()
  if config.batch_size % jax.device_count():
    raise UserError(f'batch_size={config.batch_size} is not divisible by the {jax.device_count()} devices')
  logging.info('process %d of %d, %d local / %d global devices (%s)', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
  return mesh


def _announce_plan(config: ml_collections.ConfigDict, process: int) -> tuple[int, int, int]:
  """(steps per epoch, total steps, encoder-frozen steps) of the run; process 0 prints the plan."""
  sched = _plan(config)
  steps_per_epoch, total_steps = sched['steps_per_epoch'], sched['num_steps']
  freeze_steps = int(config.freeze_encoder_epochs) * steps_per_epoch
  plan = (f'{config.data.mode}: sets {sched["sizes"]}, {steps_per_epoch} steps/epoch, {total_steps} steps '
          f'of batch {config.batch_size}; encoder frozen for {freeze_steps} steps; '
          f'eval on {list(config.data.eval_sets)}')
  if process == 0:
    console.say(plan)
  return steps_per_epoch, total_steps, freeze_steps


def _open_checkpointer(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> checkpointing.TrainCheckpointer:
  try:
    return checkpointing.TrainCheckpointer(workdir, keep=config.keep_checkpoints, best_metric=config.best_metric)
  except (OSError, ValueError) as e:  # e.g. a file where W/best should be
    raise UserError(f'cannot use the workdir\'s checkpoint folders: {e}') from None


def _catch_signals(num_processes: int, stop: threading.Event) -> dict[int, Any]:
  """Installs the SIGTERM/SIGINT handlers that end the steps; returns the previous handlers."""
  if num_processes == 1:
    return {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
  # JAX's preemption notifier holds SIGTERM: every process stops at one step
  return {signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))}


def _start_state(start: _Start, model: model_lib.DepthSegNet, tx: Any,
                 mesh: Mesh) -> tuple[nnx.GraphDef, training.State]:
  """The replicated train state at the restored (or initial) step."""
  graphdef, state = training.create_state(model, start.kendall, tx, mesh)
  if start.opt_state is not None:
    state['opt_state'] = parallel.put_replicated(start.opt_state, mesh)
    state['step'] = parallel.put_replicated(np.asarray(start.step, np.int32), mesh)
  return graphdef, state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *, dry_run: bool = False,
                       catch_signals: bool = False) -> Outcome | None:
  """Trains (or continues training) `config` in `workdir`; see the module docstring.

  config: a training config (`efficientvit_jax/configs/`); a value that cannot work
  (`config_checks.check_config`) raises UserError before any device or data work. Every process of a
  multi-process run calls this with the same arguments, after `parallel.initialize_distributed`; the
  caller holds the workdir lock (`checkpointing.WorkdirLock`, train.py takes it).
  dry_run: check the devices, the data and the config, print the plan and return None.
  catch_signals: (one process) SIGTERM and SIGINT during the steps save the current step and end the
  call (`Outcome.preempted`); the previous handlers are back on return.
  Raises UserError or RunError (module docstring).
  """
  mesh = _checked_mesh(config)
  workdir = pathlib.Path(workdir).absolute()
  process, num_processes = jax.process_index(), jax.process_count()
  steps_per_epoch, total_steps, freeze_steps = _announce_plan(config, process)
  eval_sets = tuple(config.data.eval_sets)
  dtype = jnp.bfloat16 if config.compute_dtype == 'bfloat16' else jnp.float32
  model = model_lib.create(backbone=config.model.backbone, dtype=dtype, seed=config.seed)
  tx = optimizer_lib.make_optimizer(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  if dry_run:
    lines = _dry_run(config, model, tx, mesh, freeze_steps, total_steps)
    if process == 0:
      print('\n'.join(lines), flush=True)
    return None
  # Several processes meet here, before their first collective (orbax's barrier in the checkpoint
  # manager): CPU (gloo) collectives give up when one process is 30 s late setting them up, and a
  # process reading fewer programs from the compilation cache (only process 0 writes it) can be.
  parallel.barrier('start')
  ckptr = _open_checkpointer(config, workdir)
  writer = None
  handlers = {}
  stop = threading.Event()
  try:
    start = _restore_or_init(config, workdir, model, tx, ckptr)
    graphdef, state = _start_state(start, model, tx, mesh)
    if start.step >= total_steps:
      if process == 0:
        print(f'{workdir}: already trained for {start.step} of {total_steps} steps; nothing to do')
      return Outcome(start_step=start.step, step=start.step, total_steps=total_steps, preempted=False, metrics={})
    train_step, frozen_step = _compile_steps(config, graphdef, tx, mesh, state, freeze_steps)
    if process == 0:
      try:
        writer = _open_outputs(config, workdir, start.step)
      except OSError as e:  # a full disk since the start-up check
        raise RunError(f'cannot write to {workdir}: {e}') from None
    run = _Run(config=config, workdir=workdir, mesh=mesh, graphdef=graphdef, ckptr=ckptr, writer=writer,
               eval_sets=eval_sets, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
               freeze_steps=freeze_steps, bn_frozen=frozen_step is not train_step, counters=start.counters,
               source=start.source, process=process, num_processes=num_processes)
    if catch_signals:
      handlers = _catch_signals(num_processes, stop)
    return _train(run, state, train_step, frozen_step, start.step, stop)
  finally:
    ckptr.close()
    if writer is not None:
      writer.close()
    for signum, handler in handlers.items():
      signal.signal(signum, handler)

"""Checkpoint folders (docs/checkpoints.md#checkpoint-folders): writing, verifying, `load`, training
workdirs. A reference `.pt` is read by `convert` (`convert.load_any` takes any source).

A checkpoint folder is an orbax `CheckpointManager` root whose steps hold the items `params`,
`batch_stats`, `kendall` (`log_sigma_d`, `log_sigma_s`, shape [1]) and `meta` (JSON: `step`, `epoch`,
`num_batches_tracked`, `source`, `config`, `metrics`); training adds `opt_state` and `data_state`.
A training workdir keeps its root at `W/checkpoints/`. Trees are nested dicts with string keys
(`nnx.List` indices as '0', '1', ...) of float32 numpy arrays, as orbax restores them; `opt_state`
is the optimiser state as such a tree, keyed by its pytree paths (`opt_state_tree`).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging as py_logging
import os
import pathlib
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from efficientvit_jax import console
from efficientvit_jax import parallel
from efficientvit_jax.trees import flatten
from efficientvit_jax.trees import path_name
from efficientvit_jax.trees import unflatten

MODEL_ITEMS = ('params', 'batch_stats', 'kendall', 'meta')
TRAIN_ITEMS = ('opt_state', 'data_state')
# Written into a step folder once orbax has finalised it: size and SHA-256 of every file.
INTEGRITY_FILE = 'integrity.json'
TMP_MARKER = '.orbax-checkpoint-tmp'  # orbax's suffix for a step folder still being written
LOCK_FILE = 'train.lock'


class CheckpointError(Exception):
  """A checkpoint source that cannot be read or does not fit the model; the message names it."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint step proven damaged: its files differ from its integrity record (missing,
  truncated, altered), or its save never finished."""


class MismatchError(CheckpointError):
  """A checkpoint that does not fit the model or the optimiser (keys, shapes, dtypes): written
  with another configuration or version."""


class SaveError(Exception):
  """Writing a checkpoint failed (disk full, permission, vanished folder); the message names the
  path and the last good step."""


class LockError(Exception):
  """The workdir is in use by another training process; the message names it."""


@dataclasses.dataclass
class Checkpoint:
  """The model-side content of one checkpoint step (numpy trees)."""

  params: dict[str, Any]
  batch_stats: dict[str, Any]
  kendall: dict[str, np.ndarray]
  meta: dict[str, Any]

  @property
  def step(self) -> int:
    return int(self.meta.get('step', 0))


def default_kendall() -> dict[str, np.ndarray]:
  return {'log_sigma_d': np.zeros((1,), np.float32), 'log_sigma_s': np.zeros((1,), np.float32)}


def state_to_tree(state: nnx.State) -> dict[str, Any]:
  """An `nnx.State` -> nested dict with string keys and numpy leaves (what orbax stores)."""
  return unflatten({'.'.join(str(p) for p in path): parallel.to_host(v[...]) for path, v in nnx.to_flat_state(state)})


def model_trees(model: nnx.Module) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, batch_stats) of a model as numpy trees."""
  return state_to_tree(nnx.state(model, nnx.Param)), state_to_tree(nnx.state(model, nnx.BatchStat))


def load_into_model(model: nnx.Module, params: dict[str, Any], batch_stats: dict[str, Any], *,
                    partial: bool = False, source: str = 'checkpoint') -> list[str]:
  """Copies checkpoint trees into `model` in place; returns the names of the copied leaves.

  Every leaf's shape is checked. Unless `partial`, the trees must cover the model exactly; with
  `partial` (an encoder-only checkpoint, `init_from`) leaves the model has and the source lacks
  keep their values, but a source leaf the model does not have is still an error. `model` may be
  abstract (`nnx.eval_shape`): loading it whole makes it concrete without a random initialisation.
  """
  copied = []
  for kind, tree in ((nnx.Param, params), (nnx.BatchStat, batch_stats)):
    variables = {'.'.join(str(p) for p in path): v for path, v in nnx.to_flat_state(nnx.state(model, kind))}
    flat = flatten(tree)
    unexpected = sorted(set(flat) - set(variables))
    if unexpected:
      raise MismatchError(f'{source}: unexpected {kind.__name__} entries {unexpected[:5]} '
                          f'({len(unexpected)} in all) that the model does not have')
    missing = sorted(set(variables) - set(flat))
    if missing and not partial:
      raise MismatchError(f'{source}: missing {kind.__name__} entries {missing[:5]} ({len(missing)} in all)')
    for name, value in flat.items():
      var = variables[name]
      if tuple(np.shape(value)) != tuple(var.shape):
        raise MismatchError(f'{source}: {name} has shape {tuple(np.shape(value))}, '
                            f'the model expects {tuple(var.shape)}')
      var.set_value(jax.numpy.asarray(value, var.get_value().dtype))  # also into an abstract model
      copied.append(name)
  return copied


def opt_state_tree(opt_state: Any) -> dict[str, Any]:
  """An optimiser state -> the nested dict `opt_state` stores: one key per path element (namedtuple
  fields such as `mu` / `nu` by name, dict keys, tuple indices as '0', '1', ...), numpy leaves."""
  flat = {path_name(path): parallel.to_host(x) for path, x in jax.tree_util.tree_flatten_with_path(opt_state)[0]}
  if len(flat) != len(jax.tree.leaves(opt_state)):
    raise ValueError('opt_state_tree: two leaves of the optimiser state have the same path name')
  return unflatten(flat)


def opt_state_from_tree(saved: dict[str, Any], like: Any, root: pathlib.Path, step: int) -> Any:
  """The stored `opt_state` tree of `root/step` (as restored) in the structure of `like` (the live
  state or `jax.eval_shape(tx.init, ...)`), numpy leaves, each taken by its path name.

  The saved paths, shapes and dtypes must equal `like`'s exactly: a state that differs (another
  optimiser configuration, optax renaming or regrouping its state) is refused with a one-line
  CheckpointError naming the step folder and the first path that differs, never loaded into the
  wrong leaves. The numbered leaves (`'0'`, `'1'`, ...) of older versions are refused as well:
  their order cannot be checked (Adam's two moments have the same shapes).
  """
  source = f'{root}/{step}'
  if not saved:
    raise MismatchError(f'{source}: no opt_state item (not a training checkpoint)')
  got = flatten(saved)
  flat_like, treedef = jax.tree_util.tree_flatten_with_path(like)
  names = [path_name(path) for path, _ in flat_like]
  missing = [name for name in names if name not in got]
  known = set(names)
  unexpected = [name for name in got if name not in known]
  if missing or unexpected:
    if all(k.isdigit() and not isinstance(v, dict) for k, v in saved.items()):
      raise MismatchError(
          f'{source}: opt_state was written by an older efficientvit-jax as numbered leaves, which cannot '
          f'be matched to this optimiser safely; its weights are still usable: start a new workdir from '
          f'them with a fresh optimiser (--config.init_from={root}), or convert them without --with-optimizer')
    detail = (f'this optimiser has {missing[0]}, the checkpoint does not' if missing else
              f'the checkpoint has {unexpected[0]}, this optimiser does not')
    raise MismatchError(f'{source}: opt_state does not match this optimiser: {detail} ({len(missing)} '
                        f'missing, {len(unexpected)} unexpected); written with another optimiser '
                        'configuration or optax version?')
  leaves = []
  for name, (_, want) in zip(names, flat_like):
    value = np.asarray(got[name])
    if value.shape != tuple(want.shape) or value.dtype != want.dtype:
      raise MismatchError(f'{source}: opt_state {name} is {value.dtype}{list(value.shape)}, this '
                          f'optimiser expects {np.dtype(want.dtype)}{list(want.shape)}')
    leaves.append(value)
  return jax.tree.unflatten(treedef, leaves)


# --------------------------------------------------------------------------------------------------
# Writing


def _save_args(ckpt: Checkpoint, extra: dict[str, Any] | None = None) -> ocp.args.Composite:
  trees = {'params': ckpt.params, 'batch_stats': ckpt.batch_stats, 'kendall': ckpt.kendall, **(extra or {})}
  # orbax refuses empty trees (a model without BatchNorm statistics); a missing item restores as {}.
  items = {name: ocp.args.JsonSave(tree) if name == 'data_state' else ocp.args.StandardSave(tree)
           for name, tree in trees.items() if jax.tree.leaves(tree)}
  items['meta'] = ocp.args.JsonSave(ckpt.meta)
  return ocp.args.Composite(**items)


def write_folder(dst: str | os.PathLike, ckpt: Checkpoint, *, overwrite: bool = False) -> pathlib.Path:
  """Writes a new checkpoint folder (a root with the one step `ckpt.step`, sealed), atomically.

  Everything is written beside `dst` and renamed into place at the end, so on any error nothing is
  left at `dst`. An existing non-empty `dst` is refused unless `overwrite` (a folder only).
  """
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and not dst.is_dir():
    raise CheckpointError(f'{dst} exists and is not a folder; choose a new destination')
  if dst.exists() and any(dst.iterdir()) and not overwrite:
    raise CheckpointError(f'{dst} already exists; choose a new destination or pass --overwrite')
  if dst.exists() and any(dst.iterdir()) and not _is_root(dst):
    raise CheckpointError(f'{dst} is a folder that is not a checkpoint folder; --overwrite replaces only '
                          'checkpoint folders: choose a new destination')
  # Checked up front: orbax reports bad leaves from a background thread that may still create
  # folders after the error reached us.
  for item, tree in (('params', ckpt.params), ('batch_stats', ckpt.batch_stats), ('kendall', ckpt.kendall)):
    for name, leaf in flatten(tree).items():
      if not isinstance(leaf, (np.ndarray, jax.Array, np.generic)) or np.asarray(leaf).dtype == object:
        raise CheckpointError(f'{item}.{name}: {type(leaf).__name__} is not an array')
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{dst.name}.tmp-', dir=dst.parent))
  try:
    with ocp.CheckpointManager(tmp / 'root', item_names=MODEL_ITEMS) as manager:
      manager.save(ckpt.step, args=_save_args(ckpt))
      manager.wait_until_finished()
    seal(tmp / 'root' / str(ckpt.step))
    if overwrite and dst.exists():
      os.replace(dst, tmp / 'old')  # removed with tmp once the new folder is in place
    elif dst.exists():
      dst.rmdir()
    os.replace(tmp / 'root', dst)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dst


def seal(step_dir: str | os.PathLike) -> None:
  """Records size and SHA-256 of every file of a finalised step folder in its `integrity.json`."""
  step_dir = pathlib.Path(step_dir)
  files = {}
  for path in sorted(step_dir.rglob('*')):
    rel = path.relative_to(step_dir).as_posix()
    if path.is_file() and rel != INTEGRITY_FILE:
      files[rel] = {'size': path.stat().st_size, 'sha256': _digest(path)}
  tmp = step_dir / f'.{INTEGRITY_FILE}.tmp'
  with open(tmp, 'w') as f:
    json.dump({'version': 1, 'files': files}, f, indent=0, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, step_dir / INTEGRITY_FILE)


def _digest(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def verify(step_dir: str | os.PathLike) -> bool:
  """Checks a step folder against its `integrity.json`; False when it has none (written before
  integrity records existed, or killed between orbax's finalisation and the record).

  Raises DamagedCheckpointError naming the first file that is missing, truncated or altered.
  """
  step_dir = pathlib.Path(step_dir)
  record = step_dir / INTEGRITY_FILE
  if not record.exists():
    return False
  try:
    files = json.loads(record.read_text())['files']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DamagedCheckpointError(f'{record}: unreadable integrity record ({type(e).__name__})') from None
  for rel, want in files.items():
    path = step_dir / rel
    if not path.is_file():
      raise DamagedCheckpointError(f'{path}: missing')
    size = path.stat().st_size
    if size != want['size']:
      raise DamagedCheckpointError(f'{path}: {size} bytes where {want["size"]} were written (truncated or altered)')
    if _digest(path) != want['sha256']:
      raise DamagedCheckpointError(f'{path}: content differs from what was written (checksum mismatch)')
  return True


def finished_steps(root: pathlib.Path) -> list[int]:
  """The steps whose saves finished in `root` (its numbered folders), from the folder alone: no
  orbax, and [] where `root` is missing (a run killed before its first save finished)."""
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def leftover_tmp(root: pathlib.Path) -> list[pathlib.Path]:
  """Temporary step folders of saves that never finished (a crash, a full disk)."""
  if not root.is_dir():
    return []
  return sorted(p for p in root.iterdir() if TMP_MARKER in p.name)


# --------------------------------------------------------------------------------------------------
# Reading


def _is_root(path: pathlib.Path) -> bool:
  return bool(finished_steps(path))


def resolve_root(src: str | os.PathLike) -> pathlib.Path:
  """A checkpoint folder or a training workdir -> the orbax root holding the steps."""
  path = pathlib.Path(src)
  if not path.exists():
    raise CheckpointError(f'{src}: no such file or folder')
  if _is_root(path):
    return path
  if _is_root(path / 'checkpoints'):
    return path / 'checkpoints'
  if (path / 'checkpoints').is_dir():  # a run stopped before its first save finished
    raise CheckpointError(f'{src}: a training workdir without a finished checkpoint (checkpoints/ holds no step)')
  raise CheckpointError(f'{src}: neither a checkpoint folder (numbered step folders), a training '
                        'workdir (with checkpoints/) nor a .pt file')


def _reader(root: pathlib.Path) -> ocp.CheckpointManager:
  """A manager that reads in this process alone: no barrier with the other processes of a
  multi-process run, so that each may read (or not) on its own."""
  me = jax.process_index()
  options = ocp.CheckpointManagerOptions(create=False, multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))
  return ocp.CheckpointManager(root.absolute(), options=options)


def steps(src: str | os.PathLike) -> list[int]:
  with _reader(resolve_root(src)) as manager:
    return sorted(manager.all_steps())


def restore_items(root: pathlib.Path, step: int | None, names: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
  """Restores the named items of `step` (default: latest) as saved, numpy leaves.

  The step is verified against its integrity record first (DamagedCheckpointError naming the file);
  an error of orbax while reading is a CheckpointError naming the step folder and the cause (not
  proof of damage: an I/O error, a full memory or another orbax version read the same way). Reads
  in this process alone (`_reader`).
  """
  with _reader(root) as manager:
    available = sorted(manager.all_steps())
    unfinished = [p.name for p in leftover_tmp(root)]
    if step is not None and step not in available:
      if any(name.split('.')[0] == str(step) for name in unfinished):
        raise DamagedCheckpointError(f'{root}/{step}: the save of step {step} never finished (only a temporary '
                                     f'folder is left); available steps: {available}')
      raise CheckpointError(f'{root}: no step {step}; available steps: {available}')
    if not available:
      raise CheckpointError(f'{root}: no finished checkpoint step' +
                            (f' (unfinished saves: {unfinished})' if unfinished else ''))
    if step is None:
      step = available[-1]
    step_dir = root / str(step)
    if not verify(step_dir):
      logging.warning('%s has no %s (an older checkpoint, or a run stopped just after saving): not verified',
                      step_dir, INTEGRITY_FILE)
    present = set(os.listdir(step_dir))
    args = {}
    for name in names:
      if name not in present:
        continue
      args[name] = ocp.args.JsonRestore() if name in ('meta', 'data_state') else ocp.args.StandardRestore()
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # orbax/tensorstore raise many types
      raise CheckpointError(f'{step_dir}: unreadable ({_first_line(e)})') from None
    return step, {name: restored[name] for name in args}


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0][:300]}' if text else type(e).__name__


def check_finite(value: np.ndarray, name: str) -> None:
  """CheckpointError naming `name` when `value` holds NaN or infinity."""
  bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
  if bad:
    raise CheckpointError(f'{name} holds {bad} non-finite values (NaN or infinity) of {np.size(value)}')


def check_weights(ckpt: Checkpoint, source: str) -> None:
  """CheckpointError naming the first weight, BatchNorm statistic or Kendall log-sigma of `ckpt`
  that holds NaN or infinity: no command loads such weights, sealed or not."""
  for item, tree in (('params', ckpt.params), ('batch_stats', ckpt.batch_stats), ('kendall', ckpt.kendall)):
    for name, value in flatten(tree).items():
      value = np.asarray(value)
      if np.issubdtype(value.dtype, np.inexact):
        check_finite(value, f'{source}: {item}.{name}')


def load(src: str | os.PathLike, step: int | None = None) -> Checkpoint:
  """Loads a checkpoint folder or a training workdir (latest step, or `step`); a file (a reference
  `.pt`) is refused: `convert.load_any` reads every kind of source. Weights holding NaN or
  infinity are refused (CheckpointError naming the first), with or without an integrity record."""
  path = pathlib.Path(src)
  if path.is_file():
    raise CheckpointError(f'{src}: a file, not a checkpoint folder or workdir (a reference .pt is read '
                          'by convert.load_any)')
  root = resolve_root(path)
  step, items = restore_items(root, step, MODEL_ITEMS)
  ckpt = _model_items(root, step, items)
  ckpt.meta.setdefault('step', step)
  return ckpt


def _model_items(root: pathlib.Path, step: int, items: dict[str, Any]) -> Checkpoint:
  """The restored model items of `root/step` as a Checkpoint; CheckpointError when `params` is
  missing or a weight is not finite."""
  if 'params' not in items:
    raise CheckpointError(f'{root}/{step}: no params item')
  kendall = items.get('kendall') or default_kendall()
  ckpt = Checkpoint(params=items['params'], batch_stats=items.get('batch_stats') or {},
                    kendall={k: np.asarray(v, np.float32) for k, v in kendall.items()},
                    meta=dict(items.get('meta') or {}))
  check_weights(ckpt, f'{root}/{step}')
  return ckpt


# --------------------------------------------------------------------------------------------------
# Training workdirs


# The direction of each validation metric (`val/<set>/<metric>`, docs/training.md#outputs-of-trainpy).
LOWER_IS_BETTER = ('rmse', 'mae', 'abs_rel', 'sq_rel', 'rmse_log', 'log10', 'rmse_median_scaled', 'loss',
                   'loss_depth', 'loss_seg', 'loss_edge')
HIGHER_IS_BETTER = ('delta1', 'delta2', 'delta3', 'miou', 'mean_class_accuracy', 'fw_iou', 'pixel_accuracy')
PER_CLASS = ('iou', 'class_accuracy')  # val/<set>/iou/<class>: higher is better


def lower_is_better(metric: str) -> bool:
  """Errors and losses improve downwards; delta*, IoUs and accuracies upwards."""
  parts = metric.split('/')
  if len(parts) == 4 and parts[2] in PER_CLASS:
    return False
  if parts[-1] in HIGHER_IS_BETTER:
    return False
  if parts[-1] in LOWER_IS_BETTER or parts[-1] in ('depth', 'seg', 'edge'):
    return True
  raise ValueError(f'best_metric {metric!r}: unknown direction; use a val/<set>/<metric> with metric one of '
                   f'{", ".join(LOWER_IS_BETTER)} (lower is better), {", ".join(HIGHER_IS_BETTER)}, '
                   'iou/<class>, class_accuracy/<class> (higher is better)')


class _OrbaxErrorsOnOneLine(py_logging.Filter):
  """Orbax logs the errors of its background threads with their tracebacks; training reports a full
  disk or a vanished folder as one line, so these log records keep only the exception's own line."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.exc_info and f'{os.sep}orbax{os.sep}' in record.pathname:
      kind, value, _ = record.exc_info
      record.msg, record.args = f'{record.getMessage()} ({kind.__name__}: {value})', None
      record.exc_info = record.exc_text = None
    return True


def _drop_closed_event_loop_errors() -> None:
  """A write that fails in orbax's background thread (a full disk) closes its asyncio event loop
  while tensorstore still hands the other writes' results to it; each hand-over raises 'Event loop
  is closed' into `sys.unraisablehook`: hundreds of tracebacks. Those alone are dropped (the failed
  save itself is reported once, as a SaveError); any other unraisable error reaches the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_event_loops', False):
    return

  def hook(unraisable):
    exc = unraisable.exc_value
    if not (isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_closed_event_loops = True
  sys.unraisablehook = hook


# What a failed write means, as the OS says it; found inside orbax's and tensorstore's long messages.
_OS_CAUSES = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                                   errno.EIO, errno.ENOTDIR, errno.ENOENT))


def _cause(e: BaseException) -> str:
  text = str(e)
  return next((cause for cause in _OS_CAUSES if cause in text), None) or _first_line(e)


class TrainCheckpointer:
  """A workdir's checkpoints: the latest `keep` steps with every item at `W/checkpoints/`, and the
  best step by `best_metric` (model items only) at `W/best/`, two orbax managers.

  Two managers because orbax 0.12.8's `best_fn` together with `max_to_keep` may delete the newest
  step, which resuming needs. `opt_state` is stored as a tree keyed by its paths and restored
  only into an optimiser state of exactly that structure (`opt_state_from_tree`); `data_state` is
  JSON.

  Saving: one process saves asynchronously (`poll` after each step notices a finished save);
  several processes save synchronously, so that a write failing on one host is known at once
  (an asynchronous one reports it only after orbax's collective finalisation times out). Once
  orbax has finalised a step, process 0 seals it (`seal`), and only then are older steps deleted
  (here, not by orbax's `max_to_keep`): at any moment an intact step is on disk. A failed save
  raises SaveError naming the path, the cause and the last good step. Leftover temporary folders
  of unfinished saves are removed at start with a warning.

  Resuming: process 0 picks the step (`choose_step`); every process restores it (`restore`, which
  reads in each process alone). A step is set aside in W/damaged/ only when its integrity record
  proves damage; any other error restoring it is a CheckpointError naming the step and the cause,
  and nothing is moved.
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: int, best_metric: str = '',
               async_save: bool | None = None):
    workdir = pathlib.Path(workdir).absolute()
    if keep < 1:
      raise ValueError(f'keep_checkpoints must be >= 1, got {keep}')
    self.keep = keep
    self.is_main = jax.process_index() == 0
    self.async_save = jax.process_count() == 1 if async_save is None else async_save
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _OrbaxErrorsOnOneLine) for f in handler.filters):
      handler.addFilter(_OrbaxErrorsOnOneLine())
    _drop_closed_event_loop_errors()
    self.root = workdir / 'checkpoints'
    self.damaged_dir = workdir / 'damaged'
    if self.is_main:
      for folder in (self.root, workdir / 'best'):
        for tmp in leftover_tmp(folder):
          logging.warning('removing %s: the temporary folder of a save that never finished', tmp)
          shutil.rmtree(tmp, ignore_errors=True)
    # Each manager needs its own barrier names: with several processes, the two finalising the
    # same step at once would otherwise meet at one barrier and fail.
    options = lambda name: ocp.CheckpointManagerOptions(
        max_to_keep=None, create=True, enable_async_checkpointing=self.async_save,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    self.latest = ocp.CheckpointManager(self.root, options=options('latest'),
                                        item_names=MODEL_ITEMS + TRAIN_ITEMS)
    self.best_metric = best_metric
    self.best = None
    self.best_value = None
    self._pending: dict[str, int] = {}  # manager name -> step saved, its old steps not deleted yet
    self._sealed: dict[str, int] = {}  # manager name -> the last step checked and sealed
    self._last_good: int | None = None  # the newest step known intact (restored or sealed by this run)
    if best_metric:
      self._lower = lower_is_better(best_metric)
      self.best = ocp.CheckpointManager(workdir / 'best', options=options('best'), item_names=MODEL_ITEMS)
      if self.best.latest_step() is not None:
        try:
          _, items = restore_items(workdir / 'best', None, ('meta',))
          self.best_value = (items.get('meta') or {}).get('metrics', {}).get(best_metric)
        except CheckpointError as e:
          logging.warning('best checkpoint: %s; the next evaluation replaces it', e)

  def _managers(self) -> dict[str, tuple[ocp.CheckpointManager, int]]:
    out = {'latest': (self.latest, self.keep)}
    if self.best is not None:
      out['best'] = (self.best, 1)
    return out

  def last_good_step(self) -> int | None:
    """The newest step of W/checkpoints known intact (restored or sealed by this run), or None."""
    return self._last_good

  def last_good(self) -> str:
    """'the last good checkpoint is step N in W/checkpoints', or that there is none yet."""
    if self._last_good is None:
      return f'no checkpoint was saved in {self.root} yet'
    return f'the last good checkpoint is step {self._last_good} in {self.root}'

  def _failed(self, path: pathlib.Path, e: BaseException | None, step: int) -> SaveError:
    reason = _cause(e) if e is not None else _write_probe(path.parent)
    return SaveError(f'cannot write checkpoint step {step} to {path} ({reason}); {self.last_good()}')

  def _seal(self, name: str) -> None:
    """Waits for the pending save of manager `name`, checks it and (process 0) seals it."""
    manager, _ = self._managers()[name]
    step = self._pending[name]
    if self._sealed.get(name) == step:
      return
    step_dir = pathlib.Path(manager.directory) / str(step)
    try:
      manager.wait_until_finished()
    except Exception as e:  # orbax re-raises the background thread's error
      raise self._failed(step_dir, e, step) from None
    if not step_dir.is_dir():  # orbax logs a failed background write and skips finalisation
      raise self._failed(step_dir, None, step)
    if self.is_main:
      try:
        seal(step_dir)
      except OSError as e:
        raise self._failed(step_dir / INTEGRITY_FILE, e, step) from None
    self._sealed[name] = step
    if name == 'latest':
      self._last_good = step

  def _finish(self, name: str) -> None:
    """Seals the pending save of manager `name` and deletes its steps beyond `keep` (every
    process together: orbax's delete meets the other processes)."""
    self._seal(name)
    manager, keep = self._managers()[name]
    del self._pending[name]
    try:
      manager.reload()
      for old in sorted(manager.all_steps())[:-keep]:
        manager.delete(old)
    except (OSError, ValueError) as e:  # the folder vanished after the seal
      raise SaveError(f'cannot list or delete old checkpoints in {manager.directory} ({_cause(e)}); '
                      f'{self.last_good()}') from None

  def poll(self) -> None:
    """Finishes the asynchronous saves that are done, without blocking; SaveError for one that failed."""
    for name in list(self._pending):
      if not self._managers()[name][0].is_saving_in_progress():
        self._finish(name)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def _save(self, name: str, step: int, args: ocp.args.Composite, force: bool) -> None:
    if name in self._pending:
      self._finish(name)
    manager = self._managers()[name][0]
    try:
      if self.is_main:  # orbax would fail in a background thread and wait for its timeout
        check_writable(pathlib.Path(manager.directory))
      manager.save(step, args=args, force=force)
    except Exception as e:  # OSError, or orbax's ValueError wrapping one
      raise self._failed(pathlib.Path(manager.directory) / str(step), e, step) from None
    self._pending[name] = step
    if not self.async_save:
      self._finish(name)

  def save(self, step: int, ckpt: Checkpoint, opt_state: Any, data_state: dict[str, Any], *,
           force: bool = False) -> None:
    trees = {'opt_state': opt_state_tree(opt_state), 'data_state': data_state}
    self._save('latest', step, _save_args(ckpt, trees), force)

  def maybe_save_best(self, step: int, ckpt: Checkpoint) -> bool:
    """Saves `ckpt` under W/best when its `meta['metrics'][best_metric]` beats the best so far."""
    if self.best is None:
      return False
    value = (ckpt.meta.get('metrics') or {}).get(self.best_metric)
    if value is None:
      return False
    better = self.best_value is None or (value < self.best_value if self._lower else value > self.best_value)
    if better:
      if self.best.latest_step() == step:  # the same step evaluated again after a resume
        return False
      self._save('best', step, _save_args(ckpt), True)
      self.best_value = value
    return better

  def choose_step(self) -> int | None:
    """(Process 0.) The step to resume from: the newest step of W/checkpoints whose integrity
    record proves nothing wrong (a step without a record passes; `restore` warns). A step the record
    proves damaged is moved to W/damaged/ with a warning naming the step and the file. None for a
    workdir without checkpoints. CheckpointError when none is left: checkpoints were there (or
    W/damaged/ holds steps set aside before) and training never starts afresh over them."""
    damaged = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        verify(self.root / str(step))
        return step
      except DamagedCheckpointError as e:
        aside = self.damaged_dir / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / str(step), aside)
        console.warn(f'checkpoint step {step} is damaged ({e}); moved it to {aside}')
        damaged.append(f'step {step} ({e})')
        self.latest.reload()
    earlier = sorted(p.name for p in self.damaged_dir.iterdir()) if self.damaged_dir.is_dir() else []
    if not damaged and not earlier:
      return None
    found = (f'{"; ".join(damaged)}: moved to {self.damaged_dir}/' if damaged else
             f'it holds no step, and {self.damaged_dir}/ holds steps set aside as damaged ({", ".join(earlier)})')
    raise CheckpointError(f'{self.root}: no intact checkpoint to resume from: {found}. Training does not start '
                          f'afresh over them: to start over, delete {self.damaged_dir} (or use a new --workdir); '
                          'to resume from a step set aside, repair it and move it back')

  def restore(self, step: int, opt_state_like: Any) -> tuple[Checkpoint, Any, dict[str, Any]]:
    """(model checkpoint, opt_state in the structure of `opt_state_like`, data_state) of `step`,
    read by this process alone. MismatchError for a checkpoint that does not fit the optimiser;
    CheckpointError (naming the step folder) for anything else, non-finite weights included."""
    root = pathlib.Path(self.latest.directory)
    self.latest.reload()  # process 0 may have set newer steps aside: every manager must see the same steps
    _, items = restore_items(root, step, MODEL_ITEMS + TRAIN_ITEMS)
    opt_state = opt_state_from_tree(items.get('opt_state') or {}, opt_state_like, root, step)
    ckpt = _model_items(root, step, items)
    self._last_good = step
    return ckpt, opt_state, dict(items.get('data_state') or {})

  def wait(self) -> None:
    """Waits for the saves in flight and finishes them; SaveError if one failed."""
    for name in list(self._managers()):
      if name in self._pending:
        self._finish(name)
      else:
        self._managers()[name][0].wait_until_finished()

  def close(self) -> None:
    for manager in (self.latest, self.best):
      if manager is None:
        continue
      try:
        manager.close()
      except Exception as e:  # a failed save, reported already
        logging.warning('closing %s: %s', manager.directory, _cause(e))


def check_writable(folder: pathlib.Path) -> None:
  """Creates `folder` if needed and a file in it; OSError (naming the path) when that fails."""
  try:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.probe-'):
      pass
  except OSError as e:
    raise OSError(f'{folder}: {e.strerror or e}') from None


def _write_probe(folder: pathlib.Path) -> str:
  """Why `folder` cannot take a new file (for save errors whose cause orbax only logged)."""
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix='.probe-'):
      pass
  except OSError as e:
    return f'{type(e).__name__}: {e.strerror or e}'
  return 'the save did not finish; see the log'


def truncate_metrics(path: pathlib.Path, last_step: int) -> None:
  """Drops the rows of `metrics.jsonl` after `last_step` (steps a resumed run redoes) and a partial
  last line left by a kill, so each step is logged once. Rewritten atomically."""
  if not path.exists():
    return
  kept, dropped = [], 0
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
      if int(row['step']) <= last_step:
        kept.append(line)
        continue
    except (ValueError, KeyError, TypeError):
      pass
    dropped += 1
  if dropped:
    logging.info('%s: dropped %d rows after step %d (redone by this run)', path, dropped, last_step)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(''.join(line + '\n' for line in kept))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# One writer per workdir


class WorkdirLock:
  """`W/train.lock`: an exclusive `flock` held while training, with the holder's pid, host and start
  time in the file. The kernel releases the lock when its process dies, however it dies, so a lock
  file left by a dead process is taken over (with a warning naming that process)."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = pathlib.Path(workdir).absolute() / LOCK_FILE
    self._fd = None

  def acquire(self) -> None:
    import fcntl

    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe_holder(os.pread(fd, 4096, 0))
      os.close(fd)
      raise LockError(f'{self.path.parent} is in use by {holder}; wait for it to finish, stop it, '
                      'or use another --workdir') from None
    previous = os.pread(fd, 4096, 0)
    if previous.strip():
      console.warn(f'{self.path}: taking over the lock of {_describe_holder(previous)}, which is no longer running')
    me = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                     'started': time.strftime('%Y-%m-%d %H:%M:%S')})
    os.ftruncate(fd, 0)
    os.pwrite(fd, me.encode() + b'\n', 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # an empty lock file = released cleanly
      os.close(self._fd)
      self._fd = None


def _describe_holder(raw: bytes) -> str:
  try:
    info = json.loads(raw.decode())
    return f'train.py process {info["pid"]} on host {info["host"]} (started {info["started"]})'
  except (ValueError, KeyError, TypeError, UnicodeDecodeError):
    return 'another process'

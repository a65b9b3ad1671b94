"""Checkpoint folders (INTERFACES "Checkpoint folders") and `load_any`.

A checkpoint folder is an orbax `CheckpointManager` root whose steps hold the items `params`,
`batch_stats`, `kendall` (`log_sigma_d`, `log_sigma_s`, shape [1]) and `meta` (JSON: `step`, `epoch`,
`num_batches_tracked`, `source`, `config`, `metrics`); training adds `opt_state` and `data_state`.
A training workdir keeps its root at `W/checkpoints/`. Trees are nested dicts with string keys
(`nnx.List` indices as '0', '1', ...) of float32 numpy arrays, as orbax restores them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

MODEL_ITEMS = ('params', 'batch_stats', 'kendall', 'meta')
TRAIN_ITEMS = ('opt_state', 'data_state')


class CheckpointError(Exception):
  """A checkpoint source that cannot be read or does not fit the model; the message names it."""


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


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """Nested dict -> {'a.b.c': leaf} with string keys."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a.b.c': leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split('.')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def to_host(x: Any) -> np.ndarray:
  """A (possibly multi-process, replicated) array -> numpy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError('to_host takes replicated arrays; this one is sharded across processes')
    return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x))


def state_to_tree(state: nnx.State) -> dict[str, Any]:
  """An `nnx.State` -> nested dict with string keys and numpy leaves (what orbax stores)."""
  return unflatten({'.'.join(str(p) for p in path): to_host(v[...]) for path, v in nnx.to_flat_state(state)})


def model_trees(model: nnx.Module) -> tuple[dict[str, Any], dict[str, Any]]:
  """(params, batch_stats) of a model as numpy trees."""
  return state_to_tree(nnx.state(model, nnx.Param)), state_to_tree(nnx.state(model, nnx.BatchStat))


def load_into_model(model: nnx.Module, params: dict[str, Any], batch_stats: dict[str, Any], *,
                    partial: bool = False, source: str = 'checkpoint') -> list[str]:
  """Copies checkpoint trees into `model` in place; returns the names of the copied leaves.

  Every leaf's shape is checked. Unless `partial`, the trees must cover the model exactly; with
  `partial` (an encoder-only checkpoint, `init_from`) leaves the model has and the source lacks
  keep their values, but a source leaf the model does not have is still an error.
  """
  copied = []
  for kind, tree in ((nnx.Param, params), (nnx.BatchStat, batch_stats)):
    variables = {'.'.join(str(p) for p in path): v for path, v in nnx.to_flat_state(nnx.state(model, kind))}
    flat = flatten(tree)
    unexpected = sorted(set(flat) - set(variables))
    if unexpected:
      raise CheckpointError(f'{source}: unexpected {kind.__name__} entries {unexpected[:5]} '
                            f'({len(unexpected)} in all) that the model does not have')
    missing = sorted(set(variables) - set(flat))
    if missing and not partial:
      raise CheckpointError(f'{source}: missing {kind.__name__} entries {missing[:5]} ({len(missing)} in all)')
    for name, value in flat.items():
      var = variables[name]
      if tuple(np.shape(value)) != tuple(var.shape):
        raise CheckpointError(f'{source}: {name} has shape {tuple(np.shape(value))}, '
                              f'the model expects {tuple(var.shape)}')
      var[...] = jax.numpy.asarray(value, var[...].dtype)
      copied.append(name)
  return copied


# --------------------------------------------------------------------------------------------------
# Writing


def _save_args(ckpt: Checkpoint, extra: dict[str, Any] | None = None) -> ocp.args.Composite:
  trees = {'params': ckpt.params, 'batch_stats': ckpt.batch_stats, 'kendall': ckpt.kendall, **(extra or {})}
  # orbax refuses empty trees (a model without BatchNorm statistics); a missing item restores as {}.
  items = {name: ocp.args.JsonSave(tree) if name == 'data_state' else ocp.args.StandardSave(tree)
           for name, tree in trees.items() if jax.tree.leaves(tree)}
  items['meta'] = ocp.args.JsonSave(ckpt.meta)
  return ocp.args.Composite(**items)


def write_folder(dst: str | os.PathLike, ckpt: Checkpoint) -> pathlib.Path:
  """Writes a new checkpoint folder (a root with the one step `ckpt.step`), atomically.

  Everything is written beside `dst` and renamed into place at the end, so on any error nothing is
  left at `dst`. An existing non-empty `dst` is refused.
  """
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    raise CheckpointError(f'{dst} already exists; choose a new destination')
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
    if dst.exists():
      dst.rmdir()
    os.replace(tmp / 'root', dst)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dst


# --------------------------------------------------------------------------------------------------
# Reading


def _is_root(path: pathlib.Path) -> bool:
  return path.is_dir() and any(p.is_dir() and p.name.isdigit() for p in path.iterdir())


def resolve_root(src: str | os.PathLike) -> pathlib.Path:
  """A checkpoint folder or a training workdir -> the orbax root holding the steps."""
  path = pathlib.Path(src)
  if not path.exists():
    raise CheckpointError(f'{src}: no such file or folder')
  if _is_root(path):
    return path
  if _is_root(path / 'checkpoints'):
    return path / 'checkpoints'
  raise CheckpointError(f'{src}: neither a checkpoint folder (numbered step folders), a training '
                        'workdir (with checkpoints/) nor a .pt file')


def steps(src: str | os.PathLike) -> list[int]:
  with ocp.CheckpointManager(resolve_root(src).absolute()) as manager:
    return sorted(manager.all_steps())


def restore_items(root: pathlib.Path, step: int | None, names: tuple[str, ...]) -> tuple[int, dict[str, Any]]:
  """Restores the named items of `step` (default: latest) as saved, numpy leaves."""
  with ocp.CheckpointManager(root.absolute()) as manager:
    available = sorted(manager.all_steps())
    if not available:
      raise CheckpointError(f'{root}: no finished checkpoint step')
    if step is None:
      step = available[-1]
    elif step not in available:
      raise CheckpointError(f'{root}: no step {step}; available steps: {available}')
    present = set(os.listdir(root / str(step)))
    args = {}
    for name in names:
      if name not in present:
        continue
      args[name] = ocp.args.JsonRestore() if name in ('meta', 'data_state') else ocp.args.StandardRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    return step, {name: restored[name] for name in args}


def load_any(src: str | os.PathLike, step: int | None = None, *, allow_pickle: bool = False) -> Checkpoint:
  """Loads a checkpoint folder, a training workdir (latest step or `step`) or a reference `.pt`.

  A `.pt` is converted on the fly (needs torch, imported lazily); `step` does not apply to it.
  """
  path = pathlib.Path(src)
  if path.is_file():
    if step is not None:
      raise CheckpointError(f'{src}: --step applies to checkpoint folders and workdirs, not to a .pt file')
    from efficientvit_jax import convert  # pylint: disable=g-import-not-at-top

    return convert.checkpoint_from_torch_file(path, allow_pickle=allow_pickle)
  root = resolve_root(path)
  step, items = restore_items(root, step, MODEL_ITEMS)
  if 'params' not in items:
    raise CheckpointError(f'{root}/{step}: no params item')
  meta = dict(items.get('meta') or {})
  meta.setdefault('step', step)
  kendall = items.get('kendall') or default_kendall()
  return Checkpoint(
      params=items['params'],
      batch_stats=items.get('batch_stats') or {},
      kendall={k: np.asarray(v, np.float32) for k, v in kendall.items()},
      meta=meta,
  )


# --------------------------------------------------------------------------------------------------
# Training workdirs


def lower_is_better(metric: str) -> bool:
  """rmse, mae, abs_rel and losses improve downwards; delta*, miou upwards."""
  name = metric.rsplit('/', 1)[-1]
  if name.startswith('delta') or name == 'miou':
    return False
  if name in ('rmse', 'mae', 'abs_rel', 'loss', 'depth', 'seg', 'edge'):
    return True
  raise ValueError(f'best_metric {metric!r}: unknown direction; use a val/<set>/<metric> with metric one of '
                   'rmse, mae, abs_rel (lower is better), delta1, delta2, delta3, miou (higher is better)')


class TrainCheckpointer:
  """A workdir's checkpoints: the latest `keep` steps with every item at `W/checkpoints/`, and the
  best step by `best_metric` (model items only) at `W/best/`, both asynchronous orbax managers.

  Two managers because orbax 0.12.8's `best_fn` together with `max_to_keep` may delete the newest
  step, which resuming needs. `opt_state` is stored as its list of leaves (`'0'`, `'1'`, ...) and
  restored into the structure of the live optimiser state; `data_state` is JSON.
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: int, best_metric: str = '',
               async_save: bool = True):
    workdir = pathlib.Path(workdir).absolute()
    if keep < 1:
      raise ValueError(f'keep_checkpoints must be >= 1, got {keep}')
    # Each manager needs its own barrier names: with several processes, the two finalising the
    # same step at once would otherwise meet at one barrier and fail.
    options = lambda n, name: ocp.CheckpointManagerOptions(
        max_to_keep=n, create=True, enable_async_checkpointing=async_save,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name))
    self.latest = ocp.CheckpointManager(workdir / 'checkpoints', options=options(keep, 'latest'),
                                        item_names=MODEL_ITEMS + TRAIN_ITEMS)
    self.best_metric = best_metric
    self.best = None
    self.best_value = None
    if best_metric:
      self._lower = lower_is_better(best_metric)
      self.best = ocp.CheckpointManager(workdir / 'best', options=options(1, 'best'), item_names=MODEL_ITEMS)
      if self.best.latest_step() is not None:
        _, items = restore_items(workdir / 'best', None, ('meta',))
        self.best_value = (items.get('meta') or {}).get('metrics', {}).get(best_metric)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, ckpt: Checkpoint, opt_state: Any, data_state: dict[str, Any], *,
           force: bool = False) -> None:
    leaves = {str(i): to_host(x) for i, x in enumerate(jax.tree.leaves(opt_state))}
    self.latest.save(step, args=_save_args(ckpt, {'opt_state': leaves, 'data_state': data_state}), force=force)

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
      self.best.save(step, args=_save_args(ckpt), force=True)
      self.best_value = value
    return better

  def restore(self, step: int, opt_state_like: Any) -> tuple[Checkpoint, Any, dict[str, Any]]:
    """(model checkpoint, opt_state in the structure of `opt_state_like`, data_state) of `step`."""
    root = pathlib.Path(self.latest.directory)
    _, items = restore_items(root, step, MODEL_ITEMS + TRAIN_ITEMS)
    leaves, treedef = jax.tree.flatten(opt_state_like)
    saved = items.get('opt_state') or {}
    if len(saved) != len(leaves):
      raise CheckpointError(f'{root}/{step}: opt_state has {len(saved)} leaves, this optimiser {len(leaves)}; '
                            'was the checkpoint written with another optimiser configuration?')
    restored = []
    for i, like in enumerate(leaves):
      value = np.asarray(saved[str(i)])
      if value.shape != tuple(like.shape):
        raise CheckpointError(f'{root}/{step}: opt_state leaf {i} has shape {value.shape}, expected {tuple(like.shape)}')
      restored.append(value.astype(like.dtype))
    meta = dict(items.get('meta') or {})
    ckpt = Checkpoint(params=items['params'], batch_stats=items.get('batch_stats') or {},
                      kendall={k: np.asarray(v, np.float32) for k, v in (items.get('kendall') or default_kendall()).items()},
                      meta=meta)
    return ckpt, jax.tree.unflatten(treedef, restored), dict(items.get('data_state') or {})

  def reached_preemption(self, step: int) -> bool:
    return self.latest.reached_preemption(step)

  def wait(self) -> None:
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    if self.best is not None:
      self.best.close()

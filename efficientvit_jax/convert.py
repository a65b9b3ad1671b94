"""Conversion between the reference's PyTorch checkpoints and our checkpoint folders (docs/checkpoints.md#conversion).

  python -m efficientvit_jax.convert torch-to-orbax SRC.pt DST [--allow-pickle]
  python -m efficientvit_jax.convert orbax-to-torch SRC DST.pt [--step N] [--with-optimizer]
  python -m efficientvit_jax.convert timm-encoder SRC.pth|SRC.safetensors DST

The mapping is a table: a JAX path becomes a torch key by renaming a few modules (`_MODULES`) and
the leaf (`_LEAVES`); layouts differ only by transposes (`_TO_JAX`), so a round trip is bit-exact.
Strict both ways: every torch key is used, or checked and dropped (`img_mean`, `img_std`), every
shape checked, and errors name the key. torch is imported lazily (conversion only).

Every backbone of `model.BACKBONES` converts. A `.pt` names its backbone in `config['BACKBONE']`;
without one, it is the backbone whose shapes the state dict fits (`backbone_of_state_dict`), and a
state dict that fits none is refused naming the first key that differs from the nearest one. Our
checkpoints record it in `meta['backbone']` (older ones: found from their shapes,
`checkpoint_backbone`).

`load_any` reads any checkpoint source: a checkpoint folder or workdir (`checkpointing.load`) or a
reference `.pt`; `load_model` builds the model it holds and says what it is (backbone, training
input size). The torch-only BatchNorm counters (`num_batches_tracked`) that training keeps in a
checkpoint's meta are computed here too (`start_counters`, `counters_meta`).

Epochs: a .pt's `epoch` is, as in the reference, the 0-based index of its last finished epoch (its
`train.py --resume` starts at `epoch + 1`); our checkpoints' `meta['epoch']` counts finished epochs.
Conversion translates (`meta['epoch'] = epoch + 1`). A .pt written here also carries the run's
recipe in the reference's Config names (`reference_config`) and our validation results under its
metric names (`reference_metrics`). `--with-optimizer` also writes the AdamW state of its three
parameter groups, by parameter name in the reference network's order, and its per-epoch cosine
scheduler (`torch_training_state`), so that the reference's `train.py --resume` continues a run
made here.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from efficientvit_jax import checkpointing
from efficientvit_jax import model as model_lib
from efficientvit_jax import optimizer as optimizer_lib
from efficientvit_jax import runtime
from efficientvit_jax import trees
from efficientvit_jax.checkpointing import Checkpoint
from efficientvit_jax.checkpointing import CheckpointError
from efficientvit_jax.checkpointing import check_finite
from efficientvit_jax.classes import CLASS_NAMES

# JAX module path pieces that the reference names by position in an nn.Sequential (MobileNetV3's
# `features` is the reference's encoder itself, each block a Sequential(conv, BN, act)).
_MODULES = (
    (r'^encoder\.features\.(\d+)\.', r'encoder.\1.'),
    (r'^(encoder\.\d+\.(?:block\.\d+\.)?)conv\.', r'\g<1>0.'),
    (r'^(encoder\.\d+\.(?:block\.\d+\.)?)norm\.', r'\g<1>1.'),
    (r'^neck\.conv\.', 'neck.0.'),
    (r'^neck\.norm\.', 'neck.1.'),
    (r'\.fuse\.conv\.', '.fuse.0.'),
    (r'\.fuse\.norm\.', '.fuse.1.'),
    (r'^depth_head\.', 'depth_head.0.'),
)
# (leaf, kind) -> torch leaf; kind 'norm' for BatchNorm variables.
_LEAVES = {
    ('kernel', 'conv'): 'weight', ('kernel', 'up'): 'weight', ('bias', 'conv'): 'bias',
    ('bias', 'up'): 'bias', ('scale', 'norm'): 'weight', ('bias', 'norm'): 'bias',
    ('mean', 'norm'): 'running_mean', ('var', 'norm'): 'running_var',
}
# Layout of a torch tensor -> ours: conv [out, in/g, kh, kw] -> HWIO; transposed conv
# [in, out, kh, kw] -> [kh, kw, in, out]. Both transposes are self-describing in reverse.
_TO_JAX = {'conv': (2, 3, 1, 0), 'up': (2, 3, 0, 1)}
_TO_TORCH = {'conv': (3, 2, 0, 1), 'up': (2, 3, 0, 1)}
NORM_PARENTS = ('norm', 'bn')


def _kind(path: str) -> str:
  parts = path.split('.')
  if parts[-2] in NORM_PARENTS or parts[-1] in ('scale', 'mean', 'var'):
    return 'norm'
  return 'up' if parts[-2] == 'up' else 'conv'


def torch_key(path: str) -> str:
  """Our dotted path -> the reference state-dict key, e.g. 'neck.norm.var' -> 'neck.1.running_var'."""
  kind = _kind(path)
  module, leaf = path.rsplit('.', 1)
  name = f'{module}.{_LEAVES[(leaf, kind)]}'
  for pattern, repl in _MODULES:
    name = re.sub(pattern, repl, name)
  return name


def bn_prefixes(batch_stats: dict[str, Any]) -> list[str]:
  """Torch module names of the BatchNorm layers (the owners of `num_batches_tracked`)."""
  return sorted({torch_key(p).rsplit('.', 1)[0] for p in trees.flatten(batch_stats)})


# --------------------------------------------------------------------------------------------------
# BatchNorm counters (docs/checkpoints.md#batchnorm-counters): torch's `num_batches_tracked`, kept in
# a checkpoint's meta keyed by torch module name, since Flax's BatchNorm has none.


def start_counters(batch_stats: dict[str, Any], *, resumed: Mapping[str, Any] | None = None,
                   init_from: Mapping[str, Any] | None = None) -> dict[str, int]:
  """The counters a training run starts from, one per BatchNorm layer of `batch_stats`: 0; or, given
  the meta of the checkpoint a run resumes, the counters that run started from; or, given the meta
  of its `init_from` checkpoint, the counts that checkpoint reached (for the layers it has)."""
  counters = {bn: 0 for bn in bn_prefixes(batch_stats)}
  if resumed is not None:
    return {bn: int(n) for bn, n in (resumed.get('init_num_batches_tracked') or counters).items()}
  if init_from is not None:
    counters.update({bn: int(n) for bn, n in (init_from.get('num_batches_tracked') or {}).items() if bn in counters})
  return counters


def num_batches_tracked(start: Mapping[str, int], step: int, *, frozen_steps: int = 0) -> dict[str, int]:
  """The counters after `step` train-mode steps from `start`; the encoder's and neck's layers do not
  count the first `frozen_steps` steps (run with those layers in eval mode: `freeze_bn_when_frozen`)."""
  frozen = min(step, frozen_steps)
  return {bn: int(n) + step - (frozen if bn.startswith(('encoder.', 'neck.')) else 0) for bn, n in start.items()}


def counters_meta(start: Mapping[str, int], step: int, *, frozen_steps: int = 0) -> dict[str, dict[str, int]]:
  """The meta entries of a training checkpoint at `step`: `num_batches_tracked` and the counters the
  run started from (`init_num_batches_tracked`, what `start_counters(resumed=...)` reads back)."""
  return {'num_batches_tracked': num_batches_tracked(start, step, frozen_steps=frozen_steps),
          'init_num_batches_tracked': dict(start)}


@functools.cache
def _template(backbone: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Shapes of our params and batch stats for `backbone` (no weights computed)."""
  abstract = nnx.eval_shape(lambda: model_lib.create(backbone=backbone))
  return tuple(trees.flatten(trees.unflatten(
      {'.'.join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(abstract, kind))}))
               for kind in (nnx.Param, nnx.BatchStat))


# --------------------------------------------------------------------------------------------------
# Which backbone


def canonical_backbone(name: Any, source: str, key: str = 'config.BACKBONE') -> str:
  """A backbone name as the reference writes it (`efficientvit_b2.r288_in1k`: timm's tag ignored)
  -> one of `model.BACKBONES`; CheckpointError naming `key` otherwise."""
  backbone = str(name).split('.')[0]
  if backbone not in model_lib.BACKBONES:
    raise CheckpointError(f'{source}: {key} is {name!r}, not one of {", ".join(model_lib.BACKBONES)}')
  return backbone


def _first_difference(shapes: Mapping[str, tuple[int, ...]], backbone: str, *, prefix: str = '',
                      only: tuple[str, ...] | None = None) -> tuple[str | None, int]:
  """(the first torch key of `backbone`'s model, restricted to the top-level parts `only`, that
  `shapes` (torch key -> shape) lacks or holds with another shape, or else the first unexpected
  key, as a message; None when all fit) and the number of keys that fit."""
  keep = lambda path: only is None or path.split('.')[0] in only
  params, stats = ({p: v for p, v in tree.items() if keep(p)} for tree in _template(backbone))
  expected = {prefix + torch_key(p): _torch_shape(p, v.shape) for p, v in {**params, **stats}.items()}
  expected.update({f'{prefix}{bn}.num_batches_tracked': () for bn in bn_prefixes(stats)})
  fits = sum(1 for k, shape in expected.items() if shapes.get(k) == shape)
  for key, shape in expected.items():
    if key not in shapes:
      return f'missing key {key} (expected shape {shape})', fits
    if shapes[key] != shape:
      return f'key {key} has shape {shapes[key]}, expected {shape}', fits
  unexpected = sorted(set(shapes) - set(expected) - {'img_mean', 'img_std'})
  if unexpected:
    return f'unexpected key {unexpected[0]} ({len(unexpected)} unexpected keys in all)', fits
  return None, fits


def backbone_of_state_dict(sd: Mapping[str, Any], source: str, *, named: Any = None, prefix: str = '',
                           only: tuple[str, ...] | None = None) -> str:
  """The backbone of a reference state dict: `named` (its `config['BACKBONE']`) when given, else the
  one whose shapes it fits exactly (restricted to the parts `only`, e.g. ('encoder',)).

  Raises CheckpointError with one line naming the first key that differs from the nearest backbone.
  """
  return _backbone_of_shapes({k: tuple(np.shape(v)) for k, v in sd.items()}, source, named=named, prefix=prefix,
                             only=only)


def _backbone_of_shapes(shapes: Mapping[str, tuple[int, ...]], source: str, *, named: Any = None, prefix: str = '',
                        only: tuple[str, ...] | None = None) -> str:
  """`backbone_of_state_dict` of the torch key -> shape map `shapes`."""
  if named is not None:
    backbone = canonical_backbone(named, source)
    difference, _ = _first_difference(shapes, backbone, prefix=prefix, only=only)
    if difference is None:
      return backbone
    try:
      hint = f'; its shapes are those of {_backbone_of_shapes(shapes, source, prefix=prefix, only=only)}'
    except CheckpointError:
      hint = ''
    raise CheckpointError(f'{source}: config.BACKBONE is {named!r}, but {difference}{hint}')
  nearest = None
  for backbone in model_lib.BACKBONES:
    difference, fits = _first_difference(shapes, backbone, prefix=prefix, only=only)
    if difference is None:
      return backbone
    if nearest is None or fits > nearest[2]:
      nearest = (backbone, difference, fits)
  raise CheckpointError(f'{source}: fits none of the backbones ({", ".join(model_lib.BACKBONES)}); nearest '
                        f'{nearest[0]}: {nearest[1]}')


def checkpoint_backbone(ckpt: Checkpoint, source: str = 'checkpoint') -> str:
  """The backbone of one of our checkpoints: `meta['backbone']`, else (checkpoints written before
  backbones were recorded) the one whose shapes its params fit (an encoder-only one: its encoder)."""
  if ckpt.meta.get('backbone') is not None:
    return canonical_backbone(ckpt.meta['backbone'], source, key='meta.backbone')
  shapes = {}
  for tree in (ckpt.params, ckpt.batch_stats):
    for path, value in trees.flatten(tree).items():
      shapes[torch_key(path)] = _torch_shape(path, tuple(np.shape(value)))
  only = tuple(sorted({p.split('.')[0] for p in trees.flatten(ckpt.params)}))
  shapes.update({f'{bn}.num_batches_tracked': () for bn in bn_prefixes(ckpt.batch_stats)})
  return _backbone_of_shapes(shapes, source, only=only)


# --------------------------------------------------------------------------------------------------
# torch -> ours


def read_torch_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> Mapping[str, Any]:
  """`torch.load` with `weights_only=True`; full unpickling only with `allow_pickle`.

  Raises CheckpointError with one line naming the file for anything that is not a checkpoint.
  """
  import pickle

  import torch

  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f'{path}: no such file')
  with open(path, 'rb') as f:
    head = f.read(2)
  if not zipfile.is_zipfile(path) and head[:1] != b'\x80':
    raise CheckpointError(f'{path}: not a PyTorch checkpoint (neither a torch.save zip nor a pickle)')
  if zipfile.is_zipfile(path):  # torch.save records a CRC-32 per member: damaged bytes show here
    try:
      with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise CheckpointError(f'{path}: damaged zip archive ({e})') from None
    if bad is not None:
      raise CheckpointError(f'{path}: damaged: member {bad} fails its CRC-32 check')
  try:
    with torch.serialization.safe_globals(numpy_safe_globals()), warnings.catch_warnings():
      warnings.filterwarnings('ignore', message='Detected pickle protocol')  # the refusal below says it
      obj = torch.load(path, map_location='cpu', weights_only=not allow_pickle)
  except pickle.UnpicklingError as e:
    if not allow_pickle:  # every refusal of the weights-only unpickler, whatever it met
      found = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
      detail = re.search(r'WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)', str(e), re.S)
      what = (f'objects ({found.group(1)}) beyond tensors, numbers and numpy scalars' if found else
              f'pickle data ({detail.group(1).splitlines()[0][:200] if detail else "unknown"})')
      raise CheckpointError(f'{path}: holds {what}, which torch.load(weights_only=True) refuses; if you trust '
                            'the file, rerun with --allow-pickle') from None
    raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0][:200]})') from None
  except Exception as e:  # torch raises many types (RuntimeError, KeyError, EOFError) for bad bytes
    raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({type(e).__name__}: '
                          f'{str(e).splitlines()[0][:200] if str(e) else ""})') from None
  if not isinstance(obj, Mapping):
    raise CheckpointError(f'{path}: holds a {type(obj).__name__}, not a checkpoint dict or state dict')
  return obj


def numpy_safe_globals() -> list[Any]:
  """What `weights_only` loading needs for plain numpy scalars (`np.float64(0.41)` in the
  reference's metrics) under numpy 1.x and 2.x names: the scalar constructor and the numeric dtypes.
  Object, string and void dtypes are left out: they could carry arbitrary objects."""
  scalar = np._core.multiarray.scalar
  out: list[Any] = [scalar, (scalar, 'numpy.core.multiarray.scalar'), np.dtype]
  for name in ('Bool', 'Int8', 'Int16', 'Int32', 'Int64', 'UInt8', 'UInt16', 'UInt32', 'UInt64', 'Float16',
               'Float32', 'Float64', 'LongDouble', 'Complex64', 'Complex128', 'Byte', 'UByte', 'Short',
               'UShort', 'Int', 'UInt', 'Long', 'ULong', 'LongLong', 'ULongLong'):
    if hasattr(np.dtypes, name + 'DType'):
      out.append(getattr(np.dtypes, name + 'DType'))
  return out


def split_checkpoint(obj: Mapping[str, Any], source: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
  """(state_dict, the rest) of a training-checkpoint dict (`model` / `model_state_dict`) or a bare one."""
  for key in ('model', 'model_state_dict'):
    if key in obj:
      if not isinstance(obj[key], Mapping):
        raise CheckpointError(f'{source}: "{key}" is a {type(obj[key]).__name__}, not a state dict')
      return obj[key], {k: v for k, v in obj.items() if k != key}
  if obj and all(hasattr(v, 'shape') for v in obj.values()):
    return obj, {}
  raise CheckpointError(f'{source}: neither a training checkpoint ("model" or "model_state_dict" '
                        f'key) nor a bare state dict; keys: {sorted(map(str, obj))[:8]}')


def _numpy(value: Any) -> np.ndarray:
  return value.detach().cpu().numpy() if hasattr(value, 'detach') else np.asarray(value)


def _check_normalisation(sd: Mapping[str, Any], source: str) -> None:
  for key, expected in (('img_mean', model_lib.IMAGENET_MEAN), ('img_std', model_lib.IMAGENET_STD)):
    if key not in sd:
      raise CheckpointError(f'{source}: missing key {key} (expected shape (1, 3, 1, 1))')
    value = _numpy(sd[key])
    if value.shape != (1, 3, 1, 1):
      raise CheckpointError(f'{source}: {key} has shape {value.shape}, expected (1, 3, 1, 1)')
    if not np.allclose(value.reshape(3), expected, atol=1e-6):
      raise CheckpointError(f'{source}: {key} is {value.reshape(3).tolist()}, but the model normalises '
                            f'with the ImageNet values {list(expected)}; this checkpoint was trained '
                            'with another normalisation and would give wrong outputs')


def params_from_state_dict(sd: Mapping[str, Any], source: str, *, backbone: str = model_lib.DEFAULT_BACKBONE,
                           prefix: str = '', only: tuple[str, ...] | None = None) -> tuple[dict, dict, dict[str, int]]:
  """Maps a reference state dict of a `backbone` model onto our trees: (params, batch_stats,
  num_batches_tracked).

  `only` restricts the conversion to top-level modules (e.g. ('encoder',)); keys outside are
  errors. `prefix` is prepended to our paths' torch keys (timm's encoder has none).
  """
  param_shapes, stat_shapes = _template(backbone)
  keep = lambda p: only is None or p.split('.')[0] in only
  used: set[str] = set()
  mapped = []
  for shapes in (param_shapes, stat_shapes):
    flat = {}
    for path, shape_struct in shapes.items():
      if not keep(path):
        continue
      key = prefix + torch_key(path)
      if key not in sd:
        raise CheckpointError(f'{source}: missing key {key} (expected shape {_torch_shape(path, shape_struct.shape)})')
      value = _numpy(sd[key])
      kind = _kind(path)
      expected = _torch_shape(path, shape_struct.shape)
      if value.dtype != np.float32:  # first: a wrong dtype is reported as such
        raise CheckpointError(f'{source}: key {key} has dtype {value.dtype}, expected float32')
      if value.shape != expected:
        raise CheckpointError(f'{source}: key {key} has shape {value.shape}, expected {expected}')
      check_finite(value, f'{source}: key {key}')
      flat[path] = np.ascontiguousarray(value.transpose(_TO_JAX[kind]) if value.ndim == 4 else value)
      used.add(key)
    mapped.append(trees.unflatten(flat))
  num_batches = {}
  for bn in bn_prefixes(mapped[1]):
    key = f'{prefix}{bn}.num_batches_tracked'
    if key not in sd:
      raise CheckpointError(f'{source}: missing key {key} (expected shape ())')
    value = _numpy(sd[key])
    if value.shape != ():
      raise CheckpointError(f'{source}: key {key} has shape {value.shape}, expected ()')
    num_batches[bn] = int(value)
    used.add(key)
  unexpected = sorted(set(sd) - used - {'img_mean', 'img_std'})
  if unexpected:
    raise CheckpointError(f'{source}: unexpected key {unexpected[0]} ({len(unexpected)} unexpected '
                          'keys in all); is this a checkpoint of this network?')
  return mapped[0], mapped[1], num_batches


def _torch_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) != 4:
    return tuple(shape)
  return tuple(shape[i] for i in _TO_TORCH[_kind(path)])


def _json_safe(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if hasattr(value, 'tolist'):
    return value.tolist()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return repr(value)


def _check_not_half(sd: Mapping[str, Any], source: str) -> None:
  """A half-precision state dict is named by its dtype before any other check reads its values."""
  for key, value in sd.items():
    dtype = str(getattr(value, 'dtype', '')).removeprefix('torch.')
    if dtype in ('float16', 'bfloat16', 'half'):
      raise CheckpointError(f'{source}: key {key} has dtype {dtype}, expected float32 (a half-precision copy '
                            'of the weights: convert the float32 original)')


def checkpoint_from_torch(obj: Mapping[str, Any], source: str) -> Checkpoint:
  """A loaded reference checkpoint (dict or bare state dict) -> our Checkpoint."""
  sd, rest = split_checkpoint(obj, source)
  _check_not_half(sd, source)
  _check_normalisation(sd, source)
  config = rest.get('config') if isinstance(rest.get('config'), Mapping) else {}
  backbone = backbone_of_state_dict(sd, source, named=config.get('BACKBONE'))
  params, batch_stats, num_batches = params_from_state_dict(sd, source, backbone=backbone)
  kendall = checkpointing.default_kendall()
  criterion = rest.get('criterion') or {}
  for name in kendall:
    if name in criterion:
      value = _numpy(criterion[name])
      if not np.issubdtype(value.dtype, np.floating):
        raise CheckpointError(f'{source}: criterion.{name} has dtype {value.dtype}, expected a float')
      value = value.astype(np.float32)
      if value.shape != (1,):
        raise CheckpointError(f'{source}: criterion.{name} has shape {value.shape}, expected (1,)')
      check_finite(value, f'{source}: criterion.{name}')
      kendall[name] = value
  metrics = {k: _json_safe(v) for k, v in rest.items()
             if k not in ('criterion', 'epoch', 'optimizer', 'scheduler', 'config')}
  meta = {
      'step': 0,
      'epoch': int(rest['epoch']) + 1 if rest.get('epoch') is not None else 0,  # finished epochs
      'num_batches_tracked': num_batches,
      'source': f'torch:{source}',
      'backbone': backbone,
      'config': _json_safe(rest.get('config', {})),
      'metrics': metrics,
      'dropped': sorted(k for k in ('optimizer', 'scheduler') if k in rest),
  }
  size = [config.get('INPUT_HEIGHT'), config.get('INPUT_WIDTH')]
  if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
    meta['input_size'] = size
  return Checkpoint(params=params, batch_stats=batch_stats, kendall=kendall, meta=meta)


def checkpoint_from_torch_file(path: str | os.PathLike, *, allow_pickle: bool = False) -> Checkpoint:
  return checkpoint_from_torch(read_torch_file(path, allow_pickle=allow_pickle), os.fspath(path))


def load_any(src: str | os.PathLike, step: int | None = None, *, allow_pickle: bool = False) -> Checkpoint:
  """Loads any checkpoint source: a checkpoint folder or training workdir (latest step, or `step`;
  `checkpointing.load`) or a reference `.pt` (converted in memory; needs torch, imported lazily)."""
  path = pathlib.Path(src)
  if not path.is_file():
    return checkpointing.load(path, step)
  if step is not None:
    raise CheckpointError(f'{src}: --step applies to checkpoint folders and workdirs, not to a .pt file')
  return checkpoint_from_torch_file(path, allow_pickle=allow_pickle)


DEFAULT_INPUT_SIZE = (240, 320)  # the reference's, for checkpoints that record no input size


def input_size_of(ckpt: Checkpoint) -> tuple[int, int] | None:
  """The training input size a checkpoint records: `meta['input_size']`, else its training config's
  `data.input_size` (ours) or `INPUT_HEIGHT` x `INPUT_WIDTH` (the reference's); None if none."""
  config = ckpt.meta.get('config')
  config = config if isinstance(config, Mapping) else {}
  data = config.get('data') if isinstance(config.get('data'), Mapping) else {}
  for size in (ckpt.meta.get('input_size'), data.get('input_size'),
               (config.get('INPUT_HEIGHT'), config.get('INPUT_WIDTH'))):
    if (isinstance(size, (list, tuple)) and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
      return int(size[0]), int(size[1])
  return None


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model built from a checkpoint source, and what the checkpoint says it is."""

  model: model_lib.DepthSegNet
  ckpt: Checkpoint
  source: str
  backbone: str
  recorded_size: tuple[int, int] | None  # the training input size the checkpoint records

  def input_size(self, override: tuple[int, int] | None = None) -> tuple[int, int]:
    """The size to run at: `override` (a --size flag), else the recorded one, else 240x320."""
    return tuple(override or self.recorded_size or DEFAULT_INPUT_SIZE)

  def describe(self, override: tuple[int, int] | None = None) -> str:
    """One console line: which model at which input size, and where the size comes from."""
    h, w = self.input_size(override)
    recorded = f'{self.recorded_size[0]}x{self.recorded_size[1]}' if self.recorded_size else None
    if override:
      why = f'from --size; trained at {recorded}' if recorded else 'from --size'
    elif recorded:
      why = 'the training input size recorded in the checkpoint; --size overrides'
    else:
      why = 'default: the checkpoint records no input size; --size overrides'
    step = f' step {self.ckpt.step}' if not str(self.ckpt.meta.get('source', '')).startswith('torch:') else ''
    return f'{self.source}{step}: {self.backbone}, input {h}x{w} ({why})'


def load_model(src: str | os.PathLike, step: int | None = None, *, dtype: Any = np.float32,
               allow_pickle: bool = False) -> LoadedModel:
  """The model of any checkpoint source (folder, workdir + `step`, reference `.pt`), built with its
  backbone and its weights loaded, with what the checkpoint records (`LoadedModel`). `dtype`: the
  compute dtype. CheckpointError (one line naming the source) for what cannot be loaded."""
  source = os.fspath(src)
  ckpt = load_any(source, step, allow_pickle=allow_pickle)
  model = model_from_checkpoint(ckpt, dtype=dtype, source=source)
  return LoadedModel(model=model, ckpt=ckpt, source=source, backbone=model.backbone,
                     recorded_size=input_size_of(ckpt))


def model_from_checkpoint(ckpt: Checkpoint, *, dtype: Any = np.float32,
                          source: str = 'checkpoint') -> model_lib.DepthSegNet:
  """The model of `ckpt`'s backbone with its weights (a whole model's checkpoint)."""
  backbone = checkpoint_backbone(ckpt, source)
  # Abstract, then loaded whole: no random initialisation to compute and throw away.
  model = nnx.eval_shape(lambda: model_lib.create(backbone=backbone, dtype=dtype))
  checkpointing.load_into_model(model, ckpt.params, ckpt.batch_stats, source=source)
  return model


# --------------------------------------------------------------------------------------------------
# ours -> torch


def state_dict_from_checkpoint(ckpt: Checkpoint) -> dict[str, Any]:
  """Our Checkpoint -> the reference state dict of its backbone (all keys, 358 for B1, in the
  twin's key order), torch tensors."""
  import torch

  from efficientvit_jax import torch_model

  values: dict[str, Any] = {
      'img_mean': np.asarray(model_lib.IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1),
      'img_std': np.asarray(model_lib.IMAGENET_STD, np.float32).reshape(1, 3, 1, 1),
  }
  backbone = checkpoint_backbone(ckpt)
  param_shapes, stat_shapes = _template(backbone)
  for tree, shapes, item in ((ckpt.params, param_shapes, 'params'), (ckpt.batch_stats, stat_shapes, 'batch_stats')):
    flat = trees.flatten(tree)
    if set(flat) != set(shapes):
      missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
      raise CheckpointError(f'{item}: the checkpoint does not cover the whole model '
                            f'(missing {missing[:3]}, unexpected {extra[:3]}); an encoder-only '
                            'checkpoint cannot become a reference .pt')
    for path, value in flat.items():
      value = np.asarray(value)
      if value.dtype != np.float32:
        raise CheckpointError(f'{item}.{path} has dtype {value.dtype}, expected float32')
      if value.shape != tuple(shapes[path].shape):
        raise CheckpointError(f'{item}.{path} has shape {value.shape}, expected {tuple(shapes[path].shape)}')
      check_finite(value, f'{item}.{path}')
      kind = _kind(path)
      values[torch_key(path)] = value.transpose(_TO_TORCH[kind]) if value.ndim == 4 else value
  counters = ckpt.meta.get('num_batches_tracked') or {}
  for bn in bn_prefixes(ckpt.batch_stats):
    values[f'{bn}.num_batches_tracked'] = np.asarray(int(counters.get(bn, 0)), np.int64)
  order = list(torch_model.DepthSegNet(backbone=backbone).state_dict())
  if set(order) != set(values):
    raise AssertionError(f'mapping table out of date: {sorted(set(order) ^ set(values))[:5]}')
  return {k: torch.from_numpy(np.array(values[k], order='C', copy=True)) for k in order}


def torch_checkpoint(ckpt: Checkpoint, training_state: tuple[dict, dict] | None = None,
                     history: list[Mapping[str, Any]] = ()) -> dict[str, Any]:
  """The reference training-checkpoint dict: `model`, `criterion`, `epoch` (the 0-based index of
  the last finished epoch, -1 for none), `config` (`reference_config`; a converted .pt's own
  `config` as it was, with `BACKBONE` the model's, and the recorded input size where it has none),
  the numeric `meta.metrics` and the same results under the reference's metric names
  (`reference_metrics` over `history`), + `optimizer`, `scheduler` when given."""
  import torch

  for name, value in ckpt.kendall.items():
    check_finite(np.asarray(value), f'kendall.{name}')
  out: dict[str, Any] = {
      'model': state_dict_from_checkpoint(ckpt),
      'criterion': {k: torch.from_numpy(np.asarray(v, np.float32).reshape(1).copy())
                    for k, v in ckpt.kendall.items()},
      'epoch': int(ckpt.meta.get('epoch', 0)) - 1,
  }
  backbone = checkpoint_backbone(ckpt)
  own = ckpt.meta.get('config')
  config = reference_config(ckpt.meta, backbone) or (dict(own) if isinstance(own, Mapping) else {})
  if str(config.get('BACKBONE', '')).split('.')[0] != backbone:  # a timm tag that names it stays
    config['BACKBONE'] = backbone
  size = input_size_of(ckpt)
  if size is not None and 'INPUT_HEIGHT' not in config:
    config['INPUT_HEIGHT'], config['INPUT_WIDTH'] = size
  out['config'] = config
  if training_state is not None:
    out['optimizer'], out['scheduler'] = training_state
  for key, value in (ckpt.meta.get('metrics') or {}).items():
    if isinstance(value, (int, float)) and key not in out:
      out[key] = value
  for key, value in reference_metrics(ckpt.meta, history).items():
    out.setdefault(key, value)
  return out


def save_torch(ckpt: Checkpoint, dst: str | os.PathLike, training_state: tuple[dict, dict] | None = None,
               history: list[Mapping[str, Any]] = (), *, overwrite: bool = False) -> int:
  """Writes `torch_checkpoint(ckpt, training_state, history)` as a reference `.pt` atomically
  (temporary file + rename); an existing `dst` only with `overwrite`. Returns the number of
  state-dict keys written."""
  import torch

  dst = pathlib.Path(dst)
  if dst.exists() and not (overwrite and dst.is_file()):
    raise CheckpointError(f'{dst} already exists; choose a new destination or pass --overwrite'
                          if dst.is_file() else f'{dst} exists and is not a file; choose a new destination')
  payload = torch_checkpoint(ckpt, training_state, history)
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = dst.with_name(f'.{dst.name}.tmp-{os.getpid()}')
  try:
    torch.save(payload, tmp)
    os.replace(tmp, dst)
  finally:
    tmp.unlink(missing_ok=True)
  return len(payload['model'])


# --------------------------------------------------------------------------------------------------
# What the reference's train.py reads from a .pt to continue a run (docs/checkpoints.md#resuming-in-the-reference):
# its Config fields, its metric fields, the AdamW and scheduler state.

KENDALL_NAMES = ('log_sigma_d', 'log_sigma_s')  # its criterion's parameters, in registration order


def planned_epochs(meta: Mapping[str, Any]) -> int | None:
  """The epochs a training run was planned for, ceil(num_steps / steps_per_epoch) (`num_train_steps`
  > 0 overrides `num_epochs`), from its checkpoint's meta; None where the meta does not tell (no
  training configuration, or a run with `num_train_steps` checkpointed before meta kept its plan)."""
  config = meta.get('config') or {}
  steps, spe = meta.get('num_steps'), meta.get('steps_per_epoch')
  if steps and spe:
    return -(-int(steps) // int(spe))
  if 'num_epochs' in config and int(config.get('num_train_steps') or 0) <= 0:
    return int(config['num_epochs'])
  return None


def cosine_epochs(meta: Mapping[str, Any]) -> int | None:
  """The length in epochs of the cosine a training run used: `num_epochs` for the per-epoch cosine
  (`optimizer.lr_per_epoch`), else the planned epochs (the per-step cosine spans the planned steps)."""
  config = meta.get('config') or {}
  if (config.get('optimizer') or {}).get('lr_per_epoch') and 'num_epochs' in config:
    return int(config['num_epochs'])
  return planned_epochs(meta)


def reference_config(meta: Mapping[str, Any], backbone: str) -> dict[str, Any]:
  """The reference's Config fields (its `config.py` names) that describe a run trained here, for a
  .pt's `config`; {} for a checkpoint without a training configuration. `EPOCHS` is the planned
  epochs (absent when unknown), `LR` the decoder rate, `ENCODER_LR_SCALE` encoder / decoder rate."""
  config = meta.get('config') or {}
  opt, loss = config.get('optimizer'), config.get('loss') or {}
  if not isinstance(opt, Mapping):
    return {}
  decoder_lr = float(opt['decoder_lr'])
  height, width = (config.get('data') or {}).get('input_size', (240, 320))
  out = {
      'BACKBONE': backbone, 'NUM_CLASSES': len(CLASS_NAMES), 'INPUT_HEIGHT': int(height),
      'INPUT_WIDTH': int(width), 'BATCH_SIZE': int(config.get('batch_size', 0)), 'LR': decoder_lr,
      'ENCODER_LR_SCALE': float(opt['encoder_lr']) / decoder_lr if decoder_lr else 0.0,
      'KENDALL_LR': float(opt['kendall_lr']), 'USE_KENDALL': bool(loss.get('use_kendall', True)),
      'FREEZE_ENCODER_EPOCHS': int(config.get('freeze_encoder_epochs', 0)),
      'WEIGHT_DECAY': float(opt['weight_decay']), 'GRAD_CLIP_NORM': float(opt['clip_norm']),
      **{f'LAMBDA_{k.upper()}': float(loss[f'lambda_{k}']) for k in ('depth', 'seg', 'edge') if f'lambda_{k}' in loss},
  }
  epochs = planned_epochs(meta)
  if epochs is not None:
    out['EPOCHS'] = epochs
  return out


def metrics_history(src: str | os.PathLike, step: int) -> list[dict[str, Any]]:
  """The rows of a training workdir's `metrics.jsonl` up to `step`, for a workdir or its
  `checkpoints/` or `best/` ([] for another checkpoint folder; unreadable lines are skipped)."""
  root = checkpointing.resolve_root(src)
  path = root.parent / 'metrics.jsonl'
  if root.name not in ('checkpoints', 'best') or not path.is_file():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and isinstance(row.get('step'), int) and row['step'] <= step:
      rows.append(row)
  return rows


def reference_metrics(meta: Mapping[str, Any], history: list[Mapping[str, Any]] = ()) -> dict[str, float]:
  """Our validation results under the reference's metric field names, for the set of `best_metric`
  (`val/<set>/...`, default nyu): `val_loss`, `val_depth_rmse`, `val_seg_miou` (this checkpoint's,
  when it was evaluated) and `best_val_loss`, `best_depth_rmse`, `best_seg_miou` (the best over
  `history`, the workdir's metrics rows up to this step, and this checkpoint's). The loss is the
  training objective's mean over the set's validation batches (docs/checkpoints.md); RMSE and mIoU
  are our protocol's (frame-mean RMSE, split mIoU)."""
  config = meta.get('config') or {}
  parts = str(config.get('best_metric', '')).split('/')
  name = parts[1] if len(parts) == 3 and parts[0] == 'val' else 'nyu'
  loss, rmse, miou = f'val/{name}/loss', f'val/{name}/rmse', f'val/{name}/miou'
  current = meta.get('metrics') or {}
  rows = [*history, current]
  out = {}
  for field, key in (('val_loss', loss), ('val_depth_rmse', rmse), ('val_seg_miou', miou)):
    if isinstance(current.get(key), (int, float)):
      out[field] = float(current[key])
  for field, key, best in (('best_val_loss', loss, min), ('best_depth_rmse', rmse, min),
                           ('best_seg_miou', miou, max)):
    values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if values:
      out[field] = best(values)
  return out


def reference_param_groups(names: list[str]) -> list[tuple[str, list[str]]]:
  """The reference train.py's AdamW groups by parameter name, from the model's parameter names in
  `named_parameters()` order: ('encoder', the encoder's then the neck's), ('decoder', every other
  model parameter, in order), ('kendall', the criterion's log-sigmas)."""
  encoder = [n for n in names if n.startswith('encoder.')] + [n for n in names if n.startswith('neck.')]
  return [('encoder', encoder), ('decoder', [n for n in names if not n.startswith(('encoder.', 'neck.'))]),
          ('kendall', list(KENDALL_NAMES))]


def _dotted(path: tuple[Any, ...]) -> str:
  """`trees.path_name` without the trailing `.value` of an `nnx.State` leaf: 'model.depth_d1.w'."""
  return trees.path_name(path).removesuffix('.value')


def _torch_name_and_layout(dotted: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """A trained pytree path ('model.<ours>' or 'kendall.<name>') and its leaf -> (torch name, torch layout)."""
  top, ours = dotted.split('.', 1)
  if top == 'kendall':
    return ours, value
  return torch_key(ours), value.transpose(_TO_TORCH[_kind(ours)]) if value.ndim == 4 else value


def adam_moments(opt_state: Any) -> dict[str, tuple[int, dict[str, tuple[np.ndarray, np.ndarray]]]]:
  """{group: (Adam step count, {torch parameter name: (first moment, second moment)})} of a
  `make_optimizer` state, float32 in torch layouts."""
  out = {}
  for group in optimizer_lib.GROUPS:
    adam = optimizer_lib.adam_state(opt_state, group)
    moments: dict[str, list[np.ndarray]] = {}
    for tree in (adam.mu, adam.nu):
      for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name, value = _torch_name_and_layout(_dotted(path), np.asarray(value, np.float32))
        moments.setdefault(name, []).append(np.ascontiguousarray(value))
    out[group] = (int(adam.count), {k: (v[0], v[1]) for k, v in moments.items()})
  return out


def torch_training_state(src: str | os.PathLike, ckpt: Checkpoint) -> tuple[dict, dict]:
  """(optimizer, scheduler) state dicts in the reference's format for the training checkpoint
  `ckpt` read from the workdir `src` (its step).

  AdamW over the reference's groups (`reference_param_groups` of the reference network's parameter
  names: the twin registers its modules in the reference's order), each group with its `name`,
  `param_names` and our rates and hyperparameters; per parameter `step` (the group's Adam step
  count), `exp_avg` / `exp_avg_sq` (our moments, matched by name, each checked against its
  parameter's shape). A group that has not stepped yet (a frozen encoder) has no state, as in torch.
  Scheduler: CosineAnnealingLR(T_max = the run's cosine length in epochs, `cosine_epochs`) stepped
  once per finished epoch, so `last_epoch` and each group's `lr` / `initial_lr` are torch's own.
  """
  import warnings

  import torch

  from efficientvit_jax import torch_model

  root = checkpointing.resolve_root(src)
  _, items = checkpointing.restore_items(root, ckpt.step, ('opt_state',))
  if not items.get('opt_state'):
    raise CheckpointError(f'{root}/{ckpt.step}: no optimiser state (only training workdirs\' checkpoints/ '
                          'have one); convert without --with-optimizer')
  config, t_max = _training_meta(root, ckpt)
  backbone, moments = _adam_moments_of(config, ckpt, items['opt_state'], root)

  # The reference network's parameter names and shapes, in its named_parameters() order.
  shapes = {n: tuple(p.shape) for n, p in torch_model.DepthSegNet(backbone=backbone).named_parameters()}
  model_names = list(shapes)
  shapes.update({n: (1,) for n in KENDALL_NAMES})
  opt = config.optimizer
  base_lr = {'encoder': opt.encoder_lr, 'decoder': opt.decoder_lr, 'kendall': opt.kendall_lr}
  groups = [{'params': [(n, torch.nn.Parameter(torch.zeros(shapes[n]))) for n in names],
             'lr': float(base_lr[group]), 'name': group}
            for group, names in reference_param_groups(model_names)]
  optimizer = torch.optim.AdamW(groups, betas=(optimizer_lib.ADAM_B1, optimizer_lib.ADAM_B2),
                                eps=optimizer_lib.ADAM_EPS, weight_decay=float(opt.weight_decay))
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)
  with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": no training here
    warnings.simplefilter('ignore', UserWarning)
    for _ in range(int(ckpt.meta.get('epoch', 0))):
      scheduler.step()
  _set_adam_state(optimizer, moments)
  return optimizer.state_dict(), scheduler.state_dict()


def _training_meta(root: pathlib.Path, ckpt: Checkpoint) -> tuple[Any, int]:
  """(the run's config as a ConfigDict, its cosine length in epochs) from `ckpt`'s meta; a meta not
  written by train.py raises CheckpointError."""
  import ml_collections

  config = ckpt.meta.get('config') or {}
  missing = [k for k in ('optimizer', 'num_epochs', 'freeze_encoder_epochs') if k not in config]
  if missing:
    raise CheckpointError(f'{root}/{ckpt.step}: meta.config lacks {missing[0]}; not written by train.py')
  t_max = cosine_epochs(ckpt.meta)
  if t_max is None:
    raise CheckpointError(f'{root}/{ckpt.step}: meta lacks steps_per_epoch / num_steps, so the length of '
                          'the run\'s cosine in epochs (num_train_steps overrode num_epochs) is unknown; '
                          'checkpoints written by the current train.py keep them')
  return ml_collections.ConfigDict(config), t_max


def _adam_moments_of(config: Any, ckpt: Checkpoint, opt_tree: Any, root: pathlib.Path) -> tuple[str, dict]:
  """(`ckpt`'s backbone, `adam_moments` of its restored optimiser state tree, rebuilt in the structure
  of `config`'s optimiser)."""
  tx = optimizer_lib.make_optimizer(config, steps_per_epoch=1, total_steps=1)  # only the structure
  backbone = checkpoint_backbone(ckpt, f'{root}/{ckpt.step}')
  abstract = nnx.eval_shape(lambda: model_lib.create(backbone=backbone))
  like = jax.eval_shape(tx.init, {'model': nnx.state(abstract, nnx.Param), 'kendall': checkpointing.default_kendall()})
  return backbone, adam_moments(checkpointing.opt_state_from_tree(opt_tree, like, root, ckpt.step))


def _set_adam_state(optimizer: Any, moments: dict) -> None:
  """Puts our Adam counts and moments (`adam_moments`) into a torch AdamW's per-parameter state,
  matched by name and checked against each parameter's shape; a group with count 0 stays empty."""
  import torch

  for group in optimizer.param_groups:
    count, group_moments = moments[group['name']]
    if set(group_moments) != set(group['param_names']):
      raise AssertionError(f'optimiser state mapping out of date in the {group["name"]} group: '
                           f'{sorted(set(group_moments) ^ set(group["param_names"]))[:3]}')
    for name, p in zip(group['param_names'], group['params']):
      exp_avg, exp_avg_sq = group_moments[name]
      if exp_avg.shape != tuple(p.shape) or exp_avg_sq.shape != tuple(p.shape):
        raise AssertionError(f'optimiser state mapping out of date at {name}: moment shape {exp_avg.shape}, '
                             f'parameter shape {tuple(p.shape)}')
      if count:
        optimizer.state[p] = {'step': torch.tensor(float(count), dtype=torch.float32),
                              'exp_avg': torch.from_numpy(exp_avg.copy()),
                              'exp_avg_sq': torch.from_numpy(exp_avg_sq.copy())}


# --------------------------------------------------------------------------------------------------
# ImageNet encoders: timm's EfficientViT B0-B3, torchvision's MobileNetV3-Small


def timm_to_reference_names(sd: Mapping[str, Any]) -> dict[str, Any]:
  """ImageNet classifier weights -> the reference's `encoder.` names, the classifier dropped:
  timm's plain `efficientvit_b*` names (`stem.res0.`, `stages.2.`; `head.*` dropped) or
  torchvision's `mobilenet_v3_small` ones (`features.4.`, whose `features` is the reference's
  encoder; `classifier.*` dropped)."""
  out = {}
  for key, value in sd.items():
    if key.startswith(('head.', 'classifier.')):
      continue
    name = re.sub(r'^features\.', '', key)
    name = re.sub(r'^stem\.(in_conv|res\d+)\.', r'stem_\1.', name)
    name = re.sub(r'^stages\.(\d+)\.', r'stages_\1.', name)
    out['encoder.' + name] = value
  return out


def read_timm_file(path: str | os.PathLike) -> Mapping[str, Any]:
  path = pathlib.Path(path)
  if path.suffix == '.safetensors':
    from safetensors.numpy import load_file

    try:
      return load_file(path)
    except Exception as e:  # safetensors raises its own error types for bad headers
      raise CheckpointError(f'{path}: not a readable safetensors file ({e})') from None
  obj = read_torch_file(path)
  return obj.get('state_dict', obj) if isinstance(obj.get('state_dict'), Mapping) else obj


def encoder_checkpoint_from_timm(path: str | os.PathLike) -> Checkpoint:
  """An encoder-only checkpoint (for `init_from`) from timm's or torchvision's ImageNet weights; the
  backbone is the one whose encoder the weights fit."""
  source = os.fspath(path)
  sd = timm_to_reference_names(read_timm_file(path))
  backbone = backbone_of_state_dict(sd, source, only=('encoder',))
  params, batch_stats, num_batches = params_from_state_dict(sd, source, backbone=backbone, only=('encoder',))
  meta = {'step': 0, 'epoch': 0, 'num_batches_tracked': num_batches, 'source': f'timm:{source}',
          'backbone': backbone, 'config': {}, 'metrics': {}}
  return Checkpoint(params=params, batch_stats=batch_stats, kendall=checkpointing.default_kendall(), meta=meta)


# --------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m efficientvit_jax.convert', description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('torch-to-orbax', help='reference .pt -> checkpoint folder')
  p.add_argument('src')
  p.add_argument('dst')
  p.add_argument('--allow-pickle', action='store_true',
                 help='fully unpickle files holding objects beyond tensors, numbers and numpy scalars '
                      '(trusted files only)')
  p.add_argument('--overwrite', action='store_true', help='replace an existing DST')
  p = sub.add_parser('orbax-to-torch', help='checkpoint folder / workdir -> reference .pt')
  p.add_argument('src')
  p.add_argument('dst')
  p.add_argument('--step', type=int, default=None)
  p.add_argument('--with-optimizer', action='store_true',
                 help="also the AdamW and scheduler state (training workdirs), for the reference's train.py --resume")
  p.add_argument('--overwrite', action='store_true', help='replace an existing DST')
  p = sub.add_parser('timm-encoder', help="timm's EfficientViT or torchvision's MobileNetV3-Small ImageNet weights "
                                          '(.pth/.safetensors) -> encoder-only checkpoint')
  p.add_argument('src')
  p.add_argument('dst')
  p.add_argument('--overwrite', action='store_true', help='replace an existing DST')
  return parser


def _torch_to_orbax(args: argparse.Namespace) -> None:
  ckpt = checkpoint_from_torch_file(args.src, allow_pickle=args.allow_pickle)
  checkpointing.write_folder(args.dst, ckpt, overwrite=args.overwrite)
  dropped = ckpt.meta['dropped']
  print(f'wrote {args.dst}: {ckpt.meta["backbone"]}, {len(trees.flatten(ckpt.params))} parameters, '
        f'{len(trees.flatten(ckpt.batch_stats))} BatchNorm statistics, Kendall log-sigmas, '
        f'epoch {ckpt.meta["epoch"]}'
        + (f'; not converted: {", ".join(dropped)} (training here starts a fresh optimiser)' if dropped else ''))


def _orbax_to_torch(args: argparse.Namespace) -> None:
  """Writes the reference .pt (and with --with-optimizer its AdamW and scheduler state) and says what
  the reference's train.py needs besides it to continue the run."""
  if pathlib.Path(args.src).is_file():
    raise CheckpointError(f'{args.src}: orbax-to-torch reads a checkpoint folder or workdir')
  dst = pathlib.Path(args.dst)
  if dst.exists() and not args.overwrite:  # before loading: fail fast
    raise CheckpointError(f'{dst} already exists; choose a new destination or pass --overwrite')
  ckpt = checkpointing.load(args.src, args.step)
  training_state = torch_training_state(args.src, ckpt) if args.with_optimizer else None
  backbone = checkpoint_backbone(ckpt, args.src)
  keys = save_torch(ckpt, args.dst, training_state, metrics_history(args.src, ckpt.step),
                    overwrite=args.overwrite)
  print(f'wrote {args.dst}: {backbone}, {keys} state-dict keys, criterion, '
        f'epoch {int(ckpt.meta.get("epoch", 0)) - 1} '
        f'(0-based index of the last finished epoch; from step {ckpt.step})'
        + (f'; optimizer (AdamW, 3 groups) and scheduler (T_max {training_state[1]["T_max"]}, '
           f'last_epoch {training_state[1]["last_epoch"]})' if training_state else ''))
  recipe = {k: v for k, v in reference_config(ckpt.meta, backbone).items()
            if k in ('EPOCHS', 'FREEZE_ENCODER_EPOCHS', 'USE_KENDALL', 'BACKBONE', 'GRAD_CLIP_NORM')}
  if training_state and recipe:
    print("the reference's train.py reads these from its config.py, not from the .pt: set "
          + ', '.join(f'{k} = {v!r}' for k, v in recipe.items()) + ' to continue this recipe')
  spe = ckpt.meta.get('steps_per_epoch')
  if training_state and spe and ckpt.step % int(spe):
    print(f'note: step {ckpt.step} is inside epoch {ckpt.step // int(spe)} ({spe} steps per epoch); the '
          'reference resumes at the start of that epoch')


def _timm_encoder(args: argparse.Namespace) -> None:
  ckpt = encoder_checkpoint_from_timm(args.src)
  checkpointing.write_folder(args.dst, ckpt, overwrite=args.overwrite)
  print(f'wrote {args.dst}: {ckpt.meta["backbone"]} encoder only ({len(trees.flatten(ckpt.params))} '
        f'parameters); use it as init_from with model.backbone={ckpt.meta["backbone"]}')


_COMMANDS = {'torch-to-orbax': _torch_to_orbax, 'orbax-to-torch': _orbax_to_torch, 'timm-encoder': _timm_encoder}


@runtime.reporting_missing_extras  # torch: the `torch` extra
def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:  # before any conversion: a destination in a read-only place fails now
    checkpointing.check_writable(pathlib.Path(args.dst).absolute().parent)
  except OSError as e:
    print(f'error: cannot write {args.dst}: {e}', file=sys.stderr)
    return 2
  try:
    _COMMANDS[args.command](args)
  except CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())

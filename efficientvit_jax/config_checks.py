"""Start-up checks of a training configuration and of its command-line overrides.

`check_config(config)` is the one validation of a training config, called by
`train_loop.train_and_evaluate` itself (and early by train.py): ValueError naming the key on values
that cannot work. `check_ranges(config)` range-checks every numeric key (steps, epochs, rates,
sizes, windows, shares) and raises ValueError naming the key. `config_file` turns `--config`'s value into a file:
a preset's name (`quickstart`: `efficientvit_jax/configs/quickstart.py`, from any folder) or a
path. `parse_flags` is an `absl.app.run` flags parser that does that and turns a bad flag, a
`--config` that names no preset or file (or a folder) or an unknown `--config.KEY` (with the
closest key names) into one line on stderr and exit code 2, instead of ml_collections'
traceback. A `--config.KEY=VALUE` given twice takes its last value, as any absl flag does (for a
tuple, ml_collections alone would join the two).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import pathlib
import sys
from typing import Any

from efficientvit_jax import trees

# key -> (minimum, maximum), both inclusive; None = unbounded. Keys not listed that hold numbers
# must still be finite. `data.weights.*` are shares (>= 0, some > 0).
RANGES: dict[str, tuple[float | None, float | None]] = {
    'batch_size': (1, None),
    'seed': (0, 2**31 - 1),
    'num_epochs': (0, None),
    'num_train_steps': (0, None),
    'log_every_steps': (1, None),
    'eval_every_steps': (0, None),
    'checkpoint_every_steps': (1, None),
    'keep_checkpoints': (1, None),
    'freeze_encoder_epochs': (0, None),
    'data.input_size': (32, 4096),
    'data.num_threads': (1, 1024),
    'data.num_workers': (0, 1024),
    'data.prefetch_buffer_size': (1, None),
    'optimizer.encoder_lr': (0, None),
    'optimizer.decoder_lr': (0, None),
    'optimizer.kendall_lr': (0, None),
    'optimizer.weight_decay': (0, None),
    'optimizer.clip_norm': (0, None),
    'optimizer.warmup_steps': (0, None),
    'loss.lambda_depth': (0, None),
    'loss.lambda_seg': (0, None),
    'loss.lambda_edge': (0, None),
}


def _numbers(value: Any) -> list[Any]:
  values = list(value) if isinstance(value, (tuple, list)) else [value]
  return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def check_ranges(config: Any) -> None:
  """Raises ValueError naming the first numeric key outside its range (or not finite)."""
  leaves = trees.flatten(config)
  for key, value in leaves.items():
    for v in _numbers(value):
      if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f'{key} must be a finite number, got {value!r}')
      lo, hi = RANGES.get(key, (0, None) if key.startswith('data.weights.') else (None, None))
      if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f'>= {lo}' if hi is None else f'in {lo}..{hi}'
        raise ValueError(f'{key} must be {bounds}, got {value!r}')
  if 'data.input_size' in leaves and len(tuple(leaves['data.input_size'])) != 2:
    raise ValueError(f'data.input_size must be (height, width), got {leaves["data.input_size"]!r}')
  shares = {k: v for k, v in leaves.items() if k.startswith('data.weights.')}
  if shares and not any(v > 0 for v in shares.values()):
    raise ValueError(f'data.weights: at least one share must be > 0, got {shares}')


COMPUTE_DTYPES = ('float32', 'bfloat16')


def check_config(config: Any) -> None:
  """ValueError naming the config key on values that cannot work (before any device or data work)."""
  from efficientvit_jax import checkpointing
  from efficientvit_jax import model as model_lib

  check_ranges(config)
  if config.best_metric:
    checkpointing.lower_is_better(config.best_metric)
  if config.requires_init_from and not config.init_from:
    raise ValueError('this preset starts from a previous stage: set --config.init_from to a checkpoint '
                     'folder, training workdir or reference .pt (e.g. the V5 weights)')
  if config.model.backbone not in model_lib.BACKBONES:
    raise ValueError(f'model.backbone must be one of {", ".join(model_lib.BACKBONES)}, got {config.model.backbone!r}')
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'compute_dtype must be {" or ".join(COMPUTE_DTYPES)}, got {config.compute_dtype!r}')
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ValueError('set num_epochs or num_train_steps to a positive value')


# --------------------------------------------------------------------------------------------------
# Presets

PRESET_DIR = pathlib.Path(__file__).resolve().parent / 'configs'


def preset_names() -> list[str]:
  """The presets shipped in `efficientvit_jax/configs/` (`default`, `quickstart`, `v8`, ...)."""
  return sorted(p.stem for p in PRESET_DIR.glob('*.py') if not p.name.startswith('_'))


def config_file(path: str) -> str:
  """The file `--config PATH` means: PATH itself when it is a file; else the packaged preset PATH
  names, as a name (`quickstart`) or as its former checkout path (`configs/quickstart.py`, any
  folder before it); else PATH unchanged (`config_file_problem` reports it)."""
  if os.path.isfile(path):
    return path
  p = pathlib.PurePath(path)
  old_path = p.suffix == '.py' and p.parent.name == 'configs'
  if (str(p) == p.name and not p.suffix or old_path) and p.stem in preset_names():
    return str(PRESET_DIR / f'{p.stem}.py')
  return path


# --------------------------------------------------------------------------------------------------
# Command line


def _config_arg(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def resolve_config_arg(argv: list[str]) -> list[str]:
  """`argv` with `--config`'s value (`NAME` or `PATH`, optionally `:PARAM`) replaced by the file it
  means (`config_file`)."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      path, colon, param = arg.split('=', 1)[1].partition(':')
      out[i] = f'--config={config_file(path)}{colon}{param}'
    elif arg == '--config' and i + 1 < len(out):
      path, colon, param = out[i + 1].partition(':')
      out[i + 1] = f'{config_file(path)}{colon}{param}'
  return out


def _load(spec: str) -> Any:
  path, _, param = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_checked_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(param) if param else module.get_config()


def config_file_problem(argv: list[str]) -> str | None:
  """The message for a `--config` that names no preset and no file, or a folder; or None."""
  spec = _config_arg(argv)
  if spec is None:
    return None
  path = spec.partition(':')[0]
  if os.path.isfile(config_file(path)):
    return None
  if os.path.isdir(path):
    return f'--config {path}: a folder, not a config file (give a preset name, e.g. default, or a .py file)'
  if os.sep not in path and '/' not in path and not path.endswith('.py'):
    return f'--config {path}: no such preset or file (presets: {", ".join(preset_names())})'
  return f'--config {path}: no such file'


def last_overrides(argv: list[str]) -> list[str]:
  """`argv` with each `--config.KEY=VALUE` override kept only where it is given last (absl's rule
  for a repeated flag; ml_collections would join two tuple values instead of replacing the first).
  ValueError for a key given twice in the `--config.KEY VALUE` form, whose value cannot be told
  apart from a bool flag's next argument."""
  last = {}
  for i, arg in enumerate(argv):
    if arg.startswith('--config.'):
      key, eq, _ = arg[len('--config.'):].partition('=')
      if key in last and not (eq and '=' in argv[last[key]]):
        raise ValueError(f'--config.{key} is given more than once; give each key once (or as --config.{key}=VALUE)')
      last[key] = i
  keep = set(last.values())
  return [arg for i, arg in enumerate(argv) if not arg.startswith('--config.') or i in keep]


def unknown_override(argv: list[str]) -> str | None:
  """The message for the first `--config.KEY` override naming no key of the config, or None."""
  spec = _config_arg(argv)
  if spec is None:
    return None
  path, colon, param = spec.partition(':')
  try:
    known = set(trees.flatten(_load(f'{config_file(path)}{colon}{param}')))
  except Exception:
    return None  # absl reports an unloadable config file itself
  groups = {k.rsplit('.', i)[0] for k in known for i in range(1, k.count('.') + 1)}
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.'):].split('=', 1)[0]
    if key in known or any(k.startswith(key + '.') for k in known):
      continue
    close = difflib.get_close_matches(key, sorted(known | groups), n=3, cutoff=0.6)
    hint = f'; did you mean {" or ".join(close)}?' if close else '; the preset default has every key (docs/config.md)'
    return f'--config.{key}: {path} has no key {key}{hint}'
  return None


def help_of(module_name: str, doc: str | None) -> None:
  """absl's --help shows the docstring and flags of `__main__`; under a console script or the
  checkout's `train.py` that is a launcher: show those of the command's module instead."""
  if module_name == '__main__':
    return
  from absl import flags

  sys.modules['__main__'].__doc__ = doc
  for flag in flags.FLAGS.get_key_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def parse_flags(argv: list[str]) -> list[str]:
  """`absl.app.run(flags_parser=...)`: bad flags -> one line on stderr, exit code 2."""
  from absl import flags

  message = config_file_problem(argv) or unknown_override(argv)
  if message is None:
    try:
      argv = last_overrides(resolve_config_arg(argv))
    except ValueError as e:
      message = str(e)
  if message is None:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      message = str(e).strip().splitlines()[0]
    except Exception as e:  # ml_collections: AttributeError, KeyError, TypeError
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else ''
      message = unknown_override(argv) or f'{type(e).__name__}: {first_line}'
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)

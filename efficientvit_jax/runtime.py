"""Process set-up shared by the commands: JAX's persistent compilation cache, and the one-line
report of a missing optional extra.

Compiling the network's train step takes tens of seconds (minutes on a busy CPU); with the cache
on, a resumed run, an evaluation or a prediction on a warm cache loads the compiled programs
instead. train.py takes the folder from `compilation_cache_dir`, eval.py and predict from
`--compilation-cache`; '' means `$JAX_COMPILATION_CACHE_DIR` or else
`~/.cache/efficientvit_jax/xla` (`$XDG_CACHE_HOME` respected), 'none' turns it off.
"""

import functools
import importlib.util
import os
import sys

import jax


def default_cache_dir() -> str:
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'efficientvit_jax', 'xla')


def enable_compilation_cache(path: str = '') -> str | None:
  """Turns on the persistent compilation cache in `path` (see module docstring); returns the
  folder used, or None when turned off."""
  if path.strip().lower() == 'none':
    jax.config.update('jax_enable_compilation_cache', False)
    return None
  path = os.path.abspath(os.path.expanduser(
      path or os.environ.get('JAX_COMPILATION_CACHE_DIR') or default_cache_dir()))
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', path)
  # Small programs (the evaluation step at a small size) are worth caching too; JAX's own variable
  # wins (the test suite caches every program, the model's initialisers included).
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ.get('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', 0.5)))
  return path


# The optional extras of pyproject.toml, by the top-level module a command imports from them.
EXTRA_OF_MODULE = {'torch': 'torch', 'onnx': 'export', 'onnxscript': 'export', 'onnxconverter_common': 'export',
                   'onnxruntime': 'export', 'tensorflow_datasets': 'tfds', 'tensorboard': 'viewer'}


def missing_extra(error: BaseException) -> str | None:
  """The message naming the extra to install when `error` is the failed import of a module an extra
  provides, else None."""
  if not isinstance(error, ImportError):
    return None
  module = (error.name or '').split('.')[0]
  extra = EXTRA_OF_MODULE.get(module)
  if extra is None:
    return None
  return (f"{module} is not installed: it comes with the optional '{extra}' extra: "
          f"pip install 'efficientvit-jax[{extra}]'")


def require_modules(*modules: str) -> None:
  """ModuleNotFoundError (which `missing_extra` names) for the first of `modules` that is not
  installed: a command checks before its work, not at the import deep inside it."""
  for module in modules:
    if importlib.util.find_spec(module) is None:
      raise ModuleNotFoundError(f'No module named {module!r}', name=module)


def reporting_missing_extras(main):
  """Wraps a command's `main(argv) -> int`: a missing extra's module is its one `error:` line on
  stderr and exit code 2 instead of a traceback."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except ImportError as e:
      message = missing_extra(e)
      if message is None:
        raise
      print(f'error: {message}', file=sys.stderr)
      return 2

  return wrapped

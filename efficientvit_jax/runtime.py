"""Process set-up shared by the commands: JAX's persistent compilation cache.

Compiling the network's train step takes tens of seconds (minutes on a busy CPU); with the cache
on, a resumed run, an evaluation or a prediction on a warm cache loads the compiled programs
instead. train.py takes the folder from `compilation_cache_dir`, eval.py and predict from
`--compilation-cache`; '' means `$JAX_COMPILATION_CACHE_DIR` or else
`~/.cache/efficientvit_jax/xla` (`$XDG_CACHE_HOME` respected), 'none' turns it off.
"""

import os

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
  # Small programs (the evaluation step at a small size) are worth caching too.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  return path

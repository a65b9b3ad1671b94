"""Shared pytest setup: a persistent JAX compilation cache and the opt-in `slow` marker."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / 'tests' / 'data'

# Set before JAX initialises its backend in any test module.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def pytest_configure(config):
  import jax

  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_addoption(parser):
  parser.addoption('--run-slow', action='store_true', default=False, help='also run tests marked slow')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--run-slow'):
    return
  skip = pytest.mark.skip(reason='slow: run with --run-slow (make test-slow)')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)

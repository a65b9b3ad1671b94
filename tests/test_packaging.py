"""Packaging: the console scripts resolve, constraints.txt pins versions inside pyproject's ranges,
and the default (files) path never imports tensorflow-datasets (the `tfds` extra)."""

import ast
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

from conftest import ROOT


def _pyproject():
  return tomllib.loads((ROOT / 'pyproject.toml').read_text())


def test_console_scripts_resolve_to_functions():
  scripts = _pyproject()['project']['scripts']
  assert {'evit-train', 'evit-eval', 'evit-predict', 'evit-convert', 'evit-synthetic'} <= set(scripts)
  for name, target in scripts.items():  # read, not imported: train and the study both define absl flags
    module, function = target.split(':')
    tree = ast.parse(pathlib.Path(importlib.util.find_spec(module).origin).read_text())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name


def test_constraints_pin_every_dependency_within_its_range():
  project = _pyproject()['project']
  pins = {}
  for line in (ROOT / 'constraints.txt').read_text().splitlines():
    if line and not line.startswith('#'):
      name, version = line.split('==')
      pins[re.sub(r'[-_.]+', '-', name).lower()] = version
  extras = [r for group in ('torch', 'tfds', 'dev') for r in project['optional-dependencies'][group]]
  for spec in project['dependencies'] + extras:
    req = Requirement(spec)
    name = re.sub(r'[-_.]+', '-', req.name).lower()
    assert name in pins, f'{name} is not pinned in constraints.txt'
    assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(req.specifier))


def test_default_path_does_not_import_tensorflow_datasets():
  check = ('bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow_datasets", "tensorflow"))\n'
           'assert not bad, bad\n')
  for imports in ('import sys, train, eval\n'
                  'from efficientvit_jax import console, convert, evaluation, predict, summaries\n'
                  'from data_pipelines import datasets, lilocbench, readers, synthetic\n',
                  'import sys\nfrom studies import domain_mixing\n'):
    proc = subprocess.run([sys.executable, '-c', imports + check], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == 0, proc.stderr[-2000:]

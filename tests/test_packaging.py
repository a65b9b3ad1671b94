"""Packaging and running from anywhere: the console scripts resolve and each has its row in
docs/commands.md; the wheel holds only the two packages and its commands run from another folder;
presets by name, by their former path or a user's own file; a missing extra is one line naming it;
constraints.txt pins versions inside pyproject's ranges; the default (files) path never imports
tensorflow-datasets (the `tfds` extra)."""

import ast
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from conftest import DATA
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from efficientvit_jax import config_checks
from efficientvit_jax import runtime


def _pyproject():
  return tomllib.loads((ROOT / 'pyproject.toml').read_text())


def test_console_scripts_resolve_to_functions():
  scripts = _pyproject()['project']['scripts']
  assert {'evit-train', 'evit-eval', 'evit-predict', 'evit-export', 'evit-convert', 'evit-synthetic',
          'evit-decoded', 'evit-preview', 'evit-lilocbench', 'evit-build-tfds'} <= set(scripts)
  for name, target in scripts.items():  # read, not imported: train and preview both define absl flags
    module, function = target.split(':')
    assert module.split('.')[0] in ('efficientvit_jax', 'data_pipelines'), name  # what the wheel holds
    tree = ast.parse(pathlib.Path(importlib.util.find_spec(module).origin).read_text())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name
  # (test_wheel_holds_the_packages_and_runs_from_another_folder imports each from the wheel.)


def _command_rows() -> list[str]:
  """The first cells of docs/commands.md's table of all commands."""
  text = (ROOT / 'docs' / 'commands.md').read_text().split('## All commands', 1)[1]
  return [line.split('|')[1].strip() for line in text.splitlines()
          if line.startswith('|') and not line.startswith('|---') and not line.startswith('| command')]


def test_every_command_has_its_script_and_its_row():
  scripts = set(_pyproject()['project']['scripts'])
  rows = _command_rows()
  named = [set(re.findall(r'`(evit-[a-z-]*[a-z])\b', row)) for row in rows]
  for script in scripts:
    assert sum(script in n for n in named) == 1, f'{script}: not in exactly one row of docs/commands.md'
  for row, n in zip(rows, named):
    assert n <= scripts, f'{row}: names a script pyproject.toml lacks'
    package_command = re.search(r'python (train|eval)\.py|-m (efficientvit_jax|data_pipelines)\.', row)
    assert not package_command or len(n) == 1, f'{row}: a command of the packages without its script'
  assert any('studies.domain_mixing' in row and 'checkout' in row for row in rows)  # not installed, said so


def test_presets_by_name_by_former_path_and_own_files(tmp_path, monkeypatch):
  names = config_checks.preset_names()
  assert {'default', 'quickstart', 'v5', 'v5_b2', 'v7', 'v8', 'v9'} <= set(names)
  packaged = ROOT / 'efficientvit_jax' / 'configs' / 'quickstart.py'
  monkeypatch.chdir(tmp_path)  # any folder
  assert pathlib.Path(config_checks.config_file('quickstart')) == packaged
  assert pathlib.Path(config_checks.config_file('configs/quickstart.py')) == packaged  # the former checkout path
  assert pathlib.Path(config_checks.config_file('/elsewhere/configs/v8.py')).name == 'v8.py'
  own = tmp_path / 'configs' / 'quickstart.py'  # a file of one's own wins, under any name
  own.parent.mkdir()
  own.write_text('from efficientvit_jax.configs import quickstart\n\ndef get_config():\n'
                 '  c = quickstart.get_config()\n  c.seed = 7\n  return c\n')
  assert config_checks.config_file('configs/quickstart.py') == 'configs/quickstart.py'
  assert config_checks.resolve_config_arg(['--config=quickstart:x', '--config', 'v8', '--config.seed=1']) == [
      f'--config={packaged}:x', '--config', str(packaged.with_name('v8.py')), '--config.seed=1']
  # What absl's config flag then loads: the preset module's own get_config.
  from efficientvit_jax.configs import quickstart

  loaded = config_checks._load(config_checks.config_file('quickstart'))
  assert loaded.to_dict() == quickstart.get_config().to_dict()
  assert config_checks._load('configs/quickstart.py').seed == 7
  problems = {spec: config_checks.config_file_problem(['--config', spec])
              for spec in ('quickstart', 'v8', 'configs/v9.py', 'configs/quickstart.py', 'nope', 'configs/nope.py')}
  assert problems == {'quickstart': None, 'v8': None, 'configs/v9.py': None, 'configs/quickstart.py': None,
                      'nope': f'--config nope: no such preset or file (presets: {", ".join(names)})',
                      'configs/nope.py': '--config configs/nope.py: no such file'}


def test_missing_extra_names_the_extra_of_pyproject():
  extras = _pyproject()['project']['optional-dependencies']
  for module, extra in runtime.EXTRA_OF_MODULE.items():  # each module comes with the extra it names
    dists = {canonicalize_name(Requirement(r).name) for r in extras[extra]}
    assert canonicalize_name(module) in dists, (module, extra)
    message = runtime.missing_extra(ModuleNotFoundError(f'No module named {module!r}', name=module))
    assert f"pip install 'efficientvit-jax[{extra}]'" in message and module in message
  assert runtime.missing_extra(ModuleNotFoundError('x', name='torch.nn')).endswith("'efficientvit-jax[torch]'")
  assert runtime.missing_extra(ModuleNotFoundError('x', name='jax')) is None  # not an extra's: a traceback
  assert runtime.missing_extra(ImportError('x')) is None


def _hiding(tmp_path: pathlib.Path, *modules: str) -> dict[str, str]:
  """The environment of a subprocess in which `modules` cannot be imported (a sitecustomize sets
  sys.modules[name] = None), with the checkout's code."""
  site = tmp_path / 'hide'
  site.mkdir(exist_ok=True)
  (site / 'sitecustomize.py').write_text(f'import sys\nfor m in {list(modules)!r}:\n  sys.modules[m] = None\n')
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=f'{site}{os.pathsep}{ROOT}')


@pytest.mark.e2e
@pytest.mark.parametrize('script, argv, hidden, extra', [
    ('evit-convert', ['torch-to-orbax', str(DATA / 'student_random.pt'), 'out'], 'torch', 'torch'),
    ('evit-export', ['--checkpoint', 'ckpt', '--format', 'onnx', '--out', 'm.onnx'], 'onnx', 'export'),
    ('evit-export', ['--checkpoint', 'ckpt', '--format', 'onnx', '--out', 'm.onnx'], 'torch', 'torch'),
    ('evit-build-tfds', ['--root', 'data'], 'tensorflow_datasets', 'tfds'),
    ('-m data_pipelines.tfds_builders', ['--root', 'data'], 'tensorflow_datasets', 'tfds'),
    ('evit-predict', ['--checkpoint', str(DATA / 'student_random.pt'), '--out', 'pred',
                      '{data}/nyu/nyu_cache/rgb/00000.png'], 'torch',
     'torch'),
    ('evit-eval', ['--checkpoint', str(DATA / 'student_random.pt'), '--dataset', 'nyu', '--data', 'nyu',
                   '--out', 'out.json'], 'torch', 'torch'),
    ('evit-train', ['--config', 'quickstart', '--workdir', 'w', '--config.data.root={data}', '--config.batch_size=2',
                    '--config.data.input_size=(32,32)', f'--config.init_from={DATA / "student_random.pt"}'],
     'torch', 'torch'),
    ('evit-train', ['--config', 'quickstart', '--workdir', 'w', '--config.data.root={data}', '--dry_run',
                    '--config.data.format=tfds'], 'tensorflow_datasets', 'tfds'),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, synthetic_tiny, script, argv, hidden, extra):
  argv = [a.replace('{data}', str(synthetic_tiny)) for a in argv]
  if script.startswith('-m'):
    command = [sys.executable, *script.split(), *argv]
  else:  # the console script's own target, as its launcher calls it
    module, function = _pyproject()['project']['scripts'][script].split(':')
    command = [sys.executable, '-c', f'import sys\nfrom {module} import {function}\nsys.exit({function}())',
               *argv]
  proc = subprocess.run(command, cwd=tmp_path, env=_hiding(tmp_path, hidden), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if 'error' in line.lower()]
  assert len(errors) == 1 and errors[0].startswith('error: '), proc.stderr[-3000:]
  assert errors[0].endswith(f"{hidden} is not installed: it comes with the optional '{extra}' extra: "
                            f"pip install 'efficientvit-jax[{extra}]'"), proc.stderr[-3000:]
  assert not list(tmp_path.glob('out*')) and not (tmp_path / 'm.onnx').exists()


@pytest.fixture(scope='module')
def installed_wheel(tmp_path_factory):
  """The wheel built from a copy of the checkout (offline, no build isolation), and that wheel
  installed into its own folder (not the environment's site-packages)."""
  tmp = tmp_path_factory.mktemp('wheel')
  src = tmp / 'src'
  skip = shutil.ignore_patterns('__pycache__', '*.egg-info', 'build')
  src.mkdir()
  for name in ('pyproject.toml', 'README.md', 'train.py', 'eval.py'):
    shutil.copy(ROOT / name, src / name)
  for name in ('efficientvit_jax', 'data_pipelines', 'configs', 'studies', 'benchmarks'):  # all, in reach of setuptools
    shutil.copytree(ROOT / name, src / name, ignore=skip)
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '--no-input']
  proc = subprocess.run([*pip, 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-w', str(tmp / 'dist'),
                         str(src)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  wheel, = (tmp / 'dist').glob('efficientvit_jax-*.whl')
  target = tmp / 'site'
  proc = subprocess.run([*pip, 'install', '--no-deps', '--no-index', '--no-compile', '--target', str(target),
                         str(wheel)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return wheel, target


@pytest.mark.e2e
def test_wheel_holds_the_packages_and_runs_from_another_folder(installed_wheel, tmp_path):
  wheel, target = installed_wheel
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split('/')[0] for n in names}
  assert tops == {'efficientvit_jax', 'data_pipelines', next(t for t in tops if t.endswith('.dist-info'))}, tops
  assert 'efficientvit_jax/configs/quickstart.py' in names and 'efficientvit_jax/train.py' in names
  assert not [n for n in names if n.split('/')[0] in ('train.py', 'eval.py', 'configs', 'studies')]

  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(target))  # the wheel's code only
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  # Every console script of the wheel's metadata loads from the wheel (preview apart: it and train
  # both define absl's --config).
  load = ('import importlib.metadata, json, sys\n'
          'eps = [ep for ep in importlib.metadata.entry_points(group="console_scripts")\n'
          '       if ep.dist.name == "efficientvit-jax" and str(ep.dist.locate_file("")) == sys.argv[1]]\n'
          'out = {}\n'
          'for ep in eps:\n'
          '  if (ep.name == "evit-preview") == (sys.argv[2] == "preview"):\n'
          '    fn = ep.load()\n'
          '    assert callable(fn), ep.name\n'
          '    out[ep.name] = sys.modules[fn.__module__].__file__\n'
          'print(json.dumps(out))\n')
  loaded = {}
  for group in ('preview', 'others'):
    proc = subprocess.run([sys.executable, '-c', load, str(target), group], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded.update(json.loads(proc.stdout.strip().splitlines()[-1]))
  assert set(loaded) == set(_pyproject()['project']['scripts'])
  assert all(pathlib.Path(f).is_relative_to(target) for f in loaded.values()), loaded

  # evit-train from another folder: the preset by name and by its former path, flags and config parsed
  # and checked (a config that cannot train: no compilation, nothing written).
  for spec in ('quickstart', 'configs/quickstart.py'):
    proc = subprocess.run([str(target / 'bin' / 'evit-train'), '--config', spec, '--workdir', 'w',
                           '--config.num_train_steps=0', '--config.num_epochs=0'], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == 'error: set num_epochs or num_train_steps to a positive value'
  proc = subprocess.run([str(target / 'bin' / 'evit-train'), '--config', 'nope', '--workdir', 'w'], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().startswith('error: --config nope: no such preset'), proc.stderr
  proc = subprocess.run([str(target / 'bin' / 'evit-train'), '--help'], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)  # the command's own docstring and flags, not the launcher's
  assert 'evit-train --config v8' in proc.stdout and '--workdir' in proc.stdout, proc.stdout  # (absl: exit 1)
  # evit-eval from another folder, to the end: the table of a result.
  result = {'dataset': 'nyu', 'split': 'val', 'protocol': 'ours', 'num_frames': 3,
            'depth': {'frame_mean': {'rmse': 0.5, 'mae': 0.4, 'abs_rel': 0.1, 'delta1': 0.9}}}
  (tmp_path / 'r.json').write_text(json.dumps(result))
  proc = subprocess.run([str(target / 'bin' / 'evit-eval'), '--compare', 'r.json'], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '| r | nyu | val |' in proc.stdout and '| 0.500 |' in proc.stdout


def test_constraints_pin_every_dependency_within_its_range():
  project = _pyproject()['project']
  pins = {}
  for line in (ROOT / 'constraints.txt').read_text().splitlines():
    if line and not line.startswith('#'):
      name, version = line.split('==')
      pins[re.sub(r'[-_.]+', '-', name).lower()] = version
  extras = [r for group in ('torch', 'tfds', 'dev', 'viewer') for r in project['optional-dependencies'][group]]
  for spec in project['dependencies'] + extras:
    req = Requirement(spec)
    name = re.sub(r'[-_.]+', '-', req.name).lower()
    assert name in pins, f'{name} is not pinned in constraints.txt'
    assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(req.specifier))


def test_default_path_does_not_import_tensorflow_datasets():
  check = ('bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow_datasets", "tensorflow"))\n'
           'assert not bad, bad\n')
  for imports in ('import sys\nfrom efficientvit_jax import train, eval\n'
                  'from efficientvit_jax import console, convert, evaluation, predict, summaries\n'
                  'from data_pipelines import datasets, lilocbench, readers, synthetic\n',
                  'import sys\nfrom studies import domain_mixing\n'):
    proc = subprocess.run([sys.executable, '-c', imports + check], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert proc.returncode == 0, proc.stderr[-2000:]

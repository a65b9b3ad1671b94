"""Every command of the README's "Scaling out" section still parses, so a renamed flag breaks a test.

`python train.py ...`: parsed by train.py's own absl flags and locked config (a renamed flag or
config key fails), then `check_config`; no training, no data. `python -m MODULE ...`: run for real
on the tiny synthetic data / the reference fixture, with the document's paths swapped for test
paths by the module's entry in `ADAPTERS` (a module without one fails the test: add it).
"""

import json
import re
import shlex
import subprocess
import sys

import pytest
from conftest import DATA
from conftest import ROOT

SECTION = '## Scaling out: Cloud TPU v4 and multi-GPU'
# Values for the shell variables the commands use.
VARIABLES = {'BUCKET': 'gs://test-bucket', 'ZONE': 'us-central2-b'}
COMMAND = re.compile(r'\bpython3?\s+(train\.py|-m\s+[\w.]+)([^\n]*?)(?="|&&|;|\||\n|$)')


def _section() -> str:
  text = (ROOT / 'README.md').read_text()
  assert SECTION in text, f'README.md has no section {SECTION!r}'
  body = text.split(SECTION, 1)[1]
  return re.split(r'\n## ', body, maxsplit=1)[0]


def _commands() -> list[tuple[str, list[str]]]:
  """(program, argv) of every python command in the section's code blocks."""
  blocks = re.findall(r'```(?:bash|sh)?\n(.*?)```', _section(), re.S)
  found = []
  for block in blocks:
    block = re.sub(r'(?m)^\s*#.*$', '', block).replace('\\\n', ' ')  # comments, line continuations
    for program, rest in COMMAND.findall(block):
      rest = re.sub(r'\$(\w+)|\$\{(\w+)\}', lambda m: VARIABLES[m.group(1) or m.group(2)], rest)
      found.append((re.sub(r'\s+', ' ', program), shlex.split(rest)))
  return found


def test_section_has_the_launch_commands():
  commands = _commands()
  trains = [argv for program, argv in commands if program == 'train.py']
  assert len(trains) >= 5  # v4-8, v4-32, one GPU host, SLURM, explicit coordinator
  assert all('v8' in argv for argv in trains)  # the preset by name
  assert any(a.startswith('--coordinator_address') for argv in trains for a in argv)
  section = _section()
  for needed in ('gcloud compute tpus tpu-vm create', '--worker=all', 'v4-32', 'srun', 'data.format=tfds',
                 'data.tfds_dir=/tmp/evit_tfds', 'cp -r $BUCKET/evit_tfds'):
    assert needed in section, needed


_PARSE = r'''
import json, sys
from absl import flags
argv = json.loads(sys.stdin.read())
from efficientvit_jax import config_checks
sys.argv = config_checks.resolve_config_arg(['train.py', *argv])  # config_flags reads its overrides from sys.argv
from efficientvit_jax import train
try:
  flags.FLAGS(sys.argv)
  config_checks.check_config(train._CONFIG.value)
  print(json.dumps(None))
except (flags.Error, ValueError, KeyError, AttributeError) as e:
  print(json.dumps(f'{type(e).__name__}: {e}'))
'''


def _parse_error(argv: list[str]) -> str | None:
  """None when train.py's flags and config accept `argv`, else the error (flags only, no JAX)."""
  proc = subprocess.run([sys.executable, '-c', _PARSE], cwd=ROOT, input=json.dumps(argv), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_train_commands_parse():
  argvs = [argv for program, argv in _commands() if program == 'train.py']
  bad = [f'python train.py {shlex.join(argv)}\n  -> {err}' for argv in argvs if (err := _parse_error(argv))]
  assert not bad, '\n'.join(bad)


def _tfds_builders(argv, paths):
  return _replace_values(argv, {'--root': paths['data'], '--out': paths['tmp'] / 'tfds'})


def _decoded(argv, paths):
  return _replace_values(argv, {'--root': paths['data'], '--out': paths['tmp'] / 'decoded'})


def _convert(argv, paths):
  assert argv[0] == 'torch-to-orbax', argv
  return [argv[0], str(DATA / 'student_random.pt'), str(paths['tmp'] / 'ckpt'), *argv[3:]]


def _replace_values(argv, values):
  out = []
  for arg in argv:
    name = arg.split('=', 1)[0]
    if name in values and '=' in arg:
      arg = f'{name}={values[name]}'
    elif out and out[-1] in values:
      arg = str(values[out[-1]])
    out.append(arg)
  return out


ADAPTERS = {'data_pipelines.tfds_builders': _tfds_builders, 'data_pipelines.decoded': _decoded,
            'efficientvit_jax.convert': _convert}


@pytest.mark.e2e
def test_module_commands_run(tmp_path, synthetic_tiny):
  modules = [(program.split()[-1], argv) for program, argv in _commands() if program.startswith('-m')]
  assert modules
  for module, argv in modules:
    assert module in ADAPTERS, f'python -m {module}: add an adapter to tests/test_launch_docs.py'
    run_argv = ADAPTERS[module](argv, {'data': synthetic_tiny, 'tmp': tmp_path / module})
    proc = subprocess.run([sys.executable, '-m', module, *map(str, run_argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f'python -m {module} {shlex.join(argv)}\n{proc.stderr[-3000:]}'


@pytest.mark.parametrize('broken', ['--config.data.tfds_directory=x', '--coordinator=1.2.3.4:1', '--dryrun'])
def test_a_renamed_flag_is_caught(broken):
  assert _parse_error(['--config', 'configs/v8.py', '--workdir', 'w', '--config.init_from=x', broken])

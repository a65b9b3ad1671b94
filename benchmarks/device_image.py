"""What the GPU check's machine lacks, the wheels that fill the gap, and how its versions differ from ours.

  python benchmarks/device_image.py closure [--here]             # name==version a line, and why
  python benchmarks/device_image.py download --out .whl [--here] [--extra 'flax==0.12.8 ...']
  python benchmarks/device_image.py check                        # in the environment to check

The machine's image is listed in `benchmarks/device_image_packages.txt` (one distribution a line).
The closure starts from pyproject.toml's `dependencies` and its `torch` extra (the check compares
with PyTorch). A requirement on a distribution the image holds ends there (the image's own
dependencies are its business), except for the extras it names (`etils[epath]`): their
requirements are followed. Any other distribution is carried at the version installed here (`make
setup`: constraints.txt's pins) and its requirements followed, with markers evaluated for the
image's Python on Linux x86-64 (`--here`: for this interpreter and platform, as the CPU test uses).

`check` runs where the check runs (the image plus the carried wheels): every third-party import
statement of the code that train.py, eval.py and the check run, and every requirement of the same
walk against the versions installed there, each difference named (`requirement`, `required_by`,
`found`). benchmarks/device_check.py's `env` part reports both.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE = ROOT / 'benchmarks' / 'device_image_packages.txt'
EXTRAS = ('torch',)  # pyproject.toml extras the check needs
# The code the check runs: train.py, eval.py, the check and the benchmarks it starts, and the
# project's packages (`make device-check` runs data_pipelines.synthetic and .decoded too).
CHECKED = ('train.py', 'eval.py', 'benchmarks/device_check.py', 'benchmarks/device_image.py',
           'benchmarks/train_step.py', 'benchmarks/forward.py', 'efficientvit_jax', 'data_pipelines', 'configs')
# Imports of features the check does not use, with the pyproject.toml extra that provides them
# (data.format=tfds; ONNX export). tests/test_device_image.py checks this against the metadata.
OPTIONAL_MODULES = {'tensorflow_datasets': 'tfds', 'onnx': 'export', 'onnxruntime': 'export',
                    'onnxscript': 'export', 'onnxconverter_common': 'export'}
PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64', 'manylinux_2_17_x86_64',
             'manylinux2014_x86_64', 'manylinux1_x86_64')

Metadata = Callable[[str], tuple[str, list[str]]]  # distribution name -> (version, Requires-Dist lines)


@dataclasses.dataclass(frozen=True)
class Image:
  """A machine image: its Python version and {canonical distribution name: version or None}."""
  python: str
  packages: dict[str, str | None]


@dataclasses.dataclass(frozen=True)
class Edge:
  """One requirement met on the walk: `requirement` (as written) of `required_by`."""
  requirement: str
  required_by: str

  @property
  def name(self) -> str:
    return canonicalize_name(Requirement(self.requirement).name)


def read_image(path: str | os.PathLike[str] = IMAGE) -> Image:
  """The image list: `name` or `name==version` a line, `#` comments, `python==X.Y.Z` the interpreter."""
  python, packages = '', {}
  for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
    line = line.split('#', 1)[0].strip()
    if not line:
      continue
    name, _, version = line.partition('==')
    if not name.strip() or (_ and not version.strip()):
      raise ValueError(f'{path} line {number}: expected NAME or NAME==VERSION, got {line!r}')
    if name.strip() == 'python':
      python = version.strip()
    else:
      packages[canonicalize_name(name.strip())] = version.strip() or None
  if not python:
    raise ValueError(f'{path}: no python==X.Y.Z line (the interpreter markers are evaluated for)')
  return Image(python, packages)


def marker_environment(python: str | None = None) -> dict[str, str]:
  """PEP 508 marker values: CPython `python` (X.Y.Z) on Linux x86-64; None: this interpreter."""
  if python is None:
    from packaging.markers import default_environment

    return dict(default_environment())
  return {'implementation_name': 'cpython', 'implementation_version': python, 'os_name': 'posix',
          'platform_machine': 'x86_64', 'platform_python_implementation': 'CPython', 'platform_release': '',
          'platform_system': 'Linux', 'platform_version': '', 'python_full_version': python,
          'python_version': '.'.join(python.split('.')[:2]), 'sys_platform': 'linux'}


def project_requirements(root: pathlib.Path = ROOT, extras: Iterable[str] = EXTRAS) -> list[str]:
  """pyproject.toml's `dependencies` and those of `extras`."""
  project = tomllib.loads((root / 'pyproject.toml').read_text())['project']
  return [*project['dependencies'], *(r for e in extras for r in project['optional-dependencies'][e])]


def installed(name: str) -> tuple[str, list[str]]:
  """(version, Requires-Dist) of the distribution installed in this environment (LookupError if none)."""
  try:
    dist = importlib.metadata.distribution(name)
  except importlib.metadata.PackageNotFoundError:
    raise LookupError(name) from None
  return dist.version, list(dist.requires or [])


def _applies(requirement: Requirement, environment: dict[str, str], extras: Iterable[str]) -> bool:
  """Whether `requirement` holds under `environment` for one of `extras` ('' = the base requirements)."""
  return requirement.marker is None or any(
      requirement.marker.evaluate({**environment, 'extra': e}) for e in extras)


def walk(roots: Iterable[str], image: Iterable[str], metadata: Metadata,
         environment: dict[str, str]) -> tuple[dict[str, str], list[Edge]]:
  """The closure: ({name: version} of what `roots` need beyond `image`, every requirement met).

  roots: requirement strings (pyproject.toml's); image: canonical names; metadata: version and
  Requires-Dist of a distribution (of the carried ones, and of image ones required with extras).
  Raises LookupError naming a needed distribution that `metadata` does not know.
  """
  image = set(image)
  carried: dict[str, str] = {}
  edges: list[Edge] = []
  done: set[tuple[str, frozenset[str]]] = set()
  todo = [Edge(r, 'pyproject.toml') for r in roots]
  while todo:
    edge = todo.pop(0)
    req = Requirement(edge.requirement)
    if not _applies(req, environment, ('',)):
      continue
    edges.append(edge)
    name, extras = edge.name, frozenset(canonicalize_name(e) for e in req.extras)
    if (name, extras) in done:
      continue
    done.add((name, extras))
    in_image = name in image
    if in_image and not extras:
      continue
    try:
      version, requires = metadata(name)
    except LookupError:
      raise LookupError(f'{name} (required by {edge.required_by} as {edge.requirement!r}) is not installed '
                        'here: install it (make setup) to compute what the image lacks') from None
    if not in_image:
      carried[name] = version
    for line in requires:
      sub = Requirement(line)
      base = _applies(sub, environment, ('',))
      if (base and not in_image) or (not base and extras and _applies(sub, environment, tuple(extras))):
        sub.marker = None  # evaluated here, for the extras that pulled it in
        todo.append(Edge(str(sub), f'{name}[{",".join(sorted(extras))}]' if extras else name))
  return carried, edges


def closure(image: Image | None = None, here: bool = False) -> tuple[dict[str, str], list[Edge]]:
  """`walk` from this project's requirements over the metadata installed here."""
  image = image or read_image()
  return walk(project_requirements(), image.packages, installed, marker_environment(None if here else image.python))


def differences(edges: Iterable[Edge], version_of: Callable[[str], str | None]) -> list[dict[str, str | None]]:
  """The requirements among `edges` that the installed versions do not meet: {requirement,
  required_by, found} each (found None: not installed), once per requirement and requirer."""
  out, seen = [], set()
  for edge in edges:
    if (edge.requirement, edge.required_by) in seen:
      continue
    seen.add((edge.requirement, edge.required_by))
    found = version_of(edge.name)
    if found is None or not Requirement(edge.requirement).specifier.contains(found, prereleases=True):
      out.append({'requirement': edge.requirement, 'required_by': edge.required_by, 'found': found})
  return out


def installed_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def _files(root: pathlib.Path) -> list[pathlib.Path]:
  out = []
  for entry in CHECKED:
    path = root / entry
    out += sorted(path.rglob('*.py')) if path.is_dir() else [path]
  return out


def import_statements(root: pathlib.Path = ROOT) -> list[str]:
  """Every absolute import statement of a third-party module in the checked code, one alias each
  (`import a.b`, `from a import b`), sorted: not the standard library, not the project's own
  modules, not `OPTIONAL_MODULES`."""
  own = {p.stem for p in root.glob('*.py')} | {p.stem for p in (root / 'benchmarks').glob('*.py')}
  own |= {p.name for p in root.iterdir() if (p / '__init__.py').exists()}
  skip = own | set(sys.stdlib_module_names) | set(OPTIONAL_MODULES) | {'__future__'}
  out = set()
  for path in _files(root):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        out |= {f'import {a.name}' for a in node.names if a.name.split('.')[0] not in skip}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split('.')[0] not in skip:
        out |= {f'from {node.module} import {a.name}' for a in node.names}
  return sorted(out)


def import_failures(statements: Iterable[str]) -> dict[str, str]:
  """{statement: 'ErrorType: first line'} of the statements that fail here."""
  failed = {}
  for statement in statements:
    try:
      exec(statement, {})
    except Exception as e:
      failed[statement] = f'{type(e).__name__}: {e}'.splitlines()[0][:200]
  return failed


def check(image: Image | None = None) -> dict[str, object]:
  """In the environment to check: {'import_failures', 'differences', 'carried'} (see the module doc)."""
  image = image or read_image()

  def metadata(name: str) -> tuple[str, list[str]]:  # a missing one is a difference, not an error
    return installed(name) if installed_version(name) else ('', [])

  carried, edges = walk(project_requirements(), image.packages, metadata, marker_environment())
  return {'import_failures': import_failures(import_statements()),
          'differences': differences(edges, installed_version),
          'carried': {name: installed_version(name) for name in carried}}


def download(out: pathlib.Path, specs: list[str], here: bool, python: str) -> None:
  """`pip download --no-deps` of `specs` (name==version) into `out`, whole or not at all."""
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + '.', dir=out.parent))
  target = [] if here else ['--python-version', python, '--implementation', 'cp',
                            *(a for p in PLATFORMS for a in ('--platform', p))]
  try:
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:', *target,
                    '-d', str(tmp), *specs], check=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('command', choices=('closure', 'download', 'check'))
  parser.add_argument('--image', default=str(IMAGE), help='the image list (default: %(default)s)')
  parser.add_argument('--here', action='store_true', help="markers and wheels for this interpreter, not the image's")
  parser.add_argument('--out', default='.whl', help='download: the wheel folder (replaced)')
  parser.add_argument('--extra', default='', help='download: more NAME==VERSION, space-separated, carried as given')
  args = parser.parse_args(argv)
  try:
    image = read_image(args.image)
  except (OSError, ValueError) as e:
    print(f'error: --image: {e}', file=sys.stderr)
    return 2
  if args.command == 'check':
    result = check(image)
    carried = ', '.join(f'{k} {v}' for k, v in result['carried'].items())
    print(f'Python {platform.python_version()}; carried: {carried}')
    for statement, error in result['import_failures'].items():
      print(f'cannot {statement}: {error}')
    for d in result['differences']:
      print(f"{d['requirement']} (required by {d['required_by']}): found {d['found'] or 'nothing'}")
    return 1 if result['import_failures'] else 0
  try:
    carried, edges = closure(image, args.here)
  except LookupError as e:
    print(f'error: {e.args[0]}', file=sys.stderr)
    return 2
  why = {}
  for edge in edges:
    why.setdefault(edge.name, edge.required_by)
  specs = [f'{name}=={version}' for name, version in sorted(carried.items())] + args.extra.split()
  if args.command == 'closure':
    for name, version in sorted(carried.items()):
      print(f'{name}=={version}  # {why[name]}')
    return 0
  try:
    download(pathlib.Path(args.out).absolute(), specs, args.here, image.python)
  except subprocess.CalledProcessError as e:
    print(f'error: pip download failed (exit {e.returncode}) for {" ".join(specs)}', file=sys.stderr)
    return 1
  print(f'{args.out}: ' + ', '.join(specs))
  return 0


if __name__ == '__main__':
  sys.exit(main())

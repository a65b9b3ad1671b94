"""What the GPU machine's image lacks (benchmarks/device_image.py): the closure walk, and proof that
the wheels it names are enough: installed with --no-deps beside only the image's packages, every
import of the checked code works."""

import importlib.metadata
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
import sysconfig

import pytest
from conftest import ROOT
from packaging.utils import canonicalize_name


def _load():
  spec = importlib.util.spec_from_file_location('device_image', ROOT / 'benchmarks' / 'device_image.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


di = _load()

PY312 = di.marker_environment('3.12.3')


def _constraints() -> dict[str, str]:
  """constraints.txt as {canonical name: version} (the versions `make setup` installs)."""
  out = {}
  for line in (ROOT / 'constraints.txt').read_text().splitlines():
    if '==' in line and not line.startswith('#'):
      name, version = line.split('==')
      out[canonicalize_name(name)] = version.strip()
  return out


# A made-up world: `app` is the project; the image holds `img` (and whatever `img` itself needs).
WORLD = {
    'app': ('1.0', ['lib>=2', 'img[x]', 'winonly; sys_platform == "win32"', 'old; python_version < "3.12"',
                    'docs; extra == "docs"']),
    'lib': ('2.1', ['img', 'deep', 'lib']),  # a cycle onto itself
    'deep': ('0.3', []),
    'img': ('9.0', ['hidden', 'xdep; extra == "x"', 'ydep; extra == "y"']),
    'xdep': ('1.1', ['lib>=1', 'img[y]']),  # another extra of an image package, through a carried one
    'ydep': ('4.0', []),
    'old': ('0.1', []),
}


def _meta(name):
  if name not in WORLD:
    raise LookupError(name)
  return WORLD[name]


def test_walk_follows_markers_and_extras_and_stops_at_the_image():
  carried, edges = di.walk(['app'], {'img'}, _meta, PY312)
  # hidden: img's own need (the image's business); winonly, old: markers; docs: an extra nobody asked for.
  assert carried == {'app': '1.0', 'lib': '2.1', 'deep': '0.3', 'xdep': '1.1', 'ydep': '4.0'}
  assert ('img[x]', 'app') in {(e.requirement, e.required_by) for e in edges}
  assert ('xdep', 'img[x]') in {(e.requirement, e.required_by) for e in edges}
  carried, _ = di.walk(['app'], {'img'}, _meta, di.marker_environment('3.11.7'))
  assert 'old' in carried
  carried, _ = di.walk(['app'], {'img', 'lib', 'xdep'}, _meta, PY312)
  assert carried == {'app': '1.0'}
  with pytest.raises(LookupError, match=r"missing \(required by lib as 'missing'\)"):
    di.walk(['lib'], set(), lambda n: (('1', ['missing']) if n == 'lib' else _meta(n)), PY312)


def test_differences_name_each_unmet_requirement():
  edges = [di.Edge('jax<0.11,>=0.10.2', 'pyproject.toml'), di.Edge('numpy>=2', 'pyproject.toml'),
           di.Edge('protobuf>=5.28.3', 'grain'), di.Edge('portpicker', 'grain'),
           di.Edge('jax<0.11,>=0.10.2', 'pyproject.toml')]
  found = {'jax': '0.11.2', 'numpy': '2.5.2', 'protobuf': '4.25.1'}
  assert di.differences(edges, found.get) == [
      {'requirement': 'jax<0.11,>=0.10.2', 'required_by': 'pyproject.toml', 'found': '0.11.2'},
      {'requirement': 'protobuf>=5.28.3', 'required_by': 'grain', 'found': '4.25.1'},
      {'requirement': 'portpicker', 'required_by': 'grain', 'found': None}]


def test_read_image_refuses_a_bad_line(tmp_path):
  path = tmp_path / 'image.txt'
  path.write_text('python==3.12.3\njax==\n')
  with pytest.raises(ValueError, match='line 2'):
    di.read_image(path)
  path.write_text('jax\n')
  with pytest.raises(ValueError, match='python=='):
    di.read_image(path)
  path.write_text('# c\npython==3.12.3\nJAX==0.11.2  # seen\nml_collections\n')
  assert di.read_image(path) == di.Image('3.12.3', {'jax': '0.11.2', 'ml-collections': None})


def test_closure_of_the_listed_image_and_of_a_bare_one(tmp_path):
  """The listed image lacks grain and what it alone needs; an image of only the frameworks also
  lacks grain's protobuf, etils (with its epath extra's fsspec and zipp) and cloudpickle; each is
  carried at the version constraints.txt pins."""
  pins = _constraints()
  carried, _ = di.closure()
  assert set(carried) == {'grain', 'array-record', 'ml-collections', 'tensorboardx', 'portpicker'}
  assert all(carried[name] == pins[name] for name in carried)
  bare = tmp_path / 'bare.txt'
  bare.write_text('python==3.12.3\njax\njaxlib\nflax\noptax\norbax-checkpoint\ntorch\ntimm\nmatplotlib\ntensorboard\n')
  carried, _ = di.closure(di.read_image(bare))
  assert {'protobuf', 'etils', 'cloudpickle', 'fsspec', 'zipp', 'absl-py', 'numpy', 'pyyaml'} <= set(carried)
  assert not {'jax', 'flax', 'torch', 'matplotlib'} & set(carried)
  assert all(carried[name] == pins[name] for name in carried)


def test_every_checked_import_has_a_provider_and_optional_ones_their_extra():
  """Each third-party module the checked code imports comes from the image or the closure (by
  this environment's metadata); the modules left out belong to the extras named for them."""
  image = di.read_image()
  carried, _ = di.closure()
  providers = importlib.metadata.packages_distributions()
  statements = di.import_statements()
  assert 'import grain' in statements and 'from flax import nnx' in statements and 'import torch' in statements
  for statement in statements:
    module = statement.split()[1].split('.')[0]
    dists = {canonicalize_name(d) for d in providers.get(module, [])}
    assert dists & (set(image.packages) | set(carried)), (statement, dists)
  extras = di.tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['optional-dependencies']
  for module, extra in di.OPTIONAL_MODULES.items():
    wanted = {canonicalize_name(di.Requirement(r).name) for r in extras[extra]}
    assert {canonicalize_name(d) for d in providers[module]} & wanted, module


# --------------------------------------------------------------------------------------------------
# The closure, installed beside only the image's packages


def _site(dest: pathlib.Path, names: set[str]) -> pathlib.Path:
  """A folder that holds (links to) the files of this environment's distributions named in
  `names`, per their RECORD, and nothing of any other distribution (shared folders such as
  `google/` are split down to what each distribution owns)."""
  site = pathlib.Path(sysconfig.get_paths()['purelib'])
  mine, blocked = set(), set()
  for dist in importlib.metadata.distributions(path=[str(site)]):
    keep = canonicalize_name(dist.metadata['Name']) in names
    for f in dist.files or []:
      parts = pathlib.PurePath(f).parts
      if parts[0] == '..':
        continue
      if keep:
        mine.add(parts)
      else:
        blocked |= {parts[:k] for k in range(1, len(parts) + 1)}
  dest.mkdir(parents=True)
  for parts in mine:
    for k in range(1, len(parts) + 1):
      if parts[:k] not in blocked or k == len(parts):
        link = dest.joinpath(*parts[:k])
        if not link.exists():
          link.parent.mkdir(parents=True, exist_ok=True)
          link.symlink_to(site.joinpath(*parts[:k]))
        break
  return dest


def _check_in(sites: list[pathlib.Path], cwd: pathlib.Path) -> subprocess.CompletedProcess:
  """`device_image.py check` in a Python that sees the standard library, `sites` and this checkout
  only (-I -S: no site-packages, no PYTHONPATH, no user site)."""
  boot = ('import runpy, site, sys\n'
          f'for d in {[str(s) for s in sites]!r}: site.addsitedir(d)\n'
          f'sys.path.insert(0, {str(ROOT)!r})\n'
          "sys.argv = ['device_image.py', 'check']\n"
          f"runpy.run_path({str(ROOT / 'benchmarks' / 'device_image.py')!r}, run_name='__main__')\n")
  env = {k: v for k, v in os.environ.items() if not k.startswith('PYTHON')}
  return subprocess.run([sys.executable, '-I', '-S', '-c', boot], cwd=cwd, env=dict(env, JAX_PLATFORMS='cpu'),
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def image_site(tmp_path_factory):
  return _site(tmp_path_factory.mktemp('image') / 'site', set(di.read_image().packages))


@pytest.mark.e2e
def test_closure_alone_completes_the_image(tmp_path, image_site):
  """The image's packages plus the closure's (this environment's copies): every import works; the
  same without one carried distribution (portpicker, which grain imports) fails naming it."""
  carried, _ = di.closure(here=True)
  proc = _check_in([image_site, _site(tmp_path / 'closure', set(carried))], tmp_path)
  assert proc.returncode == 0 and 'cannot' not in proc.stdout, proc.stdout + proc.stderr[-3000:]
  assert 'carried: grain 0.2.18' in proc.stdout
  short = _site(tmp_path / 'short', set(carried) - {'portpicker'})
  proc = _check_in([image_site, short], tmp_path)
  assert proc.returncode == 1
  assert "cannot import grain: ModuleNotFoundError: No module named 'portpicker'" in proc.stdout
  assert 'portpicker (required by grain): found nothing' in proc.stdout


def _registry_reachable() -> bool:
  try:
    socket.create_connection(('pypi.org', 443), timeout=5).close()
    return True
  except OSError:
    return False


@pytest.mark.e2e
@pytest.mark.skipif(not _registry_reachable(), reason='needs the package registry (pypi.org) to download wheels')
def test_downloaded_wheels_installed_with_no_deps_complete_the_image(tmp_path, image_site):
  """`make wheels` for this interpreter (--here): the downloaded wheels, installed with --no-deps
  --no-index into a folder of their own beside only the image's packages, make every import work."""
  wheels = tmp_path / 'wheels'
  proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'device_image.py'), 'download', '--here',
                         '--out', str(wheels)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = {canonicalize_name(p.name.split('-')[0]) for p in wheels.glob('*.whl')}
  assert names == set(di.closure(here=True)[0])
  target = tmp_path / 'target'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--target', str(target),
                  *map(str, wheels.glob('*.whl'))], check=True, timeout=600)
  proc = _check_in([image_site, target], tmp_path)
  assert proc.returncode == 0 and 'cannot' not in proc.stdout, proc.stdout + proc.stderr[-3000:]

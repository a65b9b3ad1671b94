"""The import graph of the project's modules: no cycle, and no import from a lower layer upward.

Layers, low to high (docs/README.md#code-layout):
  0 shared: `efficientvit_jax.{console, classes, domains, images, trees, runtime, host_memory}`, the presets
    `efficientvit_jax.configs.*`
  1 data: `data_pipelines.*` (readers, transforms, mixing, decoded, datasets, TFDS, LILocBench, synthetic)
  2 network: the other `efficientvit_jax` modules (model, training step, checkpoints, conversion, ...)
  3 loops and tools: `efficientvit_jax.train_loop`, `data_pipelines.preview`
  4 commands: `efficientvit_jax.{train, eval}` (and the checkout's `train.py`, `eval.py` that call them),
    `studies/`, `benchmarks/`
A module may import its own layer and the ones below. Lazy imports inside functions count too.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = {'console', 'classes', 'domains', 'images', 'trees', 'runtime', 'host_memory'}
TOOLS = {'efficientvit_jax.train_loop', 'data_pipelines.preview'}
COMMANDS = {'efficientvit_jax.train', 'efficientvit_jax.eval'}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


def _modules() -> dict[str, pathlib.Path]:
  files = [*ROOT.glob('efficientvit_jax/**/*.py'), *ROOT.glob('data_pipelines/**/*.py'),
           *ROOT.glob('studies/*.py'), *ROOT.glob('benchmarks/*.py'), ROOT / 'train.py', ROOT / 'eval.py']
  return {_module_name(f): f for f in files}


def _layer(name: str) -> int:
  top, _, rest = name.partition('.')
  if name in TOOLS:
    return 3
  if name in COMMANDS:
    return 4
  if top == 'efficientvit_jax':
    return 0 if rest in SHARED or rest.partition('.')[0] == 'configs' else 2
  if top == 'data_pipelines':
    return 1
  return 4


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """The project modules `path` imports (`from pkg import mod` resolves to `pkg.mod` when that is a module)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in known else node.module for a in node.names]
    else:
      continue
    out.update(n for n in names if n in known)
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  return {name: _imports(path, known) - {name} for name, path in modules.items()}


def test_no_import_from_a_lower_layer_upward():
  upward = [f'{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})'
            for a, deps in _graph().items() for b in deps
            if _layer(b) > _layer(a) and not b.startswith(a + '.')]  # a package may import its own modules
  assert not upward, '\n'.join(sorted(upward))


def test_no_import_cycle():
  graph = _graph()
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  cycles = []

  def visit(node: str, path: list[str]) -> None:
    state[node] = 1
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 1 and not dep.startswith(node) and not node.startswith(dep + '.'):
        cycles.append(' -> '.join(path[path.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep, path + [dep])
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, '\n'.join(cycles)


def test_the_graph_is_read():
  graph = _graph()
  assert 'efficientvit_jax.model' in graph['efficientvit_jax.training']
  assert 'efficientvit_jax.console' in graph['data_pipelines.lilocbench']
  assert 'data_pipelines.datasets' in graph['efficientvit_jax.train_loop']
  assert 'efficientvit_jax.train_loop' in graph['efficientvit_jax.train']
  assert 'efficientvit_jax.configs.default' in graph['efficientvit_jax.configs.quickstart']
  assert _layer('efficientvit_jax.eval') == 4 and _layer('efficientvit_jax.configs.v8') == 0

"""Nested dicts with string keys (checkpoint trees, configs) <-> flat dicts with dotted keys, and
the dotted name of a pytree path.

  flatten({'a': {'b': 1, 'c': {'d': 2}}}) == {'a.b': 1, 'a.c.d': 2}
  unflatten({'a.b': 1, 'a.c.d': 2}) == {'a': {'b': 1, 'c': {'d': 2}}}
  path_name(path of opt_state[1].inner_states['decoder']...mu['model']['w']) == '1.inner_states.decoder...mu.model.w'

Anything with `keys()` is a node (dicts, Mappings, `ml_collections.ConfigDict`); the rest are leaves.
"""

from typing import Any


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """Nested dict -> {'a.b.c': leaf}; an empty node leaves no entry."""
  flat = {}
  for key in tree.keys():
    value = tree[key]
    name = f'{prefix}{key}'
    if hasattr(value, 'keys'):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a.b.c': leaf} -> nested dict."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split('.')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def key_name(entry: Any) -> Any:
  """One entry of a `jax.tree_util` key path -> its dict key, attribute name or sequence index."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return entry


def path_name(path: tuple[Any, ...]) -> str:
  """A `jax.tree_util` key path -> 'a.b.0.c' (dict keys, namedtuple fields, indices by name)."""
  return '.'.join(str(key_name(entry)) for entry in path)

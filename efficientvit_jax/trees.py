"""Nested dicts with string keys (checkpoint trees, configs) <-> flat dicts with dotted keys.

  flatten({'a': {'b': 1, 'c': {'d': 2}}}) == {'a.b': 1, 'a.c.d': 2}
  unflatten({'a.b': 1, 'a.c.d': 2}) == {'a': {'b': 1, 'c': {'d': 2}}}

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

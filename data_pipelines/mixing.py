"""Global batch composition for every `data.mode`: pure functions of (seed, step, set sizes).

A global batch is a list of `batch_size` (set id, frame position) pairs; set id = domain id
(0 NYU, 1 LILocBench), frame position = 0..n-1 within that set's training split. Nothing here
depends on process or device counts, so a resumed run and any topology see the same batches.

Each set used by a mode is consumed as a *stream* of `count` frames per step:
- an *epoch* stream draws, in epoch e, from a fresh permutation of the set and uses its first
  `steps_per_epoch * count` entries (the rest of the pass is dropped, or the set is subsampled
  with a new subset each epoch);
- a *repeat* stream (a set that one epoch would exhaust) walks an endless chain of passes, each a
  fresh permutation, independent of epoch boundaries.
Epochs always hold whole batches (`drop_remainder` semantics).

| mode | counts per batch | steps per epoch |
|---|---|---|
| `nyu` / `lilocbench` | B of that set | n // B |
| `joint` | round(w * B) of each set, remainder to the larger set | n_larger // count_larger |
| `downsample` | as `joint` | n_smaller // count_smaller |
| `concat` | natural share: one permutation of both sets together | (n_0 + n_1) // B |

Example::

  sizes = {'nyu': 1159, 'lilocbench': 4600}
  domain, index = global_batch('joint', sizes, 16, step=0, seed=0)  # 8 + 8 frames
"""

import functools
import math
from collections.abc import Mapping

import numpy as np

from efficientvit_jax import domains

TRAIN_SETS = domains.SETS[:2]  # ('nyu', 'lilocbench'); position = set id = domain id of the data element
MODES = (*TRAIN_SETS, 'joint', 'downsample', 'concat')


def mode_sets(mode: str) -> tuple[str, ...]:
  """The training sets a mode reads, in set-id order."""
  if mode in TRAIN_SETS:
    return (mode,)
  if mode in ('joint', 'downsample', 'concat'):
    return TRAIN_SETS
  raise ValueError(f'data.mode must be one of {MODES}, got {mode!r}')


def _sizes(mode: str, sizes: Mapping[str, int]) -> tuple[int, int]:
  """Sizes of (nyu, lilocbench) with unused sets 0; checks the used ones are non-empty."""
  out = []
  for name in TRAIN_SETS:
    n = int(sizes.get(name, 0)) if name in mode_sets(mode) else 0
    if name in mode_sets(mode) and n <= 0:
      raise ValueError(f'data.mode={mode!r} needs the {name} training set, which has no frames')
    out.append(n)
  return out[0], out[1]


def batch_counts(mode: str, sizes: Mapping[str, int], batch_size: int,
                 weights: Mapping[str, float] | None = None) -> tuple[int, int]:
  """Frames of (nyu, lilocbench) in every batch; (0, 0) for `concat` (no fixed share).

  `joint`/`downsample`: the smaller set gets round(w * B) (w normalised over both sets; a half
  is rounded down, so that the odd frame goes to the larger set), the larger set the rest; a zero
  count is an error naming `data.weights`.
  """
  n = _sizes(mode, sizes)
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if mode == 'nyu':
    return batch_size, 0
  if mode == 'lilocbench':
    return 0, batch_size
  if mode == 'concat':
    return 0, 0
  if weights is None:
    raise ValueError(f'data.mode={mode!r} needs data.weights')
  w = np.array([float(weights.get(name, 0.0)) for name in TRAIN_SETS])
  if np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f'data.weights must be non-negative with a positive sum, got {dict(weights)}')
  w = w / w.sum()
  larger = int(np.argmax(n))
  counts = [math.ceil(w[s] * batch_size - 0.5) for s in range(2)]
  counts[larger] = batch_size - counts[1 - larger]
  for s, name in enumerate(TRAIN_SETS):
    if counts[s] <= 0:
      raise ValueError(
          f'data.weights={dict(weights)} gives {counts[s]} {name} frames per batch of '
          f'{batch_size}; every set of data.mode={mode!r} needs at least one')
  return counts[0], counts[1]


def steps_per_epoch(mode: str, sizes: Mapping[str, int], batch_size: int,
                    weights: Mapping[str, float] | None = None) -> int:
  """Whole global batches per epoch (see the module table); an error if that is 0."""
  n = _sizes(mode, sizes)
  counts = batch_counts(mode, sizes, batch_size, weights)
  if mode in TRAIN_SETS:
    s = TRAIN_SETS.index(mode)
    steps = n[s] // batch_size
  elif mode == 'concat':
    steps = (n[0] + n[1]) // batch_size
  else:
    # joint: the larger set defines the epoch; downsample: the smaller one.
    s = int(np.argmax(n)) if mode == 'joint' else int(np.argmin(n))
    steps = n[s] // counts[s]
  if steps <= 0:
    raise ValueError(f'data.mode={mode!r} with set sizes {dict(zip(TRAIN_SETS, n))} holds no whole '
                     f'batch of {batch_size}: lower batch_size')
  return steps


@functools.lru_cache(maxsize=64)
def _permutation(seed: int, stream: int, pass_index: int, n: int) -> np.ndarray:
  """[n] int64: the permutation of pass `pass_index` of stream `stream` (read-only, cached)."""
  perm = np.random.default_rng([seed, stream, pass_index, 0]).permutation(n)
  perm.flags.writeable = False
  return perm


def _stream(seed: int, stream: int, n: int, count: int, step: int, epoch_steps: int) -> np.ndarray:
  """[count] positions in 0..n-1 that stream `stream` contributes at `step`."""
  if epoch_steps * count <= n:
    epoch, k = divmod(step, epoch_steps)
    return _permutation(seed, stream, epoch, n)[k * count:(k + 1) * count]
  j = step * count + np.arange(count)
  passes, offsets = np.divmod(j, n)
  return np.array([_permutation(seed, stream, int(p), n)[o] for p, o in zip(passes, offsets)])


def _interleave(counts: tuple[int, int]) -> np.ndarray:
  """[sum(counts)] set ids spread evenly over the batch (8 + 8 -> 0, 1, 0, 1, ...), so that every
  process's contiguous slice holds its share of each set."""
  keys = [((j + 0.5) / c, s) for s, c in enumerate(counts) for j in range(c)]
  return np.array([s for _, s in sorted(keys)], np.int32)


def global_batch(mode: str, sizes: Mapping[str, int], batch_size: int, step: int, seed: int,
                 weights: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The global batch at `step`: (set id [B] int32, frame position [B] int64).

  A pure function of its arguments; frames are positions within each set's training split.
  """
  if step < 0:
    raise ValueError(f'step must be >= 0, got {step}')
  n = _sizes(mode, sizes)
  spe = steps_per_epoch(mode, sizes, batch_size, weights)
  if mode == 'concat':
    epoch, k = divmod(step, spe)
    joint = np.asarray(_permutation(seed, 2, epoch, n[0] + n[1])[k * batch_size:(k + 1) * batch_size])
    domain = (joint >= n[0]).astype(np.int32)
    return domain, np.where(domain == 0, joint, joint - n[0]).astype(np.int64)
  counts = batch_counts(mode, sizes, batch_size, weights)
  domain = _interleave(counts)
  index = np.zeros(batch_size, np.int64)
  for s in range(2):
    if counts[s]:
      index[domain == s] = _stream(seed, s, n[s], counts[s], step, spe)
  return domain, index

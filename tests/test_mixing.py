"""Batch composition of every data.mode (pure functions, no data on disk)."""

import collections

import numpy as np
import pytest

from data_pipelines import mixing

SIZES = {'nyu': 40, 'lilocbench': 165}  # about 1 : 4, as the synthetic data
HALF = {'nyu': 0.5, 'lilocbench': 0.5}


def batches(mode, steps, sizes=SIZES, batch_size=16, seed=0, weights=HALF, start=0):
  return [mixing.global_batch(mode, sizes, batch_size, t, seed, weights) for t in range(start, start + steps)]


def test_joint_exact_halves_nyu_repeats_lilocbench_does_not():
  spe = mixing.steps_per_epoch('joint', SIZES, 16, HALF)
  assert spe == 165 // 8
  epoch = batches('joint', spe)
  for domain, index in epoch:
    assert (domain == 0).sum() == 8 and (domain == 1).sum() == 8
    assert np.all(index[domain == 0] < 40) and np.all(index[domain == 1] < 165)
  nyu = np.concatenate([i[d == 0] for d, i in epoch])
  lil = np.concatenate([i[d == 1] for d, i in epoch])
  assert len(np.unique(lil)) == len(lil) == spe * 8  # one pass, no repeat
  assert max(collections.Counter(nyu.tolist()).values()) > 1  # upsampled
  # Each NYU pass is a fresh permutation of all frames.
  assert sorted(nyu[:40]) == list(range(40)) and sorted(nyu[40:80]) == list(range(40))
  assert not np.array_equal(nyu[:40], nyu[40:80])
  # The next epoch reshuffles LILocBench.
  nxt = batches('joint', 1, start=spe)[0]
  assert not np.array_equal(nxt[1][nxt[0] == 1], epoch[0][1][epoch[0][0] == 1])


def test_joint_interleaves_sets_for_every_process_slice():
  domain, _ = mixing.global_batch('joint', SIZES, 16, 0, 0, HALF)
  assert domain.tolist() == [0, 1] * 8


def test_counts_rounding_and_errors():
  assert mixing.batch_counts('joint', SIZES, 16, HALF) == (8, 8)
  assert mixing.batch_counts('joint', SIZES, 15, HALF) == (7, 8)  # remainder to the larger set
  assert mixing.batch_counts('joint', SIZES, 16, {'nyu': 0.3, 'lilocbench': 0.7}) == (5, 11)
  assert mixing.batch_counts('downsample', SIZES, 16, {'nyu': 1, 'lilocbench': 3}) == (4, 12)
  with pytest.raises(ValueError, match='data.weights'):
    mixing.batch_counts('joint', SIZES, 16, {'nyu': 0.01, 'lilocbench': 0.99})
  with pytest.raises(ValueError, match='data.mode'):
    mixing.mode_sets('mixed')
  with pytest.raises(ValueError, match='no whole batch'):
    mixing.steps_per_epoch('nyu', {'nyu': 10}, 16)


def test_downsample_one_pass_of_smaller_new_subset_of_larger():
  spe = mixing.steps_per_epoch('downsample', SIZES, 16, HALF)
  assert spe == 40 // 8
  e0, e1 = batches('downsample', spe), batches('downsample', spe, start=spe)
  for epoch in (e0, e1):
    nyu = np.concatenate([i[d == 0] for d, i in epoch])
    lil = np.concatenate([i[d == 1] for d, i in epoch])
    assert sorted(nyu) == list(range(40))
    assert len(np.unique(lil)) == len(lil) == 40
  lil0 = {int(x) for d, i in e0 for x in i[d == 1]}
  lil1 = {int(x) for d, i in e1 for x in i[d == 1]}
  assert lil0 != lil1


def test_concat_natural_share_and_single_sets():
  spe = mixing.steps_per_epoch('concat', SIZES, 16)
  assert spe == 205 // 16
  epoch = batches('concat', spe)
  pairs = [(int(d), int(i)) for ds, idx in epoch for d, i in zip(ds, idx)]
  assert len(set(pairs)) == len(pairs) == spe * 16
  share = np.mean([d == 0 for d, _ in pairs])
  assert abs(share - 40 / 205) < 0.08
  for mode, n in (('nyu', 40), ('lilocbench', 165)):
    spe = mixing.steps_per_epoch(mode, SIZES, 16)
    assert spe == n // 16
    epoch = batches(mode, spe)
    assert all(np.all(d == mixing.TRAIN_SETS.index(mode)) for d, _ in epoch)
    idx = np.concatenate([i for _, i in epoch])
    assert len(np.unique(idx)) == len(idx)


def test_pure_function_of_seed_and_step():
  a = mixing.global_batch('joint', SIZES, 16, 37, 3, HALF)
  mixing._permutation.cache_clear()
  b = mixing.global_batch('joint', SIZES, 16, 37, 3, HALF)
  c = mixing.global_batch('joint', SIZES, 16, 37, 4, HALF)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[1], c[1])

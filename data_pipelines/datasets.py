"""grain input pipelines: per-process training batches of every `data.mode`, padded eval batches.

Training: the global batch at step t is `mixing.global_batch(mode, sizes, B, t, seed, weights)`
and sample j of it is transformed with `transforms.frame_rng(seed, t, j)`; process p of P loads
only positions [p * B / P, (p + 1) * B / P) of every global batch. The whole data state a
checkpoint needs is therefore the step (any process count can resume from it).

grain does the loading: `MapDataset.range(first element, last element).map(load one sample)`
`.to_iter_dataset(ReadOptions(num_threads, prefetch_buffer_size)).batch(B / P)`: frames are read
and transformed by `data.num_threads` threads, in order. With `data.num_workers > 0` whole batches
are made in grain worker processes instead (`mp_prefetch`: worker w of W makes batches w, w + W, ...,
each with `num_threads` threads), the same batches bit for bit. Every element carries how many bad
frames were skipped to make it, so `skipped.count` is the sum over threads and worker processes alike.

Example::

  # num_steps: the run's length, planned by the loop (`efficientvit_jax.train_loop.steps_plan`)
  it = train_iterator(config, start_step=0, process_index=0, process_count=1, num_steps=num_steps)
  batch = next(it)            # dict of numpy arrays, leading dim batch_size / process_count
  state = {'step': it.step}   # what a checkpoint stores
"""

import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags
from absl import logging

from data_pipelines import decoded
from data_pipelines import mixing
from data_pipelines import readers
from data_pipelines import transforms
from efficientvit_jax import classes
from efficientvit_jax import console
from efficientvit_jax import domains


def resolve_paths(data: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every data path of `config.data` (`readers.layout_paths`: empty ones derived from `data.root`),
  plus `format` and `input_size`."""
  paths = readers.layout_paths(
      data.root, nyu_root=data.nyu.root, teacher_manifest=data.nyu.teacher_manifest,
      class_mapping=data.nyu.class_mapping, lilocbench_manifest=data.lilocbench.manifest,
      corridor_manifest=data.corridor.manifest, tfds_dir=data.tfds_dir, decoded_dir=data.decoded_dir)
  return {**paths, 'format': data.format, 'input_size': tuple(int(s) for s in data.input_size)}


def color_jitter_flags(data: ml_collections.ConfigDict) -> tuple[bool, ...]:
  """`data.color_jitter` per domain id (0 NYU, 1 LILocBench, 2 corridor), for the train step."""
  unknown = set(data.color_jitter.keys()) - set(domains.SETS)
  if unknown:
    raise ValueError(f'data.color_jitter: unknown set(s) {sorted(unknown)}; expected some of {domains.SETS}')
  return tuple(bool(data.color_jitter.get(name, False)) for name in domains.SETS)


def make_reader(paths: Mapping[str, Any], set_name: str, split: str,
                skip_bad_frames: bool = False) -> readers.Reader:
  """The reader of one split of one set from `resolve_paths` output (its `format` picks the files,
  the decode-once arrays under `decoded_dir` or the TFDS data sources under `tfds_dir`)."""
  fmt = paths.get('format', 'files')
  if fmt == 'files':
    return readers.make_file_reader(set_name, split, paths, skip_bad_frames)
  if fmt == 'decoded':
    return decoded.DecodedReader(paths['decoded_dir'], set_name, split, paths['input_size'],
                                 source_paths=paths)
  if fmt == 'tfds':
    from data_pipelines import tfds_builders

    return tfds_builders.TfdsReader(paths['tfds_dir'], set_name, split,
                                    class_mapping=paths.get('nyu_class_mapping'))
  raise ValueError(f'data.format must be files, decoded or tfds, got {fmt!r}')


_SKIPPED = 'frames_skipped'  # element key: bad frames skipped to make it (popped from the batches)


class SkipLog:
  """Frames skipped under `data.skip_bad_frames`: `count` over the batches yielded so far (read off
  their elements, whichever process made them); `messages`, the first 100 this process met."""

  def __init__(self):
    self.count = 0
    self.messages: list[str] = []
    self._lock = threading.Lock()

  def add(self, message: str) -> None:
    """Logs and keeps one skipped frame's message (the count comes with the batches)."""
    with self._lock:
      first = len(self.messages) < 20
      if len(self.messages) < 100:
        self.messages.append(message)
    if first:
      console.warn(f'skipping bad frame: {message}')

  def take(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`batch` without its skip counts, which are added to `count`."""
    self.count += int(np.sum(batch.pop(_SKIPPED)))
    return batch

  def __getstate__(self):  # grain worker processes get a copy (their messages are logged there)
    return {'count': self.count, 'messages': list(self.messages)}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


def _read_or_skip(reader: readers.Reader, i: int, skip: SkipLog | None) -> dict[str, Any] | None:
  """reader.read(i); with `skip`, a bad frame is counted and None returned."""
  try:
    return reader.read(i)
  except readers.BadFrameError as e:
    if skip is None:
      raise
    skip.add(str(e))
    return None


@functools.lru_cache(maxsize=512)
def _global_batch(mode: str, sizes: tuple[tuple[str, int], ...], batch_size: int, step: int,
                  seed: int, weights: tuple[tuple[str, float], ...]) -> tuple[np.ndarray, np.ndarray]:
  return mixing.global_batch(mode, dict(sizes), batch_size, step, seed, dict(weights))


@dataclasses.dataclass
class _TrainSample:
  """grain map: global element number k -> the transformed sample (picklable for mp_prefetch)."""
  sets: dict[int, readers.Reader]  # domain id -> reader of its training split
  mode: str
  sizes: tuple[tuple[str, int], ...]
  weights: tuple[tuple[str, float], ...]
  batch_size: int
  local_batch_size: int
  process_index: int
  seed: int
  input_size: tuple[int, int]
  skip: SkipLog | None
  nyu_crop: bool = True

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    step, r = divmod(int(k), self.local_batch_size)
    position = self.process_index * self.local_batch_size + r
    domain, index = _global_batch(self.mode, self.sizes, self.batch_size, step, self.seed, self.weights)
    reader = self.sets[int(domain[position])]
    i = int(index[position])
    frame = _read_or_skip(reader, i, self.skip)
    # A skipped frame is replaced by the next readable one of the same set: the batch keeps its
    # composition and shape.
    n = 1
    while frame is None:
      if n == len(reader):
        raise readers.BadFrameError(f'every frame of the {reader.name} training set is unreadable')
      frame = _read_or_skip(reader, (i + n) % len(reader), self.skip)
      n += 1
    rng = transforms.frame_rng(self.seed, step, position)
    element = transforms.train_transform(frame, rng, self.input_size, nyu_crop=self.nyu_crop)
    element[_SKIPPED] = np.int32(n - 1)
    return element


def _train_readers(data: ml_collections.ConfigDict) -> dict[int, readers.Reader]:
  paths = resolve_paths(data)
  out = {}
  for name in mixing.mode_sets(data.mode):
    reader = make_reader(paths, name, 'train', data.skip_bad_frames)
    for message in reader.skipped:
      logging.warning('skipped manifest line: %s', message)
    out[mixing.TRAIN_SETS.index(name)] = reader
  return out


def check_files(config: ml_collections.ConfigDict) -> None:
  """Fails (BadFrameError naming the file) when a file that the training or evaluation splits name
  does not exist; a stat per file, no decoding. Files skipped under `data.skip_bad_frames` pass."""
  data = config.data
  if data.skip_bad_frames:
    return
  paths = resolve_paths(data)
  splits = [(name, 'train') for name in mixing.mode_sets(data.mode)]
  splits += [(name, 'val') for name in data.eval_sets]
  for name, split in splits:
    reader = make_reader(paths, name, split)
    if hasattr(reader, 'check_files'):
      reader.check_files()


def _weights(data: ml_collections.ConfigDict) -> tuple[tuple[str, float], ...]:
  return tuple((k, float(data.weights[k])) for k in sorted(data.weights.keys()))


def _sizes(train_readers: Mapping[int, readers.Reader]) -> dict[str, int]:
  return {mixing.TRAIN_SETS[d]: len(r) for d, r in train_readers.items()}


def train_sizes(data: ml_collections.ConfigDict) -> dict[str, int]:
  """{set: frames} of the training sets `data.mode` mixes."""
  return _sizes(_train_readers(data))


def steps_per_epoch(data: ml_collections.ConfigDict, sizes: Mapping[str, int], batch_size: int) -> int:
  """Global batches of `batch_size` in one epoch of `data.mode`'s mix of sets of `sizes` frames."""
  return mixing.steps_per_epoch(data.mode, sizes, batch_size, dict(_weights(data)))


def _exit_with_parent(parent: int, worker_index: int, worker_count: int) -> None:
  """grain worker start-up: a thread ends this worker once its parent process is gone (killed, or
  exited without closing the iterator); grain's workers would wait on their full queue forever."""
  del worker_index, worker_count

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(1)

  threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


def _local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} is not divisible by the process count {process_count}')
  return batch_size // process_count


class TrainIterator(Iterator[dict[str, np.ndarray]]):
  """Per-process training batches for steps `start_step` .. `num_steps - 1`.

  Each batch: the element keys (docs/data.md#data-element) stacked, leading dim batch_size / process_count.
  `step` is the step of the next batch (the data state to checkpoint); `skipped` counts bad
  frames replaced under `data.skip_bad_frames` in the batches yielded so far. An error (a bad
  frame, in a thread or a worker process) or the end closes the iterator: no worker outlives it.
  """

  def __init__(self, config: ml_collections.ConfigDict, start_step: int = 0,
               process_index: int = 0, process_count: int = 1, *, num_steps: int):
    data = config.data
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} out of range for {process_count} processes')
    if config.seed < 0:
      raise ValueError(f'seed must be >= 0, got {config.seed}')
    local = _local_batch_size(config.batch_size, process_count)
    train_readers = _train_readers(data)
    self.sizes = _sizes(train_readers)
    self.steps_per_epoch = steps_per_epoch(data, self.sizes, config.batch_size)
    self.num_steps = int(num_steps)
    self.local_batch_size = local
    self.step = start_step
    self.skipped = SkipLog()
    sample = _TrainSample(
        sets=train_readers, mode=data.mode, sizes=tuple(sorted(self.sizes.items())),
        weights=_weights(data), batch_size=config.batch_size, local_batch_size=local,
        process_index=process_index, seed=config.seed,
        input_size=tuple(int(s) for s in data.input_size),
        skip=self.skipped if data.skip_bad_frames else None, nyu_crop=bool(data.nyu_crop))
    ds = grain.MapDataset.range(start_step * local, max(start_step, self.num_steps) * local).map(sample)
    workers = data.num_workers
    if workers > 0:
      if not flags.FLAGS.is_parsed():  # grain reads its absl flags: outside an absl app, their defaults
        flags.FLAGS.mark_as_parsed()
      ds = ds.batch(local, drop_remainder=True).to_iter_dataset(grain.ReadOptions(
          num_threads=data.num_threads, prefetch_buffer_size=max(1, data.prefetch_buffer_size // local)))
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                          worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
    else:
      ds = ds.to_iter_dataset(grain.ReadOptions(
          num_threads=data.num_threads, prefetch_buffer_size=data.prefetch_buffer_size))
      ds = ds.batch(local, drop_remainder=True)
    self._it = iter(ds)
    self._closed = False

  @property
  def epoch(self) -> int:
    return self.step // self.steps_per_epoch

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = self.skipped.take(next(self._it))
    except BaseException:  # the end, a bad frame, an interrupt: stop the threads and workers now
      self.close()
      raise
    self.step += 1
    return batch

  def close(self) -> None:
    """Stops the reading threads and worker processes (waits for the workers to exit); idempotent."""
    if self._closed:
      return
    self._closed = True
    close = getattr(self._it, 'close', None)
    if close:
      close()
    if self.skipped.count:
      console.warn(f'skipped {self.skipped.count} bad training frames')


def train_iterator(config: ml_collections.ConfigDict, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1, *, num_steps: int) -> TrainIterator:
  """Per-process training batches for steps `start_step` .. `num_steps - 1` (see `TrainIterator`)."""
  return TrainIterator(config, start_step, process_index, process_count, num_steps=num_steps)


@dataclasses.dataclass
class _EvalSample:
  """grain map: process-local element number k -> transformed frame + `frame_mask`."""
  reader: readers.Reader
  batch_size: int
  local_batch_size: int
  process_index: int
  input_size: tuple[int, int]
  skip: SkipLog | None
  protocol: str = 'ours'

  def padding(self) -> dict[str, np.ndarray]:
    h, w = self.input_size
    return {'image': np.zeros((h, w, 3), np.uint8), 'depth': np.zeros((h, w), np.float32),
            'depth_valid': np.zeros((h, w), bool), 'gt_depth': np.zeros((h, w), np.float32),
            'seg': np.full((h, w), classes.IGNORE_LABEL, np.int32),
            'gt_seg': np.full((h, w), classes.IGNORE_LABEL, np.int32),
            'domain': np.int32(self.reader.domain), 'index': np.int32(-1), 'frame_mask': np.bool_(False),
            _SKIPPED: np.int32(0)}

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    b, r = divmod(int(k), self.local_batch_size)
    g = b * self.batch_size + self.process_index * self.local_batch_size + r
    if g >= len(self.reader):
      return self.padding()
    frame = _read_or_skip(self.reader, g, self.skip)
    if frame is None:
      return {**self.padding(), _SKIPPED: np.int32(1)}
    element = transforms.eval_transform(frame, self.input_size, self.protocol)
    element['frame_mask'] = np.bool_(True)
    element[_SKIPPED] = np.int32(0)
    return element


class EvalIterator(Iterator[dict[str, np.ndarray]]):
  """Fixed-size padded batches over one split of one set, in reader order.

  Global batch b holds frames b * B .. b * B + B - 1 of the split; positions past the end (and
  skipped bad frames) are zero padding with `frame_mask` False, `index` -1. Process p of P gets
  positions [p * B / P, (p + 1) * B / P) of each global batch; every process yields `len()` batches.
  """

  def __init__(self, reader: readers.Reader, batch_size: int, process_index: int = 0,
               process_count: int = 1, input_size: tuple[int, int] = (240, 320),
               num_threads: int = 8, prefetch_buffer_size: int = 32, skip_bad_frames: bool = False,
               protocol: str = 'ours'):
    local = _local_batch_size(batch_size, process_count)
    self.reader = reader
    self.num_frames = len(reader)
    self.num_batches = math.ceil(self.num_frames / batch_size)
    self.skipped = SkipLog()
    sample = _EvalSample(reader, batch_size, local, process_index,
                         tuple(int(s) for s in input_size), self.skipped if skip_bad_frames else None,
                         protocol)
    ds = grain.MapDataset.range(self.num_batches * local).map(sample)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=prefetch_buffer_size))
    self._it = iter(ds.batch(local, drop_remainder=True))

  def __len__(self) -> int:
    return self.num_batches

  def __next__(self) -> dict[str, np.ndarray]:
    return self.skipped.take(next(self._it))

  def close(self) -> None:
    close = getattr(self._it, 'close', None)
    if close:
      close()


def eval_iterator(source: ml_collections.ConfigDict | Mapping[str, Any], set_name: str,
                  split: str = 'val', batch_size: int = 16, process_index: int = 0,
                  process_count: int = 1, **overrides: Any) -> EvalIterator:
  """Padded evaluation batches of `set_name` (nyu | lilocbench | corridor) and `split`.

  `source`: a full config (uses `config.data`), its `data` part, or a `resolve_paths`-style dict
  of paths (for eval.py). Keyword overrides: input_size, num_threads, prefetch_buffer_size,
  skip_bad_frames (defaults from the config, else (240, 320), 8, 32, False) and protocol ('ours',
  'reference' or 'reference-frames': the reference's targets, see `transforms.eval_transform`).
  """
  if set_name not in domains.SETS:
    raise ValueError(f'unknown evaluation set {set_name!r}: expected one of {domains.SETS}')
  if isinstance(source, ml_collections.ConfigDict):
    data = source.data if 'data' in source else source
    paths = resolve_paths(data)
    options = {'input_size': tuple(data.input_size), 'num_threads': data.num_threads,
               'prefetch_buffer_size': data.prefetch_buffer_size,
               'skip_bad_frames': data.skip_bad_frames}
  else:
    paths, options = dict(source), {}
  options.update(overrides)
  if options.get('protocol', 'ours') != 'ours' and paths.get('format') == 'decoded':
    raise ValueError(f'the {options["protocol"]} protocol needs the sensor depth and the frames as stored, '
                     'which decoded data do not hold: evaluate it on the file layouts (data.format=files)')
  reader = make_reader(paths, set_name, split, options.get('skip_bad_frames', False))
  return EvalIterator(reader, batch_size, process_index, process_count, **options)

"""TFDS datasets (ArrayRecord) of the three layouts, built and read without TensorFlow.

Many small files are slow on cloud storage; TPU pods read these instead (`data.format = 'tfds'`,
`data.tfds_dir`). The directory must be a file system path: array_record opens shards with plain
`open()` and cannot read `gs://` URLs (google/array_record#120), so copy the datasets from a bucket
to local disk or mount the bucket with gcsfuse.

One example = one frame's *record* of `readers.FIELDS`: the undecoded bytes of its files (PNG,
.npy; b'' = absent), plus `index` and `where` (its origin, for error messages). Reading decodes
them with the same `readers.assemble` as the file readers, so both give identical raw frames
(tfds's own Image feature cannot encode without TensorFlow, and raw bytes keep the decoding
identical). Examples keep the file readers' split order (`disable_shuffling`).

| builder | name | splits |
|---|---|---|
| `EvitNyu` | `evit_nyu` | train, val (the reader's split rule) |
| `EvitLilocbench` | `evit_lilocbench` | train, val (the manifest's time-span rule) |
| `EvitCorridor` | `evit_corridor` | test (= the reader's all) |

Build: `evit-build-tfds --root ROOT --out DIR [--sets nyu,lilocbench,corridor]` (or
`python -m data_pipelines.tfds_builders ...`); needs the `tfds` extra.
Read: `TfdsReader(DIR, 'nyu', 'train')`, through `builder.as_data_source(split)` (never `tfds.load`).
"""

import argparse
import inspect
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath

try:
  import tensorflow_datasets as tfds
except ImportError as e:  # an extra: the default (files) path never imports this module
  from efficientvit_jax import runtime

  if __name__ == '__main__' and runtime.missing_extra(e):  # python -m: one line, not a traceback
    print(f'error: {runtime.missing_extra(e)}', file=sys.stderr)
    sys.exit(2)
  raise ImportError(runtime.missing_extra(e) or str(e), name=e.name) from e  # named for every caller

from data_pipelines import readers
from efficientvit_jax import console
from efficientvit_jax import domains

VERSION = '1.0.0'


class _LayoutBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A dataset of frame records of one set, written from its file readers."""

  VERSION = tfds.core.Version(VERSION)
  SET = ''
  SPLITS: tuple[str, ...] = ()

  # tfds's own lookup of this file needs `importlib_resources`, absent without TensorFlow's deps.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, paths: Mapping[str, Any] | None = None, **kwargs):
    self._paths = paths
    super().__init__(**kwargs)

  # TFDS announces a download before and after building; these builders read local files, and
  # `main` prints where each dataset went.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _info(self) -> tfds.core.DatasetInfo:
    features = {f: tfds.features.Tensor(shape=(), dtype=np.object_) for f in readers.FIELDS}
    features['index'] = tfds.features.Scalar(dtype=np.int64)
    features['where'] = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self, description=f'{self.SET} frame records (efficientvit-jax data_pipelines)',
        features=tfds.features.FeaturesDict(features), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._paths is None:
      raise ValueError(f'{self.name}: building needs the source paths (paths=...)')
    return {split: self._generate_examples(split) for split in self.SPLITS}

  def _generate_examples(self, split: str):
    reader = readers.make_file_reader(self.SET, 'all' if split == 'test' else split, self._paths)
    for i in console.iterate(range(len(reader)), f'tfds {self.SET} {split}', unit='frame'):
      record, _ = reader._record(i)
      example = {f: record.get(f, b'') for f in readers.FIELDS}
      example.update(index=reader.frame_index(i), where=reader.describe(i))
      yield i, example


class EvitNyu(_LayoutBuilder, skip_registration=True):
  SET, SPLITS = 'nyu', ('train', 'val')


class EvitLilocbench(_LayoutBuilder, skip_registration=True):
  SET, SPLITS = 'lilocbench', ('train', 'val')


class EvitCorridor(_LayoutBuilder, skip_registration=True):
  SET, SPLITS = 'corridor', ('test',)  # TFDS reserves the name 'all'


BUILDERS = {'nyu': EvitNyu, 'lilocbench': EvitLilocbench, 'corridor': EvitCorridor}


def build(set_name: str, paths: Mapping[str, Any], out: str) -> str:
  """Writes the TFDS dataset of `set_name` under `out`; returns its folder."""
  builder = BUILDERS[set_name](paths=paths, data_dir=out, file_format='array_record')
  with tempfile.TemporaryDirectory() as downloads:
    builder.download_and_prepare(download_dir=downloads)
  return str(builder.data_dir)


def dataset_dir(tfds_dir: str, set_name: str) -> str:
  return os.path.join(tfds_dir, BUILDERS[set_name].name, VERSION)


class TfdsReader(readers.Reader):
  """A reader over the TFDS data source of one split; same raw frames as the file readers.

  Splits: nyu/lilocbench train, val, all (= train then val, as the file readers); corridor all."""

  def __init__(self, tfds_dir: str, set_name: str, split: str, class_mapping: str | None = None):
    super().__init__()
    if set_name not in BUILDERS:
      raise ValueError(f'unknown data set {set_name!r}: expected one of {tuple(BUILDERS)}')
    self.name, self.domain = set_name, domains.domain_id(set_name)
    splits = BUILDERS[set_name].SPLITS
    if set_name == 'corridor' and split in ('all', 'val'):
      split = 'test'
    elif split == 'all':
      split = '+'.join(splits)
    elif split not in splits:
      raise ValueError(f'{set_name} split must be one of {splits} or all, got {split!r}')
    if '://' in tfds_dir:
      raise ValueError(f'data.tfds_dir={tfds_dir!r}: ArrayRecord shards cannot be read from a URL '
                       '(google/array_record#120); copy the datasets to local disk or mount the '
                       'bucket with gcsfuse and give that path')
    path = dataset_dir(tfds_dir, set_name)
    try:
      builder = tfds.builder_from_directory(path)
    except Exception as e:
      raise FileNotFoundError(f'no TFDS dataset at {path} (data.tfds_dir): build it with '
                              '`python -m data_pipelines.tfds_builders`') from e
    self.source = builder.as_data_source(split=split)
    self.split = split
    self.labels_to_6 = readers.NyuLabels(class_mapping) if set_name == 'nyu' else None

  def __len__(self) -> int:
    return len(self.source)

  def frame_index(self, i: int) -> int:
    return int(self.source[i]['index'])

  def describe(self, i: int) -> str:
    return f'{self.name} tfds {self.split}[{i}]'

  def _record(self, i: int) -> tuple[dict[str, bytes], dict[str, str]]:
    return self._record_of(self.source[i], i)

  def _record_of(self, ex: Mapping[str, Any], i: int) -> tuple[dict[str, bytes], dict[str, str]]:
    where = ex['where'].decode() if isinstance(ex['where'], bytes) else str(ex['where'])
    names = {f: f'{where} ({f}, from TFDS {self.name} {self.split}[{i}])' for f in readers.FIELDS}
    return {f: bytes(ex[f]) for f in readers.FIELDS}, names

  def read(self, i: int) -> dict[str, Any]:
    if not 0 <= i < len(self):
      raise IndexError(f'{self.name}: frame {i} out of range 0..{len(self) - 1}')
    ex = self.source[i]  # one read for record and index
    record, names = self._record_of(ex, i)
    return readers.assemble(record, names, self.domain, int(ex['index']), self.labels_to_6)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=True, help='data root (docs/data.md#data-root)')
  parser.add_argument('--out', default='', help='TFDS folder (default ROOT/tfds)')
  parser.add_argument('--sets', default='nyu,lilocbench,corridor')
  parser.add_argument('--nyu-root', default='')
  parser.add_argument('--teacher-manifest', default='', help="NYU teacher manifest ('none': none)")
  parser.add_argument('--lilocbench-manifest', default='')
  parser.add_argument('--corridor-manifest', default='')
  parser.add_argument('-v', '--verbose', action='store_true',
                      help="also show the INFO log records, ours and the libraries'")
  args = parser.parse_args(argv)
  console.setup(args.verbose)
  tfds.display_progress_bar(False)  # our own progress per split (console.iterate) instead of TFDS's bars
  paths = readers.layout_paths(
      args.root, nyu_root=args.nyu_root, teacher_manifest=args.teacher_manifest,
      lilocbench_manifest=args.lilocbench_manifest, corridor_manifest=args.corridor_manifest,
      tfds_dir=args.out)
  try:
    for set_name in args.sets.split(','):
      folder = build(set_name, paths, paths['tfds_dir'])
      print(f'{set_name}: {folder}')
  except (OSError, ValueError) as e:  # readers' errors (BadFrameError included) name the file
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())

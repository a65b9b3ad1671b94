"""Decode-once data: every split written once as fixed-shape arrays, read by memory map.

The file layouts cost a PNG decode, several .npy parses, teacher-map resizes and (LILocBench) a
whole-frame resize per training sample: about 65 frames/s per host thread at 240x320. Written once
in this form, a training sample is a few memory copies (a crop window of NYU; a row of the others),
so a host thread keeps up with an accelerator. Training reads it with `data.format = 'decoded'`.

  python -m data_pipelines.decoded --root ROOT [--out DIR] [--input-size 240x320]
      [--sets nyu,lilocbench,corridor] [--threads 8] [--overwrite]
  python -m data_pipelines.decoded --verify DIR     # re-hash every array against decoded.json

Layout of DIR (default ROOT/decoded):
  decoded.json                 format version, input size, and per split: frames, stored size,
                               the source fingerprint, each array's bytes and SHA-256
  <set>_<split>/<field>.npy    one array per field, leading axis = frame in split order

| field | dtype | shape |
|---|---|---|
| `rgb` | uint8 | [N, h, w, 3] |
| `depth`, `gt_depth` | float32 | [N, h, w] |
| `depth_valid` | bool | [N, h, w] |
| `seg`, `gt_seg` | uint8 (0-5, 255) | [N, h, w] |
| `index` | int32 | [N] (the frame's index within its set) |

Stored size h x w: the NYU training split at its native resolution (training crops windows
there); every other split already resized to the input size with the very functions the
transforms use (RGB bilinear, maps nearest). So each element equals the file path's element
before augmentation bit for bit. Splits: nyu train/val, lilocbench train/val, corridor all.
The sensor depth is not stored: the reference evaluation protocol reads the file layouts.

Safety: the folder is written under a temporary name and renamed when complete. At training
start a split is refused, naming the folder, when it was written by another format version or
for another input size, when an array's size differs from what decoded.json recorded (truncated),
or when the source files it was made from changed since (size or modification time of every
file; when the sources are absent, e.g. only the decoded folder was copied to a training host, it
is used as written).
"""

import argparse
import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from data_pipelines import readers
from data_pipelines import transforms
from efficientvit_jax import domains
from efficientvit_jax import images

FORMAT_VERSION = 1
INFO = 'decoded.json'
SPLITS = {'nyu': ('train', 'val'), 'lilocbench': ('train', 'val'), 'corridor': ('all',)}
FIELDS = {'rgb': np.uint8, 'depth': np.float32, 'depth_valid': np.bool_, 'gt_depth': np.float32,
          'seg': np.uint8, 'gt_seg': np.uint8}


class StaleError(ValueError):
  """A decoded folder that cannot be used as it is (message names it and says what to do)."""


def _native(set_name: str, split: str) -> bool:
  """Whether a split is stored at its native resolution (NYU training: crops at native scale)."""
  return set_name == 'nyu' and split == 'train'


def _source_files(reader: readers.Reader) -> list[tuple[int, dict[str, str]]]:
  return [(r.index, dict(r.files)) for r in getattr(reader, 'refs', [])]


def fingerprint(reader: readers.FileReader, root: str) -> str:
  """SHA-256 over a file reader's frames: index, and per file its path (relative to `root`),
  size and modification time. Raises StaleError naming a listed file that does not exist."""
  h = hashlib.sha256()
  for index, files in _source_files(reader):
    h.update(f'{index}\n'.encode())
    for field in sorted(files):
      path = files[field]
      try:
        st = os.stat(path)
      except OSError as e:
        raise StaleError(f'{path} is listed by the {reader.name} source but cannot be read '
                         f'({e.strerror})') from e
      h.update(f'{field}\t{os.path.relpath(path, root)}\t{st.st_size}\t{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Writing


def _stored(frame: Mapping[str, Any], size: tuple[int, int] | None) -> dict[str, np.ndarray]:
  """A raw frame -> the stored fields, resized to `size` (None: native) as the transforms do."""
  if size is not None:
    el = transforms.eval_transform(frame, size)
    rgb, maps = el['image'], el
  else:
    rgb, maps = frame['rgb'], frame
  out = {'rgb': rgb}
  out.update({k: maps[k] for k in transforms.MAPS})
  return {k: np.asarray(v).astype(FIELDS[k], copy=False) for k, v in out.items()}


def write_split(reader: readers.FileReader, folder: str, size: tuple[int, int] | None,
                threads: int, progress: bool = True) -> dict[str, Any]:
  """Writes one split's arrays into `folder`; returns its decoded.json entry (less fingerprint)."""
  n = len(reader)
  if n == 0:
    raise ValueError(f'{reader.name}: the split has no frames')
  os.makedirs(folder)
  first = _stored(reader.read(0), size)
  shape = first['rgb'].shape[:2]
  arrays = {k: np.lib.format.open_memmap(os.path.join(folder, f'{k}.npy'), mode='w+',
                                         dtype=FIELDS[k], shape=(n,) + first[k].shape)
            for k in FIELDS}
  index = np.zeros(n, np.int32)

  def put(i: int) -> None:
    fields = _stored(reader.read(i), size)
    if fields['rgb'].shape[:2] != shape:
      raise readers.BadFrameError(
          f'{reader.describe(i)}: frame of {fields["rgb"].shape[0]}x{fields["rgb"].shape[1]}, but the '
          f'split\'s first frame is {shape[0]}x{shape[1]}: decoded data need one frame size per split')
    for k, v in fields.items():
      arrays[k][i] = v
    index[i] = reader.frame_index(i)

  start, done = time.perf_counter(), 0
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for _ in pool.map(put, range(n)):
      done += 1
      if progress and (done == n or done % max(1, n // 10) == 0):
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f'  {reader.name} {os.path.basename(folder)}: {done}/{n} frames ({rate:.0f}/s)', flush=True)
  for a in arrays.values():
    a.flush()
  arrays.clear()  # closes the memmaps before hashing their files
  np.save(os.path.join(folder, 'index.npy'), index)
  files = {}
  for k in (*FIELDS, 'index'):
    path = os.path.join(folder, f'{k}.npy')
    files[k] = {'bytes': os.path.getsize(path), 'sha256': _sha256(path)}
  return {'frames': n, 'stored_size': list(shape), 'files': files}


def write(paths: Mapping[str, Any], out: str, input_size: tuple[int, int], sets: tuple[str, ...],
          threads: int = 8, overwrite: bool = False, root: str = '') -> str:
  """Writes the decoded folder `out` from the file layouts of `paths` (`readers.layout_paths`)."""
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f'{out} exists; pass --overwrite to replace it')
  tmp = f'{out}.partial-{os.getpid()}'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  info: dict[str, Any] = {'format_version': FORMAT_VERSION, 'input_size': list(input_size),
                          'written': time.strftime('%Y-%m-%dT%H:%M:%S'), 'splits': {}}
  try:
    for set_name in sets:
      if set_name not in SPLITS:
        raise ValueError(f'--sets: unknown set {set_name!r}; expected some of {tuple(SPLITS)}')
      for split in SPLITS[set_name]:
        reader = readers.make_file_reader(set_name, split, paths)
        size = None if _native(set_name, split) else tuple(input_size)
        entry = write_split(reader, os.path.join(tmp, f'{set_name}_{split}'), size, threads)
        entry['fingerprint'] = fingerprint(reader, root)
        info['splits'][f'{set_name}_{split}'] = entry
    with open(os.path.join(tmp, INFO), 'w') as f:
      json.dump(info, f, indent=1)
    if os.path.exists(out):  # --overwrite: swap in the complete new folder, then drop the old one
      old = f'{out}.old-{os.getpid()}'
      os.replace(out, old)
      os.replace(tmp, out)
      shutil.rmtree(old)
    else:
      os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def verify(folder: str) -> list[str]:
  """Re-hashes every array of `folder`; returns the problems found (empty: intact)."""
  info = read_info(folder)
  problems = []
  for key, entry in info['splits'].items():
    for field, want in entry['files'].items():
      path = os.path.join(folder, key, f'{field}.npy')
      if not os.path.isfile(path):
        problems.append(f'{path}: missing')
      elif os.path.getsize(path) != want['bytes']:
        problems.append(f'{path}: {os.path.getsize(path)} bytes, {want["bytes"]} written')
      elif _sha256(path) != want['sha256']:
        problems.append(f'{path}: contents changed since it was written (SHA-256 differs)')
  return problems


# ---------------------------------------------------------------------------------------------
# Reading


def read_info(folder: str) -> dict[str, Any]:
  path = os.path.join(folder, INFO)
  if not os.path.isfile(path):
    if os.path.isdir(folder):
      raise StaleError(f'{folder} holds no {INFO}: not a complete decoded folder (rewrite it with '
                       '`python -m data_pipelines.decoded`)')
    raise FileNotFoundError(f'no decoded data at {folder} (data.decoded_dir): write it with '
                            '`python -m data_pipelines.decoded --root ROOT`')
  try:
    with open(path) as f:
      info = json.load(f)
    version = info['format_version']
  except (ValueError, KeyError, TypeError) as e:
    raise StaleError(f'{path}: unreadable ({e}); rewrite the folder with --overwrite') from e
  if version != FORMAT_VERSION:
    raise StaleError(f'{folder} was written in decoded format {version}, this version reads '
                     f'{FORMAT_VERSION}: rewrite it with `python -m data_pipelines.decoded --overwrite`')
  return info


@functools.lru_cache(maxsize=64)
def _checked(folder: str, key: str, mtime_ns: int, paths_json: str, check_source: bool) -> str:
  """Checks one split of `folder` once per (decoded.json version, sources); returns ''."""
  del mtime_ns  # part of the cache key only
  info = read_info(folder)
  if key not in info['splits']:
    raise StaleError(f'{folder} holds no {key} split (it has {sorted(info["splits"])}); write the '
                     'set with `python -m data_pipelines.decoded --sets ...`')
  entry = info['splits'][key]
  for field, want in entry['files'].items():
    path = os.path.join(folder, key, f'{field}.npy')
    size = os.path.getsize(path) if os.path.isfile(path) else -1
    if size != want['bytes']:
      raise StaleError(f'{path}: {"missing" if size < 0 else f"{size} bytes"}, {want["bytes"]} were '
                       'written (truncated or damaged): rewrite the folder with --overwrite')
  if check_source:
    paths = json.loads(paths_json)
    set_name, split = key.rsplit('_', 1)
    try:
      reader = readers.make_file_reader(set_name, split, paths)
    except (OSError, ValueError):
      return ''  # the sources are not here: the decoded folder is the data
    if fingerprint(reader, paths.get('root', '')) != entry['fingerprint']:
      raise StaleError(f'{folder} is stale: the {set_name} {split} source files changed since it was '
                       f'written ({entry.get("written", info.get("written", "?"))}); rewrite it with '
                       '`python -m data_pipelines.decoded --overwrite`')
  return ''


class DecodedReader(readers.Reader):
  """Frames of one split from a decoded folder; `read(i)` returns views into memory maps.

  Raw frames hold `rgb`, the maps of `transforms.MAPS` (labels as uint8), `domain`, `index`;
  no `sensor_depth` (the reference protocol reads the file layouts)."""

  def __init__(self, folder: str, set_name: str, split: str, input_size: tuple[int, int],
               source_paths: Mapping[str, Any] | None = None):
    super().__init__()
    if set_name not in SPLITS:
      raise ValueError(f'unknown data set {set_name!r}: expected one of {tuple(SPLITS)}')
    if set_name == 'corridor' and split == 'val':
      split = 'all'
    self.folder, self.name, self.domain = os.path.abspath(folder), set_name, domains.domain_id(set_name)
    self.key = f'{set_name}_{split}'
    info = read_info(self.folder)
    if tuple(info['input_size']) != tuple(input_size):
      raise StaleError(f'{self.folder} was written for input size {info["input_size"][0]}x'
                       f'{info["input_size"][1]}, data.input_size is {input_size[0]}x{input_size[1]}: '
                       'write another folder with --input-size (and data.decoded_dir)')
    paths_json = json.dumps({k: v for k, v in (source_paths or {}).items()}, sort_keys=True)
    _checked(self.folder, self.key, os.stat(os.path.join(self.folder, INFO)).st_mtime_ns,
             paths_json, source_paths is not None)
    self.num_frames = int(info['splits'][self.key]['frames'])
    self._arrays: dict[str, np.ndarray] | None = None

  def _open(self) -> dict[str, np.ndarray]:
    if self._arrays is None:
      self._arrays = {k: np.load(os.path.join(self.folder, self.key, f'{k}.npy'), mmap_mode='r')
                      for k in (*FIELDS, 'index')}
    return self._arrays

  def __getstate__(self):  # grain worker processes map the files themselves
    state = dict(self.__dict__)
    state['_arrays'] = None
    return state

  def __len__(self) -> int:
    return self.num_frames

  def frame_index(self, i: int) -> int:
    return int(self._open()['index'][i])

  def describe(self, i: int) -> str:
    return f'{self.folder}/{self.key} frame {i}'

  def read(self, i: int) -> dict[str, Any]:
    if not 0 <= i < len(self):
      raise IndexError(f'{self.name}: frame {i} out of range 0..{len(self) - 1}')
    a = self._open()
    frame = {k: a[k][i] for k in FIELDS}
    frame.update(domain=self.domain, index=int(a['index'][i]))
    return frame


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', help='data root holding nyu/, lilocbench/, corridor/')
  parser.add_argument('--out', default='', help='decoded folder (default ROOT/decoded)')
  parser.add_argument('--input-size', default=(240, 320), type=images.parse_size, help='training input HxW')
  parser.add_argument('--sets', default='', help='comma-separated; default: every set under ROOT')
  parser.add_argument('--nyu-root', default='')
  parser.add_argument('--teacher-manifest', default='', help="NYU teacher manifest ('none': none)")
  parser.add_argument('--class-mapping', default='', help='classMapping40.mat for raw 894-class labels')
  parser.add_argument('--lilocbench-manifest', default='')
  parser.add_argument('--corridor-manifest', default='')
  parser.add_argument('--threads', type=int, default=8)
  parser.add_argument('--overwrite', action='store_true', help='replace an existing folder')
  parser.add_argument('--verify', metavar='DIR', help='re-hash the arrays of DIR and exit')
  args = parser.parse_args(argv)
  try:
    if args.verify:
      problems = verify(args.verify)
      for p in problems:
        print(p, file=sys.stderr)
      print(f'{args.verify}: {"intact" if not problems else f"{len(problems)} problem(s)"}')
      return 2 if problems else 0
    if not args.root:
      parser.error('--root is required (or --verify DIR)')
    paths = readers.layout_paths(
        args.root, nyu_root=args.nyu_root, teacher_manifest=args.teacher_manifest,
        class_mapping=args.class_mapping, lilocbench_manifest=args.lilocbench_manifest,
        corridor_manifest=args.corridor_manifest, decoded_dir=args.out)
    sets = tuple(s for s in args.sets.split(',') if s) or readers.available_sets(paths)
    if not sets:
      raise FileNotFoundError(f'{args.root}: no nyu/, lilocbench/manifest.jsonl or '
                              'corridor/manifest.jsonl to decode')
    start = time.perf_counter()
    out = write(paths, paths['decoded_dir'], args.input_size, sets, args.threads, args.overwrite,
                root=paths['root'])
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{out}: {", ".join(sets)} at {args.input_size[0]}x{args.input_size[1]} in '
        f'{time.perf_counter() - start:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())

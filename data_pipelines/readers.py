"""Readers for the on-disk layouts of docs/data.md: the NYU cache (+ teacher manifest), the extracted
LILocBench manifest and the corridor evaluation manifest.

A reader is a list of frames of one split: `len(reader)`, `reader.read(i) -> raw frame`. Reading
goes in two steps that the TFDS sources share (`tfds_builders.py`), so both give identical frames:
1. the frame's *record*: the undecoded bytes of its files, one entry per field of `FIELDS`
   (b'' = absent): `rgb` (PNG/JPEG), `depth` (sensor/GT .npy), `labels` (NYU human labels .npy),
   `teacher_depth` (.npy), `teacher_seg` (.npy), `confidence` (.npy);
2. `assemble(record, ...)`: decode, check, remap labels, resize teacher maps to the RGB resolution.

Raw frame (numpy, native resolution h x w):
  `rgb` uint8 [h, w, 3]; `depth` float32 [h, w] training target (teacher where present, else
  sensor/GT; 0 = none); `depth_valid` bool [h, w] (target > 0 and inside the domain's window);
  `gt_depth` float32 [h, w] (0 wherever unusable: holes, outside the window, confidence < 0.5);
  `seg` int32 [h, w] training label (teacher where present, else the human label; 255 = none);
  `gt_seg` int32 [h, w] human label (255 = none); `sensor_depth` float32 [h, w] the sensor/GT
  depth as stored (holes 0, no window; for the reference protocol); `confidence` float32 [h, w]
  when present;
  `domain` int (0 NYU, 1 LILocBench, 2 corridor); `index` int (frame index within its set).

Readers hold no mutable state, so grain may call `read` from many threads at once. Every problem
with a frame's data raises `BadFrameError` naming the file (and manifest line).
"""

import dataclasses
import io
import json
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from efficientvit_jax import classes
from efficientvit_jax import domains
from efficientvit_jax import images

MIN_CONFIDENCE = 0.5
FIELDS = ('rgb', 'depth', 'labels', 'teacher_depth', 'teacher_seg', 'confidence')
# Teacher maps whose aspect ratio differs from the frame's by more than this are an error (DA3
# rounds its sides to multiples of 14, which changes the ratio by < 1 %).
ASPECT_TOLERANCE = 0.02


class BadFrameError(ValueError):
  """A frame's files are missing, truncated, undecodable or of the wrong shape/dtype."""


def _nyu40_to_6() -> np.ndarray:
  lut = np.full(41, 5, np.uint8)  # every other id -> other
  lut[0] = classes.IGNORE_LABEL
  lut[[2, 20]] = 0  # floor, floor mat
  lut[[1, 8, 9, 22]] = 1  # wall, door, window, ceiling
  lut[31] = 2  # person
  lut[[3, 4, 5, 6, 7, 10, 12, 14, 15, 17, 24, 32, 33, 34, 36, 39]] = 3  # furniture
  lut[19] = 4  # mirror -> glass
  return lut


NYU40_TO_6 = _nyu40_to_6()  # [41] uint8, NYU40 id -> class id (0 -> 255)
_NYU40_TO_6_I32 = NYU40_TO_6.astype(np.int32)


def load_class_mapping(path: str) -> np.ndarray:
  """[895] int64: NYU 894-class id -> NYU40 id from `classMapping40.mat` (`mapClass`), 0 -> 0."""
  import scipy.io

  try:
    mat = scipy.io.loadmat(path)
  except (OSError, ValueError) as e:
    raise ValueError(f'data.nyu.class_mapping: cannot read {path}: {e}') from e
  if 'mapClass' not in mat:
    raise ValueError(f'data.nyu.class_mapping: {path} holds no `mapClass` table '
                     f'(keys: {sorted(k for k in mat if not k.startswith("__"))})')
  table = np.asarray(mat['mapClass']).astype(np.int64).ravel()
  if table.min(initial=0) < 0 or table.max(initial=0) > 40:
    raise ValueError(f'data.nyu.class_mapping: {path}: mapClass values must lie in 0..40')
  return np.concatenate([[0], table])


class NyuLabels:
  """Human NYU labels (894-class or NYU40 ids) -> 6 classes, with the 894 -> 40 table of
  `data.nyu.class_mapping` (loaded once; needed only by frames whose labels exceed 40)."""

  def __init__(self, class_mapping: str | None = None):
    self.path = class_mapping or None
    self._table = load_class_mapping(self.path) if self.path else None

  def __call__(self, labels: np.ndarray, name: str) -> np.ndarray:
    """labels: integer [h, w] -> int32 [h, w] in 0..5 or 255."""
    if labels.size and labels.min() < 0:
      raise BadFrameError(f'{name}: negative label ids')
    top = int(labels.max(initial=0))
    if top > 40:  # raw 894-class ids (decided per frame, as the reference does)
      if self._table is None:
        raise ValueError(f'{name}: labels go up to {top} (raw 894-class NYU ids): set '
                         'data.nyu.class_mapping to the path of classMapping40.mat')
      if top >= len(self._table):
        raise BadFrameError(f'{name}: label id {top} is beyond the {len(self._table) - 1} ids of '
                            f'{self.path}')
      labels = self._table[labels]
    return _NYU40_TO_6_I32[labels]


# ---------------------------------------------------------------------------------------------
# Decoding and resizing


def decode_rgb(data: bytes, name: str) -> np.ndarray:
  """PNG/JPEG bytes -> uint8 [h, w, 3]."""
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # decodes everything now, so truncation fails here
      rgb = np.asarray(img.convert('RGB'))
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise BadFrameError(f'{name}: cannot decode image ({type(e).__name__}: {e})') from e
  return rgb


# np.load parses the .npy header with ast.literal_eval, which is not thread-safe in the CPython 3.11
# this project runs (gh-106905): grain's reader threads then fail at random with "SystemError: AST
# constructor recursion depth mismatch". One np.load at a time avoids it (the copy is cheap).
_NPY_LOCK = threading.Lock()


def decode_npy(data: bytes, name: str, kind: str) -> np.ndarray:
  """.npy bytes -> [h, w] array; kind 'float' or 'int' is the dtype family required."""
  try:
    with _NPY_LOCK:
      arr = np.load(io.BytesIO(data), allow_pickle=False)
  except Exception as e:
    raise BadFrameError(f'{name}: cannot read .npy ({type(e).__name__}: {e})') from e
  if arr.ndim == 3 and arr.shape[0] == 1:  # [1, h, w] and [h, w, 1] as some tools write them
    arr = arr[0]
  elif arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim != 2:
    raise BadFrameError(f'{name}: expected a 2-D map, got shape {arr.shape}')
  want = np.floating if kind == 'float' else np.integer
  if not np.issubdtype(arr.dtype, want):
    raise BadFrameError(f'{name}: expected a {kind} array, got dtype {arr.dtype}')
  return arr


def _check_aspect(shape: tuple[int, ...], size: tuple[int, int], name: str) -> None:
  h, w = size
  ratio = (shape[0] / shape[1]) / (h / w)
  if abs(ratio - 1.0) > ASPECT_TOLERANCE:
    raise BadFrameError(f'{name}: map of {shape[0]}x{shape[1]} cannot be resized to the frame\'s '
                        f'{h}x{w}: aspect ratios differ')


# ---------------------------------------------------------------------------------------------
# Assembly: record -> raw frame


def _teacher_depth(data: bytes, name: str, hw: tuple[int, int], lo: float,
                   hi: float) -> tuple[np.ndarray, np.ndarray]:
  """A teacher depth .npy (any size of the frame's aspect) -> ([H, W] float32 depth at the frame's
  size, [H, W] bool within [lo, hi]); non-finite values count as 0 (invalid)."""
  teacher = decode_npy(data, name, 'float')
  teacher = np.nan_to_num(teacher.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
  _check_aspect(teacher.shape, hw, name)
  depth = images.resize_depth_valid(np.maximum(teacher, 0.0), hw)
  return depth, (depth >= lo) & (depth <= hi)


def _teacher_seg(data: bytes, name: str, hw: tuple[int, int]) -> np.ndarray:
  """A teacher label .npy (class ids or the ignore label, the frame's aspect) -> [H, W] int32 at the
  frame's size (nearest)."""
  teacher_seg = decode_npy(data, name, 'int')
  ignore, top = classes.IGNORE_LABEL, classes.NUM_CLASSES - 1
  if np.any((teacher_seg > top) & (teacher_seg != ignore)) or np.any(teacher_seg < 0):
    raise BadFrameError(f'{name}: labels must be 0..{top} or {ignore}')
  _check_aspect(teacher_seg.shape, hw, name)
  return images.resize_nearest(teacher_seg, hw).astype(np.int32)


def assemble(record: Mapping[str, bytes], names: Mapping[str, str], domain: int, index: int,
             labels_to_6: Callable[[np.ndarray, str], np.ndarray] | None = None) -> dict[str, Any]:
  """Decodes and checks one frame's record into a raw frame (module docstring).

  Args:
    record: field -> file bytes (b'' or missing = absent); `rgb` and `depth` are required.
    names: field -> name used in error messages (file path and manifest line).
    domain: 0 NYU, 1 LILocBench, 2 corridor (selects the depth window).
    index: frame index within its set.
    labels_to_6: maps the human `labels` to 6 classes (NYU).
  """
  name = lambda field: names.get(field, field)
  rgb = decode_rgb(record['rgb'], name('rgb'))
  hw = rgb.shape[:2]

  def same_size(arr: np.ndarray, field: str) -> np.ndarray:
    if arr.shape != hw:
      raise BadFrameError(f'{name(field)}: shape {arr.shape} differs from the RGB frame\'s {hw}')
    return arr

  lo, hi = domains.DEPTH_WINDOWS[domains.SETS[domain]]
  sensor = same_size(decode_npy(record['depth'], name('depth'), 'float'), 'depth')
  sensor = np.nan_to_num(sensor.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
  usable = (sensor >= lo) & (sensor <= hi)
  frame: dict[str, Any] = {}
  if record.get('confidence'):
    confidence = same_size(decode_npy(record['confidence'], name('confidence'), 'float'),
                           'confidence').astype(np.float32)
    usable &= confidence >= MIN_CONFIDENCE
    frame['confidence'] = confidence
  gt_depth = np.where(usable, sensor, 0.0).astype(np.float32)

  if record.get('teacher_depth'):
    depth, depth_valid = _teacher_depth(record['teacher_depth'], name('teacher_depth'), hw, lo, hi)
  else:
    depth, depth_valid = gt_depth, usable

  if record.get('labels'):
    labels = same_size(decode_npy(record['labels'], name('labels'), 'int'), 'labels')
    if labels_to_6 is None:
      raise ValueError(f'{name("labels")}: human labels need a label mapping')
    gt_seg = labels_to_6(labels, name('labels'))
  else:
    gt_seg = np.full(hw, classes.IGNORE_LABEL, np.int32)
  if record.get('teacher_seg'):
    seg = _teacher_seg(record['teacher_seg'], name('teacher_seg'), hw)
  else:
    seg = gt_seg

  frame.update(rgb=rgb, depth=depth, depth_valid=depth_valid, gt_depth=gt_depth, seg=seg,
               gt_seg=gt_seg, sensor_depth=sensor, domain=domain, index=index)
  return frame


# ---------------------------------------------------------------------------------------------
# Frame lists


@dataclasses.dataclass(frozen=True)
class FrameRef:
  """One frame of a file layout: its files (absolute paths per field) and where it was listed."""
  index: int
  files: Mapping[str, str]
  where: str  # e.g. 'manifest.jsonl line 12', for error messages
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def read_manifest(path: str, required: Sequence[str | tuple[str, ...]],
                  skip_bad: bool = False) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
  """JSONL manifest -> ([(line number, entry)], [skipped-line messages]).

  `required` entries are keys, or tuples of alternative keys; a line lacking one (or null) is an
  error naming the manifest and line, or skipped with `skip_bad`. Blank lines are ignored.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'manifest {path} does not exist')
  entries, skipped = [], []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        entry = json.loads(line)
        if not isinstance(entry, dict):
          raise ValueError('not a JSON object')
      except ValueError as e:
        msg = f'{path} line {lineno}: not valid JSON ({e})'
        if not skip_bad:
          raise BadFrameError(msg) from e
        skipped.append(msg)
        continue
      missing = [k if isinstance(k, str) else '|'.join(k) for k in required
                 if not any(entry.get(a) is not None for a in ((k,) if isinstance(k, str) else k))]
      if missing:
        msg = f'{path} line {lineno}: missing required key(s) {missing}'
        if not skip_bad:
          raise BadFrameError(msg)
        skipped.append(msg)
        continue
      entries.append((lineno, entry))
  return entries, skipped


def _rel(base: str, p: str) -> str:
  return p if os.path.isabs(p) else os.path.join(base, p)


def _read_bytes(path: str, where: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise BadFrameError(f'{where}: cannot read {path} ({type(e).__name__}: {e.strerror or e})') from e


def nyu_split_ids(cache: str, split: str) -> list[int]:
  """Frame ids of a NYU split: `{split}_indices.txt` if present, else the reference rule
  (`random.Random(42).shuffle` of the sorted ids, first 80 % train); 'all' = train then val."""
  if split == 'all':
    return nyu_split_ids(cache, 'train') + nyu_split_ids(cache, 'val')
  if split not in ('train', 'val'):
    raise ValueError(f'NYU split must be train, val or all, got {split!r}')
  listed = os.path.join(cache, f'{split}_indices.txt')
  if os.path.isfile(listed):
    with open(listed) as f:
      return [int(tok) for tok in f.read().split()]
  rgb_dir = os.path.join(cache, 'rgb')
  if not os.path.isdir(rgb_dir):
    raise FileNotFoundError(f'{rgb_dir} does not exist: data.nyu.root must hold nyu_cache/rgb/')
  order = sorted(int(f[:-4]) for f in os.listdir(rgb_dir) if f.endswith('.png') and f[:-4].isdigit())
  random.Random(42).shuffle(order)
  n_train = int(0.8 * len(order))
  return order[:n_train] if split == 'train' else order[n_train:]


def lilocbench_split(entries: Sequence[Mapping[str, Any]]) -> list[str]:
  """'train' / 'val' per manifest entry: per (sequence, camera), frames after 80 % of that
  camera's time span are validation. A pure function of the manifest (docs/data.md#extracted-layout)."""
  spans: dict[tuple[str, str], list[float]] = {}
  for e in entries:
    key, t = (str(e['sequence']), str(e['camera'])), float(e['timestamp'])
    lo_hi = spans.setdefault(key, [t, t])
    lo_hi[0], lo_hi[1] = min(lo_hi[0], t), max(lo_hi[1], t)
  out = []
  for e in entries:
    t0, t1 = spans[(str(e['sequence']), str(e['camera']))]
    out.append('val' if float(e['timestamp']) > t0 + 0.8 * (t1 - t0) else 'train')
  return out


def read_teacher_manifest(path: str, skip_bad: bool = False
                          ) -> tuple[dict[str, dict[str, str]], list[str]]:
  """NYU teacher manifest -> ({stem: {'teacher_depth': path, 'teacher_seg': path}}, skipped).

  Paths are relative to the manifest's folder; null entries are absent; other keys are ignored.
  Numeric stems are normalised ('12' and '00012' are the same frame)."""
  entries, skipped = read_manifest(path, ['stem'], skip_bad)
  base = os.path.dirname(os.path.abspath(path))
  out = {}
  for _, e in entries:
    files = {}
    if e.get('da3_depth'):
      files['teacher_depth'] = _rel(base, e['da3_depth'])
    if e.get('sam2_seg'):
      files['teacher_seg'] = _rel(base, e['sam2_seg'])
    out[_stem_key(e['stem'])] = files
  return out, skipped


def _stem_key(stem: Any) -> str:
  stem = str(stem)
  return str(int(stem)) if stem.isdigit() else stem


# ---------------------------------------------------------------------------------------------
# Readers


class Reader:
  """Frames of one split of one set. Subclasses fill `_record`."""

  name: str = ''
  domain: int = 0
  labels_to_6: Callable[[np.ndarray, str], np.ndarray] | None = None

  def __init__(self):
    self.skipped: list[str] = []  # manifest lines dropped at construction (skip_bad_frames)

  def __len__(self) -> int:
    raise NotImplementedError

  def frame_index(self, i: int) -> int:
    """Index within the set (the element's `index`) of the i-th frame of this split."""
    raise NotImplementedError

  def _record(self, i: int) -> tuple[dict[str, bytes], dict[str, str]]:
    raise NotImplementedError

  def describe(self, i: int) -> str:
    return f'{self.name} frame {self.frame_index(i)}'

  def read(self, i: int) -> dict[str, Any]:
    """The i-th frame of the split as a raw frame (module docstring)."""
    if not 0 <= i < len(self):
      raise IndexError(f'{self.name}: frame {i} out of range 0..{len(self) - 1}')
    record, names = self._record(i)
    return assemble(record, names, self.domain, self.frame_index(i), self.labels_to_6)


class FileReader(Reader):
  """A reader over `FrameRef`s whose files are read from disk."""

  def __init__(self, refs: Sequence[FrameRef]):
    super().__init__()
    self.refs = list(refs)

  def __len__(self) -> int:
    return len(self.refs)

  def frame_index(self, i: int) -> int:
    return self.refs[i].index

  def describe(self, i: int) -> str:
    return self.refs[i].where

  def check_files(self) -> None:
    """Raises BadFrameError naming the first file of the split that does not exist (stat only)."""
    missing = [(p, ref.where) for ref in self.refs for p in ref.files.values() if not os.path.isfile(p)]
    if missing:
      raise BadFrameError(f'{missing[0][0]} ({missing[0][1]}): no such file'
                          + (f'; {len(missing)} files of the {self.name} split are missing'
                             if len(missing) > 1 else ''))

  def _record(self, i: int) -> tuple[dict[str, bytes], dict[str, str]]:
    ref = self.refs[i]
    names = {f: f'{p} ({ref.where}, {f})' for f, p in ref.files.items()}
    return {f: _read_bytes(p, ref.where) for f, p in ref.files.items()}, names


class NyuReader(FileReader):
  """NYU cache `root/nyu_cache/{rgb,depth,seg}` + optional teacher manifest (docs/data.md#nyu-depth-v2).

  `index` = the NYU frame id (file number). Split order = the index file's or the reference rule's.
  """

  name, domain = 'nyu', 0

  def __init__(self, root: str, split: str, teacher_manifest: str | None = None,
               class_mapping: str | None = None, skip_bad_frames: bool = False):
    cache = os.path.join(root, 'nyu_cache')
    teacher, skipped = ({}, [])
    if teacher_manifest:
      teacher, skipped = read_teacher_manifest(teacher_manifest, skip_bad_frames)
    refs = []
    for i in nyu_split_ids(cache, split):
      stem = f'{i:05d}'
      files = {'rgb': os.path.join(cache, 'rgb', f'{stem}.png'),
               'depth': os.path.join(cache, 'depth', f'{stem}.npy'),
               'labels': os.path.join(cache, 'seg', f'{stem}.npy')}
      files.update(teacher.get(_stem_key(stem), {}))
      refs.append(FrameRef(i, files, f'NYU frame {stem}'))
    super().__init__(refs)
    self.skipped = skipped
    self.labels_to_6 = NyuLabels(class_mapping)


class LilocbenchReader(FileReader):
  """Extracted LILocBench `manifest.jsonl` (docs/data.md#lilocbench); `index` = 0-based manifest frame line.

  Splits keep manifest order; 'all' = train frames, then val frames."""

  name, domain = 'lilocbench', 1
  REQUIRED = ('rgb', 'sensor_depth', 'sequence', 'camera', 'timestamp')

  def __init__(self, manifest: str, split: str, skip_bad_frames: bool = False):
    if split not in ('train', 'val', 'all'):
      raise ValueError(f'LILocBench split must be train, val or all, got {split!r}')
    entries, skipped = read_manifest(manifest, self.REQUIRED, skip_bad_frames)
    entries, bad = _checked_timestamps(manifest, entries, skip_bad_frames)
    base = os.path.dirname(os.path.abspath(manifest))
    lines = _frame_lines(manifest)
    splits = lilocbench_split([e for _, e in entries])
    # 'all' = the train frames, then the val frames (as the TFDS 'train+val').
    order = [k for part in (('train', 'val') if split == 'all' else (split,))
             for k, s in enumerate(splits) if s == part]
    refs = []
    for lineno, e in (entries[k] for k in order):
      files = {'rgb': _rel(base, e['rgb']), 'depth': _rel(base, e['sensor_depth'])}
      if e.get('da3_depth'):
        files['teacher_depth'] = _rel(base, e['da3_depth'])
      if e.get('seg'):
        files['teacher_seg'] = _rel(base, e['seg'])
      meta = {k: e[k] for k in ('sequence', 'camera', 'timestamp', 'stem') if k in e}
      refs.append(FrameRef(lines[lineno], files, f'{manifest} line {lineno}', meta))
    super().__init__(refs)
    self.skipped = skipped + bad


class CorridorReader(FileReader):
  """Corridor evaluation `manifest.jsonl` (docs/data.md#corridor-set): every frame is an evaluation frame."""

  name, domain = 'corridor', 2
  REQUIRED = ('rgb', ('depth', 'sensor_depth'))

  def __init__(self, manifest: str, split: str = 'all', skip_bad_frames: bool = False):
    if split not in ('all', 'val'):
      raise ValueError(f'the corridor set is evaluation-only: split must be all (or val), got {split!r}')
    entries, skipped = read_manifest(manifest, self.REQUIRED, skip_bad_frames)
    base = os.path.dirname(os.path.abspath(manifest))
    lines = _frame_lines(manifest)
    refs = []
    for lineno, e in entries:
      files = {'rgb': _rel(base, e['rgb']),
               'depth': _rel(base, e['depth'] if e.get('depth') else e['sensor_depth'])}
      for field, keys in (('confidence', ('confidence',)), ('teacher_depth', ('da3_depth',)),
                          ('teacher_seg', ('sam2_seg', 'seg'))):
        for k in keys:
          if e.get(k):
            files[field] = _rel(base, e[k])
            break
      refs.append(FrameRef(lines[lineno], files, f'{manifest} line {lineno}'))
    super().__init__(refs)
    self.skipped = skipped


def _frame_lines(path: str) -> dict[int, int]:
  """Manifest line number -> 0-based frame number (blank lines do not count)."""
  out, n = {}, 0
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():
        out[lineno], n = n, n + 1
  return out


def _checked_timestamps(path: str, entries: list[tuple[int, dict[str, Any]]], skip_bad: bool
                        ) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
  good, bad = [], []
  for lineno, e in entries:
    try:
      float(e['timestamp'])
      good.append((lineno, e))
    except (TypeError, ValueError):
      msg = f'{path} line {lineno}: timestamp {e["timestamp"]!r} is not a number'
      if not skip_bad:
        raise BadFrameError(msg) from None
      bad.append(msg)
  return good, bad


def layout_paths(root: str, *, nyu_root: str = '', teacher_manifest: str = '', class_mapping: str = '',
                 lilocbench_manifest: str = '', corridor_manifest: str = '', tfds_dir: str = '',
                 decoded_dir: str = '') -> dict[str, str | None]:
  """Every data path (docs/data.md#data-root), with empty ones derived from `root`.

  Returns keys root, nyu_root (ROOT/nyu), nyu_teacher_manifest (<nyu_root>/teacher/manifest.jsonl;
  None for 'none' or when the derived file does not exist), nyu_class_mapping (None when empty),
  lilocbench_manifest (ROOT/lilocbench/manifest.jsonl), corridor_manifest
  (ROOT/corridor/manifest.jsonl), tfds_dir (ROOT/tfds), decoded_dir (ROOT/decoded).
  """
  nyu_root = nyu_root or os.path.join(root, 'nyu')
  teacher: str | None = teacher_manifest
  if teacher.lower() == 'none':
    teacher = None
  elif not teacher:
    teacher = os.path.join(nyu_root, 'teacher', 'manifest.jsonl')
    if not os.path.isfile(teacher):
      logging.warning('no NYU teacher manifest at %s: training targets are the NYU depth and '
                      'labels (set data.nyu.teacher_manifest)', teacher)
      teacher = None
  return {
      'root': root,
      'nyu_root': nyu_root,
      'nyu_teacher_manifest': teacher,
      'nyu_class_mapping': class_mapping or None,
      'lilocbench_manifest': lilocbench_manifest or os.path.join(root, 'lilocbench', 'manifest.jsonl'),
      'corridor_manifest': corridor_manifest or os.path.join(root, 'corridor', 'manifest.jsonl'),
      'tfds_dir': tfds_dir or os.path.join(root, 'tfds'),
      'decoded_dir': decoded_dir or os.path.join(root, 'decoded'),
  }


def available_sets(paths: Mapping[str, Any]) -> tuple[str, ...]:
  """The sets whose file layouts exist at `paths` (`layout_paths` output)."""
  found = {'nyu': os.path.isdir(os.path.join(paths['nyu_root'], 'nyu_cache')),
           'lilocbench': os.path.isfile(paths['lilocbench_manifest']),
           'corridor': os.path.isfile(paths['corridor_manifest'])}
  return tuple(name for name in domains.SETS if found[name])


def make_file_reader(set_name: str, split: str, paths: Mapping[str, str | None],
                     skip_bad_frames: bool = False) -> FileReader:
  """A file reader for `set_name` (nyu | lilocbench | corridor) from `layout_paths` output (keys
  nyu_root, nyu_teacher_manifest, nyu_class_mapping, lilocbench_manifest, corridor_manifest)."""
  if set_name == 'nyu':
    return NyuReader(paths['nyu_root'], split, paths.get('nyu_teacher_manifest'),
                     paths.get('nyu_class_mapping'), skip_bad_frames)
  if set_name == 'lilocbench':
    return LilocbenchReader(paths['lilocbench_manifest'], split, skip_bad_frames)
  if set_name == 'corridor':
    return CorridorReader(paths['corridor_manifest'], split, skip_bad_frames)
  raise ValueError(f'unknown data set {set_name!r}: expected one of {domains.SETS}')

"""What train.py writes to TensorBoard besides scalars: evaluation pictures, the config as text and
as hparams (whose metrics are validation scalars the run writes). Writers are tensorboardX
`SummaryWriter`s; view with `tensorboard --logdir W/tb`."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from efficientvit_jax import classes
from efficientvit_jax import trees


def flat_hparams(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
  """A config (nested JSON dict) -> {'optimizer.decoder_lr': 0.001, ...}; lists become strings."""
  return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in trees.flatten(config).items()}


def write_config(writer: Any, config: Mapping[str, Any]) -> None:
  """The config as a text summary (`config`, indented JSON)."""
  text = '\n'.join('    ' + line for line in json.dumps(config, indent=2, sort_keys=True).splitlines())
  writer.add_text('config', text, 0)
  writer.flush()


def write_hparams(writer: Any, config: Mapping[str, Any], metrics: Sequence[str]) -> None:
  """The config as hparams of this run, with `metrics` (scalar tags this run writes, e.g. those of
  its first validation) as the hparams' metrics."""
  from tensorboardX.summary import hparams

  experiment, start, _ = hparams(flat_hparams(config), {m: 0.0 for m in metrics})
  file_writer = writer._get_file_writer()
  # In this run's own event file (add_hparams would start a separate run).
  file_writer.add_summary(experiment)
  file_writer.add_summary(start)
  writer.flush()


def panel_image(rgb: np.ndarray, gt_depth: np.ndarray, depth: np.ndarray, seg: np.ndarray,
                gt_seg: np.ndarray | None) -> np.ndarray:
  """`panels.evaluation_panel` as an [H, W, 3] uint8 array."""
  from PIL import Image

  from efficientvit_jax import panels

  buf = io.BytesIO()
  panels.evaluation_panel(buf, rgb, gt_depth, depth, seg, gt_seg)
  buf.seek(0)
  with Image.open(buf) as img:
    return np.asarray(img.convert('RGB'))


def write_panels(writer: Any, tag: str, frames: Sequence[Mapping[str, np.ndarray]], step: int) -> None:
  """One evaluation panel image per frame (`evaluation.FirstFrames` entries), `tag/<index>`."""
  for frame in frames:
    rgb = np.asarray(frame['image'])
    if rgb.dtype != np.uint8:  # evaluation batches carry uint8 images; float ones are in [0, 1]
      rgb = (rgb * 255).round().clip(0, 255).astype(np.uint8)
    gt_seg = frame.get('gt_seg')
    if gt_seg is not None and not (gt_seg != classes.IGNORE_LABEL).any():
      gt_seg = None
    image = panel_image(rgb, frame['gt_depth'], frame['depth'], frame['seg'], gt_seg)
    writer.add_image(f'{tag}/{int(frame["index"]):05d}', image, step, dataformats='HWC')
  writer.flush()

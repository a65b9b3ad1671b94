"""Pictures of predictions: coloured depth with a scale, coloured classes with a legend.

Used by `predict.py` (RGB | depth | classes), `eval.py` (RGB | GT | prediction | error | labels; the
confusion matrix; depth error by distance) and TensorBoard (`summaries.py`).
matplotlib with the Agg backend only; numpy in, PNG out.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.patches import Patch

from efficientvit_jax import classes


def _legend(ax, labels_list: list[np.ndarray]) -> None:
  present = sorted({int(c) for labels in labels_list for c in np.unique(labels) if c < classes.NUM_CLASSES})
  handles = [Patch(color=classes.PALETTE[c] / 255.0, label=classes.CLASS_NAMES[c]) for c in present]
  if handles:
    ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)


def _depth_axes(fig, ax, depth: np.ndarray, vmax: float, title: str, cmap: str = 'turbo') -> None:
  masked = np.ma.masked_where(~(depth > 0), depth)
  cm = plt.get_cmap(cmap).with_extremes(bad='black')
  im = ax.imshow(masked, cmap=cm, norm=mcolors.Normalize(0.0, vmax))
  fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label='m')
  ax.set_title(title, fontsize=9)


def prediction_panel(path: str | os.PathLike, rgb: np.ndarray, depth: np.ndarray, seg: np.ndarray) -> None:
  """RGB | coloured depth with a scale | coloured classes with a legend, as one PNG."""
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  axes[0].imshow(rgb)
  axes[0].set_title('RGB', fontsize=9)
  _depth_axes(fig, axes[1], depth, float(max(np.percentile(depth, 99), 1e-3)), 'depth')
  axes[2].imshow(classes.colorize(seg))
  axes[2].set_title('classes', fontsize=9)
  _legend(axes[2], [seg])
  for ax in axes:
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def evaluation_panel(path: str | os.PathLike, rgb: np.ndarray, gt_depth: np.ndarray, depth: np.ndarray,
                     seg: np.ndarray, gt_seg: np.ndarray | None) -> None:
  """RGB | GT depth | predicted depth | |error| on valid GT | labels (GT over prediction)."""
  n = 5 if gt_seg is not None else 4
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8))
  valid = gt_depth > 0
  vmax = float(max(np.percentile(gt_depth[valid], 99) if valid.any() else np.percentile(depth, 99), 1e-3))
  axes[0].imshow(rgb)
  axes[0].set_title('RGB', fontsize=9)
  _depth_axes(fig, axes[1], gt_depth, vmax, 'ground truth')
  _depth_axes(fig, axes[2], depth, vmax, 'prediction')
  error = np.where(valid, np.abs(depth - gt_depth), 0.0)
  rmse = float(np.sqrt(np.mean(np.square(error[valid])))) if valid.any() else float('nan')
  _depth_axes(fig, axes[3], np.where(valid, error + 1e-9, 0.0),
              float(max(np.percentile(error[valid], 99) if valid.any() else 1.0, 1e-3)),
              f'|error| (RMSE {rmse:.3f} m)', cmap='magma')
  if gt_seg is not None:
    h = seg.shape[0]
    stacked = np.concatenate([classes.colorize(gt_seg)[: h // 2], classes.colorize(seg)[h // 2:]], axis=0)
    axes[4].imshow(stacked)
    axes[4].axhline(h // 2, color='white', lw=1)
    axes[4].set_title('labels: GT (top) / prediction (bottom)', fontsize=9)
    _legend(axes[4], [gt_seg, seg])
  for ax in axes:
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def confusion_figure(path: str | os.PathLike,
                     matrices: list[tuple[str, list[str], list[list[int]]]]) -> None:
  """Row-normalised confusion matrices (rows ground truth), one panel per (title, classes, counts)."""
  n = len(matrices)
  cols = min(n, 4)
  rows_ = -(-n // cols)
  fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 4.6 * rows_), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis('off')
  for ax, (title, names, counts) in zip(axes.flat, matrices):
    c = np.asarray(counts, np.float64)
    rows = c.sum(1, keepdims=True)
    frac = np.divide(c, rows, out=np.zeros_like(c), where=rows > 0)
    ax.imshow(frac, cmap='Blues', vmin=0.0, vmax=1.0)
    for i in range(len(names)):
      for j in range(len(names)):
        if c[i, j]:
          ax.text(j, i, f'{100 * frac[i, j]:.0f}', ha='center', va='center', fontsize=7,
                  color='white' if frac[i, j] > 0.5 else 'black')
    ax.set_xticks(range(len(names)), names, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel('prediction', fontsize=8)
    ax.set_ylabel('ground truth', fontsize=8)
    ax.set_title(f'{title} (% of each true class)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def depth_bins_figure(path: str | os.PathLike, results: list[tuple[str, dict[str, dict]]], title: str = '') -> None:
  """RMSE by ground-truth distance bin, one group of bars per bin, one bar per (label, bins) result."""
  names = list(results[0][1])
  fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names) * max(1, len(results)) ** 0.5, 3.6))
  width = 0.8 / len(results)
  for k, (label, bins) in enumerate(results):
    values = [bins.get(b, {}).get('rmse') for b in names]
    x = np.arange(len(names)) + (k - (len(results) - 1) / 2) * width
    ax.bar(x, [np.nan if v is None else v for v in values], width, label=label)
  ax.set_xticks(np.arange(len(names)),
                [f"{b}\n{results[0][1][b].get('n_pixels', 0):,} px" for b in names], fontsize=8)
  ax.set_ylabel('RMSE (m)')
  ax.set_title(f'depth error by distance{": " + title if title else ""}', fontsize=9)
  if len(results) > 1:
    ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)

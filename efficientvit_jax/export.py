"""Deployable files from any checkpoint: ONNX (through the PyTorch twin) or a serialized JAX program.

  python -m efficientvit_jax.export --checkpoint SRC --format onnx|stablehlo --out F [--size HxW]
      [--dynamic-batch] [--fp16] [--overwrite] [--step N] [--allow-pickle]

Both formats hold the whole eval-mode network (the checkpoint's backbone), normalisation
included, at one input size (default: the training input size the checkpoint records, else
240x320; printed), with one input and three outputs:

  image       [N, H, W, 3] uint8 RGB (the camera's bytes; divided by 255 and normalised inside)
  depth       [N, H, W] float32 metres (>= 0)
  seg_logits  [N, H, W, C] float32
  labels      [N, H, W] uint8 class ids (argmax of seg_logits)

N is fixed to 1 unless --dynamic-batch (a symbolic batch axis). ONNX: opset 18, weights inside
the one file, BatchNorm folded into the convolutions; --fp16 converts weights and activations to
float16 (inputs and outputs keep their types), for TensorRT / GPU runtimes. StableHLO: the bytes
of `jax.export.Exported.serialize()`, lowered for CPU and CUDA, which `jax.export.deserialize`
loads without this package; --fp16 computes convolutions in float16 there.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import sys
import tempfile
import warnings
from collections.abc import Iterator

from efficientvit_jax import checkpointing
from efficientvit_jax import console
from efficientvit_jax import convert
from efficientvit_jax import images
from efficientvit_jax import runtime
from efficientvit_jax.checkpointing import Checkpoint

FORMATS = ('onnx', 'stablehlo')
INPUT_NAME = 'image'
OUTPUT_NAMES = ('depth', 'seg_logits', 'labels')
ONNX_OPSET = 18
STABLEHLO_PLATFORMS = ('cpu', 'cuda')


# --------------------------------------------------------------------------------------------------
# ONNX, through the PyTorch twin


def torch_deploy_module(ckpt: Checkpoint):
  """The twin loaded with `ckpt`, wrapped to take uint8 NHWC images and give the three outputs."""
  import torch
  import torch.nn.functional as F

  from efficientvit_jax import torch_model

  class DeployNet(torch.nn.Module):
    """uint8 [N, H, W, 3] -> depth [N, H, W], seg_logits [N, H, W, C], labels [N, H, W] uint8."""

    def __init__(self, net: torch_model.DepthSegNet):
      super().__init__()
      self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
      net = self.net
      size = tuple(image.shape[1:3])
      x = image.permute(0, 3, 1, 2).float() / 255.0
      *skips, bottleneck = net.forward_features(x)
      feat = net.neck(bottleneck)
      heads = []
      for task, head in (('depth', net.depth_head[0]), ('seg', net.seg_head)):
        y = feat
        for i in (1, 2, 3):
          y = getattr(net, f'{task}_d{i}')(y, skips[3 - i])
        # As in our model: the 1x1 head before the final resize (they commute), so that 1 and 6
        # channels are resized instead of 16.
        heads.append(F.interpolate(head(y), size=size, mode='bilinear', align_corners=False))
      depth = F.relu(heads[0][:, 0])
      logits = heads[1]
      return depth, logits.permute(0, 2, 3, 1), logits.argmax(1).to(torch.uint8)

  twin = torch_model.load_reference(convert.state_dict_from_checkpoint(ckpt),
                                    backbone=convert.checkpoint_backbone(ckpt))
  return DeployNet(twin).eval()


def onnx_model(ckpt: Checkpoint, size: tuple[int, int], *, dynamic_batch: bool = False,
               fp16: bool = False):
  """The checked `onnx.ModelProto` of the deploy network at `size`."""
  import onnx
  import torch

  module = torch_deploy_module(ckpt)
  example = torch.zeros((2 if dynamic_batch else 1, *size, 3), dtype=torch.uint8)
  dynamic = {INPUT_NAME: {0: torch.export.Dim('batch', min=1)}} if dynamic_batch else None
  with tempfile.TemporaryDirectory() as tmp, _quiet():
    program = torch.onnx.export(module, (example,), input_names=[INPUT_NAME],
                                output_names=list(OUTPUT_NAMES), opset_version=ONNX_OPSET,
                                dynamo=True, dynamic_shapes=dynamic, external_data=False,
                                artifacts_dir=tmp)
    model = program.model_proto
  if fp16:
    model = float16_model(model)
  model.producer_name = 'efficientvit_jax.export'
  onnx.checker.check_model(model, full_check=True)
  return model


def float16_model(model):
  """An fp32 deploy `onnx.ModelProto` -> float16 weights and activations, same inputs and outputs."""
  from onnxconverter_common import float16

  # Cast nodes stay as they are (the converter would retype their outputs but not their `to`);
  # blocked by name, since blocking the op type loops on the casts it inserts. Resize and the
  # other ops of its default block list run in float32 between casts.
  casts = [node.name for node in model.graph.node if node.op_type == 'Cast']
  with warnings.catch_warnings():  # one warning per weight below float16's smallest normal
    warnings.simplefilter('ignore', UserWarning)
    return float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=casts)


# What torch.onnx.export says that is no news to a user of this command: that torchvision's detection
# ops are not registered (we export none), and a deprecation inside torch's own pytree code.
_EXPORTER_LOGGERS = ('torch.onnx._internal.exporter._registration',)
_EXPORTER_WARNINGS = (r'`isinstance\(treespec, LeafSpec\)` is deprecated',)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Silences the exporter's progress prints (stdout) and its notices above for the duration."""
  loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
  levels = [logger.level for logger in loggers]
  stdout = sys.stdout
  with open(os.devnull, 'w') as devnull, warnings.catch_warnings():
    for message in _EXPORTER_WARNINGS:
      warnings.filterwarnings('ignore', message=message, category=FutureWarning)
    for logger in loggers:
      logger.setLevel(logging.ERROR)
    sys.stdout = devnull
    try:
      yield
    finally:
      sys.stdout = stdout
      for logger, level in zip(loggers, levels):
        logger.setLevel(level)


# --------------------------------------------------------------------------------------------------
# StableHLO, straight from JAX


def jax_deploy_fn(ckpt: Checkpoint, *, fp16: bool = False):
  """A pure function uint8 [N, H, W, 3] -> {depth, seg_logits, labels}, weights closed over."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  model = convert.model_from_checkpoint(ckpt, dtype=jnp.float16 if fp16 else jnp.float32)
  graphdef, state = nnx.split(model)
  state = jax.tree.map(jnp.asarray, state)

  def deploy(image: jax.Array) -> dict[str, jax.Array]:
    out = nnx.merge(graphdef, state)(image.astype(jnp.float32) / 255.0, train=False)
    return {**out, 'labels': jnp.argmax(out['seg_logits'], axis=-1).astype(jnp.uint8)}

  return deploy


def stablehlo_exported(ckpt: Checkpoint, size: tuple[int, int], *, dynamic_batch: bool = False,
                       fp16: bool = False):
  """The `jax.export.Exported` of the deploy function (native convolutions, CPU and CUDA)."""
  import jax
  import jax.numpy as jnp

  from efficientvit_jax import ops

  batch = jax.export.symbolic_shape('batch')[0] if dynamic_batch else 1
  spec = jax.ShapeDtypeStruct((batch, *size, 3), jnp.uint8)
  # The CPU formulations (shifted slices, matrix products) are for XLA:CPU training; a program
  # meant for any backend keeps the native convolutions, which each compiler lowers its own way.
  with ops.formulation('native'):
    return jax.export.export(jax.jit(jax_deploy_fn(ckpt, fp16=fp16)), platforms=STABLEHLO_PLATFORMS)(spec)


# --------------------------------------------------------------------------------------------------
# CLI


def export(ckpt: Checkpoint, fmt: str, out: str | os.PathLike, size: tuple[int, int], *,
           dynamic_batch: bool = False, fp16: bool = False) -> int:
  """Writes the file atomically (temporary file + rename); returns its size in bytes."""
  if fmt == 'onnx':
    data = onnx_model(ckpt, size, dynamic_batch=dynamic_batch, fp16=fp16).SerializeToString()
  elif fmt == 'stablehlo':
    data = bytes(stablehlo_exported(ckpt, size, dynamic_batch=dynamic_batch, fp16=fp16).serialize())
  else:
    raise ValueError(f'unknown format {fmt!r}')
  out = pathlib.Path(out)
  fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f'.{out.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, out)
  except BaseException:
    os.unlink(tmp)
    raise
  return len(data)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (no usage dump) and exit code 2."""

  def error(self, message: str):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


@runtime.reporting_missing_extras  # ONNX: the `torch` and `export` extras
def main(argv: list[str] | None = None) -> int:
  parser = _Parser(prog='python -m efficientvit_jax.export', description=__doc__.split('\n\n')[0])
  parser.add_argument('--checkpoint', required=True, help='checkpoint folder, training workdir or reference .pt')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  parser.add_argument('--format', required=True, choices=FORMATS)
  parser.add_argument('--out', required=True, help='the file to write')
  parser.add_argument('--size', type=images.parse_size, default=None,
                      help=f"input size, {images.SIZE_HELP} (default: the checkpoint's training size, else 240x320)")
  parser.add_argument('--dynamic-batch', action='store_true', help='a symbolic batch axis instead of 1')
  parser.add_argument('--fp16', action='store_true', help='float16 weights and activations (see the module doc)')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out file')
  parser.add_argument('--allow-pickle', action='store_true', help='for .pt files that weights_only loading refuses')
  args = parser.parse_args(argv)
  console.setup()
  out = pathlib.Path(args.out)
  if out.exists() and not args.overwrite:
    parser.error(f'--out {out} exists (pass --overwrite to replace it)')
  if out.is_dir():
    parser.error(f'--out {out} is a folder; give a file name')
  if not out.parent.is_dir():
    parser.error(f'--out {out}: folder {out.parent} does not exist')
  try:
    checkpointing.check_writable(out.parent)  # before the export: a read-only place fails now
  except OSError as e:
    parser.error(f'--out {out}: cannot write there ({e})')
  if args.format == 'onnx':  # now, not after loading the checkpoint
    runtime.require_modules('torch', 'onnx', 'onnxscript', *(['onnxconverter_common'] if args.fp16 else []))
  try:
    loaded = convert.load_model(args.checkpoint, args.step, allow_pickle=args.allow_pickle)
    print(loaded.describe(args.size))
    size = loaded.input_size(args.size)
    nbytes = export(loaded.ckpt, args.format, out, size, dynamic_batch=args.dynamic_batch, fp16=args.fp16)
  except checkpointing.CheckpointError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  batch = 'N' if args.dynamic_batch else '1'
  print(f'wrote {out} ({args.format}{", fp16" if args.fp16 else ""}, {loaded.backbone}, {nbytes / 2**20:.1f} MiB, '
        f'image [{batch}, {size[0]}, {size[1]}, 3] uint8)')
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""The six segmentation classes (docs/data.md#classes): names, ids, colours, the ignore label.

Class id = position in `CLASS_NAMES`. `IGNORE_LABEL` marks pixels without a label (targets and
ground truth); the losses and metrics leave them out. numpy only: the data pipelines import it too.
"""

import numpy as np

CLASS_NAMES = ('floor', 'wall', 'person', 'furniture', 'glass', 'other')
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = 255
# Display colours of the classes (uint8 RGB, row = class id); ignored pixels are black.
PALETTE = np.array([
    [128, 64, 128],   # floor
    [70, 130, 180],   # wall
    [220, 20, 60],    # person
    [190, 153, 53],   # furniture
    [0, 220, 220],    # glass
    [152, 251, 152],  # other
], np.uint8)
IGNORE_COLOUR = np.array([0, 0, 0], np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
  """[H, W] class ids (`IGNORE_LABEL` or any id >= NUM_CLASSES: black) -> [H, W, 3] uint8."""
  labels = np.asarray(labels)
  out = np.broadcast_to(IGNORE_COLOUR, (*labels.shape, 3)).copy()
  known = (labels >= 0) & (labels < NUM_CLASSES)
  out[known] = PALETTE[labels[known]]
  return out

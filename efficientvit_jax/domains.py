"""The three data sets (domains) and their valid-depth windows (docs/data.md#depth-windows).

A set's domain id is its position in `SETS`: the `domain` of a data element. Training mixes the
first two (`data_pipelines.mixing.TRAIN_SETS`); the corridor set is for evaluation only.
Plain Python: the data pipelines import it too.
"""

SETS = ('nyu', 'lilocbench', 'corridor')
# Usable depth per set, metres, both ends included: training targets and evaluation ground truth.
DEPTH_WINDOWS = {'nyu': (0.1, 10.0), 'lilocbench': (0.1, 15.0), 'corridor': (0.1, 5.0)}
# Sets whose evaluation frames carry human segmentation labels (`gt_seg`); the others have at most
# teacher labels (training targets) and are scored on depth only.
SEG_LABELLED_SETS = ('nyu',)


def domain_id(set_name: str) -> int:
  """'nyu' -> 0, 'lilocbench' -> 1, 'corridor' -> 2; ValueError naming the set otherwise."""
  if set_name not in SETS:
    raise ValueError(f'unknown data set {set_name!r}: expected one of {SETS}')
  return SETS.index(set_name)


def has_seg_labels(set_name: str) -> bool:
  """Whether `set_name`'s evaluation frames carry segmentation labels (`gt_seg`); ValueError naming
  an unknown set."""
  domain_id(set_name)
  return set_name in SEG_LABELLED_SETS

"""V9: sequential fine-tuning of V6 (SUN RGB-D + DIODE -> NYU) on LILocBench, 50 epochs.

Same recipe as V7; `init_from` names the V6 checkpoint.
"""

from efficientvit_jax.configs import v7


def get_config():
  return v7.get_config()

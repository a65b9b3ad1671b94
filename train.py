"""`python train.py ...` in a checkout: the `evit-train` command (`efficientvit_jax/train.py`)."""

from efficientvit_jax import train

if __name__ == '__main__':
  train.run()

"""`python eval.py ...` in a checkout: the `evit-eval` command (`efficientvit_jax/eval.py`)."""

from efficientvit_jax import eval as evaluate

if __name__ == '__main__':
  evaluate.run()

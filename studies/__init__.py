"""Studies built from ordinary `train.py` / `eval.py` runs."""

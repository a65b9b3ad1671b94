"""The training presets, `--config NAME` of `evit-train` / `python train.py` (docs/config.md#presets).

Each module's `get_config()` returns a full `ml_collections.ConfigDict`: `default` holds every key,
the others change a few (`quickstart`, `v5`, `v5_b2`, `v7`, `v8`, `v9`). Your own config file
derives from one the same way: `from efficientvit_jax.configs import default`.
"""

"""The domain-mixing study's configs (`python -m studies.domain_mixing`, checkout only).

The training presets they name (`configs/v8.py`, ...) ship with the package: `efficientvit_jax/configs/`.
"""

"""Data: readers of the three layouts, transforms, domain mixing, the decode-once format, TFDS,
LILocBench and the synthetic generator (docs/data.md)."""


def build_tfds(argv: list[str] | None = None) -> int:
  """The `evit-build-tfds` command (`tfds_builders.main`), with one line naming the `tfds` extra
  when tensorflow-datasets is not installed (the module needs it at import)."""
  from efficientvit_jax import runtime

  def main(argv: list[str] | None) -> int:
    from data_pipelines import tfds_builders

    return tfds_builders.main(argv)

  return runtime.reporting_missing_extras(main)(argv)

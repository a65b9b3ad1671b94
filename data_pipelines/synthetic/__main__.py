"""`python -m data_pipelines.synthetic --out DIR [--seed S] [--size tiny|small|default] [--workers N]`."""

import sys

from data_pipelines.synthetic.generator import main

if __name__ == '__main__':  # render workers are spawned: they import this module without running it
  sys.exit(main())

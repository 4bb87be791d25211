"""Evaluate chosen iterations of an experiment; `--help` lists the flags."""

import sys

from src.cli import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())

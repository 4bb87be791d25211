"""Iterative CIR training: round 0, then mine -> augment -> train -> evaluate, N times.

With no model and no dataset it runs the offline default (tiny Qwen2-VL, synthetic
CIRR-format benchmark). `python train_iterative.py --help` lists every flag.
"""

import sys

from src.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())

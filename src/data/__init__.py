"""Annotation readers, the synthetic benchmark, datasets and collators."""

"""Iterative training of composed image retrieval (CIR) embedders."""

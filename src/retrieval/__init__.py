"""Retrieval: embedding, exact chunked top-k search, hard-negative mining and metrics."""

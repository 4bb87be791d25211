"""Using a trained round of an experiment: ask it a query, export it as a standalone model
with its model card, hand over a gallery's embeddings (`eval_iterative.py --query_image /
--export / --export_index`). Everything goes through the Python API,
`src/retrieval/retriever.py`; this package adds what the experiment knows (which round,
its verified checkpoint, its dataset, prompts, embedding cache and image store, its
evaluation and history)."""

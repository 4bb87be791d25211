"""Exact top-k search by inner product, chunked over queries.

Both backends are exact and return the same results: scores best first, equal scores in
gallery order (the lower gallery index first), at the k boundary too.

- ``backend="torch"`` (the default, and the only GPU path): queries are scored in chunks
  of ``chunk_size`` against the whole gallery with one matrix product each, so the extra
  memory is O(chunk_size * G) whatever the number of queries. Right for CIRR / FashionIQ
  sized galleries on CPU or GPU.
- ``backend="faiss"``: a CPU ``faiss.IndexFlatIP`` (brute force, no approximation). Use it
  for large galleries on a CPU-only machine, where even one ``chunk_size x G`` score block
  is a burden: faiss tiles the gallery internally and keeps only k results per query.

Per-query ``exclude`` lists (the reference image, mined positives, ...) are removed from
the ranking; ``candidates`` (torch backend) restricts each query's ranking to its own
subset of the gallery, e.g. CIRR's image groups.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Matrix = np.ndarray | torch.Tensor
IndexLists = Sequence[Sequence[int]] | np.ndarray


@dataclass(frozen=True)
class _RowLists:
    """One sorted, duplicate-free set of gallery indices per query, in CSR form.

    Row i is ``cols[ptr[i]:ptr[i + 1]]``; ``num_gallery`` encodes (row, col) pairs as the
    sorted codes ``row * num_gallery + col``.
    """

    ptr: np.ndarray
    cols: np.ndarray
    num_gallery: int

    @classmethod
    def from_codes(cls, codes: np.ndarray, num_rows: int, num_gallery: int) -> _RowLists:
        counts = np.bincount(codes // num_gallery, minlength=num_rows)
        ptr = np.zeros(num_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        return cls(ptr, codes % num_gallery, num_gallery)

    @classmethod
    def build(cls, lists: IndexLists, num_rows: int, num_gallery: int, name: str) -> _RowLists:
        if len(lists) != num_rows:
            raise ValueError(f"{name} has {len(lists)} entries for {num_rows} queries")
        parts = [np.asarray(entry, dtype=np.int64).reshape(-1) for entry in lists]
        lengths = np.array([len(part) for part in parts], dtype=np.int64)
        cols = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        rows = np.repeat(np.arange(num_rows, dtype=np.int64), lengths)
        bad = np.flatnonzero((cols < 0) | (cols >= num_gallery))
        if bad.size:
            raise ValueError(
                f"{name}[{rows[bad[0]]}] holds gallery index {cols[bad[0]]}, "
                f"outside [0, {num_gallery})"
            )
        return cls.from_codes(np.unique(rows * num_gallery + cols), num_rows, num_gallery)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.ptr)

    def codes(self) -> np.ndarray:
        rows = np.repeat(np.arange(len(self.ptr) - 1, dtype=np.int64), self.counts)
        return rows * self.num_gallery + self.cols

    def minus(self, other: _RowLists | None) -> _RowLists:
        """Row-wise set difference."""
        if other is None:
            return self
        codes = np.setdiff1d(self.codes(), other.codes(), assume_unique=True)
        return _RowLists.from_codes(codes, len(self.ptr) - 1, self.num_gallery)

    def positions(self, items: np.ndarray) -> np.ndarray:
        """Position of ``items[i]`` within row i, or -1 where row i does not hold it."""
        codes = self.codes()
        wanted = np.arange(len(items), dtype=np.int64) * self.num_gallery + items
        at = np.searchsorted(codes, wanted)
        found = at < len(codes)
        found[found] = codes[at[found]] == wanted[found]
        return np.where(found, at - self.ptr[:-1], -1)

    def pairs(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(row - start, col) of every entry of rows start..end-1."""
        lo, hi = self.ptr[start], self.ptr[end]
        rows = np.repeat(np.arange(end - start, dtype=np.int64), self.counts[start:end])
        return rows, self.cols[lo:hi]

    def padded(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows start..end-1 as an (n, longest) index matrix and its validity mask."""
        rows, cols = self.pairs(start, end)
        counts = self.counts[start:end]
        width = int(counts.max()) if len(counts) else 0
        positions = np.arange(len(cols)) - np.repeat(self.ptr[start:end] - self.ptr[start], counts)
        index = np.zeros((end - start, width), dtype=np.int64)
        valid = np.zeros((end - start, width), dtype=bool)
        index[rows, positions] = cols
        valid[rows, positions] = True
        return index, valid


def _as_matrix(x: Matrix, name: str) -> torch.Tensor:
    """A 2-D float32 tensor sharing memory with ``x`` where possible."""
    if isinstance(x, torch.Tensor):
        tensor = x.detach().float()
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {tuple(tensor.shape)}")
    return tensor


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _prepare(
    queries: Matrix,
    gallery: Matrix,
    exclude: IndexLists | None,
    candidates: IndexLists | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, _RowLists | None, _RowLists | None]:
    """Validate the inputs; return them as tensors and CSR lists (candidates minus exclude)."""
    q, g = _as_matrix(queries, "queries"), _as_matrix(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries have dim {q.shape[1]} but the gallery has dim {g.shape[1]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_q, num_g = q.shape[0], g.shape[0]
    excl = None if exclude is None else _RowLists.build(exclude, num_q, num_g, "exclude")
    cand = None
    if candidates is not None:
        cand = _RowLists.build(candidates, num_q, num_g, "candidates").minus(excl)
    return q, g, excl, cand


def _chunks(
    q: torch.Tensor, g: torch.Tensor, chunk_size: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, end, score buffer) for every chunk of queries."""
    buffer = torch.empty((min(chunk_size, q.shape[0]), g.shape[0]), device=g.device)
    for start in range(0, q.shape[0], chunk_size):
        yield start, min(start + chunk_size, q.shape[0]), buffer


def _mask_excluded(scores: torch.Tensor, excl: _RowLists, start: int, end: int) -> None:
    rows, cols = excl.pairs(start, end)
    if len(cols):
        device = scores.device
        scores[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = -torch.inf


def _gather_candidates(
    scores: torch.Tensor, cand: _RowLists, start: int, end: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidate scores in gallery order (padding = -inf) and their gallery indices."""
    index, valid = cand.padded(start, end)
    index_t = torch.from_numpy(index).to(scores.device)
    gathered = scores.gather(1, index_t)
    gathered.masked_fill_(~torch.from_numpy(valid).to(scores.device), -torch.inf)
    return gathered, index_t


def _chunk_scores(
    q: torch.Tensor,
    g: torch.Tensor,
    start: int,
    end: int,
    excl: _RowLists | None,
    cand: _RowLists | None,
    buffer: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores of queries start..end-1 on the gallery's device, computed into ``buffer``.

    Without ``cand``: against the whole gallery, excluded items at -inf, and None. With it:
    against each query's candidates (see ``_gather_candidates``) and their gallery indices.
    Every chunk reuses the one (chunk_size, G) buffer: no fresh allocation (and page
    faults) per chunk, and never two blocks at once.
    """
    scores = torch.mm(q[start:end].to(g.device), g.T, out=buffer[: end - start])
    if cand is not None:
        return _gather_candidates(scores, cand, start, end)
    if excl is not None:
        _mask_excluded(scores, excl, start, end)
    return scores, None


def _exact_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of every row, best first, equal scores in column order.

    One ``torch.topk`` of k + 1 columns finds the top-k set, which is exact unless the
    (k+1)-th score equals the k-th; only those rows are redone from every column scoring
    at least the k-th score. Within the k results, ties are ordered by column.
    """
    width = scores.shape[1]
    values, cols = torch.topk(scores, min(k + 1, width), dim=1)
    boundary_tie = values[:, k] == values[:, k - 1] if width > k else None
    values, cols = values[:, :k], cols[:, :k]
    cols, order = torch.sort(cols, dim=1)
    values, order = torch.sort(values.gather(1, order), dim=1, descending=True, stable=True)
    cols = cols.gather(1, order)
    if boundary_tie is not None:
        for r in torch.nonzero(boundary_tie).flatten().tolist():
            row = scores[r]
            contenders = torch.nonzero(row >= values[r, k - 1]).flatten()
            best, order = torch.sort(row[contenders], descending=True, stable=True)
            values[r], cols[r] = best[:k], contenders[order[:k]]
    return values, cols


def _check_k(k: int, num_gallery: int, excl: _RowLists | None, cand: _RowLists | None) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if cand is not None:
        eligible = cand.counts
    elif excl is not None:
        eligible = num_gallery - excl.counts
    else:
        eligible = np.array([num_gallery])
    if len(eligible) and k > eligible.min():
        worst = int(eligible.argmin())
        what = (
            "candidates left after exclusions"
            if cand is not None
            else f"eligible gallery items (gallery of {num_gallery}, "
            f"{num_gallery - eligible[worst]} excluded)"
        )
        raise ValueError(f"k={k} but query {worst} has only {eligible[worst]} {what}")


def search_topk(
    queries: Matrix,
    gallery: Matrix,
    k: int,
    *,
    exclude: IndexLists | None = None,
    candidates: IndexLists | None = None,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    backend: Literal["torch", "faiss"] = "torch",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k gallery items of every query by inner product.

    Args:
        queries: (Q, d) embeddings, numpy or torch (any float dtype; scored in float32).
        gallery: (G, d) embeddings.
        k: results per query.
        exclude: optional per-query gallery indices that are never returned.
        candidates: optional per-query gallery indices; only these are ranked (torch
            backend only).
        chunk_size: queries scored per matrix product; extra memory is O(chunk_size * G).
        device: "cpu", "cuda", ... or None for CUDA when available (torch backend). The
            gallery moves there once, queries chunk by chunk.
        backend: "torch" or "faiss" (CPU IndexFlatIP); both give the same results.

    Returns:
        (scores float32 (Q, k), indices int64 (Q, k)), best first; equal scores are in
        gallery order, exactly, including at the k boundary.

    Raises:
        ValueError: if k exceeds the number of eligible items of some query, or on bad
            shapes or indices.
    """
    q, g, excl, cand = _prepare(queries, gallery, exclude, candidates, chunk_size)
    _check_k(k, g.shape[0], excl, cand)
    if backend == "faiss":
        if cand is not None:
            raise ValueError("candidates is only supported by the torch backend")
        return _search_faiss(q, g, k, excl, chunk_size)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}; expected 'torch' or 'faiss'")

    g = g.to(_resolve_device(device))
    out_scores = np.empty((q.shape[0], k), dtype=np.float32)
    out_indices = np.empty((q.shape[0], k), dtype=np.int64)
    for start, end, buffer in _chunks(q, g, chunk_size):
        out_scores[start:end], out_indices[start:end] = _topk_chunk(
            q, g, k, start, end, excl, cand, buffer
        )
    return out_scores, out_indices


def _topk_chunk(
    q: torch.Tensor,
    g: torch.Tensor,
    k: int,
    start: int,
    end: int,
    excl: _RowLists | None,
    cand: _RowLists | None,
    buffer: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k scores and gallery indices of queries start..end-1."""
    scores, gallery_index = _chunk_scores(q, g, start, end, excl, cand, buffer)
    values, cols = _exact_topk(scores, k)
    if gallery_index is not None:
        cols = gallery_index.gather(1, cols)
    return values.cpu().numpy(), cols.cpu().numpy()


def _search_faiss(
    q: torch.Tensor, g: torch.Tensor, k: int, excl: _RowLists | None, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """search_topk through a CPU faiss.IndexFlatIP (see search_topk)."""
    import faiss

    q_np = np.ascontiguousarray(q.cpu().numpy())
    g_np = np.ascontiguousarray(g.cpu().numpy())
    num_q, num_g = q_np.shape[0], g_np.shape[0]
    index = faiss.IndexFlatIP(g_np.shape[1])
    index.add(g_np)
    max_excluded = int(excl.counts.max()) if excl is not None and num_q else 0
    width = min(num_g, k + max_excluded + 1)
    excluded_codes = excl.codes() if excl is not None else np.zeros(0, dtype=np.int64)

    def ordered(rows: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values, indices = index.search(q_np[rows], depth)
        codes = rows[:, None] * num_g + indices
        excluded = np.isin(codes, excluded_codes)
        order = np.lexsort((indices, -values, excluded), axis=-1)
        kept_values = np.take_along_axis(values, order, axis=1)[:, :k]
        kept_indices = np.take_along_axis(indices, order, axis=1)[:, :k]
        # Items faiss did not return score <= its lowest returned score: when the k-th
        # kept score equals that, tied items may be missing and the row is redone in full.
        incomplete = (kept_values[:, k - 1] == values.min(axis=1)) & (depth < num_g)
        return kept_values, kept_indices, incomplete

    out_scores = np.empty((num_q, k), dtype=np.float32)
    out_indices = np.empty((num_q, k), dtype=np.int64)
    for start in range(0, num_q, chunk_size):
        rows = np.arange(start, min(start + chunk_size, num_q), dtype=np.int64)
        values, indices, incomplete = ordered(rows, width)
        if incomplete.any():
            values[incomplete], indices[incomplete], _ = ordered(rows[incomplete], num_g)
        out_scores[rows], out_indices[rows] = values, indices
    return out_scores, out_indices


def target_ranks(
    queries: Matrix,
    gallery: Matrix,
    target_indices: Sequence[int] | np.ndarray,
    *,
    exclude: IndexLists | None = None,
    candidates: IndexLists | None = None,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of each query's target and the target's score.

    The rank counts the eligible items that score higher than the target, plus those that
    score the same and come earlier in the gallery (the tie order of ``search_topk``).
    Excluded items never count; with ``candidates`` only the query's candidates count.

    Args:
        queries: (Q, d) embeddings, numpy or torch.
        gallery: (G, d) embeddings.
        target_indices: (Q,) gallery index of each query's target.
        exclude: optional per-query gallery indices left out of the ranking.
        candidates: optional per-query gallery indices; only these are ranked.
        chunk_size: queries scored per matrix product; extra memory is O(chunk_size * G).
        device: as in ``search_topk``.

    Returns:
        (ranks int64 (Q,), target scores float32 (Q,)).

    Raises:
        ValueError: if a target is out of range, excluded, or not among its candidates.
    """
    q, g, excl, cand = _prepare(queries, gallery, exclude, candidates, chunk_size)
    num_q, num_g = q.shape[0], g.shape[0]
    targets = np.asarray(target_indices, dtype=np.int64).reshape(-1)
    if len(targets) != num_q:
        raise ValueError(f"{len(targets)} target indices for {num_q} queries")
    bad = np.flatnonzero((targets < 0) | (targets >= num_g))
    if bad.size:
        raise ValueError(
            f"target index {targets[bad[0]]} of query {bad[0]} is outside [0, {num_g})"
        )
    if cand is not None:
        columns = cand.positions(targets)
        missing = np.flatnonzero(columns < 0)
        problem = "is excluded or not among its candidates"
    else:
        columns = targets
        missing = np.flatnonzero(excl.positions(targets) >= 0) if excl is not None else []
        problem = "is excluded"
    if len(missing):
        raise ValueError(f"the target {targets[missing[0]]} of query {missing[0]} {problem}")

    g = g.to(_resolve_device(device))
    ranks = np.empty(num_q, dtype=np.int64)
    target_scores = np.empty(num_q, dtype=np.float32)
    for start, end, buffer in _chunks(q, g, chunk_size):
        ranks[start:end], target_scores[start:end] = _rank_chunk(
            q, g, columns[start:end], start, end, excl, cand, buffer
        )
    return ranks, target_scores


def _rank_chunk(
    q: torch.Tensor,
    g: torch.Tensor,
    columns: np.ndarray,
    start: int,
    end: int,
    excl: _RowLists | None,
    cand: _RowLists | None,
    buffer: torch.Tensor,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks and scores of the targets at ``columns`` of queries start..end-1's scores."""
    scores, _ = _chunk_scores(q, g, start, end, excl, cand, buffer)
    column = torch.from_numpy(columns).to(g.device).unsqueeze(1)
    own = scores.gather(1, column)
    earlier = torch.arange(scores.shape[1], device=g.device) < column
    ahead = (scores > own) | ((scores == own) & earlier)
    return ahead.sum(dim=1).cpu().numpy() + 1, own.squeeze(1).cpu().numpy()

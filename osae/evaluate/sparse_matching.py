"""Matching of large dictionaries (K above a few thousand): a dense K x K Hungarian is O(K^3).

Each atom keeps its top candidates by cosine (a blocked matmul, never the full K x K matrix in memory);
`scipy.sparse.csgraph.min_weight_full_bipartite_matching` solves the assignment on those edges with cost
2 - cos. If the candidate graph has no perfect matching, the candidate lists widen (64 -> 256 -> 1024);
atoms still unmatched then are paired greedily by cosine. The method used is recorded.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from osae.evaluate.matching import Matching


def _candidates(A: np.ndarray, B: np.ndarray, top: int, block: int = 2048):
    rows, cols, vals = [], [], []
    top = min(top, len(B))
    Bt = B.T.astype(np.float32)
    for s in range(0, len(A), block):
        C = A[s : s + block].astype(np.float32) @ Bt
        idx = np.argpartition(-C, top - 1, axis=1)[:, :top]
        rows.append(np.repeat(np.arange(s, s + len(C)), top))
        cols.append(idx.reshape(-1))
        vals.append(np.take_along_axis(C, idx, axis=1).reshape(-1))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float64)


def sparse_match(A: np.ndarray, B: np.ndarray) -> Matching:
    transpose = len(A) > len(B)
    if transpose:  # the solver matches every row: keep the smaller side as rows
        A, B = B, A
    for top in (64, 256, 1024):
        r, c, v = _candidates(A, B, top)
        # also let every column propose its top candidates, which makes a perfect matching far likelier
        c2, r2, v2 = _candidates(B, A, min(top, len(A)))
        r, c, v = np.concatenate([r, r2]), np.concatenate([c, c2]), np.concatenate([v, v2])
        _, first = np.unique(r * len(B) + c, return_index=True)  # an edge proposed by both sides counts once
        r, c, v = r[first], c[first], v[first]
        graph = csr_matrix((2.0 - v, (r, c)), shape=(len(A), len(B)))
        try:
            row_ind, col_ind = min_weight_full_bipartite_matching(graph)
        except ValueError:
            continue
        cos = (A[row_ind] * B[col_ind]).sum(1)
        m = Matching(row_ind, col_ind, cos, f"sparse-top{top}")
        break
    else:
        m = _greedy(A, B)
    if transpose:
        order = np.argsort(m.cols)
        m = Matching(m.cols[order], m.rows[order], m.cosines[order], m.method)
    return m


def _greedy(A: np.ndarray, B: np.ndarray) -> Matching:
    r, c, v = _candidates(A, B, min(1024, len(B)))
    order = np.argsort(-v)
    used_a, used_b, pairs = set(), set(), []
    for i in order:
        if r[i] not in used_a and c[i] not in used_b:
            used_a.add(r[i]), used_b.add(c[i]), pairs.append((r[i], c[i]))
    left_a = [i for i in range(len(A)) if i not in used_a]
    left_b = [j for j in range(len(B)) if j not in used_b]
    pairs += list(zip(left_a, left_b))
    pairs.sort()
    rows = np.array([p[0] for p in pairs])
    cols = np.array([p[1] for p in pairs])
    return Matching(rows, cols, (A[rows] * B[cols]).sum(1), "sparse-greedy")

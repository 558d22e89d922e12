r"""Block-diagonal covariance structures of the inputs (BLoMPE, Nguyen et al. 2021, arXiv 2104.08959).

A block structure is a partition :math:`\{B_1, \dots, B_G\}` of the features :math:`\{0, \dots, d-1\}`;
a covariance with that structure has :math:`\sum_g |B_g|(|B_g|+1)/2` free entries. Candidate
structures come from the graph on the features with an edge where the absolute empirical correlation
exceeds a threshold :math:`t`: its connected components, for every t on a grid (each distinct
structure is one candidate model).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["BlockStructures", "block_dims", "check_blocks", "detect_blocks"]

Blocks = tuple[tuple[int, ...], ...]


def check_blocks(blocks: Any, d: int | None = None, name: str = "blocks") -> Blocks:
    """Validate a block structure and return it in canonical form (each block sorted, blocks ordered
    by their first feature).

    :param blocks: a sequence of sequences of feature indices (ints >= 0).
    :param d: the number of features the blocks must partition; None: ``0..max index``.
    :param name: the argument name used in error messages.
    :raises ValueError: naming ``name`` when the blocks are not a partition of the features
        (an empty block, a repeated or missing feature, a non-integer or out-of-range index).
    """
    if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):
        raise ValueError(f"`{name}` must be a sequence of blocks of feature indices, e.g. "
                         f"((0, 1), (2,)), got {blocks!r}")
    out = []
    for b in blocks:
        if isinstance(b, (str, bytes)) or not hasattr(b, "__iter__"):
            raise ValueError(f"`{name}`: every block must be a sequence of feature indices, got {b!r}")
        b = list(b)
        if not b:
            raise ValueError(f"`{name}` has an empty block")
        for i in b:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
                raise ValueError(f"`{name}`: feature indices must be integers >= 0, got {i!r}")
        out.append(tuple(sorted(int(i) for i in b)))
    if not out:
        raise ValueError(f"`{name}` is empty: give at least one block")
    flat = [i for b in out for i in b]
    if len(set(flat)) != len(flat):
        dup = sorted({i for i in flat if flat.count(i) > 1})
        raise ValueError(f"`{name}` does not partition the features: feature(s) {dup} appear in "
                         "more than one block")
    size = max(flat) + 1 if d is None else int(d)
    missing = sorted(set(range(size)) - set(flat))
    extra = sorted(i for i in flat if i >= size)
    if missing or extra:
        raise ValueError(f"`{name}` does not partition the {size} features 0..{size - 1}: "
                         + (f"missing {missing}" if missing else "")
                         + ("; " if missing and extra else "")
                         + (f"out of range {extra}" if extra else ""))
    return tuple(sorted(out, key=lambda b: b[0]))


def check_covariance(covariance: str, blocks: Any, d: int | None, what: str) -> Blocks | None:
    """Validate a family's ``covariance`` ("diag", "full" or "block") and ``blocks`` arguments; return
    the blocks in canonical form (None unless ``covariance="block"``).

    :param covariance: the covariance structure.
    :param blocks: the block structure (required with, and only with, ``covariance="block"``).
    :param d: the number of variables the blocks must partition (None: ``0..max index``).
    :param what: what the blocks partition, for the error message ("features", "outputs").
    :raises ValueError: naming the argument that is wrong.
    """
    if covariance not in ("diag", "full", "block"):
        raise ValueError(f"`covariance` must be 'diag', 'full' or 'block', got {covariance!r}")
    if covariance == "block":
        if blocks is None:
            raise ValueError(f"`blocks` is required with covariance='block' (a partition of the {what}, "
                             f"e.g. ((0, 1), (2,)); see bm.selection.detect_blocks)")
        return check_blocks(blocks, d, "blocks")
    if blocks is not None:
        raise ValueError(f"`blocks` is only used with covariance='block', got covariance={covariance!r}")
    return None


def block_dims(blocks: Any) -> int:
    r"""Free entries of one covariance with this block structure: :math:`\sum_g |B_g|(|B_g|+1)/2`.

    :param blocks: the block structure, a partition of the variables' indices (e.g. ``[[0, 1], [2]]``).
    """
    return int(sum(len(b) * (len(b) + 1) // 2 for b in check_blocks(blocks)))


class BlockStructures(NamedTuple):
    """Candidate block structures found by :func:`detect_blocks`.

    :ivar structures: the distinct structures, from the finest (all singletons) to the coarsest.
    :ivar thresholds: the grid of thresholds (increasing).
    :ivar index: for every threshold, the index into ``structures`` of its structure.
    :ivar most_stable: the structure found over the most thresholds among the non-trivial ones
        (neither all singletons nor one block, when such exist).
    """

    structures: list
    thresholds: np.ndarray
    index: np.ndarray
    most_stable: Blocks


def _components(adj: np.ndarray) -> Blocks:
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

    _, labels = connected_components(adj, directed=False)
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(i)
    return tuple(sorted((tuple(g) for g in groups.values()), key=lambda b: b[0]))


def detect_blocks(x: Any, thresholds: Any = None) -> BlockStructures:
    r"""Block structures of x from its thresholded absolute correlation graph.

    For every threshold t, features i and j are joined when :math:`|\hat\rho_{ij}| > t`; the blocks
    are the connected components (BLoMPE's construction of candidate block-diagonal covariances).

    :param x: inputs, array-like (n, d), n >= 3.
    :param thresholds: increasing grid in [0, 1); default 100 equally spaced values from 0 to 0.99
        (so that "found over the most thresholds" means "over the widest range").
    :returns: :class:`BlockStructures`.
    """
    from bayesmoe._validation import as_x  # noqa: PLC0415

    xa = as_x(x, "x")
    n, d = xa.shape
    if n < 3:
        raise ValueError(f"`x` needs at least 3 rows to estimate correlations, got {n}")
    sd = xa.std(axis=0)
    if np.any(sd == 0):
        raise ValueError(f"`x` has constant column(s) {np.flatnonzero(sd == 0).tolist()}: correlations "
                         "are undefined")
    corr = np.abs(np.corrcoef(xa, rowvar=False)) if d > 1 else np.ones((1, 1))
    if thresholds is None:
        thresholds = np.linspace(0.0, 0.99, 100)
    t = np.asarray(thresholds, float)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or np.any((t < 0) | (t >= 1)):
        raise ValueError("`thresholds` must be a non-empty 1-D array of values in [0, 1)")
    if np.any(np.diff(t) <= 0):
        raise ValueError("`thresholds` must be strictly increasing")
    structures: list[Blocks] = []
    index = np.empty(t.size, int)
    for i, ti in enumerate(t):
        s = _components(corr > ti)
        if s not in structures:
            structures.append(s)
        index[i] = structures.index(s)
    order = sorted(range(len(structures)), key=lambda j: len(structures[j]), reverse=True)
    remap = {old: new for new, old in enumerate(order)}
    structures = [structures[j] for j in order]
    index = np.array([remap[j] for j in index])
    counts = np.bincount(index, minlength=len(structures))
    trivial = [j for j, s in enumerate(structures) if len(s) in (1, d)]
    candidates = [j for j in range(len(structures)) if j not in trivial] or list(range(len(structures)))
    best = max(candidates, key=lambda j: counts[j])
    return BlockStructures(structures=structures, thresholds=t, index=index,
                           most_stable=structures[best])

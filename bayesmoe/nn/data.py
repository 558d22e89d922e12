"""Byte-level text data for the char-LM experiment.

The default corpus is CPython's ``pydoc_data.topics`` (the text of ``help()`` topics,
about 0.5 MB of English prose and code, present in every Python installation); any
file (e.g. enwik8) can be used instead.  Text is modelled as UTF-8 bytes, so
bits-per-character is bits per byte, as for enwik8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def bundled_text() -> bytes:
    """The values of ``pydoc_data.topics.topics`` joined in key order, as UTF-8."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")


def load_bytes(path: str | Path | None = None) -> bytes:
    """Read ``path`` as bytes, or return :func:`bundled_text` when ``path`` is None."""
    return bundled_text() if path is None else Path(path).read_bytes()


def encode(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Map bytes to ids 0..V-1 over the bytes present; returns (ids int32, vocab uint8)."""
    arr = np.frombuffer(raw, dtype=np.uint8)
    vocab, ids = np.unique(arr, return_inverse=True)
    return ids.astype(np.int32), vocab


def split(ids: np.ndarray, valid: float = 0.05, test: float = 0.05):
    """Contiguous train / valid / test split (the enwik8 convention: last parts held out)."""
    n = len(ids)
    n_test, n_valid = int(n * test), int(n * valid)
    n_train = n - n_valid - n_test
    return ids[:n_train], ids[n_train : n_train + n_valid], ids[n_train + n_valid :]


def sample_windows(data: np.ndarray, batch: int, seq_len: int, seed: int, step: int):
    """``batch`` random windows of ``seq_len + 1`` ids, a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    start = rng.integers(0, len(data) - seq_len - 1, size=batch)
    return data[start[:, None] + np.arange(seq_len + 1)[None, :]]


def eval_windows(data: np.ndarray, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
    """Non-overlapping windows of ``seq_len + 1`` ids covering ``data`` (predicting
    every id after the first of each window once)."""
    n = (len(data) - 1) // seq_len
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // seq_len))
    return data[np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]]

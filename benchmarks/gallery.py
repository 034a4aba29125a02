"""Synthetic face galleries for scale benchmarks.

Uniform random unit vectors in 512-d have no neighbour structure (every point is about equally far from every
other) and are the worst case for an approximate index. Real galleries are people: several photos of each,
close to one another and far from everyone else. `people()` models that: a centre per person, samples at
cosine ~0.5-0.8 to each other, ~0 +- 0.1 to other people; `uniform()` is the worst case, reported beside it.

Between people the spread is 0.1, not the 0.044 of random 512-d directions: identity lives in fewer effective
dimensions than 512. Measured on the shipped photos (24 faces of different people in players.jpg and t1.jpg,
buffalo_s, 276 pairs): mean 0.05, std 0.08, max 0.33. Centres are drawn with a decaying spectrum (variance
exp(-i / 20) along random orthogonal directions), which gives 0.1 between samples of different people. An
earlier version drew centres uniformly (0 +- 0.05): benchmarks/RESULTS.md says which tables used which.
"""

from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# decay of the variance of person centres along their principal directions: 0 +- 0.1 between people
_SPECTRUM_DECAY = 20.0


def _spectrum(dim: int) -> np.ndarray:
    return np.sqrt(np.exp(-np.arange(dim) / _SPECTRUM_DECAY)).astype(np.float32)


def _rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)


def uniform(n: int, dim: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _normalise(rng.standard_normal((n, dim), dtype=np.float32))


def people(n: int, dim: int = 512, per_person: int = 8, seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """n faces of about n / per_person people, rows in random order."""
    return labelled_people(n, dim, per_person, seed, chunk)[0]


def labelled_people(
    n: int, dim: int = 512, per_person: int = 8, seed: int = 0, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """people() with the person of each row: (faces n x dim, person ids n), for clustering benchmarks."""
    rng = np.random.default_rng(seed)
    persons = max(1, n // per_person)
    centres = _normalise(rng.standard_normal((persons, dim), dtype=np.float32) * _spectrum(dim) @ _rotation(dim, rng))
    owner = rng.integers(0, persons, n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        # a sample is centre + sigma * noise; cos(sample, sample') ~ 1 / (1 + sigma^2) -> 0.5 .. 0.8
        sigma = rng.uniform(0.5, 1.0, (stop - start, 1)).astype(np.float32)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) / np.sqrt(dim, dtype=np.float32)
        out[start:stop] = centres[owner[start:stop]] + sigma * noise
    return _normalise(out), owner


def queries_like(gallery: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """New photos of people already in the gallery: a gallery row plus fresh noise, cosine 0.6-0.9 to it
    (the spread between real faces and changed photos of them)."""
    rng = np.random.default_rng(seed)
    rows = gallery[rng.integers(0, len(gallery), n)]
    noise = rng.standard_normal(rows.shape, dtype=np.float32) / np.sqrt(gallery.shape[1], dtype=np.float32)
    return _normalise(rows + rng.uniform(0.5, 1.3, (n, 1)).astype(np.float32) * noise)

"""People from faces: average-linkage clustering over the k-nearest-neighbour graph of a session's index.

Blocking numpy work (run it off the event loop). Why this method and not Immich's (a face with `minFaces`
neighbours within distance 0.5 founds or joins a person, benchmarks/people.py re-implements it): a single
link above a threshold chains, and in a big session one close stranger merges two people. Here two groups
merge only when the *average* similarity over all their pairs reaches `link_similarity`; that average is
the dot product of the groups' mean embeddings, so it costs one 512-d product per candidate pair however
big the groups are. Candidate pairs come from the kNN graph only (never all pairs): each round every group
picks its best neighbouring group, and groups move into partners that stay put (stars, so a big group
absorbs many small ones in one round instead of one per round). Merges are refused between groups that
share a photo (one person is in a photo once) and between groups an organiser placed in different people.

Faces below the quality floor (small or low detection score, or marked too small or blurred at ingest:
faces.quality, vision/quality.py) take part in nothing: they never found, join or bridge a person.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from ..config import Settings

# type of the graph's neighbour rows: a session holds far fewer than 2^31 faces, and at 1M faces x 16
# neighbours int64 would hold 64 MB more through the whole clustering
ROW = np.int32

# most similarities one step of the cell graph computes at once (float32, 4 MB)
BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class ClusterParams:
    """What a clustering is run with; the defaults are the service's settings (config.py PEOPLE_*)."""

    # neighbours per face in the graph: enough to link a person's photos, small enough for 1M faces
    neighbours: int = Settings.people_neighbours
    # kNN edges below this similarity are never candidates (far below any merge)
    edge_similarity: float = 0.3
    # least mean pairwise similarity of two groups that merge (buffalo_s: genuine cross-photo pairs
    # 0.45-0.75, impostors below 0.33; benchmarks/people.py)
    link_similarity: float = Settings.people_link_similarity
    # groups smaller than this are no person (their faces wait for company)
    min_faces: int = Settings.people_min_faces
    # faces below either never take part on their own
    min_face_size: float = Settings.people_min_face_size
    min_det_score: float = Settings.people_min_det_score
    # faces per index search while the graph is built
    batch: int = 4096


def eligible(
    boxes: np.ndarray, det_scores: np.ndarray, params: ClusterParams, weak: np.ndarray | None = None
) -> np.ndarray:
    """Mask of faces clear enough to found or join a person: shorter box side and detection score, and not
    `weak` (marked too small or blurred at ingest: a blur the box and score do not see)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    clear = (sides >= params.min_face_size) & (np.asarray(det_scores, dtype=np.float32) >= params.min_det_score)
    return clear if weak is None else clear & ~np.asarray(weak, dtype=bool)


def clarity(boxes: np.ndarray, landmarks: np.ndarray, det_scores: np.ndarray) -> np.ndarray:
    """How good each face is as a person's cover: detection score x frontality x size (saturating at 160 px).

    Frontality from the five landmarks: the nose sits midway between the eyes in a frontal face; its offset
    over the eye distance grows with the head's turn (yaw)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    points = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
    left_eye, right_eye, nose = points[:, 0], points[:, 1], points[:, 2]
    eye_distance = np.maximum(np.linalg.norm(right_eye - left_eye, axis=1), 1.0)
    yaw = np.abs(nose[:, 0] - (left_eye[:, 0] + right_eye[:, 0]) / 2) / eye_distance
    frontal = np.clip(1.0 - 2.0 * yaw, 0.0, 1.0)
    sides = np.clip(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), 0.0, None)
    size = np.minimum(1.0, np.sqrt(sides / 160.0))
    return (np.asarray(det_scores, dtype=np.float32) * (0.2 + 0.8 * frontal) * size).astype(np.float32)


class RowsOfIds:
    """Face ids (as an index answers them) to rows of the arrays clustering works on; -1 for unknown ids."""

    def __init__(self, ids: np.ndarray) -> None:
        self._order = np.argsort(ids)
        self._sorted = ids[self._order]

    def __call__(self, found_ids: np.ndarray) -> np.ndarray:
        if not len(self._sorted):
            return np.full(found_ids.shape, -1, dtype=np.int64)
        at = np.clip(np.searchsorted(self._sorted, found_ids), 0, len(self._sorted) - 1)
        return np.where((found_ids >= 0) & (self._sorted[at] == found_ids), self._order[at], -1)


def neighbour_lists(
    found_sims: np.ndarray, found_ids: np.ndarray, rows_of: RowsOfIds, first_row: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """One batch of index answers for rows first_row.. as (neighbour rows, similarities), k each, the face
    itself left out (row -1: none)."""
    found_rows = rows_of(found_ids)
    own = np.arange(first_row, first_row + len(found_rows))[:, None]
    found_rows[found_rows == own] = -1
    keep = np.argsort(found_rows < 0, axis=1, kind="stable")[:, :k]  # the first k that are someone else
    rows = np.take_along_axis(found_rows, keep, 1)
    sims = np.where(rows >= 0, np.take_along_axis(found_sims, keep, 1), 0.0).astype(np.float32)
    if rows.shape[1] < k:
        rows = np.pad(rows, ((0, 0), (0, k - rows.shape[1])), constant_values=-1)
        sims = np.pad(sims, ((0, 0), (0, k - sims.shape[1])))
    return rows.astype(ROW), sims


def cell_knn_graph(
    vectors: np.ndarray,
    k: int,
    probes: int = 4,
    spill: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph of a big session through an inverted file of its own. Faces are filed under their
    `spill` nearest of ~2 sqrt(n) k-means cells (faiss), so a face near a border is in the lists on both
    sides; the faces of each cell are then compared, in one matrix product, with the lists of the `probes`
    cells nearest to it. A served pq-rerank index scans every code for each query, right for one search,
    far too slow for a million (~1 ms each on 2 cores: 20 min at 1M); here a face costs a few thousand
    products at BLAS speed (recall of the neighbours that matter: benchmarks/people.py, tests)."""
    n, dim = vectors.shape
    cells = max(1, min(n, int(2 * np.sqrt(n))))
    spill = min(spill, cells)
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, 16 * cells), replace=False))
    kmeans = faiss.Kmeans(
        dim, cells, niter=10, spherical=True, seed=0, max_points_per_centroid=16, min_points_per_centroid=1
    )
    kmeans.train(np.ascontiguousarray(vectors[sample]))
    nearest = np.empty((n, spill), dtype=np.int64)
    for start in range(0, n, 65_536):
        chunk = np.ascontiguousarray(vectors[start : start + 65_536])
        nearest[start : start + 65_536] = kmeans.index.search(chunk, spill)[1]
    near_cells = kmeans.index.search(kmeans.centroids, min(cells, probes))[1]
    home = nearest[:, 0]
    members_order = np.argsort(home, kind="stable")
    members_bounds = np.searchsorted(home[members_order], np.arange(cells + 1))
    filed = nearest.reshape(-1)
    list_order = np.argsort(filed, kind="stable")
    list_bounds = np.searchsorted(filed[list_order], np.arange(cells + 1))
    list_faces = list_order // spill  # face of each entry
    rows = np.full((n, k), -1, dtype=ROW)
    sims = np.zeros((n, k), dtype=np.float32)
    done = 0
    for cell in range(cells):
        members = members_order[members_bounds[cell] : members_bounds[cell + 1]]
        if not len(members):
            continue
        candidates = np.unique(
            np.concatenate([list_faces[list_bounds[c] : list_bounds[c + 1]] for c in near_cells[cell] if c >= 0])
        )
        take = min(k, len(candidates) - 1)
        if take > 0:
            near = vectors[candidates]
            # k-means cells are uneven: a crowded one is compared a slice of its members at a time, so the
            # block and argpartition's int64 index of it stay a few tens of MB
            step = max(64, BLOCK_ELEMENTS // len(candidates))
            for begin in range(0, len(members), step):
                part = members[begin : begin + step]
                rows[part, :take], sims[part, :take] = _nearest_in_block(vectors[part] @ near.T, part, candidates, take)
        done += len(members)
        if progress is not None:
            progress(done, n)
    missing = ~np.isfinite(sims)
    rows[missing], sims[missing] = -1, 0.0
    return rows, sims


def _nearest_in_block(
    block: np.ndarray, members: np.ndarray, candidates: np.ndarray, take: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, similarities) of each member's `take` best candidates, best first; block is overwritten."""
    block[members[:, None] == candidates[None, :]] = -np.inf  # not the face itself
    np.negative(block, out=block)  # argpartition finds the smallest: negated in place, not copied
    top = np.argpartition(block, take - 1, axis=1)[:, :take]
    top_sims = -np.take_along_axis(block, top, 1)
    best = np.argsort(-top_sims, axis=1, kind="stable")
    return candidates[np.take_along_axis(top, best, 1)], np.take_along_axis(top_sims, best, 1)


def cluster(
    vectors: np.ndarray,
    neighbour_rows: np.ndarray,
    neighbour_sims: np.ndarray,
    params: ClusterParams,
    *,
    usable: np.ndarray | None = None,
    images: np.ndarray | None = None,
    placed: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Group label per face (-1: no person). vectors are L2-normalised rows and are overwritten (they become
    the groups' sums). usable: mask of faces that may take part. images: image id per face (faces of one
    photo never merge). placed: a person id per face an organiser placed (-1 elsewhere): those start as one
    group per person, stay together, and two of them never merge."""
    n = len(vectors)
    usable = np.ones(n, dtype=bool) if usable is None else usable.astype(bool)
    parent = np.arange(n, dtype=np.int64)  # group of each face: its representative row
    size = np.ones(n, dtype=np.int64)
    pinned = np.full(n, -1, dtype=np.int64)  # per representative: the organiser's person, or -1
    photos: dict[int, set[int]] | None = {} if images is not None else None

    if placed is not None:
        for person in np.unique(placed[placed >= 0]):
            members = np.flatnonzero(placed == person)
            rep = int(members[0])
            vectors[rep] = vectors[members].sum(axis=0)
            size[rep] = len(members)
            parent[members] = rep
            pinned[rep] = person
            usable[members] = True  # an organiser's choice outranks the quality floor
            if photos is not None and images is not None:
                photos[rep] = {int(i) for i in images[members]}

    edges = _candidate_edges(neighbour_rows, neighbour_sims, usable, params.edge_similarity)

    rounds = 0
    while len(edges):
        edges, a, b = _group_pairs(edges, parent, n)  # edges inside a group never matter again
        if (pinned >= 0).any():
            either = (pinned[a] < 0) | (pinned[b] < 0)
            a, b = a[either], b[either]
        linkage = _linkage(vectors, size, a, b)
        good = linkage >= params.link_similarity
        a, b, linkage = a[good], b[good], linkage[good]
        if not len(a):
            break
        best = _best_partner(a, b, linkage, n)
        del a, b, linkage
        movers, centres = _moves(best, size)
        accepted = np.ones(len(movers), dtype=bool)
        if photos is not None or (pinned[movers] >= 0).any():
            for at, (mover, centre) in enumerate(zip(movers.tolist(), centres.tolist())):
                if pinned[mover] >= 0 and pinned[centre] >= 0:  # two people joined by two movers this round
                    accepted[at] = False
                    continue
                if photos is not None and images is not None:
                    mine = photos.get(mover) or {int(images[mover])}
                    theirs = photos.get(centre) or {int(images[centre])}
                    if mine & theirs:  # one person is in a photo once
                        accepted[at] = False
                        continue
                    photos[centre] = theirs | mine
                    photos.pop(mover, None)
                pinned[centre] = max(pinned[centre], pinned[mover])
        movers, centres = movers[accepted], centres[accepted]
        if not len(movers):
            break
        _move_sums(vectors, size, movers, centres)
        parent[movers] = centres
        parent = parent[parent]  # members of a mover now point at its centre (centres never move)
        rounds += 1
        if progress is not None:
            progress(rounds, len(movers))

    labels = parent.copy()
    sizes = np.bincount(labels, minlength=n)
    alone = (sizes[labels] < params.min_faces) & (pinned[labels] < 0)
    labels[alone | ~usable] = -1
    return labels


def _candidate_edges(
    neighbour_rows: np.ndarray, neighbour_sims: np.ndarray, usable: np.ndarray, edge_similarity: float
) -> np.ndarray:
    """Graph edges between usable faces at or above edge_similarity, once per unordered pair, as keys
    low * n + high. Row by row in slices into one array sorted in place: at 1M faces x 16 neighbours every
    whole-graph temporary is 128 MB."""
    n, k = neighbour_rows.shape
    keys = np.empty(n * k, dtype=np.int64)  # pages past the kept edges are never touched
    filled = 0
    for start in range(0, n, 65_536):
        rows = neighbour_rows[start : start + 65_536]
        source = np.repeat(np.arange(start, start + len(rows), dtype=np.int64), k)
        target = rows.reshape(-1).astype(np.int64)
        keep = (target >= 0) & (neighbour_sims[start : start + 65_536].reshape(-1) >= edge_similarity)
        keep[keep] = usable[source[keep]] & usable[target[keep]]
        source, target = source[keep], target[keep]
        keys[filled : filled + len(source)] = np.minimum(source, target) * n + np.maximum(source, target)
        filled += len(source)
    return _distinct_sorted(keys[:filled])


def _distinct_sorted(keys: np.ndarray) -> np.ndarray:
    """np.unique without its copy: sorts keys in place and returns the distinct ones."""
    keys.sort()
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first]


def _group_pairs(
    edges: np.ndarray, parent: np.ndarray, n: int, chunk: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the edges between two groups, and the distinct pairs (low, high) of groups they join). In slices,
    the kept edges compacted into the front of `edges` itself, the pairs as int32: whole-array int64
    temporaries of the first round (11M edges at 1M faces) would each cost 90 MB."""
    kept = filled = 0
    keys = np.empty(len(edges), dtype=np.int64)  # at most one pair per edge
    for start in range(0, len(edges), chunk):
        part = edges[start : start + chunk]
        a, b = parent[part // n], parent[part % n]
        differ = a != b
        between = part[differ]  # a copy, so writing it at or before `start` is safe
        edges[kept : kept + len(between)] = between
        kept += len(between)
        a, b = a[differ], b[differ]
        part_keys = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
        keys[filled : filled + len(part_keys)] = part_keys
        filled += len(part_keys)
    keys = _distinct_sorted(keys[:filled])
    low, high = np.empty(len(keys), dtype=ROW), np.empty(len(keys), dtype=ROW)
    np.floor_divide(keys, n, out=low, casting="unsafe")  # cast in the ufunc's buffers: no int64 copies
    np.remainder(keys, n, out=high, casting="unsafe")
    return edges[:kept], low, high


def _linkage(sums: np.ndarray, size: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Mean pairwise similarity of groups a and b: (sum_a . sum_b) / (|a| |b|)."""
    out = np.empty(len(a), dtype=np.float32)
    for start in range(0, len(a), chunk):
        sa, sb = a[start : start + chunk], b[start : start + chunk]
        out[start : start + chunk] = np.einsum("ij,ij->i", sums[sa], sums[sb]) / (size[sa] * size[sb])
    return out


def _move_sums(
    sums: np.ndarray, size: np.ndarray, movers: np.ndarray, centres: np.ndarray, chunk: int = 2048
) -> None:
    """Add each mover's sum and size into its centre's. A slice of movers at a time: in the first round of a
    million faces half of them move, and gathering all their rows at once would copy half the embeddings."""
    order = np.argsort(centres, kind="stable")
    movers, centres = movers[order], centres[order]
    for start in range(0, len(movers), chunk):
        part_movers, part_centres = movers[start : start + chunk], centres[start : start + chunk]
        # a centre whose movers straddle two slices gets its share from each
        targets, starts = np.unique(part_centres, return_index=True)
        sums[targets] += np.add.reduceat(sums[part_movers], starts, axis=0)
        size[targets] += np.add.reduceat(size[part_movers], starts)


def _best_partner(a: np.ndarray, b: np.ndarray, linkage: np.ndarray, n: int) -> np.ndarray:
    """Per group its best-linked neighbouring group (-1: none), ties to the lower id, from each pair (a, b)
    of groups and its linkage. Scattered maxima and minima: no sorted copy of both directions of every pair."""
    best_link = np.full(n, -np.inf, dtype=linkage.dtype)
    np.maximum.at(best_link, a, linkage)
    np.maximum.at(best_link, b, linkage)
    best = np.full(n, n, dtype=np.int64)
    for group, other in ((a, b), (b, a)):
        top = linkage == best_link[group]
        np.minimum.at(best, group[top], other[top])
    best[best == n] = -1
    return best


def _moves(best: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(movers, centres) of this round. Two groups that choose each other: the smaller moves into the larger
    (ties: the higher id into the lower), which stays this round; any other group whose choice stays moves
    into it too, so a big group absorbs all the small ones that chose it at once. Centres never move."""
    groups = np.flatnonzero(best >= 0)
    partner = best[groups]
    mutual = best[partner] == groups
    larger = (size[partner] > size[groups]) | ((size[partner] == size[groups]) & (partner < groups))
    stays = np.zeros(len(best), dtype=bool)
    stays[groups[mutual & ~larger]] = True
    moving = (mutual & larger) | (~mutual & stays[partner])
    return groups[moving], partner[moving]

"""FAISS search indexes over L2-normalised vectors (cosine = inner product): exact or approximate.

- "flat": `IndexFlatIP`, exact; each query compares against every vector.
- "ivf": `IndexIVFFlat`, approximate: k-means cells (about 4 sqrt(n), trained on a sample of
  at most 256 vectors per cell) and a query searches only the `nprobe` cells nearest to it.
  `nprobe` is calibrated when the index is built: the smallest whose recall@10 against exact
  search reaches `TARGET_RECALL` on sample vectors used as queries, each left out of its own
  results. How much that scans depends on the data: on UTKFace, where most faces have no
  other photo of the same person, the ten nearest faces are nearly random and about 40% of
  the cells are searched. Range searches for near-duplicates need far fewer cells and get
  their own nprobe (`tune_for_range`): on UTKFace 2 cells find 99.4% of the pairs >= 0.9.
  Vectors are kept uncompressed, so they can be reconstructed exactly (the store checks its
  index against its record that way).
- "auto": flat below `IVF_MIN_VECTORS` vectors, IVF from there on.

Every index is wrapped in `IndexIDMap2`, so search returns the caller's ids. `EmbeddingIndex` owns
one such index's life (file, checks, search with restrictions and what searches can cache).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from pathlib import Path

import faiss
import numpy as np

from agestimate.io.atomic import atomic_path

logger = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "ivf")
IVF_MIN_VECTORS = 200_000  # "auto" switches to IVF here: exact search of 200k x 512 takes ~3 ms a query on one core
IVF_MIN_TRAIN = 1_000  # fewer vectors than this cannot train useful cells: the index stays flat
TARGET_RECALL = 0.96  # recall@10 that nprobe must reach on the calibration queries (held-out ones: ~0.95)
RANGE_TARGET_RECALL = 0.99  # share of the pairs a range search must find: near-duplicates are few and each matters
CALIBRATION_QUERIES = 256
RANGE_CALIBRATION_QUERIES = 5_000  # near-duplicates are rare: enough queries to meet some hundreds of pairs
POINTS_PER_CELL = 256  # at most this many training vectors per cell (FAISS's own k-means sampling limit)
MAX_OVERFETCH = 4096  # restricted searches fetch k + this many extra neighbours at most, then filter


def check_kind(kind: str) -> str:
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
    return kind


def ivf_cells(n: int) -> int:
    """Number of IVF cells for n vectors: 4 sqrt(n), with at least 39 training vectors per cell."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def choose_kind(n: int, kind: str = "auto") -> str:
    """The index kind to build for n vectors: "flat" or "ivf"."""
    if check_kind(kind) == "auto":
        kind = "ivf" if n >= IVF_MIN_VECTORS else "flat"
    if kind == "ivf" and n < IVF_MIN_TRAIN:
        return "flat"
    return kind


def index_kind(index: faiss.Index) -> str:
    """"flat" or "ivf" for an index made by `build_index` (unwrapping its id map)."""
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap2) else index)
    return "ivf" if isinstance(inner, faiss.IndexIVF) else "flat"


def describe(index: faiss.Index) -> str:
    """A short description for summaries: "flat" or "ivf (nlist 575, nprobe 16)"."""
    inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap2) else index)
    if isinstance(inner, faiss.IndexIVF):
        return f"ivf (nlist {inner.nlist}, nprobe {inner.nprobe})"
    return "flat"


def needs_rebuild(index: faiss.Index, kind: str = "auto") -> bool:
    """Whether an index of `ntotal` vectors should be rebuilt: another kind is due, or an IVF index
    has grown past four times the size its cells were trained for."""
    n = int(index.ntotal)
    if index_kind(index) != choose_kind(n, kind):
        return True
    inner = faiss.downcast_index(index.index)
    return isinstance(inner, faiss.IndexIVF) and inner.nlist < ivf_cells(n) / 2


def build_index(vectors: np.ndarray, ids: np.ndarray | None = None, kind: str = "auto", *, dim: int | None = None,
                seed: int = 0) -> faiss.IndexIDMap2:
    """An index over `vectors` (n, d), L2-normalised, with `ids` (default 0..n-1).

    Parameters
    ----------
    kind : "auto", "flat" or "ivf" (see the module docstring; "ivf" on fewer than
        `IVF_MIN_TRAIN` vectors gives a flat index).
    dim : vector size, needed when `vectors` is empty.
    seed : k-means initialisation and the choice of training and calibration samples.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1] if vectors.ndim == 2 else dim
    ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if choose_kind(len(vectors), kind) == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        index = faiss.IndexIDMap2(_trained_ivf(vectors, seed))
    if len(vectors):
        index.add_with_ids(vectors, ids)
    if index_kind(index) == "ivf":
        faiss.downcast_index(index.index).nprobe = _calibrated_nprobe(index, vectors, seed)
    return index


def _trained_ivf(vectors: np.ndarray, seed: int) -> faiss.IndexIVFFlat:
    n, dim = vectors.shape
    cells = ivf_cells(n)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    sample = np.random.default_rng(seed).choice(n, size=min(n, POINTS_PER_CELL * cells), replace=False)
    ivf.train(vectors[np.sort(sample)])
    ivf.make_direct_map()  # exact reconstruction by position, as the flat index offers
    return ivf


def _calibrated_nprobe(index: faiss.IndexIDMap2, vectors: np.ndarray, seed: int, k: int = 10) -> int:
    """The smallest `nprobe` reaching `TARGET_RECALL` on sample vectors as queries,
    each one left out of its own results (as a query from outside the index would be)."""
    ivf = faiss.downcast_index(index.index)
    ids = faiss.vector_to_array(index.id_map)
    rows = np.random.default_rng(seed + 1).choice(len(vectors), size=min(len(vectors), CALIBRATION_QUERIES), replace=False)
    queries = vectors[rows]
    _, exact = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    exact = _without_self(ids[exact], ids[rows], k)

    def recall(nprobe: int) -> float:
        ivf.nprobe = nprobe
        return recall_at_k(exact, _without_self(index.search(queries, k + 1)[1], ids[rows], k))

    nprobe = _smallest_nprobe(recall, ivf.nlist, TARGET_RECALL)
    logger.info("IVF index of %d vectors: %d cells, nprobe %d, calibration recall@%d %.3f", len(vectors), ivf.nlist,
                nprobe, k, recall(nprobe))
    return nprobe


def _smallest_nprobe(recall, nlist: int, target: float) -> int:
    """The smallest nprobe in 1..nlist with recall(nprobe) >= target (recall grows with nprobe)."""
    low, high = 0, 1  # recall(low) falls short (0: nothing searched)
    while high < nlist and recall(high) < target:
        low, high = high, min(2 * high, nlist)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if recall(middle) >= target else (middle, high)
    return high


def tune_for_range(index: faiss.IndexIDMap2, vectors: np.ndarray, threshold: float, *, seed: int = 0) -> None:
    """Set an IVF index's nprobe for range searches at `threshold` over `vectors` (those it holds):
    twice the smallest that finds `RANGE_TARGET_RECALL` of the pairs exact search finds for sample
    queries. Pairs this close share a cell or a neighbouring one, so far fewer cells are needed
    than for the ten nearest neighbours. A flat index is left as it is."""
    if index_kind(index) != "ivf":
        return
    ivf = faiss.downcast_index(index.index)
    rows = np.random.default_rng(seed + 2).choice(len(vectors), size=min(len(vectors), RANGE_CALIBRATION_QUERIES),
                                                  replace=False)
    queries = vectors[rows]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    wanted = _pairs(exact.range_search(queries, threshold), faiss.vector_to_array(index.id_map))
    if not wanted:
        return  # nothing to calibrate on: keep the nprobe of nearest-neighbour search

    def recall(nprobe: int) -> float:
        ivf.nprobe = nprobe
        return len(wanted & _pairs(index.range_search(queries, threshold))) / len(wanted)

    # twice the smallest that suffices on the sample: its few pairs make the estimate noisy
    ivf.nprobe = min(2 * _smallest_nprobe(recall, ivf.nlist, RANGE_TARGET_RECALL), ivf.nlist)
    logger.info("IVF range search at %.2f: nprobe %d of %d cells (%d pairs in the calibration sample)", threshold,
                ivf.nprobe, ivf.nlist, len(wanted))


def _pairs(result, ids=None) -> set:
    """(query row, id) pairs of a FAISS range search result (`ids`: map positions to ids)."""
    limits, _, found = result
    found = found if ids is None else ids[found]
    rows = np.repeat(np.arange(len(limits) - 1), np.diff(limits.astype(np.int64)))
    return set(zip(rows.tolist(), found.tolist()))


def _without_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first k ids of each row of `found` other than that row's own id (-1 pads a short row)."""
    return np.array([([i for i in row if i != me] + [-1] * k)[:k] for row, me in zip(found.tolist(), own.tolist())])


def recall_at_k(exact_ids: np.ndarray, found_ids: np.ndarray) -> float:
    """Mean fraction of each row of `exact_ids` (n, k) found in the same row of `found_ids` (n, k)."""
    exact_ids, found_ids = np.atleast_2d(exact_ids), np.atleast_2d(found_ids)
    if not len(exact_ids):
        return 1.0
    hits = [len(set(e.tolist()) & set(f.tolist())) for e, f in zip(exact_ids, found_ids)]
    return float(np.sum(hits) / exact_ids.size)


def _as_queries(queries) -> np.ndarray:
    return np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)


class Restriction:
    """A set of ids to search among, prepared once for one index version: the sorted ids, how many
    of the index's vectors they leave out, and (made when first needed) FAISS's id selector."""

    def __init__(self, index: faiss.IndexIDMap2, among):
        self.ids = np.unique(np.asarray(among, dtype=np.int64))
        self.excluded = int(index.ntotal) - int(self.allows(faiss.vector_to_array(index.id_map)).sum())
        self._selector = None

    def allows(self, ids: np.ndarray) -> np.ndarray:
        """Mask of `ids` (any shape; -1 for none) that are among the restriction's."""
        if not len(self.ids):
            return np.zeros(np.shape(ids), bool)
        positions = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return self.ids[positions] == ids

    def parameters(self, index: faiss.Index) -> faiss.SearchParameters:
        """Search parameters that let FAISS skip the other ids (with the IVF index's current nprobe)."""
        if self._selector is None:
            self._selector = faiss.IDSelectorBatch(self.ids)
        if index_kind(index) == "ivf":  # IVF takes its own parameters, nprobe among them
            parameters = faiss.SearchParametersIVF(sel=self._selector, nprobe=faiss.downcast_index(index.index).nprobe)
        else:
            parameters = faiss.SearchParameters(sel=self._selector)
        parameters.selector_alive = self._selector  # the SWIG wrapper does not keep it alive by itself
        return parameters

    def search(self, index: faiss.IndexIDMap2, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` nearest allowed ids to each query: (similarities, ids), each (n, k), missing
        neighbours with id -1 (see `EmbeddingIndex.search`)."""
        if self.excluded > MAX_OVERFETCH:  # FAISS filters while it searches: exact, but without BLAS (10x slower)
            return index.search(queries, k, params=self.parameters(index))
        # the k + excluded best hold the k best allowed ones: search those, drop the rest
        similarities, ids = index.search(queries, min(k + self.excluded, index.ntotal))
        allowed = self.allows(ids)
        order = np.argsort(~allowed, axis=1, kind="stable")[:, :k]
        similarities, ids = (np.take_along_axis(a, order, axis=1) for a in (similarities, ids))
        missing = ~np.take_along_axis(allowed, order, axis=1)
        ids[missing], similarities[missing] = -1, -np.inf
        if ids.shape[1] < k:
            pad = ((0, 0), (0, k - ids.shape[1]))
            ids, similarities = np.pad(ids, pad, constant_values=-1), np.pad(similarities, pad, constant_values=-np.inf)
        return similarities, ids

    def range_hits(self, limits: np.ndarray, similarities: np.ndarray, ids: np.ndarray) -> tuple:
        """A FAISS range search result (limits, similarities, ids) keeping only the allowed hits."""
        keep = self.allows(ids)
        kept_before = np.concatenate([[0], np.cumsum(keep)])  # hits kept before each position
        return kept_before[limits.astype(np.int64)].astype(limits.dtype), similarities[keep], ids[keep]


class EmbeddingIndex:
    """A FAISS index over L2-normalised vectors keyed by id (cosine = inner product), with its
    whole life: loading `path` and checking it against a record, adding, rebuilding, saving
    atomically, search and range search, each restricted to a subset of ids on demand.

    What a search can reuse is kept per version of the index (`generation`, bumped by every
    load, addition and rebuild): the prepared restrictions (`Restriction`, the last few sets of
    ids), one GPU copy (when FAISS sees a GPU), and an IVF index's range-search nprobe per threshold.

    Parameters
    ----------
    path : the index file (None: kept in memory only).
    kind : "auto", "flat" or "ivf" (see the module docstring); applied when the index is (re)built.
    dim : vector size.
    """

    RESTRICTIONS_KEPT = 4

    def __init__(self, path: str | Path | None = None, *, kind: str = "auto", dim: int):
        self.path = None if path is None else Path(path)
        self.kind, self.dim = check_kind(kind), dim
        self.faiss: faiss.IndexIDMap2 | None = None  # the FAISS index, once loaded or built
        self.version: int | None = None  # the record version the index shows (set by `load`)
        self.unsaved = False  # the index differs from the file at `path`
        self.generation = 0
        self._restrictions: dict = {}
        self._lock = threading.Lock()  # searches from several threads share the caches
        self._range_nprobe: dict[float, int] = {}
        self._gpu = None  # (key, resources, GPU index)
        self._gpus: int | None = None

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, ids: np.ndarray | None = None, *, kind: str = "auto",
                     dim: int | None = None) -> EmbeddingIndex:
        """An in-memory index over `vectors` (n, d) with `ids` (default 0..n-1)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        index = cls(kind=kind, dim=vectors.shape[1] if vectors.ndim == 2 else dim)
        index.rebuild(np.arange(len(vectors), dtype=np.int64) if ids is None else ids, vectors)
        return index

    def __len__(self) -> int:
        return 0 if self.faiss is None else int(self.faiss.ntotal)

    def _changed(self, index: faiss.IndexIDMap2) -> None:
        self.faiss = index
        self.generation += 1
        self._restrictions.clear()
        self._range_nprobe.clear()
        self._gpu = None

    # -- life ------------------------------------------------------------------------------
    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the index by one of `kind` over these vectors (IVF cells trained on them)."""
        self._changed(build_index(vectors, ids, self.kind, dim=self.dim))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under these ids (an IVF index keeps its trained cells)."""
        self.faiss.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        self._changed(self.faiss)
        self.unsaved = True

    def load(self, version: int, *, count: int, saved_version: str | None, read_record, quiet: bool = False) -> bool:
        """Make the index show the record at `version`, which holds `count` vectors.

        The file at `path` is trusted when `saved_version` (the version the record says the file
        shows) is `version` and it holds `count` vectors; otherwise it is checked against
        ``read_record()`` -> (ids, vectors) of the whole record: vectors added since join it,
        any other difference rebuilds it (logged as a warning unless `quiet`). Returns True when
        the file was checked and found to match the record (which may then trust it)."""
        self.version = version
        index, problem = None, None
        if self.path is not None and self.path.exists():
            try:
                index = faiss.read_index(str(self.path))
            except RuntimeError as error:
                problem = f"unreadable ({str(error).splitlines()[0]})"
        if index is not None and needs_rebuild(index, self.kind):  # another kind, or outgrown
            logger.info("%s: index is %s, the store asks for %s at %d faces; rebuilding it", self.path,
                        describe(index), self.kind, count)
            self.unsaved = True
            self.rebuild(*read_record())
            return False
        if index is not None and saved_version == str(version) and index.ntotal == count:
            self._changed(index)
            return False
        ids, vectors = read_record()
        if index is None and problem is None:
            problem = "missing" if len(ids) else None
        elif index is not None:
            stored_ids = faiss.vector_to_array(index.id_map)
            known = len(stored_ids)
            if not np.array_equal(stored_ids, ids[:known]):
                problem = f"holds {known} faces, the record {len(ids)}"
            elif known and not np.array_equal(index.index.reconstruct_n(0, known), vectors[:known]):
                problem = "vectors differ from the record"
            elif known < len(ids):  # only faces added since it was written
                index.add_with_ids(vectors[known:], ids[known:])
                if not needs_rebuild(index, self.kind):
                    logger.debug("%s: %d faces added to the index's %d", self.path, len(ids) - known, known)
                    self.unsaved = True
                    self._changed(index)
                    return False
                problem = f"outgrown: {describe(index)} at {len(ids)} faces"
            else:
                self._changed(index)
                return True
        if problem:  # expected after this process changed the faces; news to a reader
            logger.log(logging.DEBUG if quiet else logging.WARNING,
                       "%s: index %s; rebuilding it from the record (%d faces)", self.path, problem, len(ids))
        self.unsaved = self.unsaved or bool(problem)
        self.rebuild(ids, vectors)
        return False

    def save(self) -> None:
        """Write the index to `path` atomically (a crash leaves the old file or the new one, never half)."""
        with atomic_path(self.path) as temporary:
            faiss.write_index(self.faiss, str(temporary))
        self.unsaved = False

    # -- search ----------------------------------------------------------------------------
    def restriction(self, among) -> Restriction:
        """The prepared `Restriction` to the ids `among`, reused while the index and the ids stay the same."""
        among = np.ascontiguousarray(among, dtype=np.int64)
        key = (self.generation, among.shape, hashlib.blake2b(among.tobytes(), digest_size=16).digest())
        with self._lock:
            restriction = self._restrictions.pop(key, None)
        restriction = restriction or Restriction(self.faiss, among)
        with self._lock:
            self._restrictions[key] = restriction  # the most recent last
            while len(self._restrictions) > self.RESTRICTIONS_KEPT:
                self._restrictions.pop(next(iter(self._restrictions)))
        return restriction

    def _searched(self) -> faiss.Index:
        """The index searches go to: one GPU copy per index version (and nprobe) when FAISS has a GPU, else itself."""
        if self._gpus is None:
            self._gpus = faiss.get_num_gpus() if hasattr(faiss, "index_cpu_to_gpu") else 0
        if not self._gpus:
            return self.faiss
        key = (self.generation, describe(self.faiss))
        if self._gpu is None or self._gpu[0] != key:
            resources = faiss.StandardGpuResources()
            self._gpu = (key, resources, faiss.index_cpu_to_gpu(resources, 0, self.faiss))
        return self._gpu[2]

    def search(self, queries: np.ndarray, k: int = 10, *, among=None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar vectors (cosine) to each query: (similarities, ids), each (n, k).

        among : only these ids; missing neighbours have id -1.
        """
        queries = _as_queries(queries)
        if among is not None:
            restriction = self.restriction(among)
            if restriction.excluded:
                return restriction.search(self.faiss, queries, k)
        return self._searched().search(queries, k)

    def range_search(self, queries: np.ndarray, threshold: float, *, among=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every vector with cosine >= `threshold` to each query, as FAISS gives them:
        (limits (n + 1,), similarities, ids); the hits of query i are ``limits[i]:limits[i + 1]``.
        An IVF index searches with the nprobe `tune_for_range` picks for this threshold (found
        once per index version), then goes back to its nearest-neighbour nprobe.

        among : only these ids.
        """
        queries = _as_queries(queries)
        index = self.faiss
        if index_kind(index) == "ivf":  # pairs this close need far fewer cells than nearest neighbours do
            ivf = faiss.downcast_index(index.index)
            nearest_neighbours_nprobe = ivf.nprobe
            try:
                if threshold not in self._range_nprobe:
                    tune_for_range(index, index.index.reconstruct_n(0, index.ntotal), threshold)  # the stored vectors
                    self._range_nprobe[threshold] = ivf.nprobe
                ivf.nprobe = self._range_nprobe[threshold]
                found = index.range_search(queries, threshold)
            finally:
                ivf.nprobe = nearest_neighbours_nprobe
        else:
            found = index.range_search(queries, threshold)
        return found if among is None else self.restriction(among).range_hits(*found)

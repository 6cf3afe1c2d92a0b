"""Group the photos of one person by face similarity and make their gender and age agree.

Every person in the data has seven photos (five masked, one badly masked, one
unmasked) sharing one gender and one age. Eval photos are anonymous, but the
photos of a person look alike above the mask: eyes, brows, hair, forehead. So:

1. ``FeatureCapture`` takes a mid-level backbone feature map (1/16 resolution by
   default) during the normal forward pass, and ``region_embedding`` pools its
   upper rows, the part of the face a mask never covers, into a few columns. On
   a proxy fold (configs/best-cpu.yaml after one epoch) 96 % of a photo's 6 nearest
   neighbours were photos of its own person this way; with the pooled last
   features (what the heads see, tuned to mask, gender and age rather than to
   identity) 34 %, with the whole of the same feature map 14-29 % (by pooling grid).
2. ``cluster_people`` links each photo to its nearest neighbours by cosine
   similarity and merges the most similar pairs first into groups of at most
   ``max_size`` photos (single linkage with a size cap and a similarity floor).
3. ``consistent_probs`` averages the gender probabilities, and the age
   probabilities (or a regression head's predicted years), over each group; the
   mask stays per photo.

Only pixels enter: never file names, row order or file metadata. Group numbers
depend on row order, the predictions do not (tested).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..age import Cuts, group_probs_np
from ..labels import combine_task_probs, split_class_probs

logger = logging.getLogger(__name__)


class FeatureCapture:
    """Context manager turning the feature map of one backbone module into face embeddings as the model runs.

    A forward hook sees what the model computes anyway, so embedding costs no extra
    pass and the model's forward stays untouched. The (N, C, H, W) output of ``layer``
    (a module name inside the backbone, e.g. ``blocks.3``) is reduced at once by
    :func:`region_embedding`, so only (N, C * columns) is kept.
    """

    def __init__(self, model: object, layer: str, upper_fraction: float, columns: int) -> None:
        # ``model``: a network or its Fabric wrapper (found through the attributes it has, not its type)
        net = getattr(model, "module", model)  # a Fabric-wrapped model keeps the original in .module
        # Any: a network has get_submodule; anything else (an ONNX session) fails the lookup below
        backbone: Any = getattr(net, "backbone", net)
        try:
            self._target = backbone.get_submodule(layer)
        except AttributeError:
            known = [f["module"] for f in getattr(backbone, "feature_info", [])]
            raise ValueError(
                f"predict.grouping.layer: the backbone has no module {layer!r}"
                + (f"; its feature stages are {known}" if known else "")
            ) from None
        self.upper_fraction, self.columns = upper_fraction, columns
        self.embedding: torch.Tensor | None = None
        self._handle: RemovableHandle | None = None

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.embedding = region_embedding(output, self.upper_fraction, self.columns)

    def __enter__(self) -> FeatureCapture:
        self._handle = self._target.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def pop(self) -> torch.Tensor:
        """The embeddings of the last forward pass; an error if there was none."""
        if self.embedding is None:
            raise RuntimeError("no features captured: the model did not run the grouping layer")
        out, self.embedding = self.embedding, None
        return out


def region_embedding(features: torch.Tensor, upper_fraction: float, columns: int = 3) -> torch.Tensor:
    """(N, C, H, W) feature map -> (N, C * columns): its top ``upper_fraction`` of rows, pooled into columns.

    The top rows hold what a mask never covers (eyes, brows, hair); columns keep their
    left-to-right layout, which tells faces apart better than one average (measured).
    """
    if features.ndim != 4:
        raise ValueError(
            f"the grouping layer must output an (N, C, H, W) feature map, got shape "
            f"{tuple(features.shape)}; set predict.grouping.layer to a convolutional stage"
        )
    rows = max(1, round(upper_fraction * features.shape[2]))
    top = features[:, :, :rows].float()
    return F.adaptive_avg_pool2d(top, (1, min(columns, top.shape[3]))).flatten(1)


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    # Centred first: backbone activations are mostly positive, so raw cosines are all high and alike.
    x = np.asarray(embeddings, np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cluster_people(
    embeddings: np.ndarray, max_size: int = 7, min_similarity: float = 0.5, neighbors: int = 10
) -> np.ndarray:
    """(N, D) embeddings -> (N,) group number per row; groups hold at most ``max_size`` rows.

    Each row's ``neighbors`` nearest rows by cosine similarity (after centring) are
    candidate links; links at or above ``min_similarity`` are taken from the most
    similar down, joining two groups only when the result stays within ``max_size``.
    Hand-written (a union-find of 20 lines) because no library clusters with a size
    cap, and scipy's or sklearn's agglomeration would need all N^2 distances.
    """
    from sklearn.neighbors import NearestNeighbors

    x = _normalise(embeddings)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64)
    k = min(int(neighbors) + 1, n)
    sim_dist, idx = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
    src = np.repeat(np.arange(n), k)
    dst, sim = idx.ravel(), 1.0 - sim_dist.ravel()
    keep = (src < dst) & (sim >= min_similarity)
    src, dst, sim = src[keep], dst[keep], sim[keep]
    # Most similar first; exact ties broken by the similarity rounded, then the pair's own
    # embeddings' sums, never by row numbers, so the grouping does not follow the row order.
    tie = np.round(x[src].sum(axis=1) + x[dst].sum(axis=1), 9)
    order = np.lexsort((tie, -sim))

    parent = np.arange(n)
    size = np.ones(n, np.int64)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for e in order:
        a, b = root(src[e]), root(dst[e])
        if a != b and size[a] + size[b] <= max_size:
            if size[a] < size[b]:
                a, b = b, a
            parent[b] = a
            size[a] += size[b]
    roots = np.array([root(i) for i in range(n)])
    return np.unique(roots, return_inverse=True)[1]


def consistent_probs(
    probs: np.ndarray, groups: np.ndarray, age_years: np.ndarray | None = None, age_cuts: Cuts | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Average gender and age over each group; the mask stays per photo. Returns (probs, age_years).

    ``probs`` (N, 18), ``groups`` (N,) from :func:`cluster_people`. With a regression
    head (``age_years`` (N, 2): mean and spread in years) the years are averaged and
    cut into groups at ``age_cuts``; otherwise the age probabilities are averaged. The
    joint is rebuilt as mask x gender x age, which a multi-task head's already is (for a
    single 18-way head it drops what the joint said beyond its marginals). Photos alone
    in their group are left exactly as they were.
    """
    probs = np.asarray(probs, np.float64)
    groups = np.asarray(groups)
    counts = np.bincount(groups)
    shared = counts[groups] > 1
    if not shared.any():
        return probs, age_years

    def group_mean(values: np.ndarray) -> np.ndarray:
        sums = np.zeros((len(counts), values.shape[1]))
        np.add.at(sums, groups, values)
        return (sums / counts[:, None])[groups]

    marginals = split_class_probs(probs)
    marginals["gender"] = group_mean(marginals["gender"])
    out_years = None
    if age_years is not None:
        if age_cuts is None:
            raise ValueError("averaging a regression head's years needs the age cut points")
        years = group_mean(np.asarray(age_years, np.float64))
        marginals["age"] = group_probs_np(years[:, 0], years[:, 1], age_cuts)
        out_years = np.where(shared[:, None], years, age_years)
    else:
        marginals["age"] = group_mean(marginals["age"])
    joint = combine_task_probs(marginals)
    out = np.where(shared[:, None], joint, probs)
    return out, out_years


@dataclass
class Grouped:
    probs: np.ndarray  # (N, 18) with gender and age made consistent within groups
    age_years: np.ndarray | None  # (N, 2) averaged within groups (regression head), else None
    groups: np.ndarray  # (N,) group number per row


def group_people(
    probs: np.ndarray,
    embeddings: np.ndarray,
    max_size: int = 7,
    min_similarity: float = 0.5,
    neighbors: int = 10,
    age_years: np.ndarray | None = None,
    age_cuts: Cuts | None = None,
) -> Grouped:
    """:func:`cluster_people` on the embeddings, then :func:`consistent_probs`."""
    if len(probs) != len(embeddings):
        raise ValueError(f"{len(probs)} rows of probabilities but {len(embeddings)} embeddings")
    groups = cluster_people(embeddings, max_size, min_similarity, neighbors)
    sizes = np.bincount(groups)
    logger.info(
        "grouped %d photos into %d groups (%d of 2+ photos, mean size %.2f)",
        len(groups),
        len(sizes),
        int((sizes > 1).sum()),
        len(groups) / max(len(sizes), 1),
    )
    new_probs, years = consistent_probs(probs, groups, age_years, age_cuts)
    return Grouped(new_probs.astype(np.float32), years, groups)

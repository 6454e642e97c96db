"""From scores to the weights a validator sets on chain.

L1-normalise the score vector; if fewer than ``min_allowed_weights`` UIDs are non-zero, everything goes
to UID 0 (burn); otherwise cap each weight at ``max_weight_limit`` (bittensor's ``normalize_max_weight``)
and convert to the uint16 vector ``SetWeights`` takes (max scaled to 65535, zeros dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

U16_MAX = 65535
BURN_UID = 0


def l1_normalize(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    x = np.clip(x, 0.0, None)
    s = x.sum()
    return x / s if s > 0 else np.zeros_like(x)


def normalize_max_weight(x: np.ndarray, limit: float = 0.1) -> np.ndarray:
    """Normalise so that no weight exceeds ``limit`` (bittensor's algorithm: clip the largest values to a
    common cutoff chosen so the normalised result meets the limit)."""
    epsilon = 1e-7
    weights = np.asarray(x, dtype=np.float64).copy()
    values = np.sort(weights)
    if weights.sum() == 0 or weights.shape[0] * limit <= 1:
        return np.ones_like(weights) / weights.shape[0]
    estimation = values / values.sum()
    if estimation.max() <= limit:
        return weights / weights.sum()
    cumsum = np.cumsum(estimation, 0)
    estimation_sum = np.array([(len(values) - i - 1) * estimation[i] for i in range(len(values))])
    n_values = int((estimation / (estimation_sum + cumsum + epsilon) < limit).sum())
    cutoff_scale = (limit * cumsum[n_values - 1] - epsilon) / (1 - (limit * (len(estimation) - n_values)))
    cutoff = cutoff_scale * values.sum()
    weights[weights > cutoff] = cutoff
    return weights / weights.sum()


@dataclass
class WeightVector:
    uids: list[int]
    weights: list[float]  # normalised floats (sum 1)
    uint16: list[int]  # what goes on chain, aligned with ``uint16_uids``
    uint16_uids: list[int]
    burned: bool
    version_key: int

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.uids, self.weights, strict=True))


def process_weights(
    scores: np.ndarray,
    *,
    min_allowed_weights: int = 1,
    max_weight_limit: float = 1.0,
    version_key: int = 0,
    burn_uid: int = BURN_UID,
) -> WeightVector:
    """Scores (one per UID) -> normalised, limited, uint16 weights."""
    raw = l1_normalize(scores)
    n = raw.shape[0]
    nonzero = np.flatnonzero(raw > 0)
    if n == 0:
        return WeightVector([], [], [], [], True, version_key)
    if nonzero.size < max(1, min_allowed_weights):
        uids = [int(burn_uid if burn_uid < n else 0)]
        return WeightVector(uids, [1.0], [U16_MAX], uids, True, version_key)
    limited = normalize_max_weight(raw[nonzero], limit=max_weight_limit)
    uids = [int(u) for u in nonzero]
    u16_uids, u16 = to_uint16(uids, limited)
    return WeightVector(uids, [float(v) for v in limited], u16, u16_uids, False, version_key)


def to_uint16(uids: list[int], weights: np.ndarray | list[float]) -> tuple[list[int], list[int]]:
    """bittensor's ``convert_weights_and_uids_for_emit``: max-upscale to 65535, round, drop zeros."""
    w = np.asarray(weights, dtype=np.float64)
    if len(uids) != len(w):
        raise ValueError("uids and weights differ in length")
    if w.size == 0 or w.sum() == 0:
        return [], []
    if (w < 0).any() or min(uids) < 0:
        raise ValueError("weights and uids must be non-negative")
    scaled = w / w.max()
    out_uids, out_vals = [], []
    for uid, v in zip(uids, scaled, strict=True):
        q = round(float(v) * U16_MAX)
        if q != 0:
            out_uids.append(int(uid))
            out_vals.append(int(q))
    return out_uids, out_vals

"""Calibrated draft probabilities: a softmax temperature per depth, fitted on held-out answers, and the expected
calibration error that says how far the top-1 confidence is from the top-1 hit rate. The per-step tree
(pertree.py) multiplies these probabilities along paths and sizes each step by their sum, so they must mean what
they say."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def calibrate(logits: Sequence[np.ndarray], targets: Sequence[np.ndarray], split: bool = True):
    """A temperature per depth minimising the held-out negative log-likelihood of the greedy target (targets
    outside the draft vocabulary, -1, are left out of the fit and count as misses in the ECE and the top-1 rate).
    logits[d]: [n, draft vocabulary]; targets[d]: [n] local ids. With `split` the temperature is fitted on the
    even rows and the ECE and top-1 rate reported on the odd ones (then the temperature is refitted on all rows).
    Returns (temperatures, stats per depth)."""
    temps, stats = [], []
    for z_all, t_all in zip(logits, targets):
        z_all = z_all.astype(np.float64)
        T = _fit(z_all, t_all)
        temps.append(T)
        extra = {}
        z, t, T_eval = z_all, t_all, T
        if split and len(t_all) >= 4:
            z, t, T_eval = z_all[1::2], t_all[1::2], _fit(z_all[0::2], t_all[0::2])
            extra = dict(temperature_half=T_eval)
        stats.append(dict(extra, ece_before=ece(z, t, 1.0), ece_after=ece(z, t, T_eval),
                          top1=float(np.mean(z.argmax(axis=1) == t)), rows=int(len(t)), temperature=T))
    return temps, stats


def _fit(z: np.ndarray, t: np.ndarray) -> float:
    """The temperature of least negative log-likelihood over a log grid from 0.3 to 4."""
    inside = t >= 0
    nll = []
    grid = np.exp(np.linspace(np.log(0.3), np.log(4.0), 60))
    for T in grid:
        lz = z / T
        lse = np.log(np.exp(lz - lz.max(axis=1, keepdims=True)).sum(axis=1)) + lz.max(axis=1)
        nll.append(float(np.mean(lse[inside] - lz[inside, t[inside]])))
    return float(grid[int(np.argmin(nll))])


def softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of logits z [n, vocabulary] at a temperature (a new array; z is left as it was)."""
    p = z * (1.0 / temperature)
    p -= p.max(axis=1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(axis=1, keepdims=True)
    return p


def ece(z: np.ndarray, t: np.ndarray, T: float, bins: int = 10) -> float:
    """Expected calibration error of the top-1 confidence (equal-width bins)."""
    p = softmax(z, T)
    conf = p.max(axis=1)
    right = p.argmax(axis=1) == t
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            e += m.mean() * abs(conf[m].mean() - right[m].mean())
    return float(e)

"""Compiled (numba) block drivers of llama.cpp's K-quant scale searches: the hot loops of
:mod:`kquants`.

:func:`search_qkx2` / :func:`search_qx` take (B, 256) float32 blocks and return every sub-block's
levels and scales; :func:`requant` is the types' second pass. Inside, blocks are handled a tile
at a time: a tile's sub-blocks are gathered into a column matrix and handed to the per-column
kernels of :mod:`grokfetch.convert.kquants_kernels` (C's exact float32 sequence, vectorized
across sub-blocks).

The kernels release the GIL (``nogil``), so the converter's worker threads run them in parallel;
they are compiled on first use and cached next to this file (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from grokfetch.convert.kquants_kernels import (
    F32,
    JIT,
    clamp,
    nearest_int,
    q3_rmse_tile,
    qkx2_tile,
    qx_rmse1_tile,
)

# ---------------------------------------------------------------------------------- block drivers
# Blocks are searched TILE_BLOCKS at a time: the tile's sub-blocks are gathered into a column matrix
# (n, sub-blocks) that stays in L1/L2 while the candidate loops sweep over it, and the levels are
# scattered straight back into block order.

TILE_BLOCKS = 32
QK_K = 256


@njit(**JIT)
def _gather(xb, b0, nb, n, X):
    """Column ``c = b*(256/n) + j`` of ``X`` = sub-block ``j`` of block ``b0 + b``."""
    per = QK_K // n
    for b in range(nb):
        for j in range(per):
            c = b * per + j
            for i in range(n):
                X[i, c] = xb[b0 + b, j * n + i]


@njit(**JIT)
def _scatter(Lt, b0, nb, n, L):
    """Inverse of :func:`_gather` for the levels ``Lt`` -> ``L`` (B, 256). (Separate from it:
    ``xb`` may be a read-only array, and numba types both branches of a shared function.)"""
    per = QK_K // n
    for b in range(nb):
        for j in range(per):
            c = b * per + j
            for i in range(n):
                L[b0 + b, j * n + i] = Lt[i, c]


@njit(**JIT)
def _put(vals, b0, nb, out):
    """Per-sub-block values of a tile (column order) -> rows ``b0..b0+nb`` of ``out`` (B, per)."""
    per = out.shape[1]
    for b in range(nb):
        for j in range(per):
            out[b0 + b, j] = vals[b * per + j]


@njit(**JIT)
def _search_qkx2(xb, n, nmax, rmin, rdelta, nstep, use_mad, L, scales, mins):
    """Q2_K (``n=16``, weights ``|x|``, MAD) or Q4_K/Q5_K (``n=32``, weights
    ``sqrt(sum x^2/32) + |x|``): ``make_qkx2_quants`` on every sub-block."""
    B = xb.shape[0]
    cols = TILE_BLOCKS * (QK_K // n)
    X = np.zeros((n, cols), np.float32)
    W = np.empty((n, cols), np.float32)
    Lt = np.empty((n, cols), np.int32)
    Laux = np.empty((n, cols), np.float32)  # levels of the candidate, as float32
    sc = np.empty(cols, np.float32)
    mn = np.empty(cols, np.float32)
    av = np.empty(cols, np.float32)
    for b0 in range(0, B, TILE_BLOCKS):
        nb = min(TILE_BLOCKS, B - b0)
        _gather(xb, b0, nb, n, X)
        if use_mad:
            for i in range(n):
                for c in range(cols):
                    W[i, c] = abs(X[i, c])
        else:
            for c in range(cols):
                av[c] = 0
            for i in range(n):
                for c in range(cols):
                    av[c] += X[i, c] * X[i, c]
            for c in range(cols):
                av[c] = np.sqrt(av[c] / np.float32(32))
            for i in range(n):
                for c in range(cols):
                    W[i, c] = av[c] + abs(X[i, c])
        qkx2_tile(X, W, nmax, rmin, rdelta, nstep, use_mad, Lt, Laux, sc, mn)
        _scatter(Lt, b0, nb, n, L)
        _put(sc, b0, nb, scales)
        _put(mn, b0, nb, mins)


@njit(**JIT)
def _search_qx(xb, nmax, q3, L, scales):
    """Q6_K (``make_qx_quants``) or Q3_K (``q3``: ``make_q3_quants``) on every 16-value sub-block."""
    B = xb.shape[0]
    n = 16
    cols = TILE_BLOCKS * (QK_K // n)
    X = np.zeros((n, cols), np.float32)
    Lt = np.empty((n, cols), np.int32)
    sc = np.empty(cols, np.float32)
    for b0 in range(0, B, TILE_BLOCKS):
        nb = min(TILE_BLOCKS, B - b0)
        _gather(xb, b0, nb, n, X)
        if q3:
            q3_rmse_tile(X, nmax, Lt, sc)
        else:
            qx_rmse1_tile(X, nmax, Lt, sc)
        _scatter(Lt, b0, nb, n, L)
        _put(sc, b0, nb, scales)


@njit(**JIT)
def _requant(xb, L, d, dm, lo, hi, offset):
    """Second pass of every type: ``L = clamp(nearest_int((x + dm)/d), lo, hi) + offset`` where the
    sub-block's ``d != 0`` (``dm`` None: ``x/d``). ``d``/``dm`` are (B, sub-blocks)."""
    B, S = d.shape
    n = QK_K // S
    for b in range(B):
        for j in range(S):
            dd = d[b, j]
            if dd == 0:
                continue
            for i in range(j * n, j * n + n):
                v = xb[b, i] if dm is None else xb[b, i] + dm[b, j]
                L[b, i] = clamp(nearest_int(v / dd), lo, hi) + offset


# ------------------------------------------------------------------------------------- wrappers


def search_qkx2(xb: np.ndarray, n: int, nmax: int, rmin: float, nstep: int,
                use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``make_qkx2_quants(n, nmax, x, w, L, rmin, 0.1, nstep, use_mad)`` on every ``n``-value
    sub-block of the (B, 256) float32 blocks ``xb``, with the weights of Q2_K (``use_mad``:
    ``|x|``) or Q4_K/Q5_K (``sqrt(sum x^2 / 32) + |x|``).

    Returns ``(L, scale, the_min)``: levels (B, 256) int32 in ``[0, nmax]``, and (B, 256/n) float32
    (``x ~= scale*L - the_min``).
    """
    L = np.empty(xb.shape, np.int32)
    scales = np.empty((xb.shape[0], QK_K // n), F32)
    mins = np.empty_like(scales)
    _search_qkx2(xb, n, nmax, F32(rmin), F32(0.1), nstep, use_mad, L, scales, mins)
    return L, scales, mins


def search_qx(xb: np.ndarray, nmax: int, q3: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``make_qx_quants(16, nmax, x, L, rmse_type=1, NULL)`` (Q6_K) or, with ``q3``,
    ``make_q3_quants(16, nmax, x, L, true)`` (Q3_K) on every 16-value sub-block of ``xb``.

    Returns ``(L, scale)``: levels (B, 256) int32 in ``[0, 2*nmax)`` (0 in all-zero sub-blocks),
    scales (B, 16) float32.
    """
    L = np.empty(xb.shape, np.int32)
    scales = np.empty((xb.shape[0], QK_K // 16), F32)
    _search_qx(xb, nmax, q3, L, scales)
    return L, scales


def requant(xb: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int,
            offset: int = 0) -> None:
    """The second pass (in place on ``L``): see :func:`_requant`."""
    _requant(xb, L, np.ascontiguousarray(d, F32), None if dm is None else np.ascontiguousarray(dm, F32),
             lo, hi, offset)

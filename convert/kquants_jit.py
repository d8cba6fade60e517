"""Compiled (numba) ports of llama.cpp's K-quant scale searches: the hot loops of :mod:`kquants`.

:func:`search_qkx2` / :func:`search_qx` take (B, 256) float32 blocks and return every sub-block's
levels and scales; :func:`requant` is the types' second pass. Inside, blocks are handled a tile
at a time: a tile's sub-blocks are gathered into a column matrix ``X`` of shape ``(n, M)``
(column ``m`` = the ``n`` values of one sub-block), and each kernel is the C function written
for one column with the loop over columns innermost, so LLVM vectorizes it across sub-blocks
(16 float32 lanes with AVX-512) while every column still runs C's exact sequence of float32
operations:

* no fast-math: numba emits no ``contract``/``reassoc`` flags, so ``a*b + c`` is never fused into
  an FMA and sums stay sequential (``s += ...`` in C's order);
* ``nearest_int`` is C's bit trick itself (:func:`nearest_int`, a bitcast), not a rounding call;
* C's ``if (x < min) min = x`` compares are written as such, so NaN behaves as in C.

The kernels release the GIL (``nogil``), so the converter's worker threads run them in parallel;
they are compiled on first use and cached next to this file (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

F32 = np.float32
_MAGIC = F32(12582912.0)  # 1.5 * 2**23
_EPS = F32(1e-15)  # GROUP_MAX_EPS
_MANT, _HALF = np.int32(0x007FFFFF), np.int32(0x00400000)
_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "fastmath": False}


@intrinsic
def _f32_bits(typingctx, x):
    """The int32 bit pattern of a float32 (C's ``memcpy(&i, &f, 4)``)."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@njit(**_JIT, inline="always")
def nearest_int(v):
    """ggml-quants.c's ``nearest_int``: ``(bits(v + 12582912.f) & 0x7FFFFF) - 0x400000``."""
    return (_f32_bits(np.float32(v + _MAGIC)) & _MANT) - _HALF


@njit(**_JIT, inline="always")
def _clamp(v, lo, hi):
    """C's ``MAX(lo, MIN(hi, v))`` in int32 (keeps the vector lanes 32-bit)."""
    return max(np.int32(lo), min(np.int32(hi), v))


@njit(**_JIT)
def _qkx2_tile(X, W, nmax, rmin, rdelta, nstep, use_mad, L, Laux, scale, the_min):
    """``make_qkx2_quants`` for every column; fills ``L`` (int32), ``scale`` and ``the_min``."""
    n, M = X.shape
    mn = X[0].copy()
    mx = X[0].copy()
    sum_w = W[0].copy()
    sum_x = np.empty(M, np.float32)
    for m in range(M):
        sum_x[m] = W[0, m] * X[0, m]
    for i in range(1, n):
        for m in range(M):
            x = X[i, m]
            if x < mn[m]:
                mn[m] = x
            if x > mx[m]:
                mx[m] = x
            w = W[i, m]
            sum_w[m] += w
            sum_x[m] += w * x
    iscale = np.empty(M, np.float32)
    best = np.zeros(M, np.float32)
    deg = np.empty(M, np.bool_)
    mn0 = np.empty(M, np.float32)
    fnmax = np.float32(nmax)
    for m in range(M):
        if mn[m] > 0:
            mn[m] = 0
        deg[m] = mx[m] == mn[m]
        mn0[m] = mn[m]
        iscale[m] = fnmax / (mx[m] - mn[m])
        scale[m] = np.float32(1) / iscale[m]
    for i in range(n):
        for m in range(M):
            x = X[i, m]
            li = _clamp(nearest_int(iscale[m] * (x - mn[m])), 0, nmax)
            L[i, m] = li
            d = scale[m] * np.float32(li) + mn[m] - x
            d = abs(d) if use_mad else d * d
            best[m] += W[i, m] * d
    sum_l = np.empty(M, np.float32)
    sum_l2 = np.empty(M, np.float32)
    sum_xl = np.empty(M, np.float32)
    this_scale = np.empty(M, np.float32)
    this_min = np.empty(M, np.float32)
    cur = np.empty(M, np.float32)
    upd = np.empty(M, np.bool_)
    for step in range(nstep + 1):
        num = rmin + rdelta * np.float32(step) + fnmax
        for m in range(M):
            iscale[m] = num / (mx[m] - mn[m])
            sum_l[m] = 0
            sum_l2[m] = 0
            sum_xl[m] = 0
        for i in range(n):
            for m in range(M):
                x = X[i, m]
                li = _clamp(nearest_int(iscale[m] * (x - mn[m])), 0, nmax)
                Laux[i, m] = np.float32(li)
                w = W[i, m]
                fl = np.float32(li)
                sum_l[m] += w * fl
                sum_l2[m] += w * fl * fl
                sum_xl[m] += w * fl * x
        for m in range(M):
            D = sum_w[m] * sum_l2[m] - sum_l[m] * sum_l[m]
            ts = (sum_w[m] * sum_xl[m] - sum_x[m] * sum_l[m]) / D
            tm = (sum_l2[m] * sum_x[m] - sum_l[m] * sum_xl[m]) / D
            if tm > 0:
                tm = np.float32(0)
                ts = sum_xl[m] / sum_l2[m]
            this_scale[m] = ts
            this_min[m] = tm
            cur[m] = 0
            upd[m] = D > 0
        for i in range(n):
            for m in range(M):
                d = this_scale[m] * Laux[i, m] + this_min[m] - X[i, m]
                d = abs(d) if use_mad else d * d
                cur[m] += W[i, m] * d
        changed = False
        for m in range(M):
            u = upd[m] and cur[m] < best[m]
            upd[m] = u
            if u:
                best[m] = cur[m]
                scale[m] = this_scale[m]
                mn[m] = this_min[m]
                changed = True
        if changed:
            for i in range(n):
                for m in range(M):
                    if upd[m]:
                        L[i, m] = np.int32(Laux[i, m])
    for m in range(M):
        if deg[m]:  # C returned early: L = 0, scale = 0, the_min = -min
            scale[m] = 0
            the_min[m] = -mn0[m]
        else:
            the_min[m] = -mn[m]
    for i in range(n):
        for m in range(M):
            if deg[m]:
                L[i, m] = 0


@njit(**_JIT)
def _first_absmax(X):
    """C's ``if (fabsf(x) > amax) { amax = fabsf(x); max = x; }`` down each column: (amax, max)."""
    n, M = X.shape
    amax = np.zeros(M, np.float32)
    mx = np.zeros(M, np.float32)
    for i in range(n):
        for m in range(M):
            ax = abs(X[i, m])
            if ax > amax[m]:
                amax[m] = ax
                mx[m] = X[i, m]
    return amax, mx


@njit(**_JIT, inline="always")
def _qx_sums(X, nmax, iscale, sumlx, suml2):
    """``sumlx = Σ w*x*l``, ``suml2 = Σ w*l*l`` (``w = x*x``, ``l`` = the clamped level) per column."""
    n, M = X.shape
    for m in range(M):
        sumlx[m] = 0
        suml2[m] = 0
    for i in range(n):
        for m in range(M):
            x = X[i, m]
            fl = np.float32(_clamp(nearest_int(iscale[m] * x), -nmax, nmax - 1))
            w = x * x
            sumlx[m] += w * x * fl
            suml2[m] += w * fl * fl


@njit(**_JIT)
def _qx_rmse1_tile(X, nmax, L, scale):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)`` for every column (``L`` int32)."""
    n, M = X.shape
    amax, mx = _first_absmax(X)
    fnmax = np.float32(nmax)
    iscale = np.empty(M, np.float32)
    best_iscale = np.empty(M, np.float32)
    sumlx = np.empty(M, np.float32)
    suml2 = np.empty(M, np.float32)
    best = np.empty(M, np.float32)
    for m in range(M):
        iscale[m] = -fnmax / mx[m]
        best_iscale[m] = iscale[m]
    _qx_sums(X, nmax, iscale, sumlx, suml2)
    for m in range(M):
        s = sumlx[m] / suml2[m] if suml2[m] != 0 else np.float32(0)
        scale[m] = s
        best[m] = s * sumlx[m]
    for step in range(-9, 10):
        if step == 0:
            continue
        num = -(fnmax + np.float32(0.1) * np.float32(step))
        for m in range(M):
            iscale[m] = num / mx[m]
        _qx_sums(X, nmax, iscale, sumlx, suml2)
        for m in range(M):
            if suml2[m] > 0 and sumlx[m] * sumlx[m] > best[m] * suml2[m]:
                scale[m] = sumlx[m] / suml2[m]
                best[m] = scale[m] * sumlx[m]
                best_iscale[m] = iscale[m]
    for i in range(n):
        for m in range(M):
            L[i, m] = nmax + _clamp(nearest_int(best_iscale[m] * X[i, m]), -nmax, nmax - 1)
            if amax[m] < _EPS:
                L[i, m] = 0
    for m in range(M):
        if amax[m] < _EPS:
            scale[m] = 0


@njit(**_JIT)
def _q3_rmse_tile(X, nmax, L, scale):
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` for every column (``L`` int32)."""
    n, M = X.shape
    amax, mx = _first_absmax(X)
    iscale = np.empty(M, np.float32)
    sumlx = np.zeros(M, np.float32)
    suml2 = np.zeros(M, np.float32)
    active = np.empty(M, np.bool_)
    changed = np.empty(M, np.bool_)
    for m in range(M):
        iscale[m] = np.float32(-nmax) / mx[m]
        active[m] = True
    for i in range(n):
        for m in range(M):
            x = X[i, m]
            li = _clamp(nearest_int(iscale[m] * x), -nmax, nmax - 1)
            L[i, m] = li
            fl = np.float32(li)
            w = x * x
            sumlx[m] += w * x * fl
            suml2[m] += w * fl * fl
    for _ in range(5):
        for m in range(M):
            changed[m] = False
        for i in range(n):
            for m in range(M):
                if not active[m]:
                    continue
                x = X[i, m]
                w = x * x
                fl = np.float32(L[i, m])
                slx = sumlx[m] - w * x * fl
                if slx > 0:
                    sl2 = suml2[m] - w * fl * fl
                    new_l = _clamp(nearest_int(x * sl2 / slx), -nmax, nmax - 1)
                    if new_l != L[i, m]:
                        fn = np.float32(new_l)
                        slx += w * x * fn
                        sl2 += w * fn * fn
                        if sl2 > 0 and slx * slx * suml2[m] > sumlx[m] * sumlx[m] * sl2:
                            L[i, m] = new_l
                            sumlx[m] = slx
                            suml2[m] = sl2
                            changed[m] = True
        any_changed = False
        for m in range(M):
            active[m] = active[m] and changed[m]
            any_changed = any_changed or active[m]
        if not any_changed:
            break
    for m in range(M):
        scale[m] = sumlx[m] / suml2[m] if suml2[m] > 0 else np.float32(0)
        if amax[m] < _EPS:
            scale[m] = 0
    for i in range(n):
        for m in range(M):
            L[i, m] = 0 if amax[m] < _EPS else L[i, m] + nmax


# ---------------------------------------------------------------------------------- block drivers
# Blocks are searched TILE_BLOCKS at a time: the tile's sub-blocks are gathered into a column matrix
# (n, sub-blocks) that stays in L1/L2 while the candidate loops sweep over it, and the levels are
# scattered straight back into block order.

TILE_BLOCKS = 32
QK_K = 256


@njit(**_JIT)
def _gather(xb, b0, nb, n, X):
    """Column ``c = b*(256/n) + j`` of ``X`` = sub-block ``j`` of block ``b0 + b``."""
    per = QK_K // n
    for b in range(nb):
        for j in range(per):
            c = b * per + j
            for i in range(n):
                X[i, c] = xb[b0 + b, j * n + i]


@njit(**_JIT)
def _scatter(Lt, b0, nb, n, L):
    """Inverse of :func:`_gather` for the levels ``Lt`` -> ``L`` (B, 256). (Separate from it:
    ``xb`` may be a read-only array, and numba types both branches of a shared function.)"""
    per = QK_K // n
    for b in range(nb):
        for j in range(per):
            c = b * per + j
            for i in range(n):
                L[b0 + b, j * n + i] = Lt[i, c]


@njit(**_JIT)
def _put(vals, b0, nb, out):
    """Per-sub-block values of a tile (column order) -> rows ``b0..b0+nb`` of ``out`` (B, per)."""
    per = out.shape[1]
    for b in range(nb):
        for j in range(per):
            out[b0 + b, j] = vals[b * per + j]


@njit(**_JIT)
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
        _qkx2_tile(X, W, nmax, rmin, rdelta, nstep, use_mad, Lt, Laux, sc, mn)
        _scatter(Lt, b0, nb, n, L)
        _put(sc, b0, nb, scales)
        _put(mn, b0, nb, mins)


@njit(**_JIT)
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
            _q3_rmse_tile(X, nmax, Lt, sc)
        else:
            _qx_rmse1_tile(X, nmax, Lt, sc)
        _scatter(Lt, b0, nb, n, L)
        _put(sc, b0, nb, scales)


@njit(**_JIT)
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
                L[b, i] = _clamp(nearest_int(v / dd), lo, hi) + offset


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

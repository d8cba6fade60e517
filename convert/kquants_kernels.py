"""The per-column kernels of the K-quant scale searches: llama.cpp's C functions in numba.

Each kernel is the C function written for one sub-block, with the loop over columns innermost
(a column matrix ``X`` of shape ``(n, M)``, column ``m`` = the ``n`` values of one sub-block), so
LLVM vectorizes it across sub-blocks while every column still runs C's exact sequence of float32
operations:

* no fast-math: numba emits no ``contract``/``reassoc`` flags, so ``a*b + c`` is never fused into
  an FMA and sums stay sequential (``s += ...`` in C's order);
* ``nearest_int`` is C's bit trick itself (:func:`nearest_int`, a bitcast), not a rounding call;
* C's ``if (x < min) min = x`` compares are written as such, so NaN behaves as in C.

The block drivers that gather tiles for them are :mod:`grokfetch.convert.kquants_jit`.
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
JIT = {"nogil": True, "cache": True, "error_model": "numpy", "fastmath": False}


@intrinsic
def _f32_bits(typingctx, x):
    """The int32 bit pattern of a float32 (C's ``memcpy(&i, &f, 4)``)."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@njit(**JIT, inline="always")
def nearest_int(v):
    """ggml-quants.c's ``nearest_int``: ``(bits(v + 12582912.f) & 0x7FFFFF) - 0x400000``."""
    return (_f32_bits(np.float32(v + _MAGIC)) & _MANT) - _HALF


@njit(**JIT, inline="always")
def clamp(v, lo, hi):
    """C's ``MAX(lo, MIN(hi, v))`` in int32 (keeps the vector lanes 32-bit)."""
    return max(np.int32(lo), min(np.int32(hi), v))


@njit(**JIT)
def qkx2_tile(X, W, nmax, rmin, rdelta, nstep, use_mad, L, Laux, scale, the_min):
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
            li = clamp(nearest_int(iscale[m] * (x - mn[m])), 0, nmax)
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
                li = clamp(nearest_int(iscale[m] * (x - mn[m])), 0, nmax)
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


@njit(**JIT)
def first_absmax(X):
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


@njit(**JIT, inline="always")
def qx_sums(X, nmax, iscale, sumlx, suml2):
    """``sumlx = Σ w*x*l``, ``suml2 = Σ w*l*l`` (``w = x*x``, ``l`` = the clamped level) per column."""
    n, M = X.shape
    for m in range(M):
        sumlx[m] = 0
        suml2[m] = 0
    for i in range(n):
        for m in range(M):
            x = X[i, m]
            fl = np.float32(clamp(nearest_int(iscale[m] * x), -nmax, nmax - 1))
            w = x * x
            sumlx[m] += w * x * fl
            suml2[m] += w * fl * fl


@njit(**JIT)
def qx_rmse1_tile(X, nmax, L, scale):
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)`` for every column (``L`` int32)."""
    n, M = X.shape
    amax, mx = first_absmax(X)
    fnmax = np.float32(nmax)
    iscale = np.empty(M, np.float32)
    best_iscale = np.empty(M, np.float32)
    sumlx = np.empty(M, np.float32)
    suml2 = np.empty(M, np.float32)
    best = np.empty(M, np.float32)
    for m in range(M):
        iscale[m] = -fnmax / mx[m]
        best_iscale[m] = iscale[m]
    qx_sums(X, nmax, iscale, sumlx, suml2)
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
        qx_sums(X, nmax, iscale, sumlx, suml2)
        for m in range(M):
            if suml2[m] > 0 and sumlx[m] * sumlx[m] > best[m] * suml2[m]:
                scale[m] = sumlx[m] / suml2[m]
                best[m] = scale[m] * sumlx[m]
                best_iscale[m] = iscale[m]
    for i in range(n):
        for m in range(M):
            L[i, m] = nmax + clamp(nearest_int(best_iscale[m] * X[i, m]), -nmax, nmax - 1)
            if amax[m] < _EPS:
                L[i, m] = 0
    for m in range(M):
        if amax[m] < _EPS:
            scale[m] = 0


@njit(**JIT)
def q3_rmse_tile(X, nmax, L, scale):
    """``make_q3_quants(n, nmax, x, L, do_rmse=true)`` for every column (``L`` int32)."""
    n, M = X.shape
    amax, mx = first_absmax(X)
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
            li = clamp(nearest_int(iscale[m] * x), -nmax, nmax - 1)
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
                    new_l = clamp(nearest_int(x * sl2 / slx), -nmax, nmax - 1)
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

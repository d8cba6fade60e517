"""Vectorized ports of llama.cpp's K-quant scale searches (``ggml/src/ggml-quants.c``).

Every function works on a *column-major* group matrix ``X`` of shape ``(n, M)``: column ``m`` holds the
``n`` values of one sub-block (16 or 32 floats), so all ``M`` sub-blocks are searched at once and the
loops run only over the candidate steps (and, for ``make_q3_quants``, over the 16 elements).

Bit-exactness with the C reference rests on three rules, applied everywhere:

* all arithmetic is float32 in the C evaluation order (``w*l*x`` is ``(w*l)*x``; no FMA contraction);
* C's sequential ``sum += ...`` loops are ``np.add.reduce(a, axis=0)``, which numpy evaluates as a
  strict left-to-right row accumulation when the reduced axis is not the innermost one (``M >= 2``;
  pairwise summation would round differently);
* ``nearest_int`` is emulated with its own bit trick (:func:`nearest_int`); inside the searches the
  values are provably within ``[0, 4194303]`` so ``np.rint`` (round-half-even) gives the same integers.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
_MAGIC = F32(12582912.0)  # 1.5 * 2**23


def nearest_int(v: np.ndarray) -> np.ndarray:
    """``nearest_int`` of ggml-quants.c, bit for bit (also for out-of-range input): int32 array."""
    t = (np.asarray(v, dtype=F32) + _MAGIC).view(np.int32)
    return (t & 0x007FFFFF) - 0x00400000


def seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over axis 0 in strict sequential order, like a C ``for`` loop ``s += a[i]``."""
    if a.shape[1] == 1:  # one column would make axis 0 the inner loop (pairwise summation)
        return np.add.reduce(np.repeat(a, 2, axis=1), axis=0)[:1]
    return np.add.reduce(a, axis=0)


def to_fp16(v: np.ndarray) -> np.ndarray:
    """``GGML_FP32_TO_FP16``: round to nearest even, overflow to inf, NaN to ``sign | 0x7E00``."""
    v = np.asarray(v, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        h = v.astype(np.float16)
    nan = np.isnan(v)
    if nan.any():
        bits = h.view(np.uint16)
        bits[nan] = ((v[nan].view(np.uint32) >> 16) & 0x8000).astype(np.uint16) | 0x7E00
    return h


def first_absmax(X: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """C's ``amax = 0; max = 0; if (fabsf(x) > amax) { amax = fabsf(x); max = x; }`` along ``axis``.

    The first occurrence of the largest ``|x|`` wins; NaN never compares greater, so it is skipped.
    """
    X = np.moveaxis(X, axis, 0)
    ax = np.abs(X)
    ax[np.isnan(ax)] = 0
    amax = np.maximum.reduce(ax, axis=0)
    mx = np.zeros_like(amax)
    for i in range(X.shape[0] - 1, -1, -1):  # the lowest index that reaches amax wins
        np.copyto(mx, X[i], where=ax[i] == amax)
    return amax, np.where(amax > 0, mx, F32(0))


def c_min_max(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's ``min = max = x[0]; for i >= 1: if (x[i] < min) ...; if (x[i] > max) ...`` over axis 0.

    NaN elements are skipped, except a NaN ``x[0]``, which sticks.
    """
    first_nan = np.isnan(X[0])
    return (
        np.where(first_nan, X[0], np.fmin.reduce(X, axis=0)),
        np.where(first_nan, X[0], np.fmax.reduce(X, axis=0)),
    )


def _round_clip(
    V: np.ndarray, lo: np.ndarray, hi: np.ndarray, exact: bool, need_lo: bool = True, need_hi: bool = True
) -> np.ndarray:
    """``MAX(lo, MIN(hi, nearest_int(V)))`` as float32, in place on ``V`` unless ``exact``.

    ``lo``/``hi`` are float32 rows of shape ``(M,)`` (numpy's minimum against a scalar is several
    times slower than against a broadcast row). ``exact=False`` is only valid when every
    ``|V| <= 4194303`` (then rint == nearest_int); ``need_lo``/``need_hi`` may be False when the
    caller knows that clamp cannot bite.
    """
    if exact:
        return np.clip(nearest_int(V), lo.astype(np.int32), hi.astype(np.int32)).astype(F32)
    np.rint(V, out=V)
    if need_lo:
        np.maximum(V, lo, out=V)
    if need_hi:
        np.minimum(V, hi, out=V)
    return V


def _row(value: float, M: int) -> np.ndarray:
    return np.full(M, value, dtype=F32)


_INT_LIMIT = F32(4194303)


def _quant_qkx(X, cur_min, xmin, mx, iscale, nmax, XM, V, xm_valid, finite, zero_row, nmax_row):
    """``L = MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))`` for one candidate (float32, in ``V``).

    ``iscale*(x - min)`` is monotone in ``x``, so its range per column is given by the column's
    smallest and largest ``x``; that decides whether the fast rounding is exact and which clamps
    can bite. ``XM`` holds ``x - min`` and is recomputed unless ``xm_valid``.
    """
    if not xm_valid:
        np.subtract(X, cur_min, out=XM)
    np.multiply(XM, iscale, out=V)
    a, b = iscale * (xmin - cur_min), iscale * (mx - cur_min)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    exact = not (finite and np.isfinite(lo).all() and np.isfinite(hi).all())
    exact = exact or bool((lo < -_INT_LIMIT).any() or (hi > _INT_LIMIT).any())
    need_lo = bool((lo < F32(-0.5)).any())  # rint(v) >= 0 (or -0.0, harmless) for v >= -0.5
    need_hi = bool((hi >= F32(nmax + 0.5)).any())
    return _round_clip(V, zero_row, nmax_row, exact, need_lo, need_hi)


def make_qkx2_quants(
    X: np.ndarray, W: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Port of ``make_qkx2_quants`` for all columns of ``X`` (weights ``W``, same shape).

    As in C, an accepted candidate replaces ``min``, and the later candidates then quantize with
    ``iscale = (rmin + rdelta*is + nmax)/(max - min)`` and ``x - min`` for that new ``min``.
    Returns ``(L, scale, the_min)``: ``L`` uint8 ``(n, M)`` in ``[0, nmax]``, ``scale`` and
    ``the_min`` float32 ``(M,)`` (``x ~= scale*L - the_min``).
    """
    xmin, mx = c_min_max(X)
    finite = bool(np.isfinite(X).all())  # else the rounding must take the exact path throughout
    cur_min = np.minimum(xmin, F32(0))
    sum_w = seqsum(W)
    sum_x = seqsum(W * X)
    degenerate = mx == cur_min  # C returns early: L = 0, scale = 0, the_min = -min
    # give those columns a finite range (their levels stay 0, so they never update) so that they
    # do not force the exact rounding path on the whole chunk
    mx_s = np.where(degenerate, cur_min + np.maximum(np.abs(cur_min), F32(1)), mx)
    XM = np.empty_like(X)
    V = np.empty_like(X)
    rows = (_row(0, X.shape[1]), _row(nmax, X.shape[1]))
    tmp = np.empty_like(X)
    WL = np.empty_like(X)

    def error(scale: np.ndarray, the_min: np.ndarray, L: np.ndarray) -> np.ndarray:
        # sum_i w * f(scale*L + min - x), f = |.| or square, evaluated left to right
        e = np.multiply(L, scale, out=tmp)
        np.add(e, the_min, out=e)
        np.subtract(e, X, out=e)
        if use_mad:
            np.abs(e, out=e)
        else:
            np.multiply(e, e, out=e)
        np.multiply(e, W, out=e)
        return seqsum(e)

    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        iscale = F32(nmax) / (mx_s - cur_min)
        L = _quant_qkx(X, cur_min, xmin, mx_s, iscale, nmax, XM, V, False, finite, *rows)
        best_scale = F32(1) / iscale
        best_error = error(best_scale, cur_min, L)
        best_iscale, best_used_min = iscale, cur_min
        xm_valid = True  # XM = X - cur_min is up to date
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx_s - cur_min)
            L = _quant_qkx(X, cur_min, xmin, mx_s, iscale, nmax, XM, V, xm_valid, finite, *rows)
            xm_valid = True
            np.multiply(W, L, out=WL)
            sum_l = seqsum(WL)
            sum_l2 = seqsum(np.multiply(WL, L, out=tmp))
            sum_xl = seqsum(np.multiply(WL, X, out=tmp))
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min = np.where(pos, F32(0), this_min)
                this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = error(this_scale, this_min, L)
            upd = (D > 0) & (cur < best_error)
            if upd.any():
                best_error = np.where(upd, cur, best_error)
                best_scale = np.where(upd, this_scale, best_scale)
                best_iscale = np.where(upd, iscale, best_iscale)
                best_used_min = np.where(upd, cur_min, best_used_min)
                cur_min = np.where(upd, this_min, cur_min)
                xm_valid = False
        # L of the accepted candidate, re-derived from the iscale and min it was quantized with
        L = _quant_qkx(X, best_used_min, xmin, mx_s, best_iscale, nmax, XM, V, False, finite, *rows)
    Lq = L.astype(np.uint8)
    if degenerate.any():
        Lq[:, degenerate] = 0
        best_scale = np.where(degenerate, F32(0), best_scale)
    return Lq, np.asarray(best_scale, dtype=F32), -np.asarray(cur_min, dtype=F32)


def make_qx_quants_rmse1(X: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Port of ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)`` for all columns of ``X``.

    Returns ``(L, scale)``: ``L`` uint8 ``(n, M)`` in ``[0, 2*nmax)`` (already offset by ``nmax``).
    """
    amax, mx = first_absmax(X)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    exact = not np.isfinite(X).all()
    W = X * X
    WX = W * X
    buf = np.empty_like(X)
    tmp = np.empty_like(X)
    rows = (_row(-nmax, X.shape[1]), _row(nmax - 1, X.shape[1]))
    # |V| = |iscale*x| <= nmax+0.9 as |x| <= |max| and |max| >= 1e-15: the fast rounding is exact
    # (for finite input; NaN and inf take the exact bit trick)
    iscale = F32(-nmax) / mx
    L = _round_clip(np.multiply(X, iscale, out=buf), *rows, exact=exact)
    sumlx = seqsum(np.multiply(WX, L, out=tmp))
    np.multiply(W, L, out=tmp)
    suml2 = seqsum(np.multiply(tmp, L, out=tmp))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    best_iscale = iscale
    for i in range(-9, 10):
        if i == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(i)) / mx
        L = _round_clip(np.multiply(X, iscale, out=buf), *rows, exact=exact)
        sumlx = seqsum(np.multiply(WX, L, out=tmp))
        np.multiply(W, L, out=tmp)
        suml2 = seqsum(np.multiply(tmp, L, out=tmp))
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        if upd.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(upd, sumlx / suml2, scale)
            best = np.where(upd, scale * sumlx, best)
            best_iscale = np.where(upd, iscale, best_iscale)
    L = _round_clip(np.multiply(X, best_iscale, out=buf), *rows, exact=exact)
    return _offset_codes(L, nmax, zero, scale)


def _offset_codes(L: np.ndarray, nmax: int, zero: np.ndarray, scale: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Signed levels → unsigned codes (``L + nmax``); all-zero sub-blocks get code 0, scale 0."""
    L += F32(nmax)
    Lq = L.astype(np.uint8)
    if zero.any():
        Lq[:, zero] = 0
        scale = np.where(zero, F32(0), scale)
    return Lq, np.asarray(scale, dtype=F32)


def _q3_pass(X, W, WX, L, sumlx, suml2, nmax):
    """One coordinate-descent pass of ``make_q3_quants`` over the columns given (in place on ``L``).

    Returns the updated ``(sumlx, suml2)`` and a mask of the columns that changed.
    """
    changed = np.zeros(X.shape[1], dtype=bool)
    for i in range(X.shape[0]):
        w, x, wx, li = W[i], X[i], WX[i], L[i]
        slx0 = sumlx - wx * li
        sl2 = suml2 - (w * li) * li
        new_l = np.clip(nearest_int((x * sl2) / slx0), -nmax, nmax - 1).astype(F32)
        slx = slx0 + wx * new_l
        sl2 = sl2 + (w * new_l) * new_l
        ok = (slx0 > 0) & (new_l != li) & (sl2 > 0) & ((slx * slx) * suml2 > (sumlx * sumlx) * sl2)
        if ok.any():
            changed |= ok
            L[i] = np.where(ok, new_l, li)
            sumlx = np.where(ok, slx, sumlx)
            suml2 = np.where(ok, sl2, suml2)
    return sumlx, suml2, changed


def make_q3_quants_rmse(X: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Port of ``make_q3_quants(n, nmax, x, L, do_rmse=true)`` for all columns of ``X``.

    The coordinate-descent passes run element by element (as in C), vectorized over the columns.
    As in C, a column leaves the loop after a pass that changed nothing (its state is final), so
    later passes only run on the few columns still changing. Returns ``(L, scale)`` with ``L``
    uint8 in ``[0, 2*nmax)``.
    """
    amax, mx = first_absmax(X)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    iscale = F32(-nmax) / mx
    L = np.clip(nearest_int(X * iscale), -nmax, nmax - 1).astype(F32)
    W = X * X
    WX = W * X
    sumlx = seqsum(WX * L)
    suml2 = seqsum((W * L) * L)
    # A column whose terms w*x*l are all <= 0 has slx = sumlx - w*x*l <= 0 for every element
    # (a float sum of non-positive terms is at least as negative as each term), so C never moves
    # a level in it: true for every column whose largest |x| is positive. Only the rest take part.
    active = np.flatnonzero((WX * L > 0).any(axis=0))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for _ in range(5):
            if active.size == 0:
                break
            La = L[:, active]
            sa, s2a, changed = _q3_pass(
                X[:, active], W[:, active], WX[:, active], La, sumlx[active], suml2[active], nmax
            )
            L[:, active] = La
            sumlx[active] = sa
            suml2[active] = s2a
            active = active[changed]
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return _offset_codes(L, nmax, zero, scale)

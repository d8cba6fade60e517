"""Tests for convert/kquants.py: llama.cpp's K-quant quantizers in vectorized numpy.

The independent reference is a deliberately plain, scalar float32 transliteration of the C functions
in llama.cpp ``ggml/src/ggml-quants.c`` (``make_qkx2_quants``, ``make_qx_quants``, ``make_q3_quants``,
``quantize_row_q{2,3,4,5,6}_K_ref``), one block at a time with numpy float32 scalars, written here from
the C and sharing no code with the module. The decoder is gguf-py's own ``gguf.quants.dequantize``.
"""

# ruff: noqa: E741  (the reference keeps the C code's variable names, `l` included)

from __future__ import annotations

import ctypes
import os
import struct

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

import grokfetch.convert.kquants as kq
from grokfetch.convert.kquants import KQUANTS

f = np.float32
QK_K = 256
GROUP_MAX_EPS = f(1e-15)


# ----------------------------------------------------------------------------- scalar reference


def nearest_int(fval) -> int:
    val = f(fval) + f(12582912.0)
    i = struct.unpack("<i", struct.pack("<f", val))[0]
    return (i & 0x007FFFFF) - 0x00400000


def fp16(v) -> f:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v))."""
    return f(np.float16(f(v)))


def fp16_bytes(v) -> bytes:
    return np.float16(f(v)).astype("<f2").tobytes()


def ref_make_qkx2_quants(n, nmax, x, weights, L, rmin, rdelta, nstep, use_mad):
    """Returns (scale, the_min); fills L[0:n]."""
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > 0:
        mn = f(0)
    if mx == mn:
        for i in range(n):
            L[i] = 0
        return f(0), -mn
    iscale = f(nmax) / (mx - mn)
    scale = f(1) / iscale
    best_error = f(0)
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        L[i] = max(0, min(nmax, l))
        diff = scale * f(L[i]) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    Laux = [0] * n
    for step in range(nstep + 1):
        iscale = (f(rmin) + f(rdelta) * f(step) + f(nmax)) / (mx - mn)
        sum_l = f(0)
        sum_l2 = f(0)
        sum_xl = f(0)
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i]
            sum_l += w * f(l)
            sum_l2 += w * f(l) * f(l)
            sum_xl += w * f(l) * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = f(0)
                this_scale = sum_xl / sum_l2
            cur_error = f(0)
            for i in range(n):
                diff = this_scale * f(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                L[:n] = Laux
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


def ref_make_qx_quants_rmse1(n, nmax, x, L):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL); fills L[0:n]."""
    mx = f(0)
    amax = f(0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return f(0)
    iscale = f(-nmax) / mx
    sumlx = f(0)
    suml2 = f(0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        w = x[i] * x[i]
        sumlx += w * x[i] * f(l)
        suml2 += w * f(l) * f(l)
    scale = sumlx / suml2 if suml2 else f(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(f(nmax) + f(0.1) * f(step)) / mx
        sumlx = suml2 = f(0)
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            w = x[i] * x[i]
            sumlx += w * x[i] * f(l)
            suml2 += w * f(l) * f(l)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


def ref_make_q3_quants(n, nmax, x, L):
    """make_q3_quants(n, nmax, x, L, do_rmse=true); fills L[0:n]."""
    mx = f(0)
    amax = f(0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return f(0)
    iscale = f(-nmax) / mx
    sumlx = f(0)
    suml2 = f(0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l
        w = x[i] * x[i]
        sumlx += w * x[i] * f(l)
        suml2 += w * f(l) * f(l)
    for _itry in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * f(L[i])
            if slx > 0:
                sl2 = suml2 - w * f(L[i]) * f(L[i])
                new_l = nearest_int(x[i] * sl2 / slx)
                new_l = max(-nmax, min(nmax - 1, new_l))
                if new_l != L[i]:
                    slx += w * x[i] * f(new_l)
                    sl2 += w * f(new_l) * f(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if not n_changed:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else f(0)


def ref_q2_k_block(x) -> bytes:
    L = [0] * QK_K
    scales = [f(0)] * 16
    mins = [f(0)] * 16
    q4scale = f(15)
    max_scale = f(0)
    max_min = f(0)
    for j in range(16):
        xs = x[16 * j : 16 * j + 16]
        weights = [abs(v) for v in xs]
        Lj = [0] * 16
        scales[j], mins[j] = ref_make_qkx2_quants(16, 3, xs, weights, Lj, -0.5, 0.1, 15, True)
        L[16 * j : 16 * j + 16] = Lj
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    sc = [0] * 16
    if max_scale > 0:
        iscale = q4scale / max_scale
        for j in range(16):
            sc[j] = nearest_int(iscale * scales[j]) & 0xFF
        d = max_scale / q4scale
    else:
        d = f(0)
    if max_min > 0:
        iscale = q4scale / max_min
        for j in range(16):
            sc[j] = (sc[j] | (nearest_int(iscale * mins[j]) << 4)) & 0xFF
        dmin = max_min / q4scale
    else:
        dmin = f(0)
    for j in range(16):
        dd = fp16(d) * f(sc[j] & 0xF)
        if not dd:
            continue
        dm = fp16(dmin) * f(sc[j] >> 4)
        for ii in range(16):
            l = nearest_int((x[16 * j + ii] + dm) / dd)
            L[16 * j + ii] = max(0, min(3, l))
    qs = [0] * 64
    for j in range(0, QK_K, 128):
        for l in range(32):
            qs[j // 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)
    return bytes(sc) + bytes(qs) + fp16_bytes(d) + fp16_bytes(dmin)


def ref_q3_k_block(x) -> bytes:
    L = [0] * QK_K
    scales = [f(0)] * 16
    max_scale = f(0)
    amax = f(0)
    for j in range(16):
        Lj = [0] * 16
        scales[j] = ref_make_q3_quants(16, 4, x[16 * j : 16 * j + 16], Lj)
        L[16 * j : 16 * j + 16] = Lj
        scale = abs(scales[j])
        if scale > amax:
            amax = scale
            max_scale = scales[j]
    ysc = [0] * 12
    if max_scale:
        iscale = f(-32) / max_scale
        for j in range(16):
            l = nearest_int(iscale * scales[j])
            l = ((l + 128) & 0xFF) - 128  # int8_t
            l = max(-32, min(31, l)) + 32
            if j < 8:
                ysc[j] = l & 0xF
            else:
                ysc[j - 8] |= (l & 0xF) << 4
            l >>= 4
            ysc[j % 4 + 8] |= l << (2 * (j // 4))
        d = f(1) / iscale
    else:
        d = f(0)
    for j in range(16):
        sc = ysc[j] & 0xF if j < 8 else ysc[j - 8] >> 4
        sc = (sc | (((ysc[8 + j % 4] >> (2 * (j // 4))) & 3) << 4)) - 32
        dd = fp16(d) * f(sc)
        if not dd:
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / dd)
            L[16 * j + ii] = max(-4, min(3, l)) + 4
    hmask = [0] * 32
    m = 0
    hm = 1
    for j in range(QK_K):
        if L[j] > 3:
            hmask[m] |= hm
            L[j] -= 4
        m += 1
        if m == 32:
            m = 0
            hm <<= 1
    qs = [0] * 64
    for j in range(0, QK_K, 128):
        for l in range(32):
            qs[j // 4 + l] = L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6)
    return bytes(hmask) + bytes(qs) + bytes(ysc) + fp16_bytes(d)


def _ref_qkx_k(x, nmax, rmin, nstep):
    """Common part of quantize_row_q4_K_ref / q5_K_ref: (L, 12 scale bytes, d, dmin)."""
    L = [0] * QK_K
    scales = [f(0)] * 8
    mins = [f(0)] * 8
    max_scale = f(0)
    max_min = f(0)
    for j in range(8):
        xs = x[32 * j : 32 * j + 32]
        sum_x2 = f(0)
        for v in xs:
            sum_x2 += v * v
        av_x = np.sqrt(sum_x2 / f(32))
        weights = [av_x + abs(v) for v in xs]
        Lj = [0] * 32
        scales[j], mins[j] = ref_make_qkx2_quants(32, nmax, xs, weights, Lj, rmin, 0.1, nstep, False)
        L[32 * j : 32 * j + 32] = Lj
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    inv_scale = f(63) / max_scale if max_scale > 0 else f(0)
    inv_min = f(63) / max_min if max_min > 0 else f(0)
    ysc = [0] * 12
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        if j < 4:
            ysc[j] = ls
            ysc[j + 4] = lm
        else:
            ysc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            ysc[j - 4] |= (ls >> 4) << 6
            ysc[j - 0] |= (lm >> 4) << 6
    d = max_scale / f(63)
    dmin = max_min / f(63)
    for j in range(8):  # get_scale_min_k4
        if j < 4:
            sc, m = ysc[j] & 63, ysc[j + 4] & 63
        else:
            sc = (ysc[j + 4] & 0xF) | ((ysc[j - 4] >> 6) << 4)
            m = (ysc[j + 4] >> 4) | ((ysc[j - 0] >> 6) << 4)
        dd = fp16(d) * f(sc)
        if not dd:
            continue
        dm = fp16(dmin) * f(m)
        for ii in range(32):
            l = nearest_int((x[32 * j + ii] + dm) / dd)
            L[32 * j + ii] = max(0, min(nmax, l))
    return L, bytes(ysc), fp16_bytes(d), fp16_bytes(dmin)


def ref_q4_k_block(x) -> bytes:
    L, sc, d, dmin = _ref_qkx_k(x, 15, -1.0, 20)
    q = []
    for j in range(0, QK_K, 64):
        q += [L[j + l] | (L[j + l + 32] << 4) for l in range(32)]
    return d + dmin + sc + bytes(q)


def ref_q5_k_block(x) -> bytes:
    L, sc, d, dmin = _ref_qkx_k(x, 31, -0.5, 15)
    qh = [0] * 32
    ql = [0] * 128
    m1, m2 = 1, 2
    for n in range(0, QK_K, 64):
        for j in range(32):
            l1 = L[n + j]
            if l1 > 15:
                l1 -= 16
                qh[j] |= m1
            l2 = L[n + j + 32]
            if l2 > 15:
                l2 -= 16
                qh[j] |= m2
            ql[n // 2 + j] = l1 | (l2 << 4)
        m1 <<= 2
        m2 <<= 2
    return d + dmin + sc + bytes(qh) + bytes(ql)


def ref_q6_k_block(x) -> bytes:
    L = [0] * QK_K
    scales = [f(0)] * 16
    max_scale = f(0)
    max_abs_scale = f(0)
    for ib in range(16):
        Lj = [0] * 16
        scale = ref_make_qx_quants_rmse1(16, 32, x[16 * ib : 16 * ib + 16], Lj)
        L[16 * ib : 16 * ib + 16] = Lj
        scales[ib] = scale
        if abs(scale) > max_abs_scale:
            max_abs_scale = abs(scale)
            max_scale = scale
    if max_abs_scale < GROUP_MAX_EPS:
        return bytes(210)
    iscale = f(-128) / max_scale
    d = f(1) / iscale
    ysc = [((min(127, nearest_int(iscale * s)) + 128) & 0xFF) - 128 for s in scales]
    for j in range(16):
        dd = fp16(d) * f(ysc[j])
        if not dd:
            continue
        for ii in range(16):
            l = nearest_int(x[16 * j + ii] / dd)
            L[16 * j + ii] = max(-32, min(31, l)) + 32
    ql = [0] * 128
    qh = [0] * 64
    for j in range(0, QK_K, 128):
        for l in range(32):
            q1, q2, q3, q4 = (L[j + l + k] & 0xF for k in (0, 32, 64, 96))
            ql[j // 2 + l] = q1 | (q3 << 4)
            ql[j // 2 + l + 32] = q2 | (q4 << 4)
            qh[j // 4 + l] = (
                (L[j + l] >> 4)
                | ((L[j + l + 32] >> 4) << 2)
                | ((L[j + l + 64] >> 4) << 4)
                | ((L[j + l + 96] >> 4) << 6)
            )
    return bytes(ql) + bytes(qh) + np.array(ysc, dtype=np.int8).tobytes() + fp16_bytes(d)


REFS = {
    T.Q2_K: ref_q2_k_block,
    T.Q3_K: ref_q3_k_block,
    T.Q4_K: ref_q4_k_block,
    T.Q5_K: ref_q5_k_block,
    T.Q6_K: ref_q6_k_block,
}
SIZES = {T.Q2_K: 84, T.Q3_K: 110, T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}


# ----------------------------------------------------------------------------------- test data


def edge_blocks() -> np.ndarray:
    """Blocks that hit the special paths of the C code (one block per row)."""
    rng = np.random.default_rng(1234)
    g = rng.standard_normal(QK_K).astype(np.float32)
    rows = [
        np.zeros(QK_K),  # all zero: max == min, amax < GROUP_MAX_EPS, d = 0
        np.full(QK_K, 0.75),  # constant positive
        np.full(QK_K, -2.5),  # constant negative
        np.where(np.arange(QK_K) == 77, 1e4, g),  # one huge outlier
        np.where(np.arange(QK_K) == 3, -3e3, g * 1e-3),  # huge negative outlier, tiny rest
        -np.abs(g),  # negative only
        np.abs(g) + 5.0,  # positive only, offset
        g * 1e-30,  # tiny values (fp16 d underflows to 0)
        g * 1e-40,  # subnormal floats: the iscale of the search overflows to inf
        g * 3e4,  # large values (fp16 scales near their range)
        np.round(g * 4) / 4,  # values on a coarse grid: many exact .5 ties
        np.round(g * 8) / 2,
        (np.arange(QK_K) % 16 - 8).astype(np.float32),  # integer ramps: ties in every sub-block
        (np.arange(QK_K) % 32) * 0.5,
        np.where(np.arange(QK_K) % 16 == 0, g, 0.0),  # sparse: mostly zeros
        np.where(np.arange(QK_K) < 128, 0.0, g),  # half of the sub-blocks all-zero
        np.where(np.arange(QK_K) % 32 < 16, -0.0, g),  # negative zeros
        np.where(np.arange(QK_K) % 2 == 0, 1.0, -1.0),  # +-1 alternating (max ties between signs)
        np.concatenate([np.full(128, 1e-3), g[:128] * 100]),  # very different sub-block scales
        g**3,  # heavy-ish tails
        np.sign(g) * np.abs(g) ** 0.25,
        np.linspace(-1, 1, QK_K),
        np.repeat(g[:16], 16),  # constant sub-blocks with different values
        # not model data, but the C has defined (if useless) output for them, so match it too
        np.where(np.arange(QK_K) == 5, np.nan, g),  # a NaN (skipped by C's min/max compares)
        np.where(np.arange(QK_K) % 32 == 0, np.nan, g),  # NaN first in every sub-block (sticks)
        np.where(np.arange(QK_K) == 200, np.inf, g),
        g * 1e20,  # x*x*x overflows to inf in make_qx_quants / make_q3_quants
    ]
    return np.asarray(rows, dtype=np.float32)


def random_blocks(n: int, seed: int) -> np.ndarray:
    """A mix of distributions and magnitudes, one block per row."""
    rng = np.random.default_rng(seed)
    kinds = [
        lambda: rng.standard_normal(QK_K),
        lambda: rng.standard_t(3, QK_K),
        lambda: rng.laplace(size=QK_K),
        lambda: rng.uniform(-1, 1, QK_K),
        lambda: rng.uniform(0, 1, QK_K),
        lambda: rng.standard_normal(QK_K) + 3.0,
        lambda: rng.standard_normal(QK_K) * rng.uniform(0.01, 10, QK_K // 16).repeat(16),
        lambda: np.round(rng.standard_normal(QK_K) * 16) / 16,  # bf16-like coarse grid
    ]
    rows = [kinds[i % len(kinds)]() * 10.0 ** rng.uniform(-4, 3) for i in range(n)]
    return np.asarray(rows, dtype=np.float32)


N_RANDOM = 200


@pytest.fixture(scope="module")
def blocks() -> np.ndarray:
    return np.concatenate([edge_blocks(), random_blocks(N_RANDOM, seed=7)])


def ref_quantize(qtype: T, xb: np.ndarray) -> np.ndarray:
    ref = REFS[qtype]
    with np.errstate(all="ignore"):  # inf/nan intermediates of the edge blocks, as in C
        out = [np.frombuffer(ref([f(v) for v in row]), dtype=np.uint8) for row in xb]
    return np.stack(out)


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.slow
@pytest.mark.parametrize("qtype", list(REFS), ids=lambda t: t.name)
def test_byte_identical_to_scalar_reference(qtype, blocks):
    got = KQUANTS[qtype](blocks)
    want = ref_quantize(qtype, blocks)
    assert got.shape == want.shape == (len(blocks), SIZES[qtype])
    bad = [i for i in range(len(blocks)) if not np.array_equal(got[i], want[i])]
    assert not bad, f"{qtype.name}: {len(bad)}/{len(blocks)} blocks differ from the scalar port: {bad[:10]}"


@pytest.mark.parametrize("qtype", list(REFS), ids=lambda t: t.name)
def test_edge_blocks_match_scalar_reference(qtype):
    """The special paths (zeros, constants, outliers, subnormals, ties), fast enough for every run."""
    xb = edge_blocks()
    want = ref_quantize(qtype, xb)
    got = KQUANTS[qtype](xb)
    bad = [i for i in range(len(xb)) if not np.array_equal(got[i], want[i])]
    assert not bad, f"{qtype.name}: edge blocks {bad} differ from the scalar port"


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_no_floating_point_warnings_escape():
    xb = edge_blocks()
    for fn in KQUANTS.values():
        fn(xb)


def test_kquants_table_and_sizes():
    assert set(KQUANTS) == set(SIZES)
    for qtype, size in SIZES.items():
        block, type_size = GGML_QUANT_SIZES[qtype]
        assert (block, type_size) == (QK_K, size)
        out = KQUANTS[qtype](np.ones((3, 512), dtype=np.float32))
        assert out.dtype == np.uint8 and out.shape == (3, 2 * size)


# Relative RMS error on N(0, 1) data, measured (3 seeds, 32x4096) and set a little above. They are
# the reference algorithm's own errors: the output is byte-identical to llama.cpp's C.
ERROR_BOUNDS = {T.Q2_K: 0.31, T.Q3_K: 0.16, T.Q4_K: 0.075, T.Q5_K: 0.038, T.Q6_K: 0.019}


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray:
    return np.random.default_rng(2024).standard_normal((16, 4096)).astype(np.float32)


@pytest.mark.parametrize("qtype", list(REFS), ids=lambda t: t.name)
def test_roundtrip_error_within_bounds(qtype, gaussian):
    q = KQUANTS[qtype](gaussian)
    assert q.shape == (16, 4096 // QK_K * SIZES[qtype])
    y = gguf.quants.dequantize(q, qtype)
    assert y.shape == gaussian.shape
    rel = np.sqrt(np.mean((y - gaussian) ** 2)) / np.sqrt(np.mean(gaussian**2))
    assert rel < ERROR_BOUNDS[qtype], f"{qtype.name}: relative RMS error {rel:.4f}"
    assert rel > ERROR_BOUNDS[qtype] / 2, f"{qtype.name}: implausibly small error {rel:.4f}"


@pytest.mark.parametrize(("kq_type", "legacy"), [(T.Q4_K, T.Q4_0), (T.Q5_K, T.Q5_0)], ids=["q4", "q5"])
def test_kquant_beats_legacy_quant_of_same_width(kq_type, legacy, gaussian):
    """Anchor against gguf-py's own (C-identical) quantizer of the same bit width."""

    def err(qtype, q):
        y = gguf.quants.dequantize(q, qtype)
        return float(np.sqrt(np.mean((y - gaussian) ** 2)))

    assert err(kq_type, KQUANTS[kq_type](gaussian)) < err(legacy, gguf.quants.quantize(gaussian, legacy))


@pytest.mark.parametrize("qtype", list(REFS), ids=lambda t: t.name)
def test_special_inputs_decode(qtype):
    zeros = np.zeros((2, 256), dtype=np.float32)
    assert np.array_equal(gguf.quants.dequantize(KQUANTS[qtype](zeros), qtype), zeros)
    tiny = np.full((1, 256), 1e-30, dtype=np.float32)
    assert np.all(np.abs(gguf.quants.dequantize(KQUANTS[qtype](tiny), qtype)) < 1e-6)
    # a block with one huge outlier keeps the outlier (to within its own step) and stays finite
    x = np.random.default_rng(3).standard_normal((1, 256)).astype(np.float32)
    x[0, 10] = 1000.0
    y = gguf.quants.dequantize(KQUANTS[qtype](x), qtype)
    assert np.all(np.isfinite(y)) and abs(y[0, 10] - 1000.0) < 100.0


def test_shapes_dtypes_and_layout_independence():
    x = np.random.default_rng(5).standard_normal((2, 3, 512)).astype(np.float32)
    for qtype, fn in KQUANTS.items():
        q = fn(x)
        assert q.shape == (2, 3, 2 * SIZES[qtype])
        flat = fn(x.reshape(6, 512)).reshape(q.shape)
        assert np.array_equal(q, flat)
        # other float dtypes are converted to float32 first, as the C takes float*
        assert np.array_equal(fn(x.astype(np.float64)), q)
        # a non-contiguous view gives the same bytes as its contiguous copy
        xt = np.random.default_rng(6).standard_normal((512, 4)).astype(np.float32).T
        assert np.array_equal(fn(xt), fn(np.ascontiguousarray(xt)))
        assert fn(np.zeros((0, 256), dtype=np.float32)).shape == (0, SIZES[qtype])


def test_read_only_input():
    """Source rows can be read-only views of the memory-mapped checkpoint."""
    x = random_blocks(8, seed=11)
    x.setflags(write=False)
    for qtype, fn in KQUANTS.items():
        assert np.array_equal(fn(x), fn(x.copy())), qtype.name


def test_chunking_does_not_change_bytes(monkeypatch):
    x = random_blocks(40, seed=9)
    whole = {t: fn(x) for t, fn in KQUANTS.items()}
    monkeypatch.setattr(kq, "CHUNK_BLOCKS", 7)
    for qtype, fn in KQUANTS.items():
        assert np.array_equal(fn(x), whole[qtype]), qtype.name


@pytest.mark.parametrize("fn", list(KQUANTS.values()), ids=lambda f: f.__name__)
def test_bad_row_length_is_value_error(fn):
    with pytest.raises(ValueError, match="not a multiple of 256"):
        fn(np.zeros((4, 300), dtype=np.float32))
    with pytest.raises(ValueError, match="not a multiple of 256"):
        fn(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="scalar"):
        fn(np.float32(1.0))


# Optional: llama.cpp's own C. Build a small library from ggml-quants.c (docs/kquants.md says how) and
# point GROKFETCH_GGML_QUANTS_LIB at it; without it this test is skipped.
_C_LIB = os.environ.get("GROKFETCH_GGML_QUANTS_LIB")
_C_NAMES = {T.Q2_K: "q2_K", T.Q3_K: "q3_K", T.Q4_K: "q4_K", T.Q5_K: "q5_K", T.Q6_K: "q6_K"}


@pytest.mark.skipif(not _C_LIB, reason="GROKFETCH_GGML_QUANTS_LIB not set (llama.cpp C quantizer)")
@pytest.mark.parametrize("qtype", list(REFS), ids=lambda t: t.name)
def test_byte_identical_to_llama_cpp_c(qtype, blocks):
    lib = ctypes.CDLL(_C_LIB)
    fn = getattr(lib, f"quantize_row_{_C_NAMES[qtype]}_ref")
    xb = np.concatenate([blocks, np.random.default_rng(8).standard_normal((2000, QK_K)).astype(np.float32)])
    want = np.zeros((len(xb), SIZES[qtype]), dtype=np.uint8)
    fn(xb.ctypes.data_as(ctypes.c_void_p), want.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(xb.size))
    got = KQUANTS[qtype](xb)
    bad = np.nonzero((got != want).any(axis=1))[0]
    assert len(bad) == 0, f"{qtype.name}: {len(bad)}/{len(xb)} blocks differ from C: {bad[:10]}"


def test_nearest_int_matches_the_c_bit_trick():
    from grokfetch.convert.kquants import nearest_int as vec_nearest_int

    vals = np.array(
        [0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 3.49999, 4194303.0, -4194303.0, 4194304.5, 1e10,
         -1e10, np.inf, -np.inf, np.nan, 1e-45, 7.5, 15.5, 31.5],
        dtype=np.float32,
    )  # fmt: skip
    with np.errstate(all="ignore"):
        assert vec_nearest_int(vals).tolist() == [nearest_int(v) for v in vals]

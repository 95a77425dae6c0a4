"""Eight-lane float64 vectors for numba kernels (explicit SIMD, no C compiler needed), and
a cache prefetch.

Why this exists: numba has no vector type, and LLVM's SLP vectorizer leaves the per-pixel
K-vector arithmetic of the NNLS kernel scalar (measured: the generated kernel had only
scalar ``vfmadd...sd`` instructions). With ``K <= 8`` components one pixel's KKT vector fits
one 8-lane register, so a pivoting step ``w = sum_j z_j U[m, j, :]`` is K broadcast
multiply-adds instead of K^2 scalar ones. These intrinsics emit LLVM's ``<8 x double>``
operations directly; LLVM maps them to one AVX-512 register, two AVX2 registers or four
NEON/SSE registers, so the kernels stay portable (only their speed differs).

:func:`prefetch` and :func:`prefetch_write` ask the CPU to start loading an array
element's cache line ahead of its use (``llvm.prefetch``; a hint, not a load: it never
faults, and it is dropped on targets without one). The watershed flood visits pixels in the
order of their values, i.e. all over the image, and each pass of its radix sort scatters
keys into 2048 places at once; prefetching a few steps ahead made the flood ~30 % and the
sort ~20-30 % faster on a 2208^2 tile (measured).

:func:`vload_row` and :func:`vtranspose8` let the NNLS kernel put one pixel in each lane
instead: eight pixel rows loaded (and converted to float64 from the slide's uint16, uint8 or
float32 as they are loaded) and transposed into one vector per channel, so that the
unconstrained solutions of eight pixels take K vectors of C multiply-adds with scalar
coefficients, without a broadcast per channel and pixel.

Only what the NNLS kernel and the watershed flood need is here. Arrays given to
:func:`vload`, :func:`vstore` and :func:`vstore_row` must be C-contiguous float64 (those
given to :func:`vload_row` C-contiguous float64, float32, uint16 or uint8), and the caller
keeps every access in bounds (no checks: these are inner-loop primitives).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

__all__ = ["f64x8", "prefetch", "prefetch_write", "vabs", "vadd", "vfma", "vload", "vload_row",
           "vltmask", "vmax0", "vmul", "vnonfinite", "vsplat", "vstore", "vstore_row",
           "vtranspose8"]

LANES = 8
_VT = ir.VectorType(ir.DoubleType(), LANES)
_I32 = ir.IntType(32)


class F64x8Type(types.Type):
    """Numba type of an eight-lane float64 vector (a value, like a float)."""

    def __init__(self):
        super().__init__(name="F64x8")


f64x8 = F64x8Type()


@register_model(F64x8Type)
class _F64x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


def _check_array(arr, ndim: int) -> None:
    if not (isinstance(arr, types.Array) and arr.dtype == types.float64 and arr.ndim == ndim
            and arr.layout == "C"):
        raise TypeError(f"expected a C-contiguous {ndim}-D float64 array, got {arr}")


def _element_ptr(context, builder, aryty, ary, index):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [index]), _VT.as_pointer())


def _splat(builder, scalar, vtype=_VT):
    v = builder.insert_element(ir.Constant(vtype, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vtype, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _bitmask(builder, lanes):
    """An ``<8 x i1>`` comparison as an int64 with bit ``i`` = lane ``i``."""
    return builder.zext(builder.bitcast(lanes, ir.IntType(LANES)), ir.IntType(64))


def _intrinsic_fn(builder, name: str, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


@intrinsic
def vload(typingctx, arr, index):
    """Lanes ``arr[index : index + 8]`` of a C-contiguous 1-D float64 array."""
    _check_array(arr, 1)

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig.args[0], *args), align=8)

    return f64x8(arr, index), codegen


_ROW_TYPES = {types.float64: None, types.float32: "fpext", types.uint16: "uitofp",
              types.uint8: "uitofp"}


@intrinsic
def vload_row(typingctx, arr, row, col):
    """Lanes ``arr[row, col : col + 8]`` of a C-contiguous 2-D array as float64 (float64,
    float32, uint16 or uint8 elements, converted exactly)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.layout == "C"
            and arr.dtype in _ROW_TYPES):
        raise TypeError(f"expected a C-contiguous 2-D float64, float32, uint16 or uint8 "
                        f"array, got {arr}")

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ncol = builder.extract_value(ary.shape, 1)
        row_ = context.cast(builder, args[1], sig.args[1], types.intp)
        col_ = context.cast(builder, args[2], sig.args[2], types.intp)
        ptr = builder.gep(ary.data, [builder.add(builder.mul(row_, ncol), col_)])
        elem = context.get_data_type(aryty.dtype)
        vec = ir.VectorType(elem, LANES)
        v = builder.load(builder.bitcast(ptr, vec.as_pointer()), align=aryty.dtype.bitwidth // 8)
        how = _ROW_TYPES[aryty.dtype]
        return v if how is None else getattr(builder, how)(v, _VT)

    return f64x8(arr, row, col), codegen


@intrinsic
def vtranspose8(typingctx, r0, r1, r2, r3, r4, r5, r6, r7):
    """The 8 x 8 transpose of eight vectors: lane ``j`` of result ``i`` is lane ``i`` of
    ``r_j``. Three rounds of two-input shuffles (24 in all: unpack pairs, then swap
    128-bit, then 256-bit halves), which LLVM lowers to the target's permutes."""
    def codegen(context, builder, sig, args):
        def shuf(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, LANES), mask))

        lo1, hi1 = [0, 8, 2, 10, 4, 12, 6, 14], [1, 9, 3, 11, 5, 13, 7, 15]
        lo2, hi2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        lo3, hi3 = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
        t = []
        for i in range(0, 8, 2):  # t[2i]: lanes 0, 2, 4, 6 of rows i, i+1 interleaved
            t += [shuf(args[i], args[i + 1], lo1), shuf(args[i], args[i + 1], hi1)]
        u = [None] * 8  # u[c]: columns c and c + 4 of rows 0-3 (c < 4) or 4-7 (c >= 4)
        for base in (0, 4):
            u[base + 0] = shuf(t[base + 0], t[base + 2], lo2)
            u[base + 2] = shuf(t[base + 0], t[base + 2], hi2)
            u[base + 1] = shuf(t[base + 1], t[base + 3], lo2)
            u[base + 3] = shuf(t[base + 1], t[base + 3], hi2)
        cols = [shuf(u[c], u[c + 4], lo3) for c in range(4)]
        cols += [shuf(u[c], u[c + 4], hi3) for c in range(4)]
        return context.make_tuple(builder, sig.return_type, cols)

    return types.UniTuple(f64x8, LANES)(*([f64x8] * LANES)), codegen


@intrinsic
def vstore(typingctx, arr, index, v):
    """Write the 8 lanes of ``v`` to ``arr[index : index + 8]`` (1-D float64, C order)."""
    _check_array(arr, 1)

    def codegen(context, builder, sig, args):
        builder.store(args[2], _element_ptr(context, builder, sig.args[0], args[0], args[1]),
                      align=8)
        return context.get_dummy_value()

    return types.none(arr, index, v), codegen


def _masked_store_name() -> str:
    # LLVM mangles the pointer type into the name: "p0" when llvmlite writes opaque pointers
    # ("ptr"), "p0v8f64" when it writes typed ones (LLVM renames it on reading either way).
    return ("llvm.masked.store.v8f64.p0" if str(_VT.as_pointer()) == "ptr"
            else "llvm.masked.store.v8f64.p0v8f64")


def _prefetch(arr, index, rw: int):
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and isinstance(index, types.Integer)):
        raise TypeError(f"expected a C-contiguous 1-D array and an integer, got {arr}, {index}")

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        i8p = ir.IntType(8).as_pointer()
        name = "llvm.prefetch.p0" if str(i8p) == "ptr" else "llvm.prefetch.p0i8"
        fn = _intrinsic_fn(builder, name, ir.VoidType(), [i8p, _I32, _I32, _I32])
        # rw (0 read, 1 write), high temporal locality (3), data cache (1)
        builder.call(fn, [builder.bitcast(builder.gep(ary.data, [idx]), i8p),
                          ir.Constant(_I32, rw), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(arr, index), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Prefetch the cache line of ``arr[index]`` (C-contiguous 1-D array of any dtype) for
    reading, into all cache levels. A hint only: an index out of bounds does not fault, but
    callers keep it in bounds anyway."""
    return _prefetch(arr, index, 0)


@intrinsic
def prefetch_write(typingctx, arr, index):
    """:func:`prefetch` for a line about to be written (x86 ``prefetchw``)."""
    return _prefetch(arr, index, 1)


@intrinsic
def vstore_row(typingctx, arr, row, v, mask):
    """Write lane ``i`` of ``v`` to ``arr[row, i]`` for every bit ``i`` set in ``mask``.

    ``arr`` is a C-contiguous 2-D float64 array with at most 8 columns; one masked store
    (lanes outside the mask are not touched, so a row narrower than 8 is safe)."""
    _check_array(arr, 2)

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ncol = builder.extract_value(ary.shape, 1)
        ptr = builder.gep(ary.data, [builder.mul(args[1], ncol)])
        ptr = builder.bitcast(ptr, _VT.as_pointer())
        i64x8 = ir.VectorType(ir.IntType(64), LANES)
        bits = ir.Constant(i64x8, [1 << i for i in range(LANES)])
        lanes = builder.and_(_splat(builder, args[3], i64x8), bits)
        on = builder.icmp_unsigned("!=", lanes, ir.Constant(i64x8, [0] * LANES))
        fn = _intrinsic_fn(builder, _masked_store_name(), ir.VoidType(),
                           [_VT, _VT.as_pointer(), _I32, ir.VectorType(ir.IntType(1), LANES)])
        builder.call(fn, [args[2], ptr, ir.Constant(_I32, 8), on])
        return context.get_dummy_value()

    return types.none(arr, row, v, types.int64), codegen


@intrinsic
def vsplat(typingctx, x):
    """The float64 ``x`` in all 8 lanes."""

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.float64))

    return f64x8(x), codegen


@intrinsic
def vadd(typingctx, a, b):
    """Lane-wise ``a + b``."""

    def codegen(context, builder, sig, args):
        return builder.fadd(*args)

    return f64x8(f64x8, f64x8), codegen


@intrinsic
def vmul(typingctx, a, b):
    """Lane-wise ``a * b``."""

    def codegen(context, builder, sig, args):
        return builder.fmul(*args)

    return f64x8(f64x8, f64x8), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """Lane-wise ``a * b + c`` with one rounding (``llvm.fma``)."""

    def codegen(context, builder, sig, args):
        return builder.call(_intrinsic_fn(builder, "llvm.fma.v8f64", _VT, [_VT] * 3), args)

    return f64x8(f64x8, f64x8, f64x8), codegen


@intrinsic
def vabs(typingctx, a):
    """Lane-wise ``|a|``."""

    def codegen(context, builder, sig, args):
        return builder.call(_intrinsic_fn(builder, "llvm.fabs.v8f64", _VT, [_VT]), args)

    return f64x8(f64x8), codegen


@intrinsic
def vmax0(typingctx, a):
    """Lane-wise ``max(a, 0.0)`` (``llvm.maxnum``: a NaN lane gives 0.0)."""

    def codegen(context, builder, sig, args):
        fn = _intrinsic_fn(builder, "llvm.maxnum.v8f64", _VT, [_VT, _VT])
        return builder.call(fn, [args[0], ir.Constant(_VT, [0.0] * LANES)])

    return f64x8(f64x8), codegen


@intrinsic
def vnonfinite(typingctx, a):
    """Bit mask (int64) with bit ``i`` set where lane ``i`` of ``a`` is NaN or infinite."""

    def codegen(context, builder, sig, args):
        t = builder.fmul(args[0], ir.Constant(_VT, [0.0] * LANES))  # NaN iff not finite
        return _bitmask(builder, builder.fcmp_unordered("uno", t, t))

    return types.int64(f64x8), codegen


@intrinsic
def vltmask(typingctx, a, s):
    """Bit mask (int64) with bit ``i`` set where lane ``i`` of ``a`` is below ``s``.

    An ordered comparison: NaN lanes give 0."""

    def codegen(context, builder, sig, args):
        s_ = context.cast(builder, args[1], sig.args[1], types.float64)
        return _bitmask(builder, builder.fcmp_ordered("<", args[0], _splat(builder, s_)))

    return types.int64(f64x8, s), codegen

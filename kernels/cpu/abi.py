"""The compiled kernels' ABI as Python expects it: the one place the ctypes declarations live.

``abi.h`` makes the library describe itself (every exported function's signature in a small
token language, and the layout of every struct Python fills), tied to the real C declarations
by the compiler. Here is what Python expects, in the same tokens: the ctypes ``argtypes`` and
``restype`` of each function and the ``ctypes.Structure`` classes are derived from these
declarations (and nothing else), and the loader (:mod:`.build`) compares the library's table
with :func:`expected_table` before calling anything, refusing a library that differs anywhere
(a mismatch would corrupt memory silently). Editing a C signature or struct therefore means
editing its ``abi.h`` entry (or the build fails) and its entry here (or the library is refused).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
from typing import Any

SCALARS = {"f32": ctypes.c_float, "f64": ctypes.c_double}
"""The parts of the library by name suffix (``<name>_f32`` / ``<name>_f64``), with their
scalar type (the token ``SCALAR``)."""
_CTYPES: dict[str, Any] = {
    "VOID": None, "INT": ctypes.c_int, "I64": ctypes.c_int64, "I64X3": ctypes.c_int64 * 3,
    "SIZE": ctypes.c_size_t, "CHARS": ctypes.c_char_p, "PTR_F": ctypes.c_void_p,
    "CPTR_F": ctypes.c_void_p, "CPTR_U8": ctypes.c_void_p, "CPTR_SEQ_ARGS": ctypes.c_void_p,
    "CPTR_BT_ARGS": ctypes.c_void_p}
"""The ctypes type of each token but ``SCALAR`` (pointers: addresses; the C side keeps the
pointee types, which abi.h checks)."""

Signature = tuple[str, tuple[str, ...]]
"""``(RET, (PARAM, ...))`` in the tokens of abi.h; no parameters is C's ``(void)``."""

COMMON_FUNCTIONS: dict[str, Signature] = {
    "xlstm_cpu_kernels_openmp": ("INT", ()),
    "xlstm_cpu_kernels_abi_table": ("I64", ("CHARS", "I64")),
}
"""The functions outside the two parts (``kernels.c``)."""

_ARGS_CALL = ("I64", "CPTR_SEQ_ARGS", "INT")
_BLOCK_CALL = ("I64", "CPTR_BT_ARGS", "INT")
TYPED_FUNCTIONS: dict[str, Signature] = {
    "xlstm_mlstm_cell_step": ("VOID", (
        "I64", "I64", "I64", "I64",                          # B, H, dk, dv
        "CPTR_F", "I64", "CPTR_F", "I64", "CPTR_F", "I64",   # q, k, v and their batch strides
        "CPTR_F", "CPTR_F", "I64",                           # ig, fg, gate_bstride
        "CPTR_F", "CPTR_F", "CPTR_F", "CPTR_U8",             # C, n, m, reset
        "SCALAR", "SCALAR", "SCALAR",                        # scale, eps, max_exp
        "PTR_F", "PTR_F", "PTR_F", "PTR_F")),                # h, C_out, n_out, m_out
    "xlstm_mlstm_block_step": ("INT", (
        "I64", "I64", "I64", "I64", "I64",                   # B, H, Dh, K, bs
        "CPTR_F", "CPTR_F", "I64", "CPTR_F", "CPTR_U8",      # xm, z, up_bstride, window, reset
        "CPTR_F", "CPTR_F", "CPTR_F", "CPTR_F",              # conv_w, conv_b, qk_w, v_w
        "CPTR_F", "CPTR_F", "CPTR_F", "CPTR_F", "CPTR_F",    # gate_w, gate_b, C, n, m
        "CPTR_F", "SCALAR", "CPTR_F", "SCALAR", "SCALAR",    # norm_w, norm_eps, skip, eps, max
        "PTR_F", "PTR_F", "PTR_F", "PTR_F", "PTR_F")),       # out, window_out, C, n, m (new)
    "xlstm_mlstm_seq_fwd": ("INT", _ARGS_CALL),
    "xlstm_mlstm_seq_bwd": ("INT", _ARGS_CALL),
    "xlstm_mlstm_block_fwd_pre": ("INT", _BLOCK_CALL),
    "xlstm_mlstm_block_fwd_post": ("INT", _BLOCK_CALL),
    "xlstm_mlstm_block_bwd_post": ("INT", (*_BLOCK_CALL, "PTR_F")),
    "xlstm_mlstm_block_bwd_pre": ("INT", (*_BLOCK_CALL, "PTR_F")),
    "xlstm_cpu_kernels_abi_part": ("SIZE", ("CHARS", "SIZE", "SIZE")),
}
"""The functions of each part (names without their ``_f32`` / ``_f64`` suffix)."""


def _fields(spec: str) -> tuple[tuple[str, str], ...]:
    """``"TOKEN name name, TOKEN name"`` as ``((name, TOKEN), ...)`` in order."""
    fields = []
    for group in spec.split(","):
        token, *names = group.split()
        fields += [(name, token) for name in names]
    return tuple(fields)


STRUCTS: dict[str, tuple[tuple[str, str], ...]] = {
    "seq_args": _fields(  # SEQ_ARGS, mlstm_sequence.h
        "I64 H S dk dv, CPTR_F q k v ig fg, I64X3 q_s k_s v_s g_s, CPTR_U8 reset,"
        "CPTR_F C0 n0 m0, SCALAR scale eps max_exp, PTR_F h C n m ck_C ck_n m_all,"
        "CPTR_F dh, I64X3 dh_s, CPTR_F dC dn dm, PTR_F dq dkk dvv di df dC0 dn0 dm0"),
    "bt_args": _fields(  # BT_ARGS, mlstm_block_train.h
        "I64 T H Dh K bs, CPTR_F up window, CPTR_U8 reset,"
        "CPTR_F conv_w conv_b taps taps_t gate_w gate_b norm_w skip, SCALAR norm_eps,"
        "PTR_F xc_pre qkv gates window_out, CPTR_F h, PTR_F out, CPTR_F dout dwindow_out,"
        "PTR_F dh dxc, CPTR_F dq dk dv di df, PTR_F dup dwindow"),
}
"""The structs Python fills, per part (``<name>_f32`` / ``<name>_f64``): ``(field, TOKEN)``
in declaration order."""


def _ctype(token: str, scalar: type | None) -> Any:
    return scalar if token == "SCALAR" else _CTYPES[token]


def _split(name: str) -> tuple[str, type | None]:
    """``name`` as its declaration's key and its part's scalar (None outside the parts)."""
    base, _, suffix = name.rpartition("_")
    if suffix in SCALARS and base in TYPED_FUNCTIONS:
        return base, SCALARS[suffix]
    return name, None


def signature(name: str) -> tuple[list[Any], Any]:
    """The ctypes ``(argtypes, restype)`` of the library's function ``name`` (suffix included).

    Raises:
        KeyError: ``name`` is not declared here.
    """
    base, scalar = _split(name)
    ret, params = COMMON_FUNCTIONS[base] if scalar is None else TYPED_FUNCTIONS[base]
    return [_ctype(t, scalar) for t in params], _ctype(ret, scalar)


@functools.cache
def structure(name: str, scalar: type) -> type[ctypes.Structure]:
    """The ``ctypes.Structure`` mirroring the C struct ``name`` (a key of :data:`STRUCTS`) for
    ``scalar`` (``ctypes.c_float`` / ``ctypes.c_double``); one class per pair."""
    fields = [(field, _ctype(token, scalar)) for field, token in STRUCTS[name]]
    suffix = next(s for s, c in SCALARS.items() if c is scalar)
    return type(f"{name}_{suffix}", (ctypes.Structure,), {"_fields_": fields})


def _describe(ret: str, params: tuple[str, ...]) -> str:
    return f"{ret} ({', '.join(params) or 'void'})"


def expected_table() -> dict[str, str]:
    """What the library's table must say, as ``{key: value}`` (the lines of abi.h)."""
    table = {name: _describe(*sig) for name, sig in COMMON_FUNCTIONS.items()}
    for suffix, scalar in SCALARS.items():
        table.update({f"{name}_{suffix}": _describe(*sig)
                      for name, sig in TYPED_FUNCTIONS.items()})
        for name, fields in STRUCTS.items():
            mirror, typed = structure(name, scalar), f"{name}_{suffix}"
            for field, token in fields:
                where = getattr(mirror, field)
                table[f"{typed}.{field}"] = f"{token} at {where.offset}, {where.size} bytes"
            table[typed] = f"struct of {ctypes.sizeof(mirror)} bytes"
    return table


DIGEST = hashlib.sha256(repr(sorted(expected_table().items())).encode()).hexdigest()[:16]
"""A digest of :func:`expected_table` (part of the cached library's key)."""


def parse_table(text: str) -> dict[str, str]:
    """The library's table text as ``{key: value}``, whitespace made canonical."""
    table = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        table[key.strip()] = " ".join(value.replace(",", ", ").split()).replace(" ,", ",")
    return table


def read_table(lib: ctypes.CDLL) -> dict[str, str]:
    """The table ``lib`` reports (``xlstm_cpu_kernels_abi_table``).

    Raises:
        AttributeError: ``lib`` has no table.
    """
    fn = lib.xlstm_cpu_kernels_abi_table
    fn.argtypes, fn.restype = signature("xlstm_cpu_kernels_abi_table")
    size = 1 << 14
    while True:
        buf = ctypes.create_string_buffer(size)
        wanted = fn(buf, size)
        if wanted < size:
            return parse_table(buf.value.decode("utf-8", "replace"))
        size = wanted + 1


def first_mismatch(library: dict[str, str], expected: dict[str, str]) -> str | None:
    """The first difference between the library's table and the expected one, as a phrase
    (entries one side lacks first, then differing values), or None when they agree."""
    for key in library:
        if key not in expected:
            return f"{key} is in the library but not expected ({library[key]})"
    for key in expected:
        if key not in library:
            return f"{key} is expected but not in the library"
    for key, value in expected.items():
        if library[key] != value:
            return f"{key} has {library[key]} in the library, {value} expected"
    return None


def check(lib: ctypes.CDLL) -> str | None:
    """None when ``lib``'s table matches :func:`expected_table`, else the first mismatch."""
    try:
        library = read_table(lib)
    except AttributeError:
        return "the library has no ABI table (xlstm_cpu_kernels_abi_table)"
    return first_mismatch(library, expected_table())

/* The library's description of its own ABI: every exported function's signature and every
 * struct the Python side mirrors (field names, types, offsets, sizes), as text the loader
 * compares with kernels/cpu/abi.py before it calls anything (a mismatch would corrupt memory
 * silently, so the library is refused instead).
 *
 * Included by kernels.c once per scalar type, after the kernels (SCALAR, TYPED(name), FN and
 * BLOCK_FN defined). Signatures are written in a small token language, one typedef per token
 * (I64, INT, SCALAR, PTR_F = SCALAR *, CPTR_F = const SCALAR *, ...), so the stringized token
 * list is the canonical text. Each entry is also checked by the compiler: a _Static_assert
 * with _Generic requires the real function to have exactly the type the tokens spell, and each
 * struct field exactly its token's type, so editing a prototype or a field without its entry
 * here is a compile error with any C11 compiler and any flags. A field added to a struct but
 * not listed here shows as a gap (or a size) the table reports and the loader refuses; one
 * that fits in alignment padding moves nothing, but the float64 structs have no padding.
 *
 * Lines are "key<TAB>value": "<function>\t<RET> (<PARAMS>)", "<struct>\tstruct of N bytes",
 * "<struct>.<field>\t<TYPE> at OFFSET, SIZE bytes", "<struct> bytes A..B\tnot in the ABI table".
 */
#ifndef XLSTM_ABI_COMMON
#define XLSTM_ABI_COMMON
#include <stdarg.h>
#include <stdio.h>

typedef void VOID;
typedef int INT;
typedef int64_t I64;
typedef int64_t I64X3[3];
typedef size_t SIZE;
typedef char *CHARS;
typedef const uint8_t *CPTR_U8;
/* Tokens whose type depends on the scalar: one typedef per part (both parts may share a
 * translation unit), the token text the same. */
#define PTR_F TYPED(abi_ptr_f)
#define CPTR_F TYPED(abi_cptr_f)
#define CPTR_SEQ_ARGS TYPED(abi_cptr_seq_args)
#define CPTR_BT_ARGS TYPED(abi_cptr_bt_args)

#define ABI_STR_(x) #x
#define ABI_STR(x) ABI_STR_(x)

/* The exported functions of one part: X(function, RET, PARAMS...). */
#define ABI_TYPED_FUNCTIONS(X)                                                                 \
    X(FN, VOID, I64, I64, I64, I64, CPTR_F, I64, CPTR_F, I64, CPTR_F, I64, CPTR_F, CPTR_F, I64, \
      CPTR_F, CPTR_F, CPTR_F, CPTR_U8, SCALAR, SCALAR, SCALAR, PTR_F, PTR_F, PTR_F, PTR_F)      \
    X(BLOCK_FN, INT, I64, I64, I64, I64, I64, CPTR_F, CPTR_F, I64, CPTR_F, CPTR_U8, CPTR_F,     \
      CPTR_F, CPTR_F, CPTR_F, CPTR_F, CPTR_F, CPTR_F, CPTR_F, CPTR_F, CPTR_F, SCALAR, CPTR_F,   \
      SCALAR, SCALAR, PTR_F, PTR_F, PTR_F, PTR_F, PTR_F)                                        \
    X(TYPED(xlstm_mlstm_seq_fwd), INT, I64, CPTR_SEQ_ARGS, INT)                                \
    X(TYPED(xlstm_mlstm_seq_bwd), INT, I64, CPTR_SEQ_ARGS, INT)                                \
    X(TYPED(xlstm_mlstm_block_fwd_pre), INT, I64, CPTR_BT_ARGS, INT)                           \
    X(TYPED(xlstm_mlstm_block_fwd_post), INT, I64, CPTR_BT_ARGS, INT)                          \
    X(TYPED(xlstm_mlstm_block_bwd_post), INT, I64, CPTR_BT_ARGS, INT, PTR_F)                   \
    X(TYPED(xlstm_mlstm_block_bwd_pre), INT, I64, CPTR_BT_ARGS, INT, PTR_F)                    \
    X(TYPED(xlstm_cpu_kernels_abi_part), SIZE, CHARS, SIZE, SIZE)

/* The exported functions outside the parts (kernels.c, part 32). */
#define ABI_COMMON_FUNCTIONS(X)                                                                \
    X(xlstm_cpu_kernels_openmp, INT, void)                                                     \
    X(xlstm_cpu_kernels_abi_table, I64, CHARS, I64)

/* SEQ_ARGS (mlstm_sequence.h): X(struct, field, TYPE), in declaration order. */
#define ABI_SEQ_ARGS_FIELDS(X, R)                                                              \
    X(R, H, I64) X(R, S, I64) X(R, dk, I64) X(R, dv, I64)                                      \
    X(R, q, CPTR_F) X(R, k, CPTR_F) X(R, v, CPTR_F) X(R, ig, CPTR_F) X(R, fg, CPTR_F)          \
    X(R, q_s, I64X3) X(R, k_s, I64X3) X(R, v_s, I64X3) X(R, g_s, I64X3)                        \
    X(R, reset, CPTR_U8) X(R, C0, CPTR_F) X(R, n0, CPTR_F) X(R, m0, CPTR_F)                    \
    X(R, scale, SCALAR) X(R, eps, SCALAR) X(R, max_exp, SCALAR)                                \
    X(R, h, PTR_F) X(R, C, PTR_F) X(R, n, PTR_F) X(R, m, PTR_F)                                \
    X(R, ck_C, PTR_F) X(R, ck_n, PTR_F) X(R, m_all, PTR_F)                                     \
    X(R, dh, CPTR_F) X(R, dh_s, I64X3) X(R, dC, CPTR_F) X(R, dn, CPTR_F) X(R, dm, CPTR_F)      \
    X(R, dq, PTR_F) X(R, dkk, PTR_F) X(R, dvv, PTR_F) X(R, di, PTR_F) X(R, df, PTR_F)          \
    X(R, dC0, PTR_F) X(R, dn0, PTR_F) X(R, dm0, PTR_F)

/* BT_ARGS (mlstm_block_train.h), likewise. */
#define ABI_BT_ARGS_FIELDS(X, R)                                                               \
    X(R, T, I64) X(R, H, I64) X(R, Dh, I64) X(R, K, I64) X(R, bs, I64)                         \
    X(R, up, CPTR_F) X(R, window, CPTR_F) X(R, reset, CPTR_U8)                                 \
    X(R, conv_w, CPTR_F) X(R, conv_b, CPTR_F) X(R, taps, CPTR_F) X(R, taps_t, CPTR_F)          \
    X(R, gate_w, CPTR_F) X(R, gate_b, CPTR_F) X(R, norm_w, CPTR_F) X(R, skip, CPTR_F)          \
    X(R, norm_eps, SCALAR)                                                                     \
    X(R, xc_pre, PTR_F) X(R, qkv, PTR_F) X(R, gates, PTR_F) X(R, window_out, PTR_F)            \
    X(R, h, CPTR_F) X(R, out, PTR_F) X(R, dout, CPTR_F) X(R, dwindow_out, CPTR_F)              \
    X(R, dh, PTR_F) X(R, dxc, PTR_F) X(R, dq, CPTR_F) X(R, dk, CPTR_F) X(R, dv, CPTR_F)        \
    X(R, di, CPTR_F) X(R, df, CPTR_F) X(R, dup, PTR_F) X(R, dwindow, PTR_F)

/* Compile-time ties of the entries to the real declarations. */
#define ABI_CHECK_FUNCTION(fn, ret, ...)                                                       \
    _Static_assert(_Generic(&(fn), ret (*)(__VA_ARGS__): 1, default: 0),                       \
                   "the prototype of " ABI_STR(fn) " differs from its entry in abi.h");
#define ABI_CHECK_FIELD(T, field, type)                                                        \
    _Static_assert(_Generic(&((T *)0)->field, type *: 1, default: 0),                          \
                   "the field " ABI_STR(T) "." #field " differs from its entry in abi.h");

/* The text being written: buf[0 .. cap) receives what fits; `at` counts every byte wanted. */
typedef struct {
    char *buf;
    size_t cap, at;
} abi_text;

static void abi_print(abi_text *t, const char *fmt, ...)
{
    const size_t room = t->at < t->cap ? t->cap - t->at : 0;
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(room > 0 ? t->buf + t->at : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        t->at += (size_t)n;
}

/* One field's line; `end` is where the previous field ended. Bytes between it and this field
 * beyond alignment padding belong to a field the table does not list: reported as a gap. */
static void abi_field(abi_text *t, size_t *end, const char *type_name, const char *field,
                      const char *token, size_t offset, size_t size, size_t align)
{
    const size_t padded = (*end + align - 1) / align * align;
    if (offset != padded)
        abi_print(t, "%s bytes %zu..%zu\tnot in the ABI table\n", type_name, *end, offset);
    abi_print(t, "%s.%s\t%s at %zu, %zu bytes\n", type_name, field, token, offset, size);
    *end = offset + size;
}

/* The struct's own line, after its fields: its size, and a gap if bytes follow the last. */
static void abi_struct(abi_text *t, size_t end, const char *type_name, size_t size,
                       size_t align)
{
    if (size != (end + align - 1) / align * align)
        abi_print(t, "%s bytes %zu..%zu\tnot in the ABI table\n", type_name, end, size);
    abi_print(t, "%s\tstruct of %zu bytes\n", type_name, size);
}

#define ABI_PRINT_FUNCTION(fn, ret, ...)                                                       \
    abi_print(&text, "%s\t%s (%s)\n", ABI_STR(fn), #ret, #__VA_ARGS__);
#define ABI_PRINT_FIELD(T, field, type)                                                        \
    abi_field(&text, &end, ABI_STR(T), #field, #type, offsetof(T, field), sizeof(type),        \
              _Alignof(type));
#define ABI_PRINT_STRUCT(T, FIELDS)                                                            \
    do {                                                                                       \
        size_t end = 0;                                                                        \
        FIELDS(ABI_PRINT_FIELD, T)                                                             \
        abi_struct(&text, end, ABI_STR(T), sizeof(T), _Alignof(T));                            \
    } while (0)
#endif /* XLSTM_ABI_COMMON */

typedef SCALAR *PTR_F;
typedef const SCALAR *CPTR_F;
typedef const TYPED(seq_args) *CPTR_SEQ_ARGS;
typedef const TYPED(bt_args) *CPTR_BT_ARGS;

size_t TYPED(xlstm_cpu_kernels_abi_part)(char *buf, size_t cap, size_t at);

ABI_TYPED_FUNCTIONS(ABI_CHECK_FUNCTION)
ABI_SEQ_ARGS_FIELDS(ABI_CHECK_FIELD, TYPED(seq_args))
ABI_BT_ARGS_FIELDS(ABI_CHECK_FIELD, TYPED(bt_args))

/* Appends this part's lines to buf from offset `at` (buf holds `cap` bytes, NUL-terminated
 * when what is wanted fits); returns the offset after them, written or not. */
size_t TYPED(xlstm_cpu_kernels_abi_part)(char *buf, size_t cap, size_t at)
{
    abi_text text = {buf, cap, at};
    ABI_TYPED_FUNCTIONS(ABI_PRINT_FUNCTION)
    ABI_PRINT_STRUCT(TYPED(seq_args), ABI_SEQ_ARGS_FIELDS);
    ABI_PRINT_STRUCT(TYPED(bt_args), ABI_BT_ARGS_FIELDS);
    return text.at;
}

/* Fused CPU kernels (float32 and float64), called through ctypes by xlstm_rl.kernels.cpu. Plain
 * C11, libm and OpenMP (POSIX threads where the compiler lacks it): no Python or torch headers,
 * so the system C compiler builds them in a few seconds (build.py compiles this file once per
 * scalar type, -DXLSTM_PART=32 / 64, the two at once, and links them; without XLSTM_PART it
 * holds both). The math is in mlstm_cell.h
 * and mlstm_block.h (the acting step), mlstm_tile.h, mlstm_sequence.h and mlstm_sequence_bwd.h
 * (the cell over a sequence, forward and backward), and mlstm_block_train.h with
 * mlstm_block_maps.h (the rest of the block's training path, forward and backward); vec.h holds
 * the vector helpers. */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Steps between the states the sequence forward keeps for its backward. */
#define CKPT 16
#define MAX_THREADS 64

typedef void (*row_task)(const void *args, int64_t row, void *scratch);

struct row_slice {
    row_task fn;
    const void *args;
    int64_t begin, end;
    void *scratch;
};

static void *run_slice(void *p)
{
    const struct row_slice *s = p;
    for (int64_t r = s->begin; r < s->end; ++r)
        s->fn(s->args, r, s->scratch);
    return NULL;
}

/* fn(args, row, scratch) for every row in [0, rows), split into contiguous slices over up to
 * `threads` threads (this one included), each with its own `scratch` bytes, zeroed (a row task
 * may keep partial sums there). With OpenMP the slices go to the runtime's team (see below);
 * else to POSIX threads, and a thread that cannot be started runs its slice here instead.
 * With `kept`, the scratch memory is handed back there (slices 64-byte aligned, `*used` of
 * them) for the caller to read and free. Returns 0, or 1 when the scratch cannot be allocated
 * (nothing ran then). */
static int parallel_rows(row_task fn, const void *args, int64_t rows, int threads, size_t scratch,
                         char **kept, int *used)
{
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if ((int64_t)threads > rows)
        threads = (int)rows;
    if (threads < 1)
        threads = 1;
    const size_t stride = (scratch + 63) / 64 * 64;
    char *mem = NULL;
    if (stride > 0) {
        mem = calloc((size_t)threads, stride);
        if (mem == NULL)
            return 1;
    }
    struct row_slice slices[MAX_THREADS];
    for (int w = 0; w < threads; ++w) {
        slices[w].fn = fn;
        slices[w].args = args;
        slices[w].begin = rows * w / threads;
        slices[w].end = rows * (w + 1) / threads;
        slices[w].scratch = mem == NULL ? NULL : mem + stride * (size_t)w;
    }
#ifdef _OPENMP
    /* Built with -fopenmp, the library shares the process's OpenMP runtime (torch's: the
     * loader reuses the libgomp already mapped), so the slices run on torch's worker threads,
     * which wait spinning after each torch op. Threads of our own would compete with them for
     * the cores, which made two threads slower than one at PPO's sizes. */
    if (threads > 1) {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (int w = 0; w < threads; ++w)
            run_slice(&slices[w]);
    } else {
        run_slice(&slices[0]);
    }
#else
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int w = 1; w < threads; ++w)
        started[w] = pthread_create(&ids[w], NULL, run_slice, &slices[w]) == 0;
    run_slice(&slices[0]);
    for (int w = 1; w < threads; ++w) {
        if (started[w])
            pthread_join(ids[w], NULL);
        else
            run_slice(&slices[w]);
    }
#endif
    if (kept != NULL) {
        *kept = mem;
        *used = threads;
    } else {
        free(mem);
    }
    return 0;
}

#if !defined(XLSTM_PART) || XLSTM_PART == 32
#define SCALAR float
#define CELL_HEAD cell_head_f32
#define CELL_GATES cell_gates_f32
#define CELL_GATES_T cell_gates_t_f32
#define DOT dot_f32
#define FN xlstm_mlstm_cell_step_f32
#define BLOCK_FN xlstm_mlstm_block_step_f32
#define EXP expf
#define LOG1P log1pf
#define FABS fabsf
#define SQRT sqrtf
#include "mlstm_cell.h"
#define VEC_LANES 16
#define TYPED(name) name##_f32
#include "vec.h"
#include "mlstm_block.h"
#include "mlstm_tile.h"
#include "mlstm_sequence.h"
#include "mlstm_sequence_bwd.h"
#include "mlstm_block_train.h"
#include "abi.h"
#undef VEC
#undef VEC_HALF
#undef VEC_QUARTER
#undef VLOAD
#undef VSTORE
#undef VSUM
#undef VEXP
#undef VLEN
#undef VEC_INDEX
#undef VSUM_ROWS
#undef VEC_INTERLEAVE
#undef VEC_TRANSPOSE
#undef MAT_TRANSPOSE
#undef VEC_LANES
#undef TYPED
#undef SCALAR
#undef CELL_HEAD
#undef CELL_GATES
#undef CELL_GATES_T
#undef DOT
#undef FN
#undef BLOCK_FN
#undef EXP
#undef LOG1P
#undef FABS
#undef SQRT

#endif

#if !defined(XLSTM_PART) || XLSTM_PART == 64
#define SCALAR double
#define CELL_HEAD cell_head_f64
#define CELL_GATES cell_gates_f64
#define CELL_GATES_T cell_gates_t_f64
#define DOT dot_f64
#define FN xlstm_mlstm_cell_step_f64
#define BLOCK_FN xlstm_mlstm_block_step_f64
#define EXP exp
#define LOG1P log1p
#define FABS fabs
#define SQRT sqrt
#include "mlstm_cell.h"
#define VEC_LANES 8
#define TYPED(name) name##_f64
#include "vec.h"
#include "mlstm_block.h"
#include "mlstm_tile.h"
#include "mlstm_sequence.h"
#include "mlstm_sequence_bwd.h"
#include "mlstm_block_train.h"
#include "abi.h"

#endif

#if !defined(XLSTM_PART) || XLSTM_PART == 32
/* 1 when built with OpenMP (parallel_rows runs on the process's OpenMP threads), else 0. */
int xlstm_cpu_kernels_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* The two parts' tables (the other part may be another object file of the library). */
size_t xlstm_cpu_kernels_abi_part_f32(char *buf, size_t cap, size_t at);
size_t xlstm_cpu_kernels_abi_part_f64(char *buf, size_t cap, size_t at);
int64_t xlstm_cpu_kernels_abi_table(char *buf, int64_t cap);

ABI_COMMON_FUNCTIONS(ABI_CHECK_FUNCTION)

/* The whole ABI table (abi.h) as text into buf (`cap` bytes, NUL-terminated when it fits);
 * returns its length, so a caller whose buffer was too small can ask again. The loader reads
 * it first and calls nothing else unless it matches what kernels/cpu/abi.py expects. */
int64_t xlstm_cpu_kernels_abi_table(char *buf, int64_t cap)
{
    abi_text text = {buf, cap > 0 ? (size_t)cap : 0, 0};
    ABI_COMMON_FUNCTIONS(ABI_PRINT_FUNCTION)
    text.at = xlstm_cpu_kernels_abi_part_f32(buf, text.cap, text.at);
    text.at = xlstm_cpu_kernels_abi_part_f64(buf, text.cap, text.at);
    return (int64_t)text.at;
}
#endif

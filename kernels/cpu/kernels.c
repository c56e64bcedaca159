/* Fused CPU kernels of the acting path (float32 and float64), called through ctypes by
 * xlstm_rl.kernels.cpu. Plain C11 and libm: no Python or torch headers, so the system C compiler
 * builds them in well under a second. The math is in mlstm_cell.h and mlstm_block.h. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define SCALAR float
#define CELL_HEAD cell_head_f32
#define DOT dot_f32
#define FN xlstm_mlstm_cell_step_f32
#define BLOCK_FN xlstm_mlstm_block_step_f32
#define EXP expf
#define LOG1P log1pf
#define FABS fabsf
#define SQRT sqrtf
#include "mlstm_cell.h"
#include "mlstm_block.h"
#undef SCALAR
#undef CELL_HEAD
#undef DOT
#undef FN
#undef BLOCK_FN
#undef EXP
#undef LOG1P
#undef FABS
#undef SQRT

#define SCALAR double
#define CELL_HEAD cell_head_f64
#define DOT dot_f64
#define FN xlstm_mlstm_cell_step_f64
#define BLOCK_FN xlstm_mlstm_block_step_f64
#define EXP exp
#define LOG1P log1p
#define FABS fabs
#define SQRT sqrt
#include "mlstm_cell.h"
#include "mlstm_block.h"

/* Bumped whenever a signature above changes, so a stale cached library is never called. */
int xlstm_cpu_kernels_abi(void) { return 1; }

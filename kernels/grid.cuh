/* grid.cuh - launch shapes shared by the element and row kernels
 * (elementwise.cu, transformer.cu): grid-stride loops over size_t indices
 * (an activation buffer may exceed 2^31 floats), BLOCK threads a block,
 * at most MAX_GRID blocks. */
#ifndef ERT_GRID_CUH
#define ERT_GRID_CUH

#include <stddef.h>

#define CEIL_DIV(a, b) (((a) + (b)-1) / (b))
#define BLOCK 256
/* enough blocks to fill an H200 several times; the loops cover the rest */
#define MAX_GRID 8192u

/* blocks for `count` items, `per_block` a block (at least 1, at most
 * MAX_GRID) */
static unsigned grid_of(size_t count, size_t per_block)
{
    size_t g = CEIL_DIV(count, per_block);
    if (g < 1)
        g = 1;
    return g > MAX_GRID ? MAX_GRID : (unsigned)g;
}

/* blocks for `count` elements, one thread each */
static unsigned grid_for(size_t count) { return grid_of(count, (size_t)BLOCK); }

#define GRID_STRIDE(i, count)                                                   \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (count); \
         i += (size_t)gridDim.x * blockDim.x)

#endif /* ERT_GRID_CUH */

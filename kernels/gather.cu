/* gather.cu - moves the surviving activation rows to the front of another
 * buffer, in the order the exit kernel's compaction gave. */
#include <stdint.h>

#include "kernels.h"

#define CEIL_DIV(a, b) (((a) + (b)-1) / (b))

/* dst row j <- src row src_row[j], for j < *count. T is float4 (16-byte
 * accesses) or float; row is in units of T. The grid covers n_max rows; the
 * threads past the device-side count do nothing. */
template <typename T>
static __global__ void gather_rows_kernel(const T *__restrict__ src, T *__restrict__ dst,
                                          const int *__restrict__ src_row,
                                          const int *__restrict__ count, size_t n_max, size_t row)
{
    const size_t rows = (size_t)*count;
    const size_t total = (rows < n_max ? rows : n_max) * row;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        size_t j = e / row, c = e % row;
        dst[e] = src[(size_t)src_row[j] * row + c];
    }
}

template <typename T>
static cudaError_t launch_gather_rows(const T *src, T *dst, const int *src_row, const int *count,
                                      int n_max, size_t row, cudaStream_t s)
{
    const int block = 256;
    size_t total = (size_t)n_max * row;
    size_t grid = CEIL_DIV(total, (size_t)block);
    if (grid > 65535u * 8u) /* the grid-stride loop covers the rest */
        grid = 65535u * 8u;
    gather_rows_kernel<T>
        <<<(unsigned)grid, block, 0, s>>>(src, dst, src_row, count, (size_t)n_max, row);
    return cudaGetLastError();
}

extern "C" cudaError_t k_gather_rows(const float *src, float *dst, const int *src_row,
                                     const int *d_count, int n_max, size_t row, cudaStream_t s)
{
    if (!src || !dst || !src_row || !d_count || n_max < 1 || row < 1 || src == dst)
        return cudaErrorInvalidValue;
    if (row % 4 == 0 && (uintptr_t)src % 16 == 0 && (uintptr_t)dst % 16 == 0)
        return launch_gather_rows((const float4 *)src, (float4 *)dst, src_row, d_count, n_max,
                                  row / 4, s);
    return launch_gather_rows(src, dst, src_row, d_count, n_max, row, s);
}

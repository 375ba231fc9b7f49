/* elementwise.cu - the small ops cuDNN and cuBLAS do not give us as we need
 * them: input normalisation, bias + activation (act.h's, as tx_math.h's
 * ert_act_apply computes them), residual add, global average pooling, index
 * initialisation. Grid-stride loops over size_t indices: an
 * activation buffer may exceed 2^31 floats. */
#include "grid.cuh"
#include "kernels.h"
#include "tx_math.h"

/* ---- normalize ------------------------------------------------------------------ */

static __global__ void normalize_kernel(const float *x, float *y, size_t count, int C, int HW,
                                        ert_norm_params p)
{
    GRID_STRIDE(i, count)
    {
        int c = (int)((i / (size_t)HW) % (size_t)C);
        /* explicit roundings: no FMA contraction, bit for bit the CPU's */
        y[i] = __fmul_rn(__fsub_rn(__fmul_rn(x[i], p.scale), p.mean[c]), p.inv_std[c]);
    }
}

static cudaError_t launch_normalize(const float *x, float *y, size_t count, int C, int HW,
                                    ert_norm_params p, cudaStream_t s)
{
    normalize_kernel<<<grid_for(count), BLOCK, 0, s>>>(x, y, count, C, HW, p);
    return cudaGetLastError();
}

extern "C" cudaError_t k_normalize(const float *x, float *y, int n, int C, int HW,
                                   ert_norm_params p, cudaStream_t s)
{
    if (!x || !y || n < 1 || C < 1 || C > 4 || HW < 1)
        return cudaErrorInvalidValue;
    return launch_normalize(x, y, (size_t)n * C * HW, C, HW, p, s);
}

/* ---- iota ------------------------------------------------------------------------ */

static __global__ void iota_kernel(int *idx, int n, int base)
{
    GRID_STRIDE(i, (size_t)n)
    idx[i] = base + (int)i;
}

extern "C" cudaError_t k_iota(int *idx, int n, int base, cudaStream_t s)
{
    if (!idx || n < 1)
        return cudaErrorInvalidValue;
    iota_kernel<<<grid_for((size_t)n), BLOCK, 0, s>>>(idx, n, base);
    return cudaGetLastError();
}

/* ---- bias + activation ---------------------------------------------------------- */

static __global__ void bias_act_kernel(float *y, const float *bias, size_t count, int C, int HW,
                                       int act)
{
    GRID_STRIDE(i, count)
    {
        float v = y[i];
        if (bias)
            v += bias[(i / (size_t)HW) % (size_t)C];
        y[i] = ert_act_apply(v, act);
    }
}

extern "C" cudaError_t k_bias_act(float *y, const float *bias, int n, int C, int HW, int act,
                                  cudaStream_t s)
{
    if (!y || n < 1 || C < 1 || HW < 1 || act < ERT_ACT_NONE || act > ERT_ACT_TANH)
        return cudaErrorInvalidValue;
    size_t count = (size_t)n * C * HW;
    bias_act_kernel<<<grid_for(count), BLOCK, 0, s>>>(y, bias, count, C, HW, act);
    return cudaGetLastError();
}

/* ---- activation, add -------------------------------------------------------------- */

static __global__ void act_kernel(const float *x, float *y, size_t count, int act)
{
    GRID_STRIDE(i, count)
    y[i] = ert_act_apply(x[i], act);
}

extern "C" cudaError_t k_act(const float *x, float *y, size_t count, int act, cudaStream_t s)
{
    if (!x || !y || count < 1 || act < ERT_ACT_NONE || act > ERT_ACT_TANH)
        return cudaErrorInvalidValue;
    act_kernel<<<grid_for(count), BLOCK, 0, s>>>(x, y, count, act);
    return cudaGetLastError();
}

static __global__ void add_kernel(const float *a, const float *b, float *y, size_t count, int act)
{
    GRID_STRIDE(i, count)
    y[i] = ert_act_apply(a[i] + b[i], act);
}

extern "C" cudaError_t k_add(const float *a, const float *b, float *y, size_t count, int act,
                             cudaStream_t s)
{
    if (!a || !b || !y || count < 1 || act < ERT_ACT_NONE || act > ERT_ACT_TANH)
        return cudaErrorInvalidValue;
    add_kernel<<<grid_for(count), BLOCK, 0, s>>>(a, b, y, count, act);
    return cudaGetLastError();
}

/* ---- global average pooling: one warp per (sample, channel) row ------------------ */

static __global__ void gap_kernel(const float *x, float *y, int rows, int hw)
{
    const int lane = threadIdx.x % 32;
    const int warps_per_block = blockDim.x / 32;
    for (int r = blockIdx.x * warps_per_block + threadIdx.x / 32; r < rows;
         r += gridDim.x * warps_per_block) {
        const float *p = x + (size_t)r * hw;
        float sum = 0.0f;
        for (int j = lane; j < hw; j += 32)
            sum += p[j];
        for (int d = 16; d > 0; d >>= 1)
            sum += __shfl_down_sync(0xffffffffu, sum, d);
        if (lane == 0)
            y[r] = sum / (float)hw;
    }
}

extern "C" cudaError_t k_global_avgpool(const float *x, float *y, int rows, int hw, cudaStream_t s)
{
    if (!x || !y || rows < 1 || hw < 1 || x == y)
        return cudaErrorInvalidValue;
    const int warps_per_block = BLOCK / 32;
    size_t g = CEIL_DIV((size_t)rows, (size_t)warps_per_block);
    const unsigned grid = g > MAX_GRID ? MAX_GRID : (unsigned)g;
    gap_kernel<<<grid, BLOCK, 0, s>>>(x, y, rows, hw);
    return cudaGetLastError();
}

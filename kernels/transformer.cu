/* transformer.cu - the kernels of the transformer layers that cuBLAS and
 * cuDNN do not cover: embeddings, the patch tokens, layer norm, the masked
 * softmax of attention, the head split and merge around the batched GEMMs,
 * the token bias, the token pooling. The math per value and per row is in
 * tx_math.h (shared with the host test); src/cuda/tx_ops.c strings these
 * together with the GEMMs.
 *
 * A token row is T tokens of D features, each followed by its mask value:
 * T * (D + 1) floats (models/FORMAT.md, "Token activations"). Element loops
 * are grid-stride over size_t; row kernels give each row one warp. */
#include "grid.cuh"
#include "kernels.h"
#include "tx_math.h"

#define WARPS (BLOCK / 32)

/* blocks for one warp per row */
static unsigned grid_rows(size_t rows) { return grid_of(rows, (size_t)WARPS); }

/* each warp takes rows r, r + (warps in the grid), ... */
#define WARP_ROWS(r, rows)                                                     \
    for (size_t r = (size_t)blockIdx.x * WARPS + threadIdx.x / 32; r < (rows); \
         r += (size_t)gridDim.x * WARPS)

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    return v;
}

/* ---- token embedding ------------------------------------------------------------- */

static __global__ void token_embed_kernel(const float *in, float *out, const float *w,
                                          const float *pos, const float *seg, size_t count, int T,
                                          int D, int vocab)
{
    const size_t row = (size_t)D + 1;
    GRID_STRIDE(i, count)
    {
        const size_t tok = i / row;
        const int j = (int)(i % row);
        const size_t b = tok / (size_t)T;
        const int t = (int)(tok % (size_t)T);
        const float *x = in + b * 2 * (size_t)T;
        if (j == D) {
            out[i] = ert_mask_value(x[T + t]);
            continue;
        }
        const int id = ert_token_row(x[t], vocab);
        float v = id < 0 ? NAN : w[(size_t)id * D + j];
        if (seg) /* the CPU's order (src/cpu/tx_ops.c): segment, then position */
            v += seg[j];
        if (pos)
            v += pos[(size_t)t * D + j];
        out[i] = v;
    }
}

extern "C" cudaError_t k_token_embed(const float *in, float *out, const float *w, const float *pos,
                                     const float *seg, int n, int T, int D, int vocab,
                                     cudaStream_t s)
{
    if (!in || !out || !w || n < 1 || T < 1 || D < 1 || vocab < 1)
        return cudaErrorInvalidValue;
    size_t count = (size_t)n * T * ((size_t)D + 1);
    token_embed_kernel<<<grid_for(count), BLOCK, 0, s>>>(in, out, w, pos, seg, count, T, D, vocab);
    return cudaGetLastError();
}

/* ---- patch tokens ------------------------------------------------------------------ */

static __global__ void patch_tokens_kernel(const float *conv, const float *bias, const float *cls,
                                           const float *pos, float *out, size_t count, int P, int T,
                                           int D)
{
    const size_t row = (size_t)D + 1;
    const int first = cls ? 1 : 0;
    GRID_STRIDE(i, count)
    {
        const size_t tok = i / row;
        const int j = (int)(i % row);
        const size_t b = tok / (size_t)T;
        const int t = (int)(tok % (size_t)T);
        if (j == D) {
            out[i] = 1.0f;
            continue;
        }
        float v;
        if (t < first) {
            v = cls[j];
        } else {
            v = conv[(b * D + (size_t)j) * P + (size_t)(t - first)];
            if (bias)
                v += bias[j];
        }
        if (pos)
            v += pos[(size_t)t * D + j];
        out[i] = v;
    }
}

extern "C" cudaError_t k_patch_tokens(const float *conv, const float *bias, const float *cls,
                                      const float *pos, float *out, int n, int P, int D,
                                      cudaStream_t s)
{
    if (!conv || !out || n < 1 || P < 1 || D < 1 || conv == out)
        return cudaErrorInvalidValue;
    const int T = P + (cls ? 1 : 0);
    size_t count = (size_t)n * T * ((size_t)D + 1);
    patch_tokens_kernel<<<grid_for(count), BLOCK, 0, s>>>(conv, bias, cls, pos, out, count, P, T,
                                                          D);
    return cudaGetLastError();
}

/* ---- layer norm: one warp per vector --------------------------------------------- */

static __global__ void layer_norm_kernel(const float *x, const float *add, float *y, size_t rows,
                                         int D, int stride, int tokens, float eps, const float *w,
                                         const float *b)
{
    const int lane = threadIdx.x % 32;
    WARP_ROWS(r, rows)
    {
        const float *xr = x + r * (size_t)stride;
        float *yr = y + r * (size_t)stride;
        float sum = 0.0f;
        for (int j = lane; j < D; j += 32)
            sum += add ? xr[j] + add[j] : xr[j];
        const float mean = warp_sum(sum) / (float)D;
        float sq = 0.0f;
        for (int j = lane; j < D; j += 32) {
            float d = (add ? xr[j] + add[j] : xr[j]) - mean;
            sq += d * d;
        }
        const float rstd = ert_ln_rstd(warp_sum(sq) / (float)D, eps);
        /* every lane has read its values before any is written (y may be x) */
        for (int j = lane; j < D; j += 32)
            yr[j] = ert_ln_apply(add ? xr[j] + add[j] : xr[j], mean, rstd, w[j], b[j]);
        if (tokens && lane == 0)
            yr[D] = xr[D];
    }
}

extern "C" cudaError_t k_layer_norm(const float *x, const float *add, float *y, size_t rows, int D,
                                    int tokens, float eps, const float *w, const float *b,
                                    cudaStream_t s)
{
    if (!x || !y || !w || !b || rows < 1 || D < 1)
        return cudaErrorInvalidValue;
    const int stride = tokens ? D + 1 : D;
    layer_norm_kernel<<<grid_rows(rows), BLOCK, 0, s>>>(x, add, y, rows, D, stride, tokens, eps, w,
                                                        b);
    return cudaGetLastError();
}

/* ---- token bias ------------------------------------------------------------------------ */

static __global__ void token_bias_kernel(float *y, const float *bias, const float *mask_src,
                                         size_t count, int D)
{
    const size_t row = (size_t)D + 1;
    GRID_STRIDE(i, count)
    {
        const int j = (int)(i % row);
        if (j == D) {
            if (mask_src)
                y[i] = mask_src[i];
        } else if (bias) {
            y[i] += bias[j];
        }
    }
}

extern "C" cudaError_t k_token_bias(float *y, const float *bias, const float *mask_src,
                                    size_t tokens, int D, cudaStream_t s)
{
    if (!y || tokens < 1 || D < 1 || (!bias && !mask_src))
        return cudaErrorInvalidValue;
    size_t count = tokens * ((size_t)D + 1);
    token_bias_kernel<<<grid_for(count), BLOCK, 0, s>>>(y, bias, mask_src, count, D);
    return cudaGetLastError();
}

/* ---- heads: split, softmax, merge ---------------------------------------------------- */

static __global__ void qkv_split_kernel(const float *qkv, const float *bias, const float *x,
                                        float *q, float *k, float *v, size_t count, int T, int H,
                                        int d)
{
    const int D = H * d;
    const size_t row = 3 * (size_t)D;
    GRID_STRIDE(i, count)
    {
        const size_t tok = i / row;
        const int c = (int)(i % row);
        const size_t b = tok / (size_t)T;
        const int t = (int)(tok % (size_t)T);
        const int which = c / D, h = (c % D) / d, e = c % d;
        float val = qkv[i];
        if (bias)
            val += bias[c];
        /* a padded key's value row is 0: its weight is 0, and a NaN there
           (an invalid id at a padded token) must not spread as 0 * NaN */
        if (which == 2 && x[tok * ((size_t)D + 1) + D] == 0.0f)
            val = 0.0f;
        float *dst = which == 0 ? q : which == 1 ? k : v;
        dst[ert_head_offset(b, h, t, e, T, H, d)] = val;
    }
}

extern "C" cudaError_t k_qkv_split(const float *qkv, const float *bias, const float *x, float *q,
                                   float *k, float *v, int n, int T, int H, int d, cudaStream_t s)
{
    if (!qkv || !x || !q || !k || !v || n < 1 || T < 1 || H < 1 || d < 1)
        return cudaErrorInvalidValue;
    size_t count = (size_t)n * T * 3 * (size_t)H * d;
    qkv_split_kernel<<<grid_for(count), BLOCK, 0, s>>>(qkv, bias, x, q, k, v, count, T, H, d);
    return cudaGetLastError();
}

static __global__ void attn_softmax_kernel(float *scores, const float *x, size_t rows, int H,
                                           int Tq, int T, int D)
{
    const int lane = threadIdx.x % 32;
    const size_t xrow = (size_t)T * ((size_t)D + 1);
    WARP_ROWS(r, rows)
    {
        float *sr = scores + r * (size_t)T;
        const size_t b = r / ((size_t)H * Tq);
        const float *mask = x + b * xrow + D; /* key j's mask at mask[j * (D + 1)] */
        float mx = -INFINITY;
        for (int j = lane; j < T; j += 32) {
            float v = ert_key_score(sr[j], mask[(size_t)j * (D + 1)]);
            sr[j] = v;
            mx = v > mx ? v : mx;
        }
        mx = warp_max(mx);
        if (mx == -INFINITY) { /* every key padded (or every score NaN) */
            for (int j = lane; j < T; j += 32)
                sr[j] = NAN;
            continue;
        }
        float sum = 0.0f;
        for (int j = lane; j < T; j += 32) {
            float e = expf(sr[j] - mx);
            sr[j] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        for (int j = lane; j < T; j += 32)
            sr[j] = sr[j] / sum;
    }
}

extern "C" cudaError_t k_attn_softmax(float *scores, const float *x, int n, int H, int Tq, int T,
                                      int D, cudaStream_t s)
{
    if (!scores || !x || n < 1 || H < 1 || Tq < 1 || Tq > T || D < 1)
        return cudaErrorInvalidValue;
    size_t rows = (size_t)n * H * Tq;
    attn_softmax_kernel<<<grid_rows(rows), BLOCK, 0, s>>>(scores, x, rows, H, Tq, T, D);
    return cudaGetLastError();
}

static __global__ void heads_merge_kernel(const float *ctx_h, float *ctx, size_t count, int T,
                                          int H, int d)
{
    const int D = H * d;
    GRID_STRIDE(i, count)
    {
        const size_t tok = i / (size_t)D;
        const int c = (int)(i % (size_t)D);
        const size_t b = tok / (size_t)T;
        const int t = (int)(tok % (size_t)T);
        const int h = c / d, e = c % d;
        ctx[i] = ctx_h[ert_head_offset(b, h, t, e, T, H, d)];
    }
}

extern "C" cudaError_t k_heads_merge(const float *ctx_h, float *ctx, int n, int T, int H, int d,
                                     cudaStream_t s)
{
    if (!ctx_h || !ctx || ctx_h == ctx || n < 1 || T < 1 || H < 1 || d < 1)
        return cudaErrorInvalidValue;
    size_t count = (size_t)n * T * (size_t)H * d;
    heads_merge_kernel<<<grid_for(count), BLOCK, 0, s>>>(ctx_h, ctx, count, T, H, d);
    return cudaGetLastError();
}

/* ---- token pooling --------------------------------------------------------------------- */

static __global__ void token_pool_kernel(const float *x, float *y, size_t count, int T, int D,
                                         int mean)
{
    const size_t row = (size_t)T * ((size_t)D + 1);
    GRID_STRIDE(i, count)
    {
        const size_t b = i / (size_t)D;
        const int j = (int)(i % (size_t)D);
        const float *xr = x + b * row;
        if (!mean) {
            y[i] = xr[j];
            continue;
        }
        float sum = 0.0f;
        int k = 0;
        for (int t = 0; t < T; t++) {
            const float *tok = xr + (size_t)t * (D + 1);
            if (tok[D] != 0.0f) {
                sum += tok[j];
                k++;
            }
        }
        y[i] = k ? sum / (float)k : NAN;
    }
}

extern "C" cudaError_t k_token_pool(const float *x, float *y, int n, int T, int D, int mean,
                                    cudaStream_t s)
{
    if (!x || !y || x == y || n < 1 || T < 1 || D < 1)
        return cudaErrorInvalidValue;
    size_t count = (size_t)n * D;
    token_pool_kernel<<<grid_for(count), BLOCK, 0, s>>>(x, y, count, T, D, mean);
    return cudaGetLastError();
}

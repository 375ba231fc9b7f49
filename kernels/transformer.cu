/* transformer.cu - the kernels of the transformer layers that cuBLAS and
 * cuDNN do not cover: embeddings, the patch tokens, layer norm, the masked
 * softmax of attention, the fused attention, the head split and merge
 * around the batched GEMMs, the token bias, the token pooling. The math per value and per row is in
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

/* ---- fused attention ------------------------------------------------------------------ */

/* Scores, masked softmax and the weighted sum of the values in one kernel,
 * with no score stored (the online softmax of tx_math.h,
 * ert_attn_row_online, which the host test replays). A block takes
 * FA_QB = FA_WARPS * FA_ROWS query rows of one (sample, head), each warp
 * FA_ROWS of them; the keys and values come through shared memory in tiles
 * of FA_KT = 32, one key a lane: lane j scores key j of the tile against
 * each of its warp's rows, the warp takes the tile's largest score, and
 * each lane adds its features (lane, lane + 32, ...) of the weighted
 * values. Keys from one past the sample's last attended key on are not
 * read; a padded key inside weighs 0. */
#define FA_WARPS 4
#define FA_ROWS 4
#define FA_KT 32
#define FA_QB (FA_WARPS * FA_ROWS)
#define FA_C (ERT_ATTN_FUSED_MAX_D / 32)

/* floats of dynamic shared memory for heads of d features */
static size_t fa_shared_floats(int d)
{
    return (size_t)FA_KT * (d + 1) + (size_t)FA_KT * d + (size_t)FA_QB * d;
}

static __global__ void __launch_bounds__(FA_WARPS * 32)
    attn_fused_kernel(const float *q, const float *k, const float *v, const float *x, float *o,
                      size_t units, int H, int T, int d, float scale)
{
    extern __shared__ float sm[];
    float *ks = sm;                   /* [FA_KT][d + 1]: the padding spreads the lanes' banks */
    float *vs = ks + FA_KT * (d + 1); /* [FA_KT][d] */
    float *qs = vs + FA_KT * d;       /* [FA_QB][d] */
    __shared__ int key_len;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, D = H * d;
    const int nqb = CEIL_DIV(T, FA_QB);
    const size_t xrow = (size_t)T * ((size_t)D + 1);
    for (size_t u = blockIdx.x; u < units; u += gridDim.x) {
        const size_t bh = u / (size_t)nqb;
        const int q0 = (int)(u % (size_t)nqb) * FA_QB;
        const float *mask = x + bh / (size_t)H * xrow + D; /* key j's at mask[j * (D + 1)] */
        const size_t base = bh * (size_t)T * (size_t)d;    /* this (sample, head)'s [T, d] */
        __syncthreads(); /* the previous unit is done with the shared arrays */
        if (threadIdx.x == 0)
            key_len = 0;
        __syncthreads();
        int len = 0;
        for (int j = threadIdx.x; j < T; j += blockDim.x)
            if (mask[(size_t)j * (D + 1)] != 0.0f)
                len = j + 1;
        atomicMax(&key_len, len);
        for (int i = threadIdx.x; i < FA_QB * d; i += blockDim.x) {
            const int t = q0 + i / d;
            qs[i] = t < T ? q[base + (size_t)t * d + i % d] : 0.0f;
        }
        __syncthreads();
        const int L = key_len;
        float m[FA_ROWS], l[FA_ROWS], acc[FA_ROWS][FA_C];
#pragma unroll
        for (int r = 0; r < FA_ROWS; r++) {
            m[r] = -INFINITY;
            l[r] = 0.0f;
#pragma unroll
            for (int c = 0; c < FA_C; c++)
                acc[r][c] = 0.0f;
        }
        for (int j0 = 0; j0 < L; j0 += FA_KT) {
            const int kn = L - j0 < FA_KT ? L - j0 : FA_KT;
            __syncthreads(); /* the previous tile is read */
            for (int i = threadIdx.x; i < kn * d; i += blockDim.x) {
                const int j = i / d, e = i % d;
                ks[j * (d + 1) + e] = k[base + (size_t)(j0 + j) * d + e];
                vs[j * d + e] = v[base + (size_t)(j0 + j) * d + e];
            }
            __syncthreads();
            /* a lane past the tile scores a padded key: -inf, weight 0 */
            const float km = lane < kn ? mask[(size_t)(j0 + lane) * (D + 1)] : 0.0f;
#pragma unroll
            for (int r = 0; r < FA_ROWS; r++) {
                const float *qr = qs + (warp * FA_ROWS + r) * d;
                float s = 0.0f;
                if (lane < kn)
                    for (int e = 0; e < d; e++)
                        s += qr[e] * ks[lane * (d + 1) + e];
                s = ert_key_score(s * scale, km);
                const float tmax = warp_max(s);
                const float m_new = tmax > m[r] ? tmax : m[r];
                const float c = ert_online_scale(m[r], m_new);
                m[r] = m_new;
                const float p = ert_online_weight(s, m_new);
                l[r] = l[r] * c + warp_sum(p);
#pragma unroll
                for (int cc = 0; cc < FA_C; cc++)
                    acc[r][cc] *= c;
                for (int j = 0; j < kn; j++) {
                    const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                    for (int cc = 0; cc < FA_C; cc++) {
                        const int e = lane + 32 * cc;
                        if (e < d)
                            acc[r][cc] += pj * vs[j * d + e];
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < FA_ROWS; r++) {
            const int t = q0 + warp * FA_ROWS + r;
            if (t >= T)
                continue;
#pragma unroll
            for (int cc = 0; cc < FA_C; cc++) {
                const int e = lane + 32 * cc;
                if (e < d) /* every key padded: 0 / 0, NaN */
                    o[base + (size_t)t * d + e] = acc[r][cc] / l[r];
            }
        }
    }
}

extern "C" cudaError_t k_attn_fused(const float *q, const float *k, const float *v, const float *x,
                                    float *o, int n, int H, int T, int d, cudaStream_t s)
{
    if (!q || !k || !v || !x || !o || n < 1 || H < 1 || T < 1 || d < 1 || d > ERT_ATTN_FUSED_MAX_D)
        return cudaErrorInvalidValue;
    const size_t units = (size_t)n * H * CEIL_DIV((size_t)T, (size_t)FA_QB);
    const size_t smem = fa_shared_floats(d) * sizeof(float);
    attn_fused_kernel<<<grid_of(units, 1), FA_WARPS * 32, smem, s>>>(q, k, v, x, o, units, H, T, d,
                                                                     ert_attn_scale(d));
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

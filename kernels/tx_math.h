/* tx_math.h - the per-value and per-row math of the transformer kernels
 * (kernels/transformer.cu) and of the activations (kernels/elementwise.cu),
 * written once so the host test (tests/unit/test_kernels_host.c) checks it
 * against plain loops. The kernels split a row over a warp; the row
 * functions here are the same formulas in one thread, the order the host
 * test replays.
 *
 * Semantics: models/FORMAT.md, "Transformer encoders"; the CPU reference is
 * src/cpu/tx_ops.h.
 */
#ifndef ERT_TX_MATH_H
#define ERT_TX_MATH_H

#include <math.h>
#include <stddef.h>

#include "act.h"
#include "policy.h" /* ERT_HD */

/* Exact GELU, as torch.nn.functional.gelu (approximate='none'):
 * x * 0.5 * (1 + erf(x / sqrt 2)). */
static inline ERT_HD float ert_gelu(float x)
{
    return x * 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
}

/* act.h's activation of one value. ReLU keeps NaN (as torch.relu). */
static inline ERT_HD float ert_act_apply(float v, int act)
{
    switch (act) {
    case ERT_ACT_RELU: return v < 0.0f ? 0.0f : v;
    case ERT_ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case ERT_ACT_GELU: return ert_gelu(v);
    case ERT_ACT_TANH: return tanhf(v);
    default: return v;
    }
}

/* The embedding row of a token id stored as a float: the id when it is an
 * integer in [0, vocab), else -1 (NaN, infinities, fractions, negatives). */
static inline ERT_HD int ert_token_row(float v, int vocab)
{
    if (!(v >= 0.0f) || !(v < (float)vocab))
        return -1;
    int id = (int)v;
    return (float)id == v ? id : -1;
}

/* A mask value as the token layers store it: 1 attended, 0 padding. */
static inline ERT_HD float ert_mask_value(float v) { return v != 0.0f ? 1.0f : 0.0f; }

/* ---- layer norm ------------------------------------------------------------------- */

/* 1 / sqrt(var + eps), var the biased variance (as PyTorch). */
static inline ERT_HD float ert_ln_rstd(float var, float eps) { return 1.0f / sqrtf(var + eps); }

static inline ERT_HD float ert_ln_apply(float x, float mean, float rstd, float w, float b)
{
    return (x - mean) * rstd * w + b;
}

/* y = layer_norm(x + add) over D values; add (or NULL) is added to each
 * value first (a bias the caller did not add yet). Two passes: the mean,
 * then the mean of squared deviations. y may equal x. */
static inline ERT_HD void ert_ln_row(const float *x, const float *add, float *y, int D, float eps,
                                     const float *w, const float *b)
{
    float sum = 0.0f;
    for (int j = 0; j < D; j++)
        sum += add ? x[j] + add[j] : x[j];
    const float mean = sum / (float)D;
    float sq = 0.0f;
    for (int j = 0; j < D; j++) {
        float d = (add ? x[j] + add[j] : x[j]) - mean;
        sq += d * d;
    }
    const float rstd = ert_ln_rstd(sq / (float)D, eps);
    for (int j = 0; j < D; j++)
        y[j] = ert_ln_apply(add ? x[j] + add[j] : x[j], mean, rstd, w[j], b[j]);
}

/* ---- masked softmax ------------------------------------------------------------------ */

/* An attention score with its key's mask: padded keys get -inf. */
static inline ERT_HD float ert_key_score(float s, float key_mask)
{
    return key_mask != 0.0f ? s : -INFINITY;
}

/* Softmax of one row of T scores in place; key j's mask value is
 * mask[j * mstride]. Every key padded: every output NaN (as PyTorch's
 * key_padding_mask). A NaN score makes the whole row NaN. */
static inline ERT_HD void ert_masked_softmax_row(float *s, const float *mask, int mstride, int T)
{
    float mx = -INFINITY;
    for (int j = 0; j < T; j++) {
        s[j] = ert_key_score(s[j], mask[(long)j * mstride]);
        mx = s[j] > mx ? s[j] : mx;
    }
    if (mx == -INFINITY) {
        for (int j = 0; j < T; j++)
            s[j] = NAN;
        return;
    }
    float sum = 0.0f;
    for (int j = 0; j < T; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    for (int j = 0; j < T; j++)
        s[j] = s[j] / sum;
}

/* ---- attention layouts ------------------------------------------------------------- */

/* The offset of head h's feature e of token t of sample b in a per-head
 * array [n, H, T, d] (q, k, v and the heads' outputs, kernels/transformer.cu):
 * each (sample, head) a contiguous [T, d] matrix, as the batched GEMMs take
 * them. */
static inline ERT_HD size_t ert_head_offset(size_t b, int h, int t, int e, int T, int H, int d)
{
    return ((b * (size_t)H + (size_t)h) * (size_t)T + (size_t)t) * (size_t)d + (size_t)e;
}

/* The scores' scale 1 / sqrt(d), rounded once from double (as the CPU's
 * src/cpu/tx_ops.c). */
static inline ERT_HD float ert_attn_scale(int d) { return (float)(1.0 / sqrt((double)d)); }

/* One cuBLAS SGEMM (batch 1) or strided batched SGEMM, column-major as
 * cuBLAS reads it: C_p = alpha op(A_p) op(B_p) + beta C_p for p < batch,
 * A_p = A + p * stride_a (and B, C alike); op(X) = X^T where trans_x. The
 * transformer ops' calls (src/cuda/tx_ops.c) are built by the functions
 * below, so the host test replays them with a plain loop GEMM. */
typedef struct ert_gemm {
    int trans_a, trans_b;
    int m, n, k;
    int lda, ldb, ldc;
    long long stride_a, stride_b, stride_c;
    int batch;
} ert_gemm;

static inline ERT_HD ert_gemm ert_gemm_make(int trans_a, int trans_b, int m, int n, int k, int lda,
                                            int ldb, int ldc, long long stride_a,
                                            long long stride_b, long long stride_c, int batch)
{
    ert_gemm g;
    g.trans_a = trans_a;
    g.trans_b = trans_b;
    g.m = m;
    g.n = n;
    g.k = k;
    g.lda = lda;
    g.ldb = ldb;
    g.ldc = ldc;
    g.stride_a = stride_a;
    g.stride_b = stride_b;
    g.stride_c = stride_c;
    g.batch = batch;
    return g;
}

/* Row-major Y[rows, out] (row stride ldy) = X[rows, in] (row stride ldx)
 * W[out, in]^T: A = W, B = X, C = Y (column-major Y^T = W X^T). A token
 * input has ldx = D + 1, so the mask column is skipped; ldy = D + 1 leaves
 * the output's mask column as it was. */
static inline ERT_HD ert_gemm ert_gemm_rows(int rows, int in, int out, int ldx, int ldy)
{
    return ert_gemm_make(1, 0, out, rows, in, in, ldx, ldy, 0, 0, 0, 1);
}

/* ---- attention in query blocks ------------------------------------------------------ */

/* The attention (src/cuda/tx_ops.c) runs its queries in blocks of at most
 * ERT_ATTN_QBLOCK rows: per block, the scores of those queries against
 * every key, their softmax, and their share of the output. The scores'
 * scratch is then [n, H, qblock, T] instead of [n, H, T, T]: it grows with
 * T, never with T^2. The number of blocks depends on T alone (a model
 * constant), so the launches are the same for every row count, as the
 * bucketed graphs capture them. */
#define ERT_ATTN_QBLOCK 64

/* Query rows per block for T tokens: min(T, qblock). */
static inline ERT_HD int ert_attn_qrows(int T, int qblock) { return T < qblock ? T : qblock; }

/* Floats per sample of the attention's scratch (tx_ops.c's header):
 * QKV [T, 3D], Q, K and V [H, T, d] each (6 T D in all), and the scores of
 * one query block [H, qrows, T]. */
static inline ERT_HD size_t ert_attn_ws_floats(int T, int D, int H, int qblock)
{
    return 6 * (size_t)T * (size_t)D + (size_t)H * (size_t)ert_attn_qrows(T, qblock) * (size_t)T;
}

/* Per (sample, head), n * H of them: the scores of qn query rows,
 * S[qn, T_k] = Q_blk K^T, from the [n, H, T, d] arrays: A = K, B = Q
 * offset by the block's first query (q0 * d floats), C = S [n, H, qn, T]
 * (column-major S^T = K Q_blk^T). The caller scales by alpha =
 * ert_attn_scale(d). qn = T is the whole attention in one block. */
static inline ERT_HD ert_gemm ert_gemm_scores(int n, int H, int T, int d, int qn)
{
    const long long td = (long long)T * d, qt = (long long)qn * T;
    return ert_gemm_make(1, 0, T, qn, d, d, d, T, td, td, qt, n * H);
}

/* Per (sample, head): the block's outputs O[qn, d] = P[qn, T_k] V[T_k, d]:
 * A = V, B = P [n, H, qn, T], C = O [n, H, T, d] offset by the block's first
 * query (q0 * d floats) (column-major O^T = V^T P^T, both read as stored). */
static inline ERT_HD ert_gemm ert_gemm_context(int n, int H, int T, int d, int qn)
{
    const long long td = (long long)T * d, qt = (long long)qn * T;
    return ert_gemm_make(0, 0, d, qn, T, d, T, d, td, qt, td, n * H);
}

/* ---- fused attention: the online softmax -------------------------------------------- */

/* The fused attention (kernels/transformer.cu, k_attn_fused) reads the
 * keys in tiles and never stores a score: per query row it keeps the
 * largest score so far m, the sum l of exp(s - m) and the weighted sum acc
 * of the values, and rescales l and acc when a tile raises m (the online
 * softmax of flash attention). Keys from the last attended one on are
 * skipped; a padded key inside scores -inf (ert_key_score) and weighs 0.
 * Every key padded: l = 0 and acc / l is NaN, as ert_masked_softmax_row.
 * A NaN score makes its row NaN. */

/* The factor that rescales l and acc when the largest score goes from m_old
 * to m_new (>= m_old): 1 while both are -inf (nothing attended yet). */
static inline ERT_HD float ert_online_scale(float m_old, float m_new)
{
    return m_old == m_new ? 1.0f : expf(m_old - m_new);
}

/* A key's weight exp(s - m) against the largest score m so far (>= s): 0
 * for a padded key, whatever m is. */
static inline ERT_HD float ert_online_weight(float s, float m)
{
    return s == -INFINITY ? 0.0f : expf(s - m);
}

/* The largest key (exclusive) a sample's queries visit: one past its last
 * attended key (mask value nonzero at mask[j * mstride]); 0 when every key
 * is padded. */
static inline ERT_HD int ert_attn_key_len(const float *mask, int mstride, int T)
{
    int len = 0;
    for (int j = 0; j < T; j++)
        if (mask[(long)j * mstride] != 0.0f)
            len = j + 1;
    return len;
}

/* One query row's attention output out[d] from q[d], the keys K[T, d] and
 * values V[T, d] (rows of stride d), key j's mask at mask[j * mstride],
 * reading the keys in tiles of ktile as the kernel does (in one thread:
 * the kernel splits each tile over a warp's lanes). scale = ert_attn_scale. */
static inline ERT_HD void ert_attn_row_online(const float *q, const float *K, const float *V,
                                              const float *mask, int mstride, int T, int d,
                                              float scale, int ktile, float *out)
{
    const int len = ert_attn_key_len(mask, mstride, T);
    float m = -INFINITY, l = 0.0f;
    for (int e = 0; e < d; e++)
        out[e] = 0.0f;
    for (int j0 = 0; j0 < len; j0 += ktile) {
        const int j1 = j0 + ktile < len ? j0 + ktile : len;
        float tmax = -INFINITY;
        for (int j = j0; j < j1; j++) {
            float s = 0.0f;
            for (int e = 0; e < d; e++)
                s += q[e] * K[(long)j * d + e];
            s = ert_key_score(s * scale, mask[(long)j * mstride]);
            tmax = s > tmax ? s : tmax;
        }
        const float m_new = tmax > m ? tmax : m;
        const float c = ert_online_scale(m, m_new);
        l *= c;
        for (int e = 0; e < d; e++)
            out[e] *= c;
        m = m_new;
        for (int j = j0; j < j1; j++) {
            float s = 0.0f;
            for (int e = 0; e < d; e++)
                s += q[e] * K[(long)j * d + e];
            const float p = ert_online_weight(ert_key_score(s * scale, mask[(long)j * mstride]), m);
            l += p;
            for (int e = 0; e < d; e++)
                out[e] += p * V[(long)j * d + e];
        }
    }
    for (int e = 0; e < d; e++)
        out[e] = out[e] / l;
}

/* The fused kernel's limits: each warp holds a query row's head in
 * registers, d / 32 values per lane, so it runs heads of at most
 * ERT_ATTN_FUSED_MAX_D features; wider heads take the query blocks above. */
#define ERT_ATTN_FUSED_MAX_D 128

#endif /* ERT_TX_MATH_H */

/* tx_ops.c - the CPU ops of the transformer layers (tx_ops.h).
 *
 * The matrix products go through the BLAS (cblas_sgemm), one sample at a
 * time: every call has a shape fixed by the layer (T token rows), so a
 * sample's result does not depend on the batch it runs in and the modes
 * agree as they do for the other layers (cpu_ops.h, "Batch invariance").
 * A token row's features sit at stride D + 1 (the mask column follows
 * them); the BLAS reads them with lda = D + 1 and never touches the mask.
 * Sums that set a whole row's scale (layer norm's mean and variance, the
 * softmax's denominator) accumulate in double.
 *
 * Attention and the encoder block compute a sample's tokens up to its last
 * attended one (live_tokens): the padding after it changes no attended
 * token and no pooled vector, so its features are written as zeros. The
 * GEMM shapes then depend on the sample's own length, still not on the
 * batch. MAC counts (FORMAT.md) stay those of all T tokens.
 */
#include "cpu/tx_ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "act.h"
#include "cpu/cpu_ops.h"

/* ---- rows ------------------------------------------------------------------ */

/* y = layer_norm(x) over d values. x and y may be the same. */
static void norm_row(const norm_params *p, const float *x, float *y, int d)
{
    double sum = 0, sq = 0;
    for (int i = 0; i < d; i++)
        sum += x[i];
    double mean = sum / d;
    for (int i = 0; i < d; i++) {
        double t = x[i] - mean;
        sq += t * t;
    }
    float m = (float)mean, inv = (float)(1.0 / sqrt(sq / d + (double)p->eps));
    for (int i = 0; i < d; i++)
        y[i] = (x[i] - m) * inv * p->weight[i] + p->bias[i];
}

static float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }

/* Softmax of s[0..T) over the keys whose mask value (key_mask[j * stride])
 * is nonzero; masked keys get 0. No attended key: every weight NaN. */
static void softmax_row(float *s, int T, const float *key_mask, size_t stride)
{
    float mx = -INFINITY;
    for (int j = 0; j < T; j++)
        if (key_mask[(size_t)j * stride] != 0.0f && s[j] > mx)
            mx = s[j];
    if (mx == -INFINITY) { /* no attended key (or every score -inf) */
        int any = 0;
        for (int j = 0; j < T; j++)
            any |= key_mask[(size_t)j * stride] != 0.0f;
        for (int j = 0; j < T; j++)
            s[j] = any && key_mask[(size_t)j * stride] == 0.0f ? 0.0f : NAN;
        return;
    }
    double sum = 0;
    for (int j = 0; j < T; j++) {
        float v = key_mask[(size_t)j * stride] != 0.0f ? expf(s[j] - mx) : 0.0f;
        s[j] = v;
        sum += v;
    }
    float inv = (float)(1.0 / sum);
    for (int j = 0; j < T; j++)
        s[j] *= inv;
}

/* C[M, N] (ldc) = A[M, K] (lda) W[N, K]^T + bias[N]. */
static void gemm_bias(const float *A, int lda, const float *W, const float *bias, float *C, int ldc,
                      int M, int N, int K)
{
    for (int i = 0; i < M; i++)
        memcpy(C + (size_t)i * ldc, bias, sizeof(float) * (size_t)N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, lda, W, K, 1.0f, C, ldc);
}

/* ---- single ops ------------------------------------------------------------ */

void op_layer_norm(const norm_params *p, shape3 s, const float *in, int n, float *out)
{
    int d = p->dim;
    size_t rows = s.tokens == SHAPE_TOKENS ? (size_t)n * (size_t)s.c : (size_t)n;
    size_t stride = s.tokens == SHAPE_TOKENS ? (size_t)d + 1 : (size_t)d;
    for (size_t r = 0; r < rows; r++) {
        norm_row(p, in + r * stride, out + r * stride, d);
        if (s.tokens == SHAPE_TOKENS)
            out[r * stride + (size_t)d] = in[r * stride + (size_t)d];
    }
}

void op_gelu(const float *in, float *out, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = gelu(in[i]);
}

void op_tanh(const float *in, float *out, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = tanhf(in[i]);
}

void op_token_embed(const embed_params *p, int T, const float *in, int n, float *out)
{
    const size_t D = (size_t)p->dim;
    for (int i = 0; i < n; i++) {
        const float *ids = in + (size_t)i * 2 * (size_t)T, *mask = ids + T;
        for (int t = 0; t < T; t++) {
            float *row = out + ((size_t)i * (size_t)T + (size_t)t) * (D + 1);
            float id = ids[t];
            if (!(id >= 0.0f && id < (float)p->vocab && id == floorf(id))) {
                for (size_t d = 0; d < D; d++)
                    row[d] = NAN;
            } else {
                const float *w = p->weight + (size_t)id * D;
                for (size_t d = 0; d < D; d++) {
                    float v = w[d];
                    if (p->segment)
                        v += p->segment[d];
                    if (p->pos)
                        v += p->pos[(size_t)t * D + d];
                    row[d] = v;
                }
            }
            row[D] = mask[t] != 0.0f ? 1.0f : 0.0f;
        }
    }
}

size_t patch_scratch_floats(const patch_params *p, shape3 in_s)
{
    const conv_params *c = &p->conv;
    size_t P = (size_t)(in_s.h / c->kh) * (size_t)(in_s.w / c->kw);
    return (size_t)c->out_ch * P + conv_col_floats(c, in_s, 1);
}

void op_patch_embed(const patch_params *p, shape3 in_s, shape3 out_s, const float *in, int n,
                    float *out, float *scratch)
{
    const conv_params *c = &p->conv;
    const size_t D = (size_t)c->out_ch, T = (size_t)out_s.c, in_len = shape_size(in_s);
    const size_t P = (size_t)(in_s.h / c->kh) * (size_t)(in_s.w / c->kw), first = T - P;
    float *conv = scratch, *col = scratch + D * P;
    size_t col_cap = conv_col_floats(c, in_s, 1);
    for (int i = 0; i < n; i++) {
        op_conv2d(c, in_s, in + (size_t)i * in_len, 1, conv, 0, col, col_cap ? col_cap : 1, 0);
        float *o = out + (size_t)i * T * (D + 1);
        if (first) { /* the class token */
            for (size_t d = 0; d < D; d++)
                o[d] = p->cls[d] + (p->pos ? p->pos[d] : 0.0f);
            o[D] = 1.0f;
        }
        for (size_t j = 0; j < P; j++) {
            float *row = o + (first + j) * (D + 1);
            const float *pos = p->pos ? p->pos + (first + j) * D : NULL;
            for (size_t d = 0; d < D; d++)
                row[d] = conv[d * P + j] + (pos ? pos[d] : 0.0f);
            row[D] = 1.0f;
        }
    }
}

void op_token_pool(token_pool_mode mode, shape3 in_s, const float *in, int n, float *out)
{
    const size_t T = (size_t)shape_tokens(in_s), D = (size_t)shape_dim(in_s);
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * T * (D + 1);
        float *y = out + (size_t)i * D;
        if (mode == TOKEN_POOL_FIRST) {
            memcpy(y, x, sizeof(float) * D);
            continue;
        }
        size_t count = 0;
        for (size_t d = 0; d < D; d++)
            y[d] = 0.0f;
        for (size_t t = 0; t < T; t++) {
            const float *row = x + t * (D + 1);
            if (row[D] == 0.0f)
                continue;
            count++;
            for (size_t d = 0; d < D; d++)
                y[d] += row[d];
        }
        for (size_t d = 0; d < D; d++)
            y[d] = count ? y[d] / (float)count : NAN;
    }
}

/* ---- attention and the encoder block ----------------------------------------
 *
 * Attention and the encoder block compute a sample's tokens up to its last
 * attended one (live_tokens). A chunk of samples runs at once: their live tokens (live_tokens) are
 * packed into one matrix of R rows (R <= TX_CHUNK_TOKENS, or one sample's
 * T when that is more), so every projection is one matrix product over all
 * of them, in GEMM calls of exactly `tile` rows (the last tile padded), as
 * op_linear runs its tiles (cpu_ops.h, "Batch invariance"). Attention
 * itself (scores, softmax, weighted sum) runs per sample and head.
 *
 * Scratch, in floats (R rows, D features, F hidden, T tokens):
 *   x   [R, D]      the packed input
 *   xn  [R, D]      a normalised copy (pre-LN)
 *   qkv [R, 3D]     the projections
 *   ctx [R, D]      the heads' outputs, concatenated
 *   a   [R, D]      the attention output, later the feed-forward output
 *   h   [R, D]      the block's middle (after the first residual)
 *   f   [R, F]      the feed-forward hidden layer
 *   s   [T, T]      one head's scores, then weights
 *   pad [tile, max(D, F) + 3D]  the last tile's rows, padded
 */

/* The tokens of one sample that are computed: up to its last attended one.
 * The padding after it is attended by no token and read by no pooling, so
 * it is skipped (as PyTorch's nested tensors skip it) and written as zeros.
 * A sample with no attended token is computed whole, to give its NaNs. */
static size_t live_tokens(const float *x, size_t T, size_t D)
{
    for (size_t t = T; t > 0; t--)
        if (x[(t - 1) * (D + 1) + D] != 0.0f)
            return t;
    return T;
}

/* Writes zero features for tokens [L, T) of y and copies every mask value
 * from x. */
static void finish_row(const float *x, float *y, size_t L, size_t T, size_t D)
{
    for (size_t t = L; t < T; t++)
        memset(y + t * (D + 1), 0, sizeof(float) * D);
    for (size_t t = 0; t < T; t++)
        y[t * (D + 1) + D] = x[t * (D + 1) + D];
}

/* The most rows a chunk holds for a layer of T tokens. */
static size_t chunk_rows(size_t T) { return T > TX_CHUNK_TOKENS ? T : TX_CHUNK_TOKENS; }

size_t tx_scratch_floats(const layer *l)
{
    size_t T = (size_t)shape_tokens(l->in), D = (size_t)shape_dim(l->in), R = chunk_rows(T);
    size_t F = l->kind == LAYER_ENCODER_BLOCK ? (size_t)l->p.enc.ff1.out_features : 0;
    size_t pad = (size_t)TX_TILE_ROWS * ((D > F ? D : F) + 3 * D);
    switch (l->kind) {
    case LAYER_SELF_ATTENTION: return R * 6 * D + T * T + pad;
    case LAYER_ENCODER_BLOCK: return R * (8 * D + F) + T * T + pad;
    case LAYER_PATCH_EMBED: return patch_scratch_floats(&l->p.patch, l->in);
    default: return 0;
    }
}

size_t tx_list_scratch(const layer_list *list)
{
    size_t m = 0;
    for (int i = 0; i < list->count; i++) {
        size_t s = tx_scratch_floats(&list->items[i]);
        if (s > m)
            m = s;
    }
    return m;
}

/* C[M, N] (ldc) = A[M, K] (lda) W[N, K]^T + bias: GEMM calls of exactly
 * `tile` rows, the last tile through pad (tile * (K + N) floats); tile 0:
 * one call of M rows. */
static void gemm_tiles(const float *A, int lda, const float *W, const float *bias, float *C,
                       int ldc, int M, int N, int K, int tile, float *pad)
{
    if (tile <= 0) {
        gemm_bias(A, lda, W, bias, C, ldc, M, N, K);
        return;
    }
    int full = M / tile * tile, rest = M - full;
    for (int r = 0; r < full; r += tile)
        gemm_bias(A + (size_t)r * lda, lda, W, bias, C + (size_t)r * ldc, ldc, tile, N, K);
    if (!rest)
        return;
    float *pa = pad, *pc = pad + (size_t)tile * K;
    for (int r = 0; r < tile; r++) {
        if (r < rest)
            memcpy(pa + (size_t)r * K, A + (size_t)(full + r) * lda, sizeof(float) * (size_t)K);
        else
            memset(pa + (size_t)r * K, 0, sizeof(float) * (size_t)K);
    }
    gemm_bias(pa, K, W, bias, pc, N, tile, N, K);
    for (int r = 0; r < rest; r++)
        memcpy(C + (size_t)(full + r) * ldc, pc + (size_t)r * N, sizeof(float) * (size_t)N);
}

/* One chunk: samples [0, m) of `in` (rows of T tokens), L[i] live tokens
 * each, packed at row off[i]; R = the sum. */
typedef struct chunk {
    const float *in; /* the first sample's row */
    float *out;
    size_t T, D;
    int m;
    size_t L[TX_CHUNK_TOKENS], off[TX_CHUNK_TOKENS];
    int R;
} chunk;

/* The chunk of samples from `from` on whose live tokens fit chunk_rows(T)
 * (at least one sample). */
static void next_chunk(chunk *c, const float *in, float *out, int from, int n, size_t T, size_t D)
{
    const size_t row = T * (D + 1), cap = chunk_rows(T);
    c->in = in + (size_t)from * row;
    c->out = out + (size_t)from * row;
    c->T = T;
    c->D = D;
    c->m = 0;
    size_t R = 0;
    for (int i = from; i < n && c->m < TX_CHUNK_TOKENS; i++) {
        size_t L = live_tokens(in + (size_t)i * row, T, D);
        if (c->m > 0 && R + L > cap)
            break;
        c->L[c->m] = L;
        c->off[c->m] = R;
        c->m++;
        R += L;
    }
    c->R = (int)R;
}

static const float *chunk_row(const chunk *c, int i)
{
    return c->in + (size_t)i * c->T * (c->D + 1);
}

/* x[R, D] = the chunk's live tokens. */
static void pack(const chunk *c, float *x)
{
    for (int i = 0; i < c->m; i++)
        for (size_t t = 0; t < c->L[i]; t++)
            memcpy(x + (c->off[i] + t) * c->D, chunk_row(c, i) + t * (c->D + 1),
                   sizeof(float) * c->D);
}

/* The output rows from y[R, D]: the live tokens, zeros after them, the
 * input's mask values. */
static void unpack(const chunk *c, const float *y)
{
    const size_t D = c->D, T = c->T;
    for (int i = 0; i < c->m; i++) {
        float *o = c->out + (size_t)i * T * (D + 1);
        for (size_t t = 0; t < c->L[i]; t++)
            memcpy(o + t * (D + 1), y + (c->off[i] + t) * D, sizeof(float) * D);
        finish_row(chunk_row(c, i), o, c->L[i], T, D);
    }
}

/* a[R, D] = attention(x[R, D]) over the chunk: the projections over every
 * row, the scores per sample and head. */
static void attend(const attention_params *p, const chunk *c, const float *x, float *qkv,
                   float *ctx, float *a, float *s, int tile, float *pad)
{
    const int D = p->dim, H = p->heads, d = D / H, R = c->R;
    const float scale = (float)(1.0 / sqrt((double)d));
    gemm_tiles(x, D, p->in_weight, p->in_bias, qkv, 3 * D, R, 3 * D, D, tile, pad);
    for (int i = 0; i < c->m; i++) {
        const int L = (int)c->L[i];
        const float *mask = chunk_row(c, i) + D;
        const size_t ms = (size_t)D + 1;
        float *q0 = qkv + c->off[i] * 3 * (size_t)D, *c0 = ctx + c->off[i] * (size_t)D;
        /* A padded key's weight is 0; its value row is zeroed too, so that
           a NaN there (an invalid id at a padded token) cannot spread as
           0 * NaN (FORMAT.md, "Token inputs"). */
        for (int t = 0; t < L; t++)
            if (mask[(size_t)t * ms] == 0.0f)
                memset(q0 + (size_t)t * 3 * D + 2 * D, 0, sizeof(float) * (size_t)D);
        for (int h = 0; h < H; h++) {
            const float *q = q0 + h * d, *k = q0 + D + h * d, *v = q0 + 2 * D + h * d;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, d, scale, q, 3 * D, k, 3 * D,
                        0.0f, s, L);
            for (int r = 0; r < L; r++)
                softmax_row(s + (size_t)r * L, L, mask, ms);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, d, L, 1.0f, s, L, v, 3 * D,
                        0.0f, c0 + h * d, D);
        }
    }
    gemm_tiles(ctx, D, p->out_weight, p->out_bias, a, D, R, D, D, tile, pad);
}

void op_self_attention(const attention_params *p, shape3 s, const float *in, int n, float *out,
                       float *scratch, int tile)
{
    const size_t T = (size_t)shape_tokens(s), D = (size_t)p->dim, R = chunk_rows(T);
    float *x = scratch, *qkv = x + R * D, *ctx = qkv + R * 3 * D, *a = ctx + R * D;
    float *sc = a + R * D, *pad = sc + T * T;
    chunk c;
    for (int i = 0; i < n; i += c.m) {
        next_chunk(&c, in, out, i, n, T, D);
        pack(&c, x);
        attend(p, &c, x, qkv, ctx, a, sc, tile, pad);
        unpack(&c, a);
    }
}

/* f = act(x W1^T + b1), y = f W2^T + b2 over R rows. */
static void feed_forward(const encoder_params *p, int R, const float *x, float *f, float *y,
                         int tile, float *pad)
{
    const int D = p->attn.dim, F = p->ff1.out_features;
    gemm_tiles(x, D, p->ff1.weight, p->ff1.bias, f, F, R, F, D, tile, pad);
    size_t len = (size_t)R * (size_t)F;
    if (p->act == ERT_ACT_GELU)
        op_gelu(f, f, len);
    else
        op_relu(f, f, len);
    gemm_tiles(f, F, p->ff2.weight, p->ff2.bias, y, D, R, D, F, tile, pad);
}

static void norm_rows(const norm_params *p, const float *x, float *y, size_t rows, size_t D)
{
    for (size_t r = 0; r < rows; r++)
        norm_row(p, x + r * D, y + r * D, (int)D);
}

void op_encoder_block(const encoder_params *p, shape3 s, const float *in, int n, float *out,
                      float *scratch, int tile)
{
    const size_t T = (size_t)shape_tokens(s), D = (size_t)p->attn.dim, R = chunk_rows(T);
    const size_t F = (size_t)p->ff1.out_features;
    float *x = scratch, *xn = x + R * D, *qkv = xn + R * D, *ctx = qkv + R * 3 * D;
    float *a = ctx + R * D, *h = a + R * D, *f = h + R * D, *sc = f + R * F, *pad = sc + T * T;
    chunk c;
    for (int i = 0; i < n; i += c.m) {
        next_chunk(&c, in, out, i, n, T, D);
        const size_t len = (size_t)c.R * D;
        pack(&c, x);
        if (p->norm_first) {
            /* x + attn(norm1(x)), then + ff(norm2(.)) */
            norm_rows(&p->norm1, x, xn, (size_t)c.R, D);
            attend(&p->attn, &c, xn, qkv, ctx, a, sc, tile, pad);
            for (size_t k = 0; k < len; k++)
                h[k] = x[k] + a[k];
            norm_rows(&p->norm2, h, xn, (size_t)c.R, D);
            feed_forward(p, c.R, xn, f, a, tile, pad);
            for (size_t k = 0; k < len; k++)
                a[k] += h[k];
        } else {
            /* norm1(x + attn(x)), then norm2(. + ff(.)) */
            attend(&p->attn, &c, x, qkv, ctx, a, sc, tile, pad);
            for (size_t k = 0; k < len; k++)
                h[k] = x[k] + a[k];
            norm_rows(&p->norm1, h, h, (size_t)c.R, D);
            feed_forward(p, c.R, h, f, a, tile, pad);
            for (size_t k = 0; k < len; k++)
                a[k] += h[k];
            norm_rows(&p->norm2, a, a, (size_t)c.R, D);
        }
        unpack(&c, a);
    }
}

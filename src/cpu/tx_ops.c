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
 * One sample's scratch, in floats (T tokens, D features, F hidden):
 *   qkv [T, 3D]   the projections
 *   s   [T, T]    one head's scores, then weights
 *   ctx [T, D]    the heads' outputs, concatenated
 *   a   [T, D]    the attention output (after the output projection)
 *   h   [T, D]    the block's middle (after the first residual)
 *   xn  [T, D]    a normalised copy (pre-LN)
 *   f   [T, F]    the feed-forward hidden layer
 */

size_t tx_scratch_floats(const layer *l)
{
    size_t T = (size_t)shape_tokens(l->in), D = (size_t)shape_dim(l->in);
    switch (l->kind) {
    case LAYER_SELF_ATTENTION: return T * 5 * D + T * T;
    case LAYER_ENCODER_BLOCK: return T * (8 * D + (size_t)l->p.enc.ff1.out_features) + T * T;
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

/* a[T, D] = attention(x) for one sample; x at stride ldx, its mask at
 * x[t * ldx + D]. Uses qkv, s and ctx of the scratch layout above. */
static void attend(const attention_params *p, int T, const float *x, int ldx, const float *mask,
                   size_t mask_stride, float *qkv, float *s, float *ctx, float *a)
{
    const int D = p->dim, H = p->heads, d = D / H;
    const float scale = (float)(1.0 / sqrt((double)d));
    gemm_bias(x, ldx, p->in_weight, p->in_bias, qkv, 3 * D, T, 3 * D, D);
    /* A padded key's weight is 0; its value row is zeroed too, so that a
       NaN there (an invalid id at a padded token) cannot spread as 0 * NaN
       (FORMAT.md, "Token inputs"). */
    for (int t = 0; t < T; t++)
        if (mask[(size_t)t * mask_stride] == 0.0f)
            memset(qkv + (size_t)t * 3 * D + 2 * D, 0, sizeof(float) * (size_t)D);
    for (int h = 0; h < H; h++) {
        const float *q = qkv + h * d, *k = qkv + D + h * d, *v = qkv + 2 * D + h * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, scale, q, 3 * D, k, 3 * D,
                    0.0f, s, T);
        for (int i = 0; i < T; i++)
            softmax_row(s + (size_t)i * T, T, mask, mask_stride);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, s, T, v, 3 * D, 0.0f,
                    ctx + h * d, D);
    }
    gemm_bias(ctx, D, p->out_weight, p->out_bias, a, D, T, D, D);
}

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

void op_self_attention(const attention_params *p, shape3 s, const float *in, int n, float *out,
                       float *scratch)
{
    const size_t T = (size_t)shape_tokens(s), D = (size_t)p->dim, row = T * (D + 1);
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * row;
        float *y = out + (size_t)i * row;
        const size_t L = live_tokens(x, T, D);
        float *qkv = scratch, *sc = qkv + L * 3 * D, *ctx = sc + L * L, *a = ctx + L * D;
        attend(p, (int)L, x, (int)D + 1, x + D, D + 1, qkv, sc, ctx, a);
        for (size_t t = 0; t < L; t++)
            memcpy(y + t * (D + 1), a + t * D, sizeof(float) * D);
        finish_row(x, y, L, T, D);
    }
}

/* y[T, F] = act(x W1^T + b1) W2^T + b2: the feed-forward part. */
static void feed_forward(const encoder_params *p, int T, const float *x, int ldx, float *f,
                         float *y)
{
    const int D = p->attn.dim, F = p->ff1.out_features;
    gemm_bias(x, ldx, p->ff1.weight, p->ff1.bias, f, F, T, F, D);
    size_t len = (size_t)T * (size_t)F;
    if (p->act == ERT_ACT_GELU)
        op_gelu(f, f, len);
    else
        op_relu(f, f, len);
    gemm_bias(f, F, p->ff2.weight, p->ff2.bias, y, D, T, D, F);
}

void op_encoder_block(const encoder_params *p, shape3 s, const float *in, int n, float *out,
                      float *scratch)
{
    const size_t T_all = (size_t)shape_tokens(s), D = (size_t)p->attn.dim, row = T_all * (D + 1);
    const size_t ld = D + 1;
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * row;
        float *y = out + (size_t)i * row;
        const float *mask = x + D;
        const size_t T = live_tokens(x, T_all, D);
        float *qkv = scratch, *sc = qkv + T * 3 * D, *ctx = sc + T * T, *a = ctx + T * D;
        float *h = a + T * D, *xn = h + T * D, *f = xn + T * D;
        if (p->norm_first) {
            /* x + attn(norm1(x)), then + ff(norm2(.)) */
            for (size_t t = 0; t < T; t++)
                norm_row(&p->norm1, x + t * ld, xn + t * D, (int)D);
            attend(&p->attn, (int)T, xn, (int)D, mask, ld, qkv, sc, ctx, a);
            for (size_t t = 0; t < T; t++)
                for (size_t d = 0; d < D; d++)
                    h[t * D + d] = x[t * ld + d] + a[t * D + d];
            for (size_t t = 0; t < T; t++)
                norm_row(&p->norm2, h + t * D, xn + t * D, (int)D);
            feed_forward(p, (int)T, xn, (int)D, f, a);
            for (size_t t = 0; t < T; t++)
                for (size_t d = 0; d < D; d++)
                    y[t * ld + d] = h[t * D + d] + a[t * D + d];
        } else {
            /* norm1(x + attn(x)), then norm2(. + ff(.)) */
            attend(&p->attn, (int)T, x, (int)ld, mask, ld, qkv, sc, ctx, a);
            for (size_t t = 0; t < T; t++) {
                for (size_t d = 0; d < D; d++)
                    h[t * D + d] = x[t * ld + d] + a[t * D + d];
                norm_row(&p->norm1, h + t * D, h + t * D, (int)D);
            }
            feed_forward(p, (int)T, h, (int)D, f, a);
            for (size_t t = 0; t < T; t++) {
                for (size_t d = 0; d < D; d++)
                    a[t * D + d] += h[t * D + d];
                norm_row(&p->norm2, a + t * D, y + t * ld, (int)D);
            }
        }
        finish_row(x, y, T, T_all, D);
    }
}

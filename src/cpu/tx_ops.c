/* tx_ops.c - the CPU ops of the transformer layers (tx_ops.h).
 *
 * The matrix products go through the BLAS (cblas_sgemm) in calls whose
 * shapes are fixed by the layer (a tile of rows, a block of columns; for
 * attention, a block of one sample's queries and keys), so a sample's
 * result does not depend on the batch it runs in and the modes agree as
 * they do for the other layers (cpu_ops.h, "Batch invariance"). Layer
 * norm's mean and variance accumulate in double; attention's softmax is
 * online (a running max and sum per query over blocks of keys), in float.
 * GELU, exp and erf are vmath.h's vectorisable ones.
 *
 * Attention and the encoder block compute a sample's tokens up to its last
 * attended one (live_tokens): the padding after it changes no attended
 * token and no pooled vector, so its features are written as zeros. MAC
 * counts (FORMAT.md) stay those of all T tokens.
 */
#include "cpu/tx_ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "act.h"
#include "cpu/cpu_ops.h"
#include "cpu/vmath.h"
#include "../../kernels/tx_math.h"

/* An OpenMP pragma where the build has OpenMP (with oneDNN), else nothing:
 * the loops then run on the calling thread. */
#ifdef _OPENMP
#define ERT_OMP(x) _Pragma(x)
#else
#define ERT_OMP(x)
#endif

/* While the team makes BLAS calls in parallel, OpenBLAS runs at one thread
 * (its own pool would otherwise wake beside the team). Returns the thread
 * count to give back with blas_restore, 0 where nothing was changed. */
static int blas_solo(int par)
{
#ifdef _OPENMP
    const int blas = openblas_get_num_threads();
    if (par && blas != 1) {
        openblas_set_num_threads(1);
        return blas;
    }
#endif
    (void)par;
    return 0;
}

static void blas_restore(int blas)
{
    if (blas)
        openblas_set_num_threads(blas);
}

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

/* A team of at least one thread. */
static int team(int threads) { return threads > 0 ? threads : 1; }

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

/* GELU over [lo, hi): vmath.h's ert_v_gelu, which the compiler
 * vectorises; with GCC on x86-64, also built for AVX-512 and AVX2 (with
 * FMA), the CPU picking one at load time (so on one machine every call
 * rounds alike). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void
gelu_range(const float *in, float *out, size_t lo, size_t hi)
{
    for (size_t i = lo; i < hi; i++)
        out[i] = ert_v_gelu(in[i]);
}

/* GELU over len floats, in blocks spread over the team. */
static void gelu_par(const float *in, float *out, size_t len, int threads)
{
    const size_t blk = 4096, nblk = (len + blk - 1) / blk;
    ERT_OMP("omp parallel for schedule(dynamic, 1) num_threads(threads) if(nblk > 1)")
    for (size_t b = 0; b < nblk; b++) {
        const size_t lo = b * blk, hi = len - lo < blk ? len : lo + blk;
        gelu_range(in, out, lo, hi);
    }
    (void)threads;
}

void op_gelu(const float *in, float *out, size_t len) { gelu_par(in, out, len, 1); }

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
            const int id = ert_token_row(ids[t], p->vocab);
            if (id < 0) {
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
                    float *out, float *scratch, int threads)
{
    const conv_params *c = &p->conv;
    const size_t D = (size_t)c->out_ch, T = (size_t)out_s.c, in_len = shape_size(in_s);
    const size_t P = (size_t)(in_s.h / c->kh) * (size_t)(in_s.w / c->kw), first = T - P;
    const size_t per = patch_scratch_floats(p, in_s), col_cap = conv_col_floats(c, in_s, 1);
    threads = team(threads);
    const int par = threads > 1 && n > 1, blas = blas_solo(par);
    ERT_OMP("omp parallel for schedule(dynamic, 1) num_threads(threads) if(par)")
    for (int i = 0; i < n; i++) {
        float *conv = scratch, *col;
#ifdef _OPENMP
        conv += (size_t)omp_get_thread_num() * per;
#endif
        col = conv + D * P;
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
    blas_restore(blas);
    (void)per;
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
 * attended one (live_tokens). A chunk of samples runs at once: their live
 * tokens are packed into one matrix of R rows (R <= TX_CHUNK_TOKENS, or one
 * sample's T when that is more), so every projection is one matrix product
 * over all of them, in GEMM calls of exactly `tile` rows (the last tile
 * padded) and of fixed column blocks (gemm_cols), as op_linear runs its
 * tiles (cpu_ops.h, "Batch invariance"). Attention itself runs per sample,
 * head and block of queries, fused (attend_block): no score matrix is
 * stored, so its scratch does not grow with T.
 *
 * Threads: every loop here (the GEMM calls, attention's blocks, layer
 * norm, GELU, the residual adds, packing) is split over the same OpenMP
 * team, the pool oneDNN uses too; OpenBLAS runs one thread inside it
 * (gemm_par). Each piece of work is computed alike on any thread, so the
 * results do not depend on the thread count's split of the work.
 *
 * Scratch, in floats (R rows, D features, F hidden):
 *   x   [R, D]      the packed input
 *   xn  [R, D]      a normalised copy (pre-LN)
 *   qkv [R, 3D]     the projections
 *   ctx [R, D]      the heads' outputs, concatenated
 *   a   [R, D]      the attention output, later the feed-forward output
 *   h   [R, D]      the block's middle (after the first residual)
 *   f   [R, F]      the feed-forward hidden layer
 *   pad [tile, max(D, F) + 3D]  the last tile's rows, padded
 *   att [threads, ATT_FLOATS(d)] each thread's attention block
 *   tail [threads, TAIL_FLOATS] each thread's block_tail rows (tile > 0)
 */

/* Attention's blocks: ATT_QB queries against ATT_KB keys at a time. */
#define ATT_QB 64
#define ATT_KB 128
/* scores [QB, KB], acc [QB, d], max and sum [QB] each, and the key
 * block's mask [KB] */
#define ATT_FLOATS(d) ((size_t)ATT_QB * ATT_KB + (size_t)ATT_QB * (size_t)(d) + 2 * ATT_QB + ATT_KB)
/* block_tail's rows of one thread: ctx's copy, the projection, h [tile, D]
 * each and the hidden layer [tile, F] */
#define TAIL_FLOATS(tile, D, F) ((size_t)(tile) * (3 * (size_t)(D) + (size_t)(F)))

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

size_t tx_scratch_floats(const layer *l, int threads)
{
    size_t T = (size_t)shape_tokens(l->in), D = (size_t)shape_dim(l->in), R = chunk_rows(T);
    size_t F = l->kind == LAYER_ENCODER_BLOCK ? (size_t)l->p.enc.ff1.out_features : 0;
    size_t pad = (size_t)TX_TILE_ROWS * ((D > F ? D : F) + 3 * D);
    size_t H = l->kind == LAYER_ENCODER_BLOCK    ? (size_t)l->p.enc.attn.heads
               : l->kind == LAYER_SELF_ATTENTION ? (size_t)l->p.attn.heads
                                                 : 1;
    size_t att = (size_t)team(threads) * ATT_FLOATS(D / (H ? H : 1));
    switch (l->kind) {
    case LAYER_SELF_ATTENTION: return R * 6 * D + pad + att;
    case LAYER_ENCODER_BLOCK:
        return R * (8 * D + F) + pad + att +
               (size_t)team(threads) * TAIL_FLOATS(TX_TILE_ROWS, D, F);
    case LAYER_PATCH_EMBED: return (size_t)team(threads) * patch_scratch_floats(&l->p.patch, l->in);
    default: return 0;
    }
}

size_t tx_list_scratch(const layer_list *list, int threads)
{
    size_t m = 0;
    for (int i = 0; i < list->count; i++) {
        size_t s = tx_scratch_floats(&list->items[i], threads);
        if (s > m)
            m = s;
    }
    return m;
}

/* The columns of one GEMM call: N split into blocks of at most 128 (a
 * multiple of 16, fixed by N alone), so that a chunk of one tile still
 * gives every thread work. */
static int gemm_cols(int N)
{
    int blocks = (N + 127) / 128, nb = (N + blocks - 1) / blocks;
    return (nb + 15) / 16 * 16;
}

/* act over the block c [rows, n] (ldc): GELU (gelu_range) or ReLU
 * (op_relu), each row while it is still in cache. */
static void act_block(int act, float *c, int ldc, int rows, int n)
{
    for (int i = 0; i < rows; i++) {
        float *row = c + (size_t)i * ldc;
        if (act == ERT_ACT_GELU)
            gelu_range(row, row, 0, (size_t)n);
        else
            op_relu(row, row, (size_t)n);
    }
}

/* C[M, N] (ldc) = act(A[M, K] (lda) W[N, K]^T + bias): GEMM calls of
 * exactly `tile` rows (tile 0: one call of M rows), the last tile through
 * pad (tile * (K + N) floats), and of gemm_cols(N) columns, spread over
 * the team; act (ERT_ACT_GELU, ERT_ACT_RELU or ERT_ACT_NONE) is applied to
 * each call's block as soon as it is written. Each call's shape is fixed
 * by the layer and the tile, so a row's rounding does not depend on its
 * chunk or its thread. */
static void gemm_par(const float *A, int lda, const float *W, const float *bias, float *C, int ldc,
                     int M, int N, int K, int act, int tile, float *pad, int threads)
{
    const int rows = tile > 0 ? tile : M, full = tile > 0 ? M / tile * tile : M;
    const int rest = M - full, tiles = full / rows + (rest > 0), nb = gemm_cols(N);
    const int cblocks = (N + nb - 1) / nb, items = tiles * cblocks;
    float *pa = pad, *pc = pad + (size_t)rows * K;
    if (rest)
        for (int r = 0; r < rows; r++) {
            if (r < rest)
                memcpy(pa + (size_t)r * K, A + (size_t)(full + r) * lda, sizeof(float) * (size_t)K);
            else
                memset(pa + (size_t)r * K, 0, sizeof(float) * (size_t)K);
        }
    const int par = threads > 1 && items > 1, blas = blas_solo(par);
    ERT_OMP("omp parallel for schedule(dynamic, 1) num_threads(threads) if(par)")
    for (int it = 0; it < items; it++) {
        const int t = it / cblocks, n0 = it % cblocks * nb, n = N - n0 < nb ? N - n0 : nb;
        const int last = rest && t == tiles - 1;
        const float *a = last ? pa : A + (size_t)t * rows * lda;
        float *c = last ? pc + n0 : C + (size_t)t * rows * ldc + n0;
        const int la = last ? K : lda, lc = last ? N : ldc;
        for (int i = 0; i < rows; i++)
            memcpy(c + (size_t)i * lc, bias + n0, sizeof(float) * (size_t)n);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, K, 1.0f, a, la,
                    W + (size_t)n0 * K, K, 1.0f, c, lc);
        if (act != ERT_ACT_NONE)
            act_block(act, c, lc, last ? rest : rows, n);
    }
    blas_restore(blas);
    (void)threads;
    for (int r = 0; r < rest; r++)
        memcpy(C + (size_t)(full + r) * ldc, pc + (size_t)r * N, sizeof(float) * (size_t)N);
}

/* One chunk: samples [0, m) of `in` (rows of T tokens), L[i] live tokens
 * each, packed at row off[i]; R = the sum. Attention's work items (a head
 * and a block of queries of one sample) number work[m]; sample i's start
 * at work[i]. */
typedef struct chunk {
    const float *in; /* the first sample's row */
    float *out;
    size_t T, D;
    int m;
    size_t L[TX_CHUNK_TOKENS], off[TX_CHUNK_TOKENS];
    int work[TX_CHUNK_TOKENS + 1];
    int R;
} chunk;

/* The chunk of samples from `from` on whose live tokens fit chunk_rows(T)
 * (at least one sample). */
static void next_chunk(chunk *c, const float *in, float *out, int from, int n, size_t T, size_t D,
                       int heads)
{
    const size_t row = T * (D + 1), cap = chunk_rows(T);
    c->in = in + (size_t)from * row;
    c->out = out + (size_t)from * row;
    c->T = T;
    c->D = D;
    c->m = 0;
    c->work[0] = 0;
    size_t R = 0;
    for (int i = from; i < n && c->m < TX_CHUNK_TOKENS; i++) {
        size_t L = live_tokens(in + (size_t)i * row, T, D);
        if (c->m > 0 && R + L > cap)
            break;
        c->L[c->m] = L;
        c->off[c->m] = R;
        c->work[c->m + 1] = c->work[c->m] + heads * (int)((L + ATT_QB - 1) / ATT_QB);
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
static void pack(const chunk *c, float *x, int threads)
{
    ERT_OMP("omp parallel for schedule(dynamic, 4) num_threads(threads)")
    for (int i = 0; i < c->m; i++)
        for (size_t t = 0; t < c->L[i]; t++)
            memcpy(x + (c->off[i] + t) * c->D, chunk_row(c, i) + t * (c->D + 1),
                   sizeof(float) * c->D);
    (void)threads;
}

/* The output rows from y[R, D]: the live tokens, zeros after them, the
 * input's mask values. */
static void unpack(const chunk *c, const float *y, int threads)
{
    const size_t D = c->D, T = c->T;
    ERT_OMP("omp parallel for schedule(dynamic, 4) num_threads(threads)")
    for (int i = 0; i < c->m; i++) {
        float *o = c->out + (size_t)i * T * (D + 1);
        for (size_t t = 0; t < c->L[i]; t++)
            memcpy(o + t * (D + 1), y + (c->off[i] + t) * D, sizeof(float) * D);
        finish_row(chunk_row(c, i), o, c->L[i], T, D);
    }
    (void)threads;
}

/* One head's queries [q0, q0 + nq) of one sample against its L keys,
 * fused: per block of ATT_KB keys, the scores (one small GEMM), an online
 * softmax (the running max and sum rescale what came before) and the
 * weighted sum of the values (a second GEMM into the accumulator), in ws
 * (ATT_FLOATS(d) floats). Padded keys get weight 0, and their value rows
 * were zeroed (attend), so a NaN there (an invalid id at a padded token)
 * cannot spread as 0 * NaN (FORMAT.md, "Token inputs"); a block with no
 * attended key is skipped. No attended key at all: NaN (as PyTorch's
 * key_padding_mask); a NaN score makes its query's row NaN.
 *   qkv  the sample's rows [L, 3D] (q, k, v); mask: key t's mask value at
 *        mask[t * ms]
 *   out  the sample's ctx rows [L, D] (head h's d columns written) */
static void attend_block(const float *qkv, int D, int d, int h, int L, const float *mask, size_t ms,
                         int q0, int nq, float scale, float *out, float *ws)
{
    float *sc = ws, *acc = sc + ATT_QB * ATT_KB, *mx = acc + (size_t)ATT_QB * d;
    float *sum = mx + ATT_QB, *km = sum + ATT_QB;
    const int ld = 3 * D;
    const float *q = qkv + (size_t)q0 * ld + (size_t)h * d;
    for (int i = 0; i < nq; i++) {
        mx[i] = -INFINITY;
        sum[i] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)nq * (size_t)d);
    for (int k0 = 0; k0 < L; k0 += ATT_KB) {
        const int nk = L - k0 < ATT_KB ? L - k0 : ATT_KB;
        int any = 0;
        for (int j = 0; j < nk; j++) {
            km[j] = mask[(size_t)(k0 + j) * ms] != 0.0f ? 0.0f : -INFINITY;
            any |= km[j] == 0.0f;
        }
        if (!any)
            continue;
        const float *k = qkv + (size_t)k0 * ld + D + (size_t)h * d;
        const float *v = qkv + (size_t)k0 * ld + 2 * (size_t)D + (size_t)h * d;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, d, scale, q, ld, k, ld, 0.0f,
                    sc, ATT_KB);
        for (int i = 0; i < nq; i++) {
            float *s = sc + (size_t)i * ATT_KB, m = mx[i];
            for (int j = 0; j < nk; j++) {
                s[j] = km[j] == 0.0f ? s[j] : -INFINITY; /* padded keys, NaN or not */
                m = s[j] > m ? s[j] : m;
            }
            if (m == -INFINITY) { /* every score -inf so far: nothing to weigh */
                for (int j = 0; j < nk; j++)
                    s[j] = 0.0f;
                continue;
            }
            const float corr = ert_v_exp(mx[i] - m);
            float part = 0.0f;
            for (int j = 0; j < nk; j++)
                s[j] = ert_v_exp(s[j] - m); /* -inf: 0; NaN stays */
            for (int j = 0; j < nk; j++)
                part += s[j];
            sum[i] = sum[i] * corr + part;
            mx[i] = m;
            if (corr != 1.0f) {
                float *a = acc + (size_t)i * d;
                for (int e = 0; e < d; e++)
                    a[e] *= corr;
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, d, nk, 1.0f, sc, ATT_KB, v, ld,
                    1.0f, acc, d);
    }
    for (int i = 0; i < nq; i++) {
        float *o = out + (size_t)(q0 + i) * D + (size_t)h * d;
        const float *a = acc + (size_t)i * d;
        const float inv = 1.0f / sum[i]; /* sum 0 (no attended key): NaN below */
        for (int e = 0; e < d; e++)
            o[e] = sum[i] > 0.0f ? a[e] * inv : NAN;
    }
}

/* a[R, D] = attention(x[R, D]) over the chunk: the projections over every
 * row, attention per sample, head and block of queries (a NULL: the heads'
 * outputs left in ctx, not projected). */
static void attend(const attention_params *p, const chunk *c, const float *x, float *qkv,
                   float *ctx, float *a, float *att, int tile, float *pad, int threads)
{
    const int D = p->dim, H = p->heads, d = D / H, R = c->R;
    const float scale = (float)(1.0 / sqrt((double)d));
    gemm_par(x, D, p->in_weight, p->in_bias, qkv, 3 * D, R, 3 * D, D, ERT_ACT_NONE, tile, pad,
             threads);
    /* a padded key's value row is zeroed (attend_block) */
    ERT_OMP("omp parallel for schedule(dynamic, 4) num_threads(threads)")
    for (int i = 0; i < c->m; i++) {
        const float *mask = chunk_row(c, i) + D;
        float *v0 = qkv + c->off[i] * 3 * (size_t)D + 2 * (size_t)D;
        for (size_t t = 0; t < c->L[i]; t++)
            if (mask[t * ((size_t)D + 1)] == 0.0f)
                memset(v0 + t * 3 * (size_t)D, 0, sizeof(float) * (size_t)D);
    }
    const int items = c->work[c->m];
    const int par = threads > 1 && items > 1, blas = blas_solo(par);
    ERT_OMP("omp parallel for schedule(dynamic, 1) num_threads(threads) if(par)")
    for (int it = 0; it < items; it++) {
        int lo = 0, hi = c->m - 1; /* the sample: work[i] <= it < work[i + 1] */
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (c->work[mid] <= it)
                lo = mid;
            else
                hi = mid - 1;
        }
        const int i = lo, k = it - c->work[i], L = (int)c->L[i], h = k % H, q0 = k / H * ATT_QB;
        float *ws = att;
#ifdef _OPENMP
        ws += (size_t)omp_get_thread_num() * ATT_FLOATS(d);
#endif
        attend_block(qkv + c->off[i] * 3 * (size_t)D, D, d, h, L, chunk_row(c, i) + D,
                     (size_t)D + 1, q0, L - q0 < ATT_QB ? L - q0 : ATT_QB, scale,
                     ctx + c->off[i] * (size_t)D, ws);
    }
    blas_restore(blas);
    if (a) /* else the caller's block_tail projects ctx */
        gemm_par(ctx, D, p->out_weight, p->out_bias, a, D, R, D, D, ERT_ACT_NONE, tile, pad,
                 threads);
}

void op_self_attention(const attention_params *p, shape3 s, const float *in, int n, float *out,
                       float *scratch, int tile, int threads)
{
    const size_t T = (size_t)shape_tokens(s), D = (size_t)p->dim, R = chunk_rows(T);
    float *x = scratch, *qkv = x + R * D, *ctx = qkv + R * 3 * D, *a = ctx + R * D;
    float *pad = a + R * D, *att = pad + (size_t)TX_TILE_ROWS * 4 * D;
    threads = team(threads);
    chunk c;
    for (int i = 0; i < n; i += c.m) {
        next_chunk(&c, in, out, i, n, T, D, p->heads);
        pack(&c, x, threads);
        attend(p, &c, x, qkv, ctx, a, att, tile, pad, threads);
        unpack(&c, a, threads);
    }
}

/* f = act(x W1^T + b1), y = f W2^T + b2 over R rows (act fused into the
 * first product's calls). */
static void feed_forward(const encoder_params *p, int R, const float *x, float *f, float *y,
                         int tile, float *pad, int threads)
{
    const int D = p->attn.dim, F = p->ff1.out_features;
    const int act = p->act == ERT_ACT_GELU ? ERT_ACT_GELU : ERT_ACT_RELU;
    gemm_par(x, D, p->ff1.weight, p->ff1.bias, f, F, R, F, D, act, tile, pad, threads);
    gemm_par(f, F, p->ff2.weight, p->ff2.bias, y, D, R, D, F, ERT_ACT_NONE, tile, pad, threads);
}

/* y = norm(x + add) row by row (add NULL: norm(x)); y may be x or add. */
static void norm_rows(const norm_params *p, const float *x, const float *add, float *y, size_t rows,
                      size_t D, int threads)
{
    ERT_OMP("omp parallel for schedule(dynamic, 64) num_threads(threads)")
    for (size_t r = 0; r < rows; r++) {
        float *yr = y + r * D;
        if (add) {
            const float *xr = x + r * D, *ar = add + r * D;
            for (size_t k = 0; k < D; k++)
                yr[k] = xr[k] + ar[k];
            norm_row(p, yr, yr, (int)D);
        } else {
            norm_row(p, x + r * D, yr, (int)D);
        }
    }
    (void)threads;
}

/* y = x + a over len floats (y may be x or a). */
static void add_par(const float *x, const float *a, float *y, size_t len, int threads)
{
    ERT_OMP("omp parallel for schedule(dynamic, 8192) num_threads(threads) if(len > 16384)")
    for (size_t k = 0; k < len; k++)
        y[k] = x[k] + a[k];
    (void)threads;
}

/* One tile's rows through a GEMM of exactly `tile` rows: c[tile, N] =
 * act(a[tile, K] W[N, K]^T + bias), on the calling thread. */
static void gemm_tile(const float *a, const float *W, const float *bias, float *c, int tile, int N,
                      int K, int act)
{
    for (int i = 0; i < tile; i++)
        memcpy(c + (size_t)i * N, bias, sizeof(float) * (size_t)N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tile, N, K, 1.0f, a, K, W, K, 1.0f, c, N);
    if (act != ERT_ACT_NONE)
        act_block(act, c, N, tile, N);
}

/* The encoder block after attention, row-local, one tile of `tile` rows
 * per work item (the last one padded with zero rows), each item's rows
 * through every step on one thread while they stay in its cache: the
 * output projection of ctx, the residual, the norms and the feed-forward
 * (post-LN: a = norm2(h + ff(h)), h = norm1(x + proj(ctx)); pre-LN:
 * a = h + ff(norm2(h)), h = x + proj(ctx)). One parallel loop instead of
 * one per step: fewer joins of the team. Every GEMM call has the shape
 * (tile, N, K) whatever the chunk, so a row's result does not depend on
 * its neighbours. ws: TAIL_FLOATS per thread. */

static void block_tail(const encoder_params *p, int R, const float *x, const float *ctx, float *a,
                       int tile, float *ws, int threads)
{
    const int D = p->attn.dim, F = p->ff1.out_features, items = (R + tile - 1) / tile;
    const int act = p->act == ERT_ACT_GELU ? ERT_ACT_GELU : ERT_ACT_RELU;
    const size_t rowb = sizeof(float) * (size_t)D;
    const int par = threads > 1 && items > 1, blas = blas_solo(par);
    ERT_OMP("omp parallel for schedule(dynamic, 1) num_threads(threads) if(par)")
    for (int t = 0; t < items; t++) {
        float *u = ws, *o, *h, *f;
#ifdef _OPENMP
        u += (size_t)omp_get_thread_num() * TAIL_FLOATS(tile, D, F);
#endif
        o = u + (size_t)tile * D;
        h = o + (size_t)tile * D;
        f = h + (size_t)tile * D;
        const size_t r0 = (size_t)t * (size_t)tile;
        const int nr = R - (int)r0 < tile ? R - (int)r0 : tile;
        const float *ci = ctx + r0 * D, *xr = x + r0 * D;
        float *ar = a + r0 * D;
        if (nr < tile) {
            memcpy(u, ci, rowb * (size_t)nr);
            memset(u + (size_t)nr * D, 0, rowb * (size_t)(tile - nr));
            ci = u;
        }
        gemm_tile(ci, p->attn.out_weight, p->attn.out_bias, o, tile, D, D, ERT_ACT_NONE);
        for (int i = 0; i < tile; i++) {
            const float *xi = xr + (size_t)i * D, *oi = o + (size_t)i * D;
            float *hi = h + (size_t)i * D;
            if (i >= nr) { /* padding rows: zeros in, results dropped */
                memset(hi, 0, rowb);
                if (p->norm_first)
                    memset(o + (size_t)i * D, 0, rowb);
                continue;
            }
            for (int k = 0; k < D; k++)
                hi[k] = xi[k] + oi[k];
            if (p->norm_first) /* o = norm2(h), the feed-forward's input */
                norm_row(&p->norm2, hi, o + (size_t)i * D, D);
            else
                norm_row(&p->norm1, hi, hi, D);
        }
        const float *fin = p->norm_first ? o : h;
        float *y = p->norm_first ? u : o; /* u (ctx's copy) is free now */
        gemm_tile(fin, p->ff1.weight, p->ff1.bias, f, tile, F, D, act);
        gemm_tile(f, p->ff2.weight, p->ff2.bias, y, tile, D, F, ERT_ACT_NONE);
        for (int i = 0; i < nr; i++) {
            const float *yi = y + (size_t)i * D, *hi = h + (size_t)i * D;
            float *ai = ar + (size_t)i * D;
            for (int k = 0; k < D; k++)
                ai[k] = yi[k] + hi[k];
            if (!p->norm_first)
                norm_row(&p->norm2, ai, ai, D);
        }
    }
    blas_restore(blas);
    (void)threads;
}

void op_encoder_block(const encoder_params *p, shape3 s, const float *in, int n, float *out,
                      float *scratch, int tile, int threads)
{
    const size_t T = (size_t)shape_tokens(s), D = (size_t)p->attn.dim, R = chunk_rows(T);
    const size_t F = (size_t)p->ff1.out_features;
    float *x = scratch, *xn = x + R * D, *qkv = xn + R * D, *ctx = qkv + R * 3 * D;
    float *a = ctx + R * D, *h = a + R * D, *f = h + R * D, *pad = f + R * F;
    float *att = pad + (size_t)TX_TILE_ROWS * ((D > F ? D : F) + 3 * D);
    threads = team(threads);
    float *tail = att + (size_t)threads * ATT_FLOATS(D / (size_t)p->attn.heads);
    chunk c;
    for (int i = 0; i < n; i += c.m) {
        next_chunk(&c, in, out, i, n, T, D, p->attn.heads);
        const size_t len = (size_t)c.R * D;
        pack(&c, x, threads);
        if (tile > 0) { /* attention, then block_tail: the rest row-local */
            const float *ax = x;
            if (p->norm_first) {
                norm_rows(&p->norm1, x, NULL, xn, (size_t)c.R, D, threads);
                ax = xn;
            }
            attend(&p->attn, &c, ax, qkv, ctx, NULL, att, tile, pad, threads);
            block_tail(p, c.R, x, ctx, a, tile, tail, threads);
        } else if (p->norm_first) {
            /* x + attn(norm1(x)), then + ff(norm2(.)) */
            norm_rows(&p->norm1, x, NULL, xn, (size_t)c.R, D, threads);
            attend(&p->attn, &c, xn, qkv, ctx, a, att, tile, pad, threads);
            add_par(x, a, h, len, threads);
            norm_rows(&p->norm2, h, NULL, xn, (size_t)c.R, D, threads);
            feed_forward(p, c.R, xn, f, a, tile, pad, threads);
            add_par(a, h, a, len, threads);
        } else {
            /* norm1(x + attn(x)), then norm2(. + ff(.)) */
            attend(&p->attn, &c, x, qkv, ctx, a, att, tile, pad, threads);
            norm_rows(&p->norm1, x, a, h, (size_t)c.R, D, threads);
            feed_forward(p, c.R, h, f, a, tile, pad, threads);
            norm_rows(&p->norm2, a, h, a, (size_t)c.R, D, threads);
        }
        unpack(&c, a, threads);
    }
}

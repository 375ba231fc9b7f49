/* tx_ops.c - the transformer ops on the device: token embedding, layer
 * norm, token pooling, self-attention and the encoder block (the patch
 * embedding is a convolution and lives with the others in cuda_ops.c).
 * Semantics: models/FORMAT.md, "Transformer encoders"; the CPU reference is
 * src/cpu/tx_ops.h.
 *
 * A token row is T tokens of D features each followed by its mask value
 * (T * (D + 1) floats), so n samples are n * T token rows of stride D + 1:
 * every projection is one SGEMM over the n * T rows with that row stride,
 * which skips the mask column (and an output written with ldc = D + 1
 * leaves it alone). Attention per (sample, head) is two strided batched
 * SGEMMs over n * H per block of query rows: scores = q k^T, then
 * probabilities times v; or, with the engine's fused attention on, one
 * kernel (k_attn_fused) that keeps no score and reads no key after a
 * sample's last attended one.
 *
 * The attention and encoder ops use the slot's workspace s->tx_ws (made at
 * engine creation for max_batch samples; tx_ws_floats gives its size per
 * sample), laid out for the current n rows as
 *
 *   encoder only: Z   [n, T, D + 1]  the normalised tokens, or the
 *                                    residual sum before a post-LN norm
 *   attention:    QKV [n * T, 3D]    the input projection; later the heads'
 *                                    outputs [n, H, T, d]
 *                 Q, K, V [n, H, T, d] each (V zero at padded keys); Q later
 *                                    holds the heads concatenated [n * T, D]
 *                 S   [n, H, Qb, T]  one query block's scores, then
 *                                    probabilities (Qb = min(T,
 *                                    ERT_ATTN_QBLOCK) = 64, tx_math.h)
 *   FFN:          F1  [n * T, F]     over QKV..S, which are dead by then
 *
 * That is T (D + 1) + max(6 T D + H Qb T, T F) floats per sample, linear in
 * T: the queries run in blocks of Qb rows (attn_core), so the scores never
 * take H T^2. For BERT-base at T = 128 (D 768, H 12, F 3072) about 3.1 MB
 * (3.5 MB with whole-row scores), 0.8 GB per slot at max_batch 256 (the
 * activation buffers are 0.1 GB each there); at T = 512 the scores of
 * whole rows would take 12.6 MB per sample, the blocks take 1.6 MB.
 *
 * Every call is a kernel, a cuBLAS call on the slot's handle (whose
 * workspace is fixed) or a device-to-device copy: all capturable into the
 * bucketed graphs (graph.c), with no allocation at run time.
 */

#include "cuda_check.h"
#include "cuda_internal.h"
#include "kernels.h"
#include "tx_math.h"

/* ---- workspace ---------------------------------------------------------------------- */

static size_t attn_ws(int T, int D, int H) { return ert_attn_ws_floats(T, D, H, ERT_ATTN_QBLOCK); }

size_t tx_ws_floats(const prog_op *op)
{
    const int T = shape_tokens(op->in_shape);
    if (op->kind == OP_ATTENTION) {
        const attention_params *p = &op->l->p.attn;
        return attn_ws(T, p->dim, p->heads);
    }
    if (op->kind == OP_ENCODER) {
        const encoder_params *p = &op->l->p.enc;
        size_t a = attn_ws(T, p->attn.dim, p->attn.heads);
        size_t f = (size_t)T * p->ff1.out_features;
        return (size_t)T * ((size_t)p->attn.dim + 1) + (a > f ? a : f);
    }
    return 0;
}

ert_status tx_check_sizes(ert_engine *e, const prog_op *op)
{
    /* cuBLAS takes int counts: n * T token rows and n * H heads must fit at
       max_batch */
    const long long B = e->cfg.max_batch, T = shape_tokens(op->in_shape);
    long long H;
    if (op->kind == OP_ATTENTION)
        H = op->l->p.attn.heads;
    else if (op->kind == OP_ENCODER)
        H = op->l->p.enc.attn.heads;
    else
        return ERT_OK;
    if (B * T > 0x7fffffffLL || B * H > 0x7fffffffLL)
        return engine_fail(e, ERT_UNSUPPORTED,
                           "cuda: layer %s: %lld samples of %lld tokens (%lld heads) exceed "
                           "cuBLAS's int counts; use a smaller max_batch",
                           op->l->name, B, T, H);
    return ERT_OK;
}

/* ---- GEMM helpers --------------------------------------------------------------------- */

/* One GEMM of tx_math.h's (its parameters built there, so the host test
 * replays the same calls): C = A B (+ beta C), as one SGEMM or one strided
 * batched SGEMM. */
static ert_status gemm(ert_engine *e, cuda_slot *s, ert_gemm g, float alpha, const float *a,
                       const float *b, float *c, float beta)
{
    ert_status st = ERT_OK;
    const cublasOperation_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (g.batch == 1)
        CUBLAS_TRY(e, cublasSgemm(s->blas, ta, tb, g.m, g.n, g.k, &alpha, a, g.lda, b, g.ldb, &beta,
                                  c, g.ldc));
    else
        CUBLAS_TRY(e, cublasSgemmStridedBatched(s->blas, ta, tb, g.m, g.n, g.k, &alpha, a, g.lda,
                                                g.stride_a, b, g.ldb, g.stride_b, &beta, c, g.ldc,
                                                g.stride_c, g.batch));
    return ERT_OK;
fail:
    return st;
}

/* Y[rows, out] (row stride ldy) = X[rows, in] (row stride ldx) W[out, in]^T
 * + beta Y: the linear layer of cuda_ops.c's run_linear with strides. */
static ert_status gemm_rows(ert_engine *e, cuda_slot *s, int rows, int in, int out, const float *w,
                            const float *x, int ldx, float *y, int ldy, float beta)
{
    return gemm(e, s, ert_gemm_rows(rows, in, out, ldx, ldy), 1.0f, w, x, y, beta);
}

/* Multi-head attention of the tokens x [n, T, D + 1] (q = k = v = x; the
 * mask column gives the key mask) up to the heads' outputs concatenated,
 * [n * T, D], returned in *ctx (inside ws, the attention's part of the
 * workspace, header comment). */
static ert_status attn_core(ert_engine *e, cuda_ctx *c, cuda_slot *s, const attention_params *p,
                            const float *x, int n, int T, float *ws, const float **ctx)
{
    ert_status st = ERT_OK;
    const ert_model *m = e->model;
    const int D = p->dim, H = p->heads, d = D / H, M = n * T;
    const size_t MD = (size_t)M * D;
    float *qkv = ws;
    float *q = qkv + 3 * MD, *k = q + MD, *v = k + MD;
    float *sc = v + MD;

    if ((st = gemm_rows(e, s, M, D, 3 * D, dev_weight(c, m, p->in_weight), x, D + 1, qkv, 3 * D,
                        0.0f)) != ERT_OK)
        return st;
    KERNEL_TRY(e,
               k_qkv_split(qkv, dev_weight(c, m, p->in_bias), x, q, k, v, n, T, H, d, s->stream));
    /* the heads' outputs over QKV (dead since the split): fused, or per
       query block of qn rows from q0, per (sample, head): S[qn, T_k] =
       Q_blk K^T / sqrt(d), its softmax, then O_blk[qn, d] = P V */
    float *ctx_h = qkv;
    const int qb = ert_attn_qrows(T, ERT_ATTN_QBLOCK);
    const int fused = c->fused_attention && d <= ERT_ATTN_FUSED_MAX_D;
    if (fused)
        KERNEL_TRY(e, k_attn_fused(q, k, v, x, ctx_h, n, H, T, d, s->stream));
    for (int q0 = 0; !fused && q0 < T; q0 += qb) {
        const int qn = T - q0 < qb ? T - q0 : qb;
        const size_t off = (size_t)q0 * d;
        if ((st = gemm(e, s, ert_gemm_scores(n, H, T, d, qn), ert_attn_scale(d), k, q + off, sc,
                       0.0f)) != ERT_OK)
            return st;
        KERNEL_TRY(e, k_attn_softmax(sc, x, n, H, qn, T, D, s->stream));
        if ((st = gemm(e, s, ert_gemm_context(n, H, T, d, qn), 1.0f, v, sc, ctx_h + off, 0.0f)) !=
            ERT_OK)
            return st;
    }
    /* concatenated over Q, dead since the scores */
    KERNEL_TRY(e, k_heads_merge(ctx_h, q, n, T, H, d, s->stream));
    *ctx = q;
    return ERT_OK;
fail:
    return st;
}

/* ---- the ops ----------------------------------------------------------------------------- */

static ert_status run_attention(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, int n)
{
    ert_status st = ERT_OK;
    const attention_params *p = &op->l->p.attn;
    const int T = shape_tokens(op->in_shape), D = p->dim;
    const float *x = s->buf[op->in];
    float *y = s->buf[op->out];
    const float *ctx = NULL;
    if ((st = attn_core(e, c, s, p, x, n, T, s->tx_ws, &ctx)) != ERT_OK)
        return st;
    if ((st = gemm_rows(e, s, n * T, D, D, dev_weight(c, e->model, p->out_weight), ctx, D, y, D + 1,
                        0.0f)) != ERT_OK)
        return st;
    KERNEL_TRY(
        e, k_token_bias(y, dev_weight(c, e->model, p->out_bias), x, (size_t)n * T, D, s->stream));
    return ERT_OK;
fail:
    return st;
}

/* One nn.TransformerEncoderLayer (FORMAT.md):
 *   pre-LN:  y = x + attn(norm1(x));  y = y + ff2(act(ff1(norm2(y))))
 *   post-LN: y = norm1(x + attn(x));  y = norm2(y + ff2(act(ff1(y))))
 * Each residual add is the projection's SGEMM with beta = 1 onto a copy of
 * its input (ldc = D + 1); its bias is added after (pre-LN: the token bias
 * kernel; post-LN: inside the layer norm, which adds it first). */
static ert_status run_encoder(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, int n)
{
    ert_status st = ERT_OK;
    const ert_model *m = e->model;
    const encoder_params *p = &op->l->p.enc;
    const int T = shape_tokens(op->in_shape), D = p->attn.dim, F = p->ff1.out_features;
    const int M = n * T;
    const size_t tok = (size_t)M, rowbytes = (size_t)M * (D + 1) * sizeof(float);
    const float *x = s->buf[op->in];
    float *y = s->buf[op->out];
    float *z = s->tx_ws;                         /* [n, T, D + 1] */
    float *ws = z + (size_t)M * ((size_t)D + 1); /* attention, then the FFN hidden */
    const float *ctx = NULL;
    const norm_params *n1 = &p->norm1, *n2 = &p->norm2;
    const float *w_out = dev_weight(c, m, p->attn.out_weight);
    const float *b_out = dev_weight(c, m, p->attn.out_bias);
    const float *w1 = dev_weight(c, m, p->ff1.weight), *b1 = dev_weight(c, m, p->ff1.bias);
    const float *w2 = dev_weight(c, m, p->ff2.weight), *b2 = dev_weight(c, m, p->ff2.bias);

    if (p->norm_first) {
        KERNEL_TRY(e, k_layer_norm(x, NULL, z, tok, D, 1, n1->eps, dev_weight(c, m, n1->weight),
                                   dev_weight(c, m, n1->bias), s->stream));
        if ((st = attn_core(e, c, s, &p->attn, z, n, T, ws, &ctx)) != ERT_OK)
            return st;
        CUDA_TRY(e, cudaMemcpyAsync(y, x, rowbytes, cudaMemcpyDeviceToDevice, s->stream));
        if ((st = gemm_rows(e, s, M, D, D, w_out, ctx, D, y, D + 1, 1.0f)) != ERT_OK)
            return st;
        if (b_out) /* present after loading (model.h); the kernel refuses no work */
            KERNEL_TRY(e, k_token_bias(y, b_out, NULL, tok, D, s->stream));
        KERNEL_TRY(e, k_layer_norm(y, NULL, z, tok, D, 1, n2->eps, dev_weight(c, m, n2->weight),
                                   dev_weight(c, m, n2->bias), s->stream));
        if ((st = gemm_rows(e, s, M, D, F, w1, z, D + 1, ws, F, 0.0f)) != ERT_OK)
            return st;
        KERNEL_TRY(e, k_bias_act(ws, b1, M, F, 1, p->act, s->stream));
        if ((st = gemm_rows(e, s, M, F, D, w2, ws, F, y, D + 1, 1.0f)) != ERT_OK)
            return st;
        if (b2)
            KERNEL_TRY(e, k_token_bias(y, b2, NULL, tok, D, s->stream));
        return ERT_OK;
    }
    if ((st = attn_core(e, c, s, &p->attn, x, n, T, ws, &ctx)) != ERT_OK)
        return st;
    CUDA_TRY(e, cudaMemcpyAsync(z, x, rowbytes, cudaMemcpyDeviceToDevice, s->stream));
    if ((st = gemm_rows(e, s, M, D, D, w_out, ctx, D, z, D + 1, 1.0f)) != ERT_OK)
        return st;
    KERNEL_TRY(e, k_layer_norm(z, b_out, y, tok, D, 1, n1->eps, dev_weight(c, m, n1->weight),
                               dev_weight(c, m, n1->bias), s->stream));
    if ((st = gemm_rows(e, s, M, D, F, w1, y, D + 1, ws, F, 0.0f)) != ERT_OK)
        return st;
    KERNEL_TRY(e, k_bias_act(ws, b1, M, F, 1, p->act, s->stream));
    CUDA_TRY(e, cudaMemcpyAsync(z, y, rowbytes, cudaMemcpyDeviceToDevice, s->stream));
    if ((st = gemm_rows(e, s, M, F, D, w2, ws, F, z, D + 1, 1.0f)) != ERT_OK)
        return st;
    KERNEL_TRY(e, k_layer_norm(z, b2, y, tok, D, 1, n2->eps, dev_weight(c, m, n2->weight),
                               dev_weight(c, m, n2->bias), s->stream));
    return ERT_OK;
fail:
    return st;
}

ert_status tx_op_run(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, int n)
{
    ert_status st = ERT_OK;
    const ert_model *m = e->model;
    const float *x = s->buf[op->in];
    float *y = s->buf[op->out];
    switch (op->kind) {
    case OP_TOKEN_EMBED: {
        const embed_params *p = &op->l->p.embed;
        KERNEL_TRY(e, k_token_embed(x, y, dev_weight(c, m, p->weight), dev_weight(c, m, p->pos),
                                    dev_weight(c, m, p->segment), n, shape_tokens(op->out_shape),
                                    p->dim, p->vocab, s->stream));
        return ERT_OK;
    }
    case OP_LAYER_NORM: {
        const norm_params *p = &op->l->p.norm;
        const int tokens = op->in_shape.tokens == SHAPE_TOKENS;
        size_t rows = (size_t)n * (tokens ? (size_t)shape_tokens(op->in_shape) : 1);
        KERNEL_TRY(e,
                   k_layer_norm(x, NULL, y, rows, p->dim, tokens, p->eps,
                                dev_weight(c, m, p->weight), dev_weight(c, m, p->bias), s->stream));
        return ERT_OK;
    }
    case OP_TOKEN_POOL:
        KERNEL_TRY(e, k_token_pool(x, y, n, shape_tokens(op->in_shape), shape_dim(op->in_shape),
                                   op->l->p.token_pool == TOKEN_POOL_MEAN, s->stream));
        return ERT_OK;
    case OP_ATTENTION: return run_attention(e, c, s, op, n);
    case OP_ENCODER: return run_encoder(e, c, s, op, n);
    case OP_CONV:
    case OP_MAXPOOL:
    case OP_AVGPOOL:
    case OP_GAP:
    case OP_LINEAR:
    case OP_ACT:
    case OP_ADD:
    case OP_PATCH_EMBED: break; /* cuda_ops.c's */
    }
    return engine_fail(e, ERT_INTERNAL, "cuda: op %s: kind %d is not a transformer op",
                       op->l ? op->l->name : "?", (int)op->kind);
fail:
    return st;
}

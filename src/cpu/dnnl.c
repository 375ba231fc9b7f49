/* dnnl.c - the CPU backend's oneDNN path: see dnnl.h. */
#include "cpu/dnnl.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "util.h"

int ert_cpu_test_dnnl_fail = 0;

/* Rows per block (rounded to whole tiles): a block's activations through a
 * stage stay in the L2 cache for the bundled models' sizes. */
#define DX_BLOCK 64

typedef struct dx_op {
    const prog_op *op;
    dnnl_primitive_t prim;
    dnnl_memory_t src, src1, dst, wei, bias, scratch;
    float *wei_buf;          /* the weights in the primitive's layout (owned) */
    int tile;                /* rows per execution of this primitive */
    size_t src_row, src1_row, dst_row; /* floats per row */
    int src1_arg;            /* the argument id of src1, 0: none */
    const char *impl;        /* oneDNN's implementation name */
    /* a conv whose src layout differs from its input buffer's: a reorder
       of each tile into pre_buf first */
    dnnl_primitive_t pre;
    dnnl_memory_t pre_src, pre_dst;
    float *pre_buf;
    size_t pre_src_row;
    /* a linear layer as a matmul with a run-time row count: memory objects
       for every count 1..block (made at creation), no padded tile */
    int matmul;
    dnnl_memory_t *mm_src, *mm_dst;
    /* a residual join the conv could not fuse: dst += src1 (+ activation)
       after it, in place */
    dnnl_primitive_t post;
    dnnl_memory_t post_dst;
} dx_op;

struct dnnl_exec {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    int tile_conv, tile_linear; /* rows per execution: linear ops, all others */
    int tile_max, rows_alloc;   /* the larger; buffers hold rows_alloc rows */
    const program *prog;
    dx_op *ops;              /* [prog->nops] */
    float *buf[PROG_MAX_BUF];   /* the program's buffers, for one block of rows */
    int block;                  /* rows per block: a multiple of both tiles */
    size_t in_row[ERT_MAX_EXITS], out_row[ERT_MAX_EXITS];
    float *io[2];               /* rows_alloc rows of the largest stage input/output */
    float *logits, *conf;       /* rows_alloc rows of K floats, of one float */
    void *scratch;
    size_t scratch_size;
    int invariant;
    int K;                   /* classes: floats per logits row */
    int single;              /* max_batch 1: every call runs one row */
    char desc[400];
};

/* ---- helpers ------------------------------------------------------------------------ */

#define DX_TRY(call, what)                                                                    \
    do {                                                                                      \
        dnnl_status_t r_ = (call);                                                            \
        if (r_ != dnnl_success) {                                                             \
            snprintf(why, cap, "%s: %s failed (oneDNN status %d)", what, #call, (int)r_);     \
            return r_ == dnnl_out_of_memory ? ERT_OUT_OF_MEMORY : ERT_UNSUPPORTED;            \
        }                                                                                     \
    } while (0)

static size_t md_floats(const dnnl_memory_desc_t *md)
{
    return dnnl_memory_desc_get_size(md) / sizeof(float);
}

/* Floats per row (sample) of an activation layout. */
static size_t md_row(const dnnl_memory_desc_t *md)
{
    return md_floats(md) / (size_t)md->dims[0];
}

/* The same layout for a tile of T rows. Valid because every activation
 * layout here keeps the batch outermost (checked in make_op): only the row
 * count changes. */
static dnnl_memory_desc_t retile(dnnl_memory_desc_t md, int T)
{
    md.dims[0] = T;
    md.padded_dims[0] = T;
    return md;
}

/* Whether the batch is the outermost dimension: a row is contiguous. */
static int batch_outermost(const dnnl_memory_desc_t *md)
{
    if (md->format_kind != dnnl_blocked)
        return 0;
    const dnnl_dim_t row = (dnnl_dim_t)md_row(md);
    for (int k = 1; k < md->ndims; k++)
        if (md->format_desc.blocking.strides[k] > md->format_desc.blocking.strides[0])
            return 0;
    return md->format_desc.blocking.strides[0] == row && md->format_desc.blocking.inner_nblks >= 0;
}

static dnnl_memory_desc_t md_tag(int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag)
{
    dnnl_memory_desc_t md;
    dnnl_memory_desc_init_by_tag(&md, ndims, dims, dnnl_f32, tag);
    return md;
}

/* The plain layout of a tensor of this many dimensions. */
static dnnl_format_tag_t plain_tag(int ndims)
{
    return ndims == 1 ? dnnl_a : ndims == 2 ? dnnl_ab : ndims == 3 ? dnnl_abc
           : ndims == 4 ? dnnl_abcd : dnnl_abcde;
}

static void *alloc_floats(size_t n)
{
    size_t bytes = (n ? n : 1) * sizeof(float);
    bytes = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void dx_set_threads(int threads)
{
    if (threads > 0)
        omp_set_num_threads(threads);
}

/* ---- creation ------------------------------------------------------------------------- */

typedef struct dx_build {
    dnnl_exec *x;
    const ert_model *m;
    int T;                                /* the current op's tile */
    dnnl_memory_desc_t cur[PROG_MAX_BUF]; /* each buffer's layout at this point */
    size_t need[PROG_MAX_BUF];            /* floats per row each buffer must hold */
    unsigned char *plain_out;             /* [nops]: the op's output must be plain */
    dnnl_primitive_attr_t attr;           /* user scratchpad, + post-ops per op */
    int fused_joins, separate_joins, reorders, nhwc, plain_forced, matmuls;
} dx_build;

/* Primitive attributes: a user scratchpad, the op's fused residual join
 * (binary add of src1) and its activation. */
static ert_status make_attr(dx_build *b, const prog_op *op, const dnnl_memory_desc_t *src1,
                            int act, dnnl_primitive_attr_t *out, char *why, size_t cap)
{
    DX_TRY(dnnl_primitive_attr_create(out), "attributes");
    DX_TRY(dnnl_primitive_attr_set_scratchpad_mode(*out, dnnl_scratchpad_mode_user),
           "attributes");
    dnnl_post_ops_t po;
    DX_TRY(dnnl_post_ops_create(&po), "post-ops");
    dnnl_status_t r = dnnl_success;
    if (src1)
        r = dnnl_post_ops_append_binary(po, dnnl_binary_add, src1);
    (void)op;
    if (r == dnnl_success && act == ERT_ACT_RELU)
        r = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f);
    if (r == dnnl_success && act == ERT_ACT_SIGMOID)
        r = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_logistic, 0.0f, 0.0f);
    if (r == dnnl_success)
        r = dnnl_primitive_attr_set_post_ops(*out, po);
    dnnl_post_ops_destroy(po);
    (void)b;
    DX_TRY(r, "post-ops");
    return ERT_OK;
}

/* Finishes an op from its primitive descriptor: the primitive, its memory
 * objects, its scratchpad need and the layouts it leaves. */
static ert_status finish_op(dx_build *b, dx_op *d, dnnl_primitive_desc_t pd, char *why,
                            size_t cap)
{
    const prog_op *op = d->op;
    const int T = b->T;
    const dnnl_memory_desc_t *dst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    const dnnl_memory_desc_t *src = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    d->impl = impl;
    DX_TRY(dnnl_primitive_create(&d->prim, pd), op->l ? op->l->name : "op");
    DX_TRY(dnnl_memory_create(&d->src, src, b->x->eng, DNNL_MEMORY_NONE), "memory");
    DX_TRY(dnnl_memory_create(&d->dst, dst, b->x->eng, DNNL_MEMORY_NONE), "memory");
    if (sp && dnnl_memory_desc_get_size(sp) > 0) {
        DX_TRY(dnnl_memory_create(&d->scratch, sp, b->x->eng, DNNL_MEMORY_NONE), "memory");
        if (dnnl_memory_desc_get_size(sp) > b->x->scratch_size)
            b->x->scratch_size = dnnl_memory_desc_get_size(sp);
    }
    d->tile = T;
    d->src_row = md_row(src);
    d->dst_row = md_row(dst);
    if (!batch_outermost(dst) || !batch_outermost(src)) {
        snprintf(why, cap, "%s: a layout whose rows are not contiguous", op->l ? op->l->name : "op");
        return ERT_UNSUPPORTED;
    }
    if (d->dst_row > b->need[op->out])
        b->need[op->out] = d->dst_row;
    b->cur[op->out] = *dst;
    return ERT_OK;
}

/* Reorders plain weights into the primitive's layout, once. */
static ert_status set_weights(dx_build *b, dx_op *d, dnnl_primitive_desc_t pd, int ndims,
                              const dnnl_dims_t dims, const float *w, const float *bias,
                              char *why, size_t cap)
{
    dnnl_exec *x = b->x;
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_memory_desc_t plain = md_tag(ndims, dims, plain_tag(ndims));
    d->wei_buf = alloc_floats(md_floats(wmd));
    if (!d->wei_buf) {
        snprintf(why, cap, "out of memory for weights");
        return ERT_OUT_OF_MEMORY;
    }
    DX_TRY(dnnl_memory_create(&d->wei, wmd, x->eng, d->wei_buf), "memory");
    dnnl_memory_t from;
    DX_TRY(dnnl_memory_create(&from, &plain, x->eng, (void *)w), "memory");
    dnnl_primitive_desc_t rpd;
    dnnl_status_t r = dnnl_reorder_primitive_desc_create(&rpd, &plain, x->eng, wmd, x->eng, NULL);
    if (r == dnnl_success) {
        dnnl_primitive_t reorder;
        r = dnnl_primitive_create(&reorder, rpd);
        if (r == dnnl_success) {
            dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, d->wei}};
            r = dnnl_primitive_execute(reorder, x->stream, 2, args);
            if (r == dnnl_success)
                r = dnnl_stream_wait(x->stream);
            dnnl_primitive_destroy(reorder);
        }
        dnnl_primitive_desc_destroy(rpd);
    }
    dnnl_memory_destroy(from);
    DX_TRY(r, "weights reorder");
    if (bias) {
        const dnnl_memory_desc_t *bmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1);
        DX_TRY(dnnl_memory_create(&d->bias, bmd, x->eng, (void *)bias), "memory");
    }
    return ERT_OK;
}

/* Creates pd from the op descriptor; with dst format "any", retries with
 * channels-last when oneDNN's choice pads the rows (a blocked layout over a
 * channel count that is not a multiple of the block), so rows stay the
 * plan's size. */
typedef dnnl_status_t (*desc_fn)(void *desc, const dnnl_memory_desc_t *dst, const void *ctx);

static ert_status make_pd(dx_build *b, const prog_op *op, size_t plain_row, desc_fn init,
                          void *desc, const void *ctx, const dnnl_memory_desc_t *dst_any,
                          int force_plain, dnnl_primitive_attr_t attr,
                          dnnl_primitive_desc_t *pd, char *why, size_t cap)
{
    const char *name = op->l ? op->l->name : "op";
    dnnl_memory_desc_t dst = *dst_any;
    if (force_plain) {
        dnnl_memory_desc_init_by_tag(&dst, dst.ndims, dst.dims, dnnl_f32, plain_tag(dst.ndims));
        b->plain_forced++;
    }
    DX_TRY(init(desc, &dst, ctx), name);
    DX_TRY(dnnl_primitive_desc_create(pd, desc, attr, b->x->eng, NULL), name);
    const dnnl_memory_desc_t *got = dnnl_primitive_desc_query_md(*pd, dnnl_query_dst_md, 0);
    if (md_floats(got) / (size_t)b->T > plain_row && dst.ndims == 4) {
        dnnl_primitive_desc_destroy(*pd);
        *pd = NULL;
        dnnl_memory_desc_init_by_tag(&dst, 4, dst.dims, dnnl_f32, dnnl_nhwc);
        b->nhwc++;
        DX_TRY(init(desc, &dst, ctx), name);
        DX_TRY(dnnl_primitive_desc_create(pd, desc, attr, b->x->eng, NULL), name);
    }
    return ERT_OK;
}

/* The op descriptors' initialisers (dst varies with make_pd's retry). */
typedef struct conv_ctx {
    dnnl_memory_desc_t src, wei, bias;
    int has_bias;
    dnnl_dims_t strides, dil, pad;
} conv_ctx;

static dnnl_status_t conv_init(void *desc, const dnnl_memory_desc_t *dst, const void *p)
{
    const conv_ctx *c = p;
    return dnnl_dilated_convolution_forward_desc_init(
        desc, dnnl_forward_inference, dnnl_convolution_direct, &c->src, &c->wei,
        c->has_bias ? &c->bias : NULL, dst, c->strides, c->dil, c->pad, c->pad);
}

typedef struct pool_ctx {
    dnnl_memory_desc_t src;
    dnnl_alg_kind_t alg;
    dnnl_dims_t strides, kernel, dil, pad;
} pool_ctx;

static dnnl_status_t pool_init(void *desc, const dnnl_memory_desc_t *dst, const void *p)
{
    const pool_ctx *c = p;
    return dnnl_pooling_v2_forward_desc_init(desc, dnnl_forward_inference, c->alg, &c->src, dst,
                                             c->strides, c->kernel, c->dil, c->pad, c->pad);
}

typedef struct ip_ctx {
    dnnl_memory_desc_t src, wei, bias;
    int has_bias;
} ip_ctx;

static dnnl_status_t ip_init(void *desc, const dnnl_memory_desc_t *dst, const void *p)
{
    const ip_ctx *c = p;
    return dnnl_inner_product_forward_desc_init(desc, dnnl_forward_inference, &c->src, &c->wei,
                                                c->has_bias ? &c->bias : NULL, dst);
}

static int best_is_ref(const_dnnl_primitive_desc_t pd)
{
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    return impl && strncmp(impl, "ref", 3) == 0;
}

/* A conv that reads its source in another layout than its buffer's: a
 * reorder of each tile into the op's own pre_buf first. */
static ert_status add_pre_reorder(dx_build *b, dx_op *d, const dnnl_memory_desc_t *from,
                                  const dnnl_memory_desc_t *to, char *why, size_t cap)
{
    dnnl_exec *x = b->x;
    dnnl_primitive_desc_t rpd;
    DX_TRY(dnnl_reorder_primitive_desc_create(&rpd, from, x->eng, to, x->eng, NULL), "reorder");
    dnnl_status_t r = dnnl_primitive_create(&d->pre, rpd);
    dnnl_primitive_desc_destroy(rpd);
    DX_TRY(r, "reorder");
    d->pre_buf = alloc_floats(md_floats(to));
    if (!d->pre_buf) {
        snprintf(why, cap, "out of memory");
        return ERT_OUT_OF_MEMORY;
    }
    DX_TRY(dnnl_memory_create(&d->pre_src, from, x->eng, DNNL_MEMORY_NONE), "memory");
    DX_TRY(dnnl_memory_create(&d->pre_dst, to, x->eng, d->pre_buf), "memory");
    DX_TRY(dnnl_memory_set_data_handle(d->src, d->pre_buf), "memory");
    d->pre_src_row = md_row(from);
    b->reorders++;
    return ERT_OK;
}

/* A residual join the conv could not fuse: dst = act(dst + src1) after it,
 * in place, as one binary primitive. */
static ert_status add_post_join(dx_build *b, dx_op *d, const_dnnl_primitive_desc_t conv,
                                const dnnl_memory_desc_t *src1, int act, char *why, size_t cap)
{
    dnnl_exec *x = b->x;
    const dnnl_memory_desc_t *dst = dnnl_primitive_desc_query_md(conv, dnnl_query_dst_md, 0);
    dnnl_binary_desc_t desc;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    ert_status st = make_attr(b, d->op, NULL, act, &attr, why, cap);
    if (st != ERT_OK)
        return st;
    dnnl_status_t r = dnnl_binary_desc_init(&desc, dnnl_binary_add, dst, src1, dst);
    if (r == dnnl_success)
        r = dnnl_primitive_desc_create(&pd, &desc, attr, x->eng, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (r == dnnl_success) {
        r = dnnl_primitive_create(&d->post, pd);
        const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        if (sp && dnnl_memory_desc_get_size(sp) > 0) {
            snprintf(why, cap, "%s: the join wants a scratchpad", d->op->l->name);
            r = dnnl_unimplemented;
        }
        dnnl_primitive_desc_destroy(pd);
    }
    DX_TRY(r, "residual join");
    DX_TRY(dnnl_memory_create(&d->post_dst, dst, x->eng, DNNL_MEMORY_NONE), "memory");
    d->src1_arg = DNNL_ARG_SRC_1;
    b->separate_joins++;
    return ERT_OK;
}

/* Whether a row of this layout is its values in plain (C, H, W) order, as
 * the model's linear weights read them: plain layouts, and blocked or
 * channels-last ones over 1x1 spatial dims with no channel padding. */
static int row_is_plain(const dnnl_memory_desc_t *md)
{
    if (md->ndims == 2)
        return md->format_kind == dnnl_blocked && md->format_desc.blocking.inner_nblks == 0 &&
               md->format_desc.blocking.strides[1] == 1;
    if (md->ndims != 4)
        return 0;
    dnnl_memory_desc_t plain;
    dnnl_memory_desc_init_by_tag(&plain, 4, md->dims, dnnl_f32, dnnl_nchw);
    if (dnnl_memory_desc_equal(md, &plain))
        return 1;
    return md->dims[2] == 1 && md->dims[3] == 1 && md_row(md) == (size_t)md->dims[1];
}

/* A linear layer over plain rows as a matmul with a run-time row count
 * (DNNL_RUNTIME_DIM_VAL): one primitive serves every count, so the rows of
 * a block run exactly, with no padded tile; a row's result does not depend
 * on the count (oneDNN's gemm kernels, probed in dx_create) except for a
 * single row, which takes another kernel and so always runs as two
 * (dnnl.h). Returns ERT_UNSUPPORTED, having made nothing, where the layer
 * does not qualify. */
static ert_status make_matmul(dx_build *b, dx_op *d, const dnnl_memory_desc_t *src, char *why,
                              size_t cap)
{
    dnnl_exec *x = b->x;
    const prog_op *op = d->op;
    const linear_params *lp = &op->l->p.linear;
    /* max_batch 1: the inner product's one-row tile is exact already, and
       faster than a matmul of one row (measured on fmnist-mlp3) */
    if (x->single || !row_is_plain(src) || md_row(src) != (size_t)lp->in_features)
        return ERT_UNSUPPORTED;
    const dnnl_dim_t K = lp->in_features, N = lp->out_features;
    dnnl_dims_t sd = {DNNL_RUNTIME_DIM_VAL, K}, wd = {K, N}, bd = {1, N},
                dd = {DNNL_RUNTIME_DIM_VAL, N};
    dnnl_memory_desc_t smd = md_tag(2, sd, dnnl_ab), wmd = md_tag(2, wd, dnnl_format_tag_any),
                       bmd = md_tag(2, bd, dnnl_ab), dmd = md_tag(2, dd, dnnl_ab);
    dnnl_matmul_desc_t desc;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    ert_status st = make_attr(b, op, NULL, op->act, &attr, why, cap);
    if (st != ERT_OK)
        return st;
    dnnl_status_t r = dnnl_matmul_desc_init(&desc, &smd, &wmd, lp->bias ? &bmd : NULL, &dmd);
    if (r == dnnl_success)
        r = dnnl_primitive_desc_create(&pd, &desc, attr, x->eng, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (r != dnnl_success)
        return ERT_UNSUPPORTED;
    if (best_is_ref(pd)) {
        dnnl_primitive_desc_destroy(pd);
        return ERT_UNSUPPORTED;
    }
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    d->impl = impl;
    d->matmul = 1;
    d->tile = 1;
    d->src_row = (size_t)K;
    d->dst_row = (size_t)N;
    r = dnnl_primitive_create(&d->prim, pd);
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (r == dnnl_success && sp && dnnl_memory_desc_get_size(sp) > 0) {
        r = dnnl_memory_create(&d->scratch, sp, x->eng, DNNL_MEMORY_NONE);
        if (dnnl_memory_desc_get_size(sp) > x->scratch_size)
            x->scratch_size = dnnl_memory_desc_get_size(sp);
    }
    /* the weights: the model's [N, K] is a [K, N] tensor in "ba" order */
    const dnnl_memory_desc_t *wgot = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_memory_desc_t wplain = md_tag(2, wd, dnnl_ba);
    if (r == dnnl_success && !(d->wei_buf = alloc_floats(md_floats(wgot))))
        r = dnnl_out_of_memory;
    if (r == dnnl_success)
        r = dnnl_memory_create(&d->wei, wgot, x->eng, d->wei_buf);
    if (r == dnnl_success && lp->bias)
        r = dnnl_memory_create(&d->bias, &bmd, x->eng, (void *)lp->bias);
    dnnl_primitive_desc_t rpd = NULL;
    if (r == dnnl_success)
        r = dnnl_reorder_primitive_desc_create(&rpd, &wplain, x->eng, wgot, x->eng, NULL);
    if (r == dnnl_success) {
        dnnl_primitive_t reorder = NULL;
        dnnl_memory_t from = NULL;
        r = dnnl_primitive_create(&reorder, rpd);
        if (r == dnnl_success)
            r = dnnl_memory_create(&from, &wplain, x->eng, (void *)lp->weight);
        if (r == dnnl_success) {
            dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, d->wei}};
            r = dnnl_primitive_execute(reorder, x->stream, 2, a);
            if (r == dnnl_success)
                r = dnnl_stream_wait(x->stream);
        }
        if (from)
            dnnl_memory_destroy(from);
        if (reorder)
            dnnl_primitive_destroy(reorder);
        dnnl_primitive_desc_destroy(rpd);
    }
    dnnl_primitive_desc_destroy(pd);
    /* memory objects for every row count a block can have */
    d->mm_src = calloc((size_t)x->block + 1, sizeof *d->mm_src);
    d->mm_dst = calloc((size_t)x->block + 1, sizeof *d->mm_dst);
    if (!d->mm_src || !d->mm_dst)
        r = dnnl_out_of_memory;
    for (int m = 1; m <= x->block && r == dnnl_success; m++) {
        dnnl_dims_t ms = {m, K}, md = {m, N};
        dnnl_memory_desc_t a = md_tag(2, ms, dnnl_ab), c = md_tag(2, md, dnnl_ab);
        r = dnnl_memory_create(&d->mm_src[m], &a, x->eng, DNNL_MEMORY_NONE);
        if (r == dnnl_success)
            r = dnnl_memory_create(&d->mm_dst[m], &c, x->eng, DNNL_MEMORY_NONE);
    }
    DX_TRY(r, op->l->name);
    dnnl_dims_t od = {x->tile_max, N};
    b->cur[op->out] = md_tag(2, od, dnnl_ab);
    if ((size_t)N > b->need[op->out])
        b->need[op->out] = (size_t)N;
    b->matmuls++;
    return ERT_OK;
}

static ert_status make_op(dx_build *b, int i, char *why, size_t cap)
{
    dnnl_exec *x = b->x;
    const program *prog = x->prog;
    const prog_op *op = &prog->ops[i];
    dx_op *d = &x->ops[i];
    const int T = b->T = op->kind == OP_LINEAR ? x->tile_linear : x->tile_conv;
    const char *name = op->l ? op->l->name : "op";
    const dnnl_memory_desc_t src = retile(b->cur[op->in], T);
    const size_t plain_row = shape_size(op->out_shape);
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    ert_status st = ERT_OK;
    d->op = op;

    switch (op->kind) {
    case OP_CONV: {
        const conv_params *cp = &op->l->p.conv;
        conv_ctx c;
        memset(&c, 0, sizeof c);
        c.src = src;
        const int g = cp->groups;
        dnnl_dims_t wd;
        int wn;
        if (g == 1) {
            wn = 4;
            wd[0] = cp->out_ch, wd[1] = cp->in_ch, wd[2] = cp->kh, wd[3] = cp->kw;
        } else {
            wn = 5;
            wd[0] = g, wd[1] = cp->out_ch / g, wd[2] = cp->in_ch / g, wd[3] = cp->kh;
            wd[4] = cp->kw;
        }
        dnnl_memory_desc_init_by_tag(&c.wei, wn, wd, dnnl_f32, dnnl_format_tag_any);
        dnnl_dims_t bd = {cp->out_ch};
        dnnl_memory_desc_init_by_tag(&c.bias, 1, bd, dnnl_f32, dnnl_a);
        c.has_bias = cp->bias != NULL;
        c.strides[0] = cp->stride_h, c.strides[1] = cp->stride_w;
        c.dil[0] = cp->dil_h - 1, c.dil[1] = cp->dil_w - 1;
        c.pad[0] = cp->pad_h, c.pad[1] = cp->pad_w;
        dnnl_dims_t od = {T, op->out_shape.c, op->out_shape.h, op->out_shape.w};
        dnnl_memory_desc_t any = md_tag(4, od, dnnl_format_tag_any);
        dnnl_memory_desc_t src1_md;
        const dnnl_memory_desc_t *src1 = NULL;
        if (op->in2 >= 0) {
            src1_md = retile(b->cur[op->in2], T);
            src1 = &src1_md;
        }
        /* Attempts, in order: the source in its buffer's layout or in the
           conv's preferred one (a reorder per tile first), the join fused
           as a post-op or run after. The first that oneDNN serves with an
           optimised kernel wins; if none does, the first. */
        dnnl_primitive_desc_t best = NULL;
        int best_any = 0, best_fused = 1;
        for (int k = 0; k < 4 && st == ERT_OK; k++) {
            int src_any = k & 1, fused = !(k & 2);
            if (!src1 && !fused)
                break;
            c.src = src;
            if (src_any)
                dnnl_memory_desc_init_by_tag(&c.src, 4, src.dims, dnnl_f32, dnnl_format_tag_any);
            int act = src1 && !fused ? ERT_ACT_NONE : op->act;
            dnnl_primitive_attr_t a = NULL;
            dnnl_primitive_desc_t cand = NULL;
            dnnl_convolution_desc_t desc;
            st = make_attr(b, op, fused ? src1 : NULL, act, &a, why, cap);
            if (st == ERT_OK)
                st = make_pd(b, op, plain_row, conv_init, &desc, &c, &any, b->plain_out[i], a,
                             &cand, why, cap);
            if (a)
                dnnl_primitive_attr_destroy(a);
            if (st != ERT_OK) {
                /* a variant oneDNN cannot make at all: try the next */
                st = best || k < 3 ? ERT_OK : st;
                continue;
            }
            const char *impl = NULL;
            dnnl_primitive_desc_query(cand, dnnl_query_impl_info_str, 0, &impl);
            int is_ref = impl && strncmp(impl, "ref", 3) == 0;
            if (!best || (!is_ref && best_is_ref(best))) {
                if (best)
                    dnnl_primitive_desc_destroy(best);
                best = cand, best_any = src_any, best_fused = fused;
            } else {
                dnnl_primitive_desc_destroy(cand);
            }
            if (!is_ref)
                break;
        }
        if (!best) {
            if (st == ERT_OK) {
                st = ERT_UNSUPPORTED;
                snprintf(why, cap, "%s: no convolution", name);
            }
            break;
        }
        st = ERT_OK;
        pd = best;
        if ((st = finish_op(b, d, pd, why, cap)) != ERT_OK)
            break;
        const dnnl_memory_desc_t *psrc = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        if (best_any && !dnnl_memory_desc_equal(psrc, &src) &&
            (st = add_pre_reorder(b, d, &src, psrc, why, cap)) != ERT_OK)
            break;
        if (src1) {
            if (dnnl_memory_create(&d->src1, src1, x->eng, DNNL_MEMORY_NONE) != dnnl_success) {
                st = ERT_OUT_OF_MEMORY;
                snprintf(why, cap, "%s: memory", name);
                break;
            }
            d->src1_row = md_row(src1);
            if (best_fused) {
                d->src1_arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1;
                b->fused_joins++;
            } else if ((st = add_post_join(b, d, pd, src1, op->act, why, cap)) != ERT_OK) {
                break;
            }
        }
        dnnl_dims_t plain_w;
        memcpy(plain_w, wd, sizeof wd);
        st = set_weights(b, d, pd, wn, plain_w, cp->weight, cp->bias, why, cap);
        break;
    }
    case OP_MAXPOOL:
    case OP_AVGPOOL:
    case OP_GAP: {
        pool_ctx c;
        memset(&c, 0, sizeof c);
        c.src = src;
        if (op->kind == OP_GAP) {
            c.alg = dnnl_pooling_avg_exclude_padding;
            c.kernel[0] = op->in_shape.h, c.kernel[1] = op->in_shape.w;
            c.strides[0] = c.strides[1] = 1;
        } else {
            const pool_params *pp = &op->l->p.pool;
            c.alg = op->kind == OP_MAXPOOL ? dnnl_pooling_max
                                           : dnnl_pooling_avg_include_padding;
            c.kernel[0] = pp->kh, c.kernel[1] = pp->kw;
            c.strides[0] = pp->stride_h, c.strides[1] = pp->stride_w;
            c.pad[0] = pp->pad_h, c.pad[1] = pp->pad_w;
        }
        dnnl_dims_t od = {T, op->out_shape.c, op->out_shape.h, op->out_shape.w};
        dnnl_memory_desc_t any = md_tag(4, od, dnnl_format_tag_any);
        if ((st = make_attr(b, op, NULL, op->act, &attr, why, cap)) != ERT_OK)
            break;
        dnnl_pooling_v2_desc_t desc;
        if ((st = make_pd(b, op, plain_row, pool_init, &desc, &c, &any, b->plain_out[i], attr,
                          &pd, why, cap)) != ERT_OK)
            break;
        st = finish_op(b, d, pd, why, cap);
        break;
    }
    case OP_LINEAR: {
        const linear_params *lp = &op->l->p.linear;
        if ((st = make_matmul(b, d, &src, why, cap)) != ERT_UNSUPPORTED)
            break;
        st = ERT_OK;
        ip_ctx c;
        memset(&c, 0, sizeof c);
        c.src = src;
        /* the weights take the source's shape: [O, C, H, W] over a 4D
           source (the model's [O, C*H*W] is that in plain order), [O, F]
           over a 2D one */
        dnnl_dims_t wd;
        int wn = src.ndims;
        wd[0] = lp->out_features;
        for (int k = 1; k < wn; k++)
            wd[k] = src.dims[k];
        dnnl_memory_desc_init_by_tag(&c.wei, wn, wd, dnnl_f32, dnnl_format_tag_any);
        dnnl_dims_t bd = {lp->out_features};
        dnnl_memory_desc_init_by_tag(&c.bias, 1, bd, dnnl_f32, dnnl_a);
        c.has_bias = lp->bias != NULL;
        dnnl_dims_t od = {T, lp->out_features};
        dnnl_memory_desc_t dst = md_tag(2, od, dnnl_ab);
        if ((st = make_attr(b, op, NULL, op->act, &attr, why, cap)) != ERT_OK)
            break;
        dnnl_inner_product_desc_t desc;
        if ((st = make_pd(b, op, plain_row, ip_init, &desc, &c, &dst, 0, attr, &pd, why,
                          cap)) != ERT_OK)
            break;
        if ((st = finish_op(b, d, pd, why, cap)) != ERT_OK)
            break;
        st = set_weights(b, d, pd, wn, wd, lp->weight, lp->bias, why, cap);
        break;
    }
    case OP_ACT: {
        dnnl_eltwise_desc_t desc;
        dnnl_alg_kind_t alg = op->act == ERT_ACT_RELU ? dnnl_eltwise_relu : dnnl_eltwise_logistic;
        if (dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_inference, alg, &src, 0.0f, 0.0f) !=
                dnnl_success ||
            dnnl_primitive_attr_create(&attr) != dnnl_success ||
            dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) !=
                dnnl_success ||
            dnnl_primitive_desc_create(&pd, &desc, attr, x->eng, NULL) != dnnl_success) {
            snprintf(why, cap, "%s: eltwise", name);
            st = ERT_UNSUPPORTED;
            break;
        }
        st = finish_op(b, d, pd, why, cap);
        break;
    }
    case OP_ADD: {
        dnnl_binary_desc_t desc;
        const dnnl_memory_desc_t src1 = retile(b->cur[op->in2], T);
        prog_op plain = *op;
        if ((st = make_attr(b, &plain, NULL, op->act, &attr, why, cap)) != ERT_OK)
            break;
        if (dnnl_binary_desc_init(&desc, dnnl_binary_add, &src, &src1, &src) != dnnl_success ||
            dnnl_primitive_desc_create(&pd, &desc, attr, x->eng, NULL) != dnnl_success) {
            snprintf(why, cap, "%s: binary add", name);
            st = ERT_UNSUPPORTED;
            break;
        }
        if ((st = finish_op(b, d, pd, why, cap)) != ERT_OK)
            break;
        if (dnnl_memory_create(&d->src1, &src1, x->eng, DNNL_MEMORY_NONE) != dnnl_success) {
            st = ERT_OUT_OF_MEMORY;
            snprintf(why, cap, "%s: memory", name);
            break;
        }
        d->src1_row = md_row(&src1);
        d->src1_arg = DNNL_ARG_SRC_1;
        break;
    }
    default:
        snprintf(why, cap, "op %d: kind %d", i, (int)op->kind);
        st = ERT_UNSUPPORTED;
    }
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    return st;
}

/* Which ops must leave plain rows: the last writer of each stage's logits
 * and confidence buffers (the exit decision reads [n, K] and [n, 1]). */
static void mark_plain(const program *prog, unsigned char *plain_out)
{
    for (int s = 0; s < prog->num_stages; s++) {
        const prog_stage *ps = &prog->stages[s];
        if (!ps->has_exit)
            continue;
        int want[2] = {ps->logits_buf, ps->conf_buf};
        for (int k = 0; k < 2; k++) {
            if (want[k] < 0)
                continue;
            for (int i = ps->conf.end - 1; i >= ps->backbone.begin; i--)
                if (prog->ops[i].out == want[k] && prog->ops[i].kind != OP_ACT) {
                    plain_out[i] = 1;
                    break;
                }
        }
    }
}

static ert_status run_ops(dnnl_exec *x, int begin, int end, int n, char *why, size_t cap);

/* Batch invariance, probed on every stage (backbone and heads) with
 * pseudo-random rows: P rows, the same rows rotated by one place, and the
 * first P - 1 rows alone; every output row must come out bit for bit the
 * same. That covers both ways a row could depend on the others: its place
 * in a tile, and (matmuls of any row count) the count. */
static ert_status probe(dnnl_exec *x, char *why, size_t cap)
{
    const program *prog = x->prog;
    const int P = x->block < 8 ? x->block : 8 > x->tile_max ? 8 : x->tile_max;
    x->invariant = 1;
    size_t in_max = 0, out_max = 0;
    for (int s = 0; s < prog->num_stages; s++) {
        in_max = x->in_row[s] > in_max ? x->in_row[s] : in_max;
        out_max = x->out_row[s] > out_max ? x->out_row[s] : out_max;
    }
    const size_t K = (size_t)x->K;
    float *in = malloc(sizeof(float) * in_max * (size_t)P);
    float *a = malloc(sizeof(float) * (out_max + K) * (size_t)P);
    if (!in || !a) {
        free(in);
        free(a);
        snprintf(why, cap, "out of memory for the batch-invariance probe");
        return ERT_OUT_OF_MEMORY;
    }
    uint64_t h = 0x9e3779b97f4a7c15ull;
    ert_status st = ERT_OK;
    for (int s = 0; s < prog->num_stages && st == ERT_OK && x->invariant; s++) {
        const prog_stage *ps = &prog->stages[s];
        const size_t in_row = x->in_row[s], out_row = x->out_row[s];
        const size_t k = ps->has_exit ? K : 0;
        for (size_t q = 0; q < in_row * (size_t)P; q++) {
            h ^= h << 13, h ^= h >> 7, h ^= h << 17;
            in[q] = (float)((double)(h >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
        }
        for (int pass = 0; pass < 3 && st == ERT_OK; pass++) {
            /* pass 1: row r of pass 0 sits at row (r + 1) % P; pass 2: the
               first P - 1 rows alone */
            const int rot = pass == 1, n = pass == 2 ? P - 1 : P;
            if (n < 1)
                break;
            for (int r = 0; r < P; r++)
                memcpy(x->buf[ps->in_buf] + (size_t)((r + rot) % P) * in_row,
                       in + (size_t)r * in_row, sizeof(float) * in_row);
            if ((st = run_ops(x, ps->backbone.begin, ps->conf.end, n, why, cap)) != ERT_OK)
                break;
            const float *y = x->buf[ps->out_buf];
            const float *z = k ? x->buf[ps->logits_buf] : NULL;
            for (int r = 0; r < n && x->invariant; r++) {
                int at = (r + rot) % P;
                float *keep = a + (size_t)r * (out_row + k);
                const float *yr = y + (size_t)at * out_row, *zr = z ? z + (size_t)at * k : NULL;
                if (pass == 0) {
                    memcpy(keep, yr, sizeof(float) * out_row);
                    if (zr)
                        memcpy(keep + out_row, zr, sizeof(float) * k);
                } else if (memcmp(keep, yr, sizeof(float) * out_row) != 0 ||
                           (zr && memcmp(keep + out_row, zr, sizeof(float) * k) != 0)) {
                    x->invariant = 0;
                }
            }
        }
    }
    free(in);
    free(a);
    return st;
}

ert_status dx_create(const ert_model *m, const plan *p, const program *prog, int max_batch,
                     int tile_conv, int tile_linear, int threads, dnnl_exec **out, char *why,
                     size_t cap)
{
    *out = NULL;
    if (ert_cpu_test_dnnl_fail) {
        snprintf(why, cap, "forced by the test hook");
        return ERT_UNSUPPORTED;
    }
    dnnl_exec *x = calloc(1, sizeof *x);
    dx_build b;
    memset(&b, 0, sizeof b);
    b.plain_out = calloc(prog->nops ? (size_t)prog->nops : 1, 1);
    if (!x || !b.plain_out || !(x->ops = calloc(prog->nops ? (size_t)prog->nops : 1,
                                                 sizeof *x->ops))) {
        free(b.plain_out);
        if (x)
            free(x->ops);
        free(x);
        snprintf(why, cap, "out of memory");
        return ERT_OUT_OF_MEMORY;
    }
    x->prog = prog;
    x->K = m->num_classes;
    x->single = max_batch == 1;
    x->tile_conv = tile_conv;
    x->tile_linear = tile_linear;
    /* both powers of two (or max_batch itself): the larger is a multiple of
       the smaller, and buffers in its whole tiles fit both */
    x->tile_max = tile_conv > tile_linear ? tile_conv : tile_linear;
    x->rows_alloc = (max_batch + x->tile_max - 1) / x->tile_max * x->tile_max;
    /* blocks of rows run through all of a stage's ops while their
       activations stay in the cache */
    x->block = x->tile_max >= DX_BLOCK ? x->tile_max : DX_BLOCK / x->tile_max * x->tile_max;
    if (x->block > x->rows_alloc)
        x->block = x->rows_alloc;
    if (x->block < 2) /* a matmul runs one row as two */
        x->block = x->rows_alloc = 2;
    b.x = x;
    b.m = m;
    ert_status st = ERT_OK;
    dx_set_threads(threads);
    if (dnnl_engine_create(&x->eng, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&x->stream, x->eng, dnnl_stream_default_flags) != dnnl_success) {
        snprintf(why, cap, "no oneDNN CPU engine");
        st = ERT_UNSUPPORTED;
        goto fail;
    }
    mark_plain(prog, b.plain_out);

    dnnl_dims_t in = {x->tile_max, m->input.c, m->input.h, m->input.w};
    const int in_buf = prog->stages[0].in_buf;
    b.cur[in_buf] = md_tag(4, in, dnnl_nchw);
    b.need[in_buf] = shape_size(m->input);
    for (int s = 0; s < prog->num_stages; s++) {
        const prog_stage *ps = &prog->stages[s];
        x->in_row[s] = md_row(&b.cur[ps->in_buf]);
        for (int i = ps->backbone.begin; i < ps->conf.end; i++)
            if ((st = make_op(&b, i, why, cap)) != ERT_OK)
                goto fail;
        x->out_row[s] = md_row(&b.cur[ps->out_buf]);
        if (x->out_row[s] != shape_size(p->stages[s].out)) {
            snprintf(why, cap, "stage %d: output rows of %zu floats, the plan's are %zu", s,
                     x->out_row[s], shape_size(p->stages[s].out));
            st = ERT_UNSUPPORTED;
            goto fail;
        }
        if (ps->gather_buf >= 0) {
            b.cur[ps->gather_buf] = b.cur[ps->out_buf];
            if (x->out_row[s] > b.need[ps->gather_buf])
                b.need[ps->gather_buf] = x->out_row[s];
        }
    }
    size_t io_row = 0;
    for (int s = 0; s < prog->num_stages; s++) {
        io_row = x->in_row[s] > io_row ? x->in_row[s] : io_row;
        io_row = x->out_row[s] > io_row ? x->out_row[s] : io_row;
    }
    size_t io_floats = 0;
    if (!size_mul(io_row, (size_t)x->rows_alloc, &io_floats) ||
        !(x->io[0] = alloc_floats(io_floats)) || !(x->io[1] = alloc_floats(io_floats)) ||
        !(x->logits = alloc_floats((size_t)x->rows_alloc * (size_t)m->num_classes)) ||
        !(x->conf = alloc_floats((size_t)x->rows_alloc))) {
        snprintf(why, cap, "out of memory for the stage rows (%zu floats per row)", io_row);
        st = ERT_OUT_OF_MEMORY;
        goto fail;
    }
    for (int k = 0; k < prog->nbuf; k++) {
        size_t floats;
        if (!size_mul(b.need[k], (size_t)x->block, &floats) ||
            !(x->buf[k] = alloc_floats(floats))) {
            snprintf(why, cap, "out of memory for activation buffer %d (%zu floats per row)", k,
                     b.need[k]);
            st = ERT_OUT_OF_MEMORY;
            goto fail;
        }
    }
    if (x->scratch_size && !(x->scratch = alloc_floats(x->scratch_size / sizeof(float) + 1))) {
        snprintf(why, cap, "out of memory for the scratchpad");
        st = ERT_OUT_OF_MEMORY;
        goto fail;
    }
    for (int i = 0; i < prog->nops; i++)
        if (x->ops[i].scratch)
            dnnl_memory_set_data_handle(x->ops[i].scratch, x->scratch);

    if ((st = probe(x, why, cap)) != ERT_OK)
        goto fail;
    /* what runs, for the note */
    int nconv = 0, nref = 0;
    for (int i = 0; i < prog->nops; i++) {
        const dx_op *d = &x->ops[i];
        nconv += d->op->kind == OP_CONV;
        if (d->impl && strncmp(d->impl, "ref", 3) == 0)
            nref++;
    }
    const dnnl_version_t *v = dnnl_version();
    snprintf(x->desc, sizeof x->desc,
             "oneDNN %d.%d.%d, %d-row tiles (inner products %d): %d ops: %d convs, joins %d "
             "fused + %d after, %d reorders, %d channels-last, %d matmuls of any row count, "
             "%d reference kernels; %s",
             v->major, v->minor, v->patch, tile_conv, tile_linear, prog->nops, nconv,
             b.fused_joins, b.separate_joins, b.reorders, b.nhwc, b.matmuls, nref,
             x->invariant ? "rows do not depend on their place or count"
                          : "rows depend on their place or count (rounding)");
    free(b.plain_out);
    *out = x;
    return ERT_OK;
fail:
    free(b.plain_out);
    dx_free(x);
    return st;
}

void dx_free(dnnl_exec *x)
{
    if (!x)
        return;
    if (x->ops && x->prog) {
        for (int i = 0; i < x->prog->nops; i++) {
            dx_op *d = &x->ops[i];
            if (d->prim)
                dnnl_primitive_destroy(d->prim);
            dnnl_memory_t mems[] = {d->src, d->src1, d->dst, d->wei, d->bias, d->scratch};
            for (size_t k = 0; k < sizeof mems / sizeof mems[0]; k++)
                if (mems[k])
                    dnnl_memory_destroy(mems[k]);
            free(d->wei_buf);
            free(d->pre_buf);
            if (d->pre)
                dnnl_primitive_destroy(d->pre);
            if (d->post)
                dnnl_primitive_destroy(d->post);
            if (d->pre_src)
                dnnl_memory_destroy(d->pre_src);
            if (d->pre_dst)
                dnnl_memory_destroy(d->pre_dst);
            if (d->post_dst)
                dnnl_memory_destroy(d->post_dst);
            for (int k = 0; d->mm_src && k <= x->block; k++) {
                if (d->mm_src[k])
                    dnnl_memory_destroy(d->mm_src[k]);
                if (d->mm_dst[k])
                    dnnl_memory_destroy(d->mm_dst[k]);
            }
            free(d->mm_src);
            free(d->mm_dst);
        }
    }
    free(x->ops);
    for (int k = 0; k < PROG_MAX_BUF; k++)
        free(x->buf[k]);
    free(x->io[0]);
    free(x->io[1]);
    free(x->logits);
    free(x->conf);
    free(x->scratch);
    if (x->stream)
        dnnl_stream_destroy(x->stream);
    if (x->eng)
        dnnl_engine_destroy(x->eng);
    free(x);
}

/* ---- running ---------------------------------------------------------------------------- */

static ert_status run_ops(dnnl_exec *x, int begin, int end, int n, char *why, size_t cap)
{
    /* op after op, each over all tiles: a buffer holds rows of one size at
       a time (ops reuse buffers with other row sizes), so tile after tile
       through all ops would let a later op's rows of one tile overwrite an
       earlier tile's rows of another size */
    for (int i = begin; i < end; i++) {
        dx_op *d = &x->ops[i];
        const prog_op *op = d->op;
        if (d->matmul) {
            /* all n rows at once; one row runs as two (dnnl.h) */
            const int m = n < 2 ? 2 : n;
            dnnl_memory_set_data_handle(d->mm_src[m], x->buf[op->in]);
            dnnl_memory_set_data_handle(d->mm_dst[m], x->buf[op->out]);
            dnnl_exec_arg_t a[5] = {{DNNL_ARG_SRC, d->mm_src[m]},
                                    {DNNL_ARG_WEIGHTS, d->wei},
                                    {DNNL_ARG_DST, d->mm_dst[m]}};
            int na = 3;
            if (d->bias)
                a[na++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, d->bias};
            if (d->scratch)
                a[na++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, d->scratch};
            if (dnnl_primitive_execute(d->prim, x->stream, na, a) != dnnl_success) {
                snprintf(why, cap, "oneDNN: %s failed", op->l->name);
                return ERT_INTERNAL;
            }
            continue;
        }
        const int T = d->tile, tiles = (n + T - 1) / T;
        for (int t = 0; t < tiles; t++) {
            const size_t r0 = (size_t)t * (size_t)T;
            dnnl_exec_arg_t args[7];
            int na = 0;
            dnnl_status_t r = dnnl_success;
            if (d->pre) {
                dnnl_memory_set_data_handle(d->pre_src, x->buf[op->in] + r0 * d->pre_src_row);
                dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, d->pre_src}, {DNNL_ARG_TO, d->pre_dst}};
                r = dnnl_primitive_execute(d->pre, x->stream, 2, ra);
            } else {
                dnnl_memory_set_data_handle(d->src, x->buf[op->in] + r0 * d->src_row);
            }
            float *dst = x->buf[op->out] + r0 * d->dst_row;
            dnnl_memory_set_data_handle(d->dst, dst);
            args[na++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, d->src};
            args[na++] = (dnnl_exec_arg_t){DNNL_ARG_DST, d->dst};
            if (d->src1)
                dnnl_memory_set_data_handle(d->src1, x->buf[op->in2] + r0 * d->src1_row);
            if (d->src1 && !d->post)
                args[na++] = (dnnl_exec_arg_t){d->src1_arg, d->src1};
            if (d->wei)
                args[na++] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, d->wei};
            if (d->bias)
                args[na++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, d->bias};
            if (d->scratch)
                args[na++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, d->scratch};
            if (r == dnnl_success)
                r = dnnl_primitive_execute(d->prim, x->stream, na, args);
            if (r == dnnl_success && d->post) {
                dnnl_memory_set_data_handle(d->post_dst, dst);
                dnnl_exec_arg_t pa[3] = {{DNNL_ARG_SRC_0, d->post_dst},
                                         {DNNL_ARG_SRC_1, d->src1},
                                         {DNNL_ARG_DST, d->post_dst}};
                r = dnnl_primitive_execute(d->post, x->stream, 3, pa);
            }
            if (r != dnnl_success) {
                snprintf(why, cap, "oneDNN: %s failed (status %d)",
                         op->l ? op->l->name : "op", (int)r);
                return ERT_INTERNAL;
            }
        }
    }
    if (dnnl_stream_wait(x->stream) != dnnl_success) {
        snprintf(why, cap, "oneDNN: stream wait failed");
        return ERT_INTERNAL;
    }
    return ERT_OK;
}

ert_status dx_stage(dnnl_exec *x, int s, int n, int heads, const float *in, float *out,
                    char *why, size_t cap)
{
    const program *prog = x->prog;
    const prog_stage *ps = &prog->stages[s];
    const size_t K = (size_t)x->K;
    heads = heads && ps->has_exit;
    for (int b0 = 0; b0 < n; b0 += x->block) {
        const int m = n - b0 < x->block ? n - b0 : x->block;
        memcpy(x->buf[ps->in_buf], in + (size_t)b0 * x->in_row[s],
               sizeof(float) * x->in_row[s] * (size_t)m);
        ert_status st = run_ops(x, ps->backbone.begin, heads ? ps->conf.end : ps->backbone.end,
                                m, why, cap);
        if (st != ERT_OK)
            return st;
        memcpy(out + (size_t)b0 * x->out_row[s], x->buf[ps->out_buf],
               sizeof(float) * x->out_row[s] * (size_t)m);
        if (heads) {
            memcpy(x->logits + (size_t)b0 * K, x->buf[ps->logits_buf], sizeof(float) * K * m);
            if (ps->conf_buf >= 0)
                memcpy(x->conf + b0, x->buf[ps->conf_buf], sizeof(float) * (size_t)m);
        }
    }
    return ERT_OK;
}

float *dx_io(const dnnl_exec *x, int k) { return x->io[k]; }
const float *dx_logits(const dnnl_exec *x) { return x->logits; }
const float *dx_conf(const dnnl_exec *x, int s)
{
    return x->prog->stages[s].conf_buf >= 0 ? x->conf : NULL;
}
int dx_batch_invariant(const dnnl_exec *x) { return x->invariant; }
const char *dx_describe(const dnnl_exec *x) { return x->desc; }

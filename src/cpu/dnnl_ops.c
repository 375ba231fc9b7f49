/* dnnl_ops.c - the oneDNN primitives of one program op: descriptors,
 * attributes (the fused residual join and activation), the layouts oneDNN
 * prefers with the reorders they need, weights reordered once, matmuls
 * with a run-time row count for linear layers over plain rows
 * (dnnl_internal.h). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/dnnl_internal.h"
#include "util.h"

/* ---- helpers ------------------------------------------------------------------------ */


size_t md_floats(const dnnl_memory_desc_t *md)
{
    return dnnl_memory_desc_get_size(md) / sizeof(float);
}

/* Floats per row (sample) of an activation layout. */
size_t md_row(const dnnl_memory_desc_t *md) { return md_floats(md) / (size_t)md->dims[0]; }

/* The same layout for a tile of T rows. Valid because every activation
 * layout here keeps the batch outermost (checked in make_op): only the row
 * count changes. */
dnnl_memory_desc_t retile(dnnl_memory_desc_t md, int T)
{
    md.dims[0] = T;
    md.padded_dims[0] = T;
    return md;
}

/* Whether the batch is the outermost dimension: a row is contiguous. */
int batch_outermost(const dnnl_memory_desc_t *md)
{
    if (md->format_kind != dnnl_blocked)
        return 0;
    const dnnl_dim_t row = (dnnl_dim_t)md_row(md);
    for (int k = 1; k < md->ndims; k++)
        if (md->format_desc.blocking.strides[k] > md->format_desc.blocking.strides[0])
            return 0;
    return md->format_desc.blocking.strides[0] == row && md->format_desc.blocking.inner_nblks >= 0;
}

dnnl_memory_desc_t md_tag(int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag)
{
    dnnl_memory_desc_t md;
    dnnl_memory_desc_init_by_tag(&md, ndims, dims, dnnl_f32, tag);
    return md;
}

/* The plain layout of a tensor of this many dimensions. */
dnnl_format_tag_t plain_tag(int ndims)
{
    return ndims == 1   ? dnnl_a
           : ndims == 2 ? dnnl_ab
           : ndims == 3 ? dnnl_abc
           : ndims == 4 ? dnnl_abcd
                        : dnnl_abcde;
}

void *alloc_floats(size_t n)
{
    size_t bytes = (n ? n : 1) * sizeof(float);
    bytes = (bytes + 63) / 64 * 64;
    void *p = aligned_alloc(64, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}


/* Primitive attributes: a user scratchpad, the op's fused residual join
 * (binary add of src1) and its activation. */
static ert_status make_attr(dx_build *b, const prog_op *op, const dnnl_memory_desc_t *src1, int act,
                            dnnl_primitive_attr_t *out, char *why, size_t cap)
{
    DX_TRY(dnnl_primitive_attr_create(out), "attributes");
    DX_TRY(dnnl_primitive_attr_set_scratchpad_mode(*out, dnnl_scratchpad_mode_user), "attributes");
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
    if (r == dnnl_success && act == ERT_ACT_GELU)
        r = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_gelu_erf, 0.0f, 0.0f);
    if (r == dnnl_success && act == ERT_ACT_TANH)
        r = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_tanh, 0.0f, 0.0f);
    if (r == dnnl_success)
        r = dnnl_primitive_attr_set_post_ops(*out, po);
    dnnl_post_ops_destroy(po);
    (void)b;
    DX_TRY(r, "post-ops");
    return ERT_OK;
}

/* Finishes an op from its primitive descriptor: the primitive, its memory
 * objects, its scratchpad need and the layouts it leaves. */
static ert_status finish_op(dx_build *b, dx_op *d, dnnl_primitive_desc_t pd, char *why, size_t cap)
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
        snprintf(why, cap, "%s: a layout whose rows are not contiguous",
                 op->l ? op->l->name : "op");
        return ERT_UNSUPPORTED;
    }
    if (d->dst_row > b->need[op->out])
        b->need[op->out] = d->dst_row;
    b->cur[op->out] = *dst;
    return ERT_OK;
}

/* Reorders plain weights into the primitive's layout, once. */
static ert_status set_weights(dx_build *b, dx_op *d, dnnl_primitive_desc_t pd, int ndims,
                              const dnnl_dims_t dims, const float *w, const float *bias, char *why,
                              size_t cap)
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
                          int force_plain, dnnl_primitive_attr_t attr, dnnl_primitive_desc_t *pd,
                          char *why, size_t cap)
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

int dx_is_ref(const_dnnl_primitive_desc_t pd)
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
        const dnnl_memory_desc_t *sp =
            dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
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
    if (dx_is_ref(pd)) {
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

ert_status dx_make_op(dx_build *b, int i, char *why, size_t cap)
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
            if (!best || (!is_ref && dx_is_ref(best))) {
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
            c.alg = op->kind == OP_MAXPOOL ? dnnl_pooling_max : dnnl_pooling_avg_include_padding;
            c.kernel[0] = pp->kh, c.kernel[1] = pp->kw;
            c.strides[0] = pp->stride_h, c.strides[1] = pp->stride_w;
            c.pad[0] = pp->pad_h, c.pad[1] = pp->pad_w;
        }
        dnnl_dims_t od = {T, op->out_shape.c, op->out_shape.h, op->out_shape.w};
        dnnl_memory_desc_t any = md_tag(4, od, dnnl_format_tag_any);
        if ((st = make_attr(b, op, NULL, op->act, &attr, why, cap)) != ERT_OK)
            break;
        dnnl_pooling_v2_desc_t desc;
        if ((st = make_pd(b, op, plain_row, pool_init, &desc, &c, &any, b->plain_out[i], attr, &pd,
                          why, cap)) != ERT_OK)
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
        if ((st = make_pd(b, op, plain_row, ip_init, &desc, &c, &dst, 0, attr, &pd, why, cap)) !=
            ERT_OK)
            break;
        if ((st = finish_op(b, d, pd, why, cap)) != ERT_OK)
            break;
        st = set_weights(b, d, pd, wn, wd, lp->weight, lp->bias, why, cap);
        break;
    }
    case OP_ACT: {
        dnnl_eltwise_desc_t desc;
        dnnl_alg_kind_t alg = op->act == ERT_ACT_RELU   ? dnnl_eltwise_relu
                              : op->act == ERT_ACT_GELU ? dnnl_eltwise_gelu_erf
                              : op->act == ERT_ACT_TANH ? dnnl_eltwise_tanh
                                                        : dnnl_eltwise_logistic;
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
    default: snprintf(why, cap, "op %d: kind %d", i, (int)op->kind); st = ERT_UNSUPPORTED;
    }
    if (st == ERT_OK)
        dx_make_subs(b, d);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    return st;
}

/* dnnl_tiles.c - the oneDNN path's smaller tiles (dnnl_internal.h): an
 * op's primitives again for every power of two below its tile, in the
 * layouts and with the weights of the whole tile, each checked to give a
 * row bit for bit what the whole tile gives it, and for every count of
 * rows left after the whole tiles a plan of which tiles run them. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/dnnl_internal.h"

/* ---- making them ---------------------------------------------------------------------- */

/* A copy of pd's attributes whose binary post-ops read t rows of src1. */
static dnnl_status_t retile_attr(const_dnnl_primitive_desc_t pd, int t, dnnl_primitive_attr_t *out)
{
    const_dnnl_primitive_attr_t a = NULL;
    const_dnnl_post_ops_t po = NULL;
    dnnl_post_ops_t npo = NULL;
    *out = NULL;
    dnnl_status_t r = dnnl_primitive_desc_get_attr(pd, &a);
    if (r == dnnl_success)
        r = dnnl_primitive_attr_clone(out, a);
    if (r == dnnl_success)
        r = dnnl_primitive_attr_get_post_ops(a, &po);
    if (r == dnnl_success)
        r = dnnl_post_ops_create(&npo);
    for (int k = 0; r == dnnl_success && k < dnnl_post_ops_len(po); k++) {
        dnnl_alg_kind_t alg;
        if (dnnl_post_ops_get_kind(po, k) == dnnl_binary) {
            const dnnl_memory_desc_t *src1 = NULL;
            r = dnnl_post_ops_get_params_binary(po, k, &alg, &src1);
            dnnl_memory_desc_t m = r == dnnl_success ? retile(*src1, t) : (dnnl_memory_desc_t){0};
            if (r == dnnl_success)
                r = dnnl_post_ops_append_binary(npo, alg, &m);
        } else if (dnnl_post_ops_get_kind(po, k) == dnnl_eltwise) {
            float scale, alpha, beta;
            r = dnnl_post_ops_get_params_eltwise(po, k, &scale, &alg, &alpha, &beta);
            if (r == dnnl_success)
                r = dnnl_post_ops_append_eltwise(npo, scale, alg, alpha, beta);
        } else {
            r = dnnl_unimplemented;
        }
    }
    if (r == dnnl_success)
        r = dnnl_primitive_attr_set_post_ops(*out, npo);
    if (npo)
        dnnl_post_ops_destroy(npo);
    return r;
}

/* pd's operation again for tiles of t rows, in the layouts pd chose (so the
 * buffers, the weights and the rows' byte layout serve both). */
static dnnl_status_t retile_pd(dnnl_engine_t eng, const_dnnl_primitive_desc_t pd, int t,
                               dnnl_primitive_desc_t *out)
{
    dnnl_primitive_kind_t kind = dnnl_undefined_primitive;
    dnnl_primitive_desc_query(pd, dnnl_query_primitive_kind, 0, &kind);
    const dnnl_memory_desc_t *src = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *src1 = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 1);
    const dnnl_memory_desc_t *wei = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *dst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    if (!src || !dst)
        return dnnl_unimplemented;
    if (kind == dnnl_reorder) {
        dnnl_memory_desc_t f = retile(*src, t), to = retile(*dst, t);
        return dnnl_reorder_primitive_desc_create(out, &f, eng, &to, eng, NULL);
    }
    union {
        dnnl_convolution_desc_t c;
        dnnl_pooling_v2_desc_t p;
        dnnl_eltwise_desc_t e;
        dnnl_binary_desc_t b;
        dnnl_inner_product_desc_t i;
    } u;
    const void *q = NULL;
    switch (kind) {
    case dnnl_convolution:
        if (dnnl_primitive_desc_query(pd, dnnl_query_convolution_d, 0, &q) != dnnl_success || !wei)
            return dnnl_unimplemented;
        memcpy(&u.c, q, sizeof u.c);
        u.c.src_desc = retile(*src, t), u.c.weights_desc = *wei, u.c.dst_desc = retile(*dst, t);
        break;
    case dnnl_pooling_v2:
        if (dnnl_primitive_desc_query(pd, dnnl_query_pooling_v2_d, 0, &q) != dnnl_success)
            return dnnl_unimplemented;
        memcpy(&u.p, q, sizeof u.p);
        u.p.src_desc = retile(*src, t), u.p.dst_desc = retile(*dst, t);
        break;
    case dnnl_eltwise:
        if (dnnl_primitive_desc_query(pd, dnnl_query_eltwise_d, 0, &q) != dnnl_success)
            return dnnl_unimplemented;
        memcpy(&u.e, q, sizeof u.e);
        u.e.data_desc = retile(*src, t);
        break;
    case dnnl_binary:
        if (dnnl_primitive_desc_query(pd, dnnl_query_binary_d, 0, &q) != dnnl_success || !src1)
            return dnnl_unimplemented;
        memcpy(&u.b, q, sizeof u.b);
        u.b.src_desc[0] = retile(*src, t), u.b.src_desc[1] = retile(*src1, t);
        u.b.dst_desc = retile(*dst, t);
        break;
    case dnnl_inner_product:
        if (dnnl_primitive_desc_query(pd, dnnl_query_inner_product_d, 0, &q) != dnnl_success ||
            !wei)
            return dnnl_unimplemented;
        memcpy(&u.i, q, sizeof u.i);
        u.i.src_desc = retile(*src, t), u.i.weights_desc = *wei, u.i.dst_desc = retile(*dst, t);
        break;
    default: return dnnl_unimplemented;
    }
    dnnl_primitive_attr_t attr = NULL;
    dnnl_status_t r = retile_attr(pd, t, &attr);
    if (r == dnnl_success)
        r = dnnl_primitive_desc_create(out, &u, attr, eng, NULL);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return r;
}

/* The primitive of `of` (with its scratchpad memory, if any) for t rows; a
 * reference kernel where `of` has an optimised one counts as a failure. */
static dnnl_status_t sub_prim(dnnl_exec *x, const_dnnl_primitive_t of, int t,
                              dnnl_primitive_t *prim, dnnl_memory_t *scratch)
{
    const_dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_desc_t tpd = NULL;
    dnnl_status_t r = dnnl_primitive_get_primitive_desc(of, &pd);
    if (r == dnnl_success)
        r = retile_pd(x->eng, pd, t, &tpd);
    if (r != dnnl_success)
        return r;
    if (dx_is_ref(tpd) && !dx_is_ref(pd))
        r = dnnl_unimplemented;
    const dnnl_memory_desc_t *sp = dnnl_primitive_desc_query_md(tpd, dnnl_query_scratchpad_md, 0);
    if (r == dnnl_success && !scratch && sp && dnnl_memory_desc_get_size(sp) > 0)
        r = dnnl_unimplemented; /* a reorder or join that wants a scratchpad */
    if (r == dnnl_success && scratch && sp && dnnl_memory_desc_get_size(sp) > 0) {
        r = dnnl_memory_create(scratch, sp, x->eng, DNNL_MEMORY_NONE);
        if (dnnl_memory_desc_get_size(sp) > x->scratch_size)
            x->scratch_size = dnnl_memory_desc_get_size(sp);
    }
    if (r == dnnl_success)
        r = dnnl_primitive_create(prim, tpd);
    dnnl_primitive_desc_destroy(tpd);
    return r;
}

/* A memory object like `of` for t rows (none where `of` is none). */
static dnnl_status_t sub_mem(dnnl_exec *x, const_dnnl_memory_t of, int t, void *handle,
                             dnnl_memory_t *out)
{
    const dnnl_memory_desc_t *md = NULL;
    if (!of)
        return dnnl_success;
    dnnl_status_t r = dnnl_memory_get_memory_desc(of, &md);
    if (r != dnnl_success)
        return r;
    dnnl_memory_desc_t m = retile(*md, t);
    return dnnl_memory_create(out, &m, x->eng, handle);
}

dx_sub dx_whole(const dx_op *d)
{
    const dx_sub w = {.tile = d->tile,
                      .prim = d->prim,
                      .pre = d->pre,
                      .post = d->post,
                      .src = d->src,
                      .src1 = d->src1,
                      .dst = d->dst,
                      .scratch = d->scratch,
                      .pre_src = d->pre_src,
                      .pre_dst = d->pre_dst,
                      .post_dst = d->post_dst};
    return w;
}

void dx_free_subs(dx_op *d)
{
    free(d->plan);
    d->plan = NULL;
    for (int k = 0; k < d->nsub; k++) {
        dx_sub *s = &d->sub[k];
        dnnl_primitive_t prims[] = {s->prim, s->pre, s->post};
        for (size_t j = 0; j < sizeof prims / sizeof prims[0]; j++)
            if (prims[j])
                dnnl_primitive_destroy(prims[j]);
        dnnl_memory_t mems[] = {s->src,     s->src1,    s->dst,     s->scratch,
                                s->pre_src, s->pre_dst, s->post_dst};
        for (size_t j = 0; j < sizeof mems / sizeof mems[0]; j++)
            if (mems[j])
                dnnl_memory_destroy(mems[j]);
        memset(s, 0, sizeof *s);
    }
    d->nsub = 0;
}

/* The op's primitives for every power of two below its tile, down to one
 * row. Where oneDNN cannot make one of them (or only as a reference
 * kernel), the op keeps none and its last tile runs padded, as before.
 * Whether rows come out the same in every tile size is dx_create's probe. */
void dx_make_subs(dx_build *b, dx_op *d)
{
    dnnl_exec *x = b->x;
    if (d->matmul || !d->prim || d->tile < 2)
        return;
    int top = 1;
    while (top * 2 < d->tile)
        top *= 2;
    dnnl_status_t r = dnnl_success;
    for (int t = top; t >= 1 && d->nsub < DX_MAX_SUB && r == dnnl_success; t /= 2) {
        dx_sub *s = &d->sub[d->nsub++];
        s->tile = t;
        r = sub_prim(x, d->prim, t, &s->prim, &s->scratch);
        if (r == dnnl_success && d->pre)
            r = sub_prim(x, d->pre, t, &s->pre, NULL);
        if (r == dnnl_success && d->post)
            r = sub_prim(x, d->post, t, &s->post, NULL);
        if (r == dnnl_success)
            r = sub_mem(x, d->src, t, d->pre ? d->pre_buf : DNNL_MEMORY_NONE, &s->src);
        if (r == dnnl_success)
            r = sub_mem(x, d->src1, t, DNNL_MEMORY_NONE, &s->src1);
        if (r == dnnl_success)
            r = sub_mem(x, d->dst, t, DNNL_MEMORY_NONE, &s->dst);
        if (r == dnnl_success)
            r = sub_mem(x, d->pre_src, t, DNNL_MEMORY_NONE, &s->pre_src);
        if (r == dnnl_success)
            r = sub_mem(x, d->pre_dst, t, d->pre_buf, &s->pre_dst);
        if (r == dnnl_success)
            r = sub_mem(x, d->post_dst, t, DNNL_MEMORY_NONE, &s->post_dst);
    }
    if (r != dnnl_success || (d->nsub == DX_MAX_SUB && d->sub[d->nsub - 1].tile != 1))
        dx_free_subs(d);
    else
        b->subs += d->nsub > 0;
}

/* ---- planning them -------------------------------------------------------------------- */

/* What one execution costs beside its rows, in MACs: the OpenMP team's
 * fork and join and oneDNN's dispatch, a couple of microseconds, which two
 * cores spend on ~250k MACs of a convolution. A few rows of a light op
 * (a pooling, a join) are cheaper padded than run as another tile. */
#define DX_EXEC_WORK 250000.0

/* One row's work through op, in MACs (pooling, activations and joins are
 * bound by memory: a float read or written costs about four MACs). */
static double row_work(const prog_op *op)
{
    const double in = (double)op->in_shape.c * op->in_shape.h * op->in_shape.w;
    const double out = (double)op->out_shape.c * op->out_shape.h * op->out_shape.w;
    if (op->kind == OP_CONV && op->l) {
        const conv_params *c = &op->l->p.conv;
        return out * (double)(c->in_ch / c->groups) * c->kh * c->kw;
    }
    if (op->kind == OP_LINEAR)
        return in * out;
    return 4.0 * (in + out);
}

/* The cheapest way to run `rest` rows left after the whole tiles (cost:
 * DX_EXEC_WORK per tile run plus its rows' work), never past the whole
 * tile's span, into out[DX_PLAN_LEN]. */
static void plan_rest(const dx_op *d, int rest, double w, double *best, signed char *pick,
                      signed char *out)
{
    const int T = d->tile, slack = T - rest;
    best[0] = 0.0;
    for (int r = 1; r <= rest; r++) {
        best[r] = -1.0;
        for (int k = DX_PLAN_WHOLE; k < d->nsub; k++) {
            const int t = k < 0 ? T : d->sub[k].tile;
            double c = DX_EXEC_WORK + t * w;
            if (t <= r)
                c += best[r - t]; /* exact: then the rest */
            else if (t - r > slack)
                continue; /* padded past the span */
            if (best[r] < 0.0 || c < best[r])
                best[r] = c, pick[r] = (signed char)k;
        }
    }
    int n = 0;
    for (int r = rest; r > 0 && n < DX_PLAN_LEN - 1;) {
        const int k = pick[r], t = k < 0 ? T : d->sub[k].tile;
        out[n++] = (signed char)k;
        r = t >= r ? 0 : r - t;
    }
    out[n] = DX_PLAN_END;
}

static ert_status make_plan(dx_op *d, char *why, size_t cap)
{
    const int T = d->tile;
    double *best = malloc(sizeof *best * (size_t)(T + 1));
    signed char *pick = malloc((size_t)T + 1);
    d->plan = malloc((size_t)T * DX_PLAN_LEN);
    if (!best || !pick || !d->plan) {
        free(best);
        free(pick);
        snprintf(why, cap, "out of memory for the tile plans");
        return ERT_OUT_OF_MEMORY;
    }
    const double w = row_work(d->op);
    d->plan[0] = DX_PLAN_END;
    for (int rest = 1; rest < T; rest++)
        plan_rest(d, rest, w, best, pick, d->plan + (size_t)rest * DX_PLAN_LEN);
    free(best);
    free(pick);
    return ERT_OK;
}

/* ---- checking them -------------------------------------------------------------------- */

/* Fills n rows of `row` floats at p with pseudo-random values from seed. */
static void fill_rows(float *p, size_t n, size_t row, uint64_t seed)
{
    uint64_t h = seed | 1;
    for (size_t q = 0; q < n * row; q++) {
        h ^= h << 13, h ^= h >> 7, h ^= h << 17;
        p[q] = (float)((double)(h >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
    }
}

/* Each op's smaller tiles against its whole tile, on the same pseudo-random
 * rows: a tile of t rows placed first and last in the whole tile's span
 * must give those rows bit for bit. An op whose kernel rounds otherwise
 * for another row count (oneDNN's gemm-based inner product takes a
 * matrix-vector kernel for few rows) loses its smaller tiles and pads. */
ert_status dx_check_subs(dnnl_exec *x, char *why, size_t cap)
{
    for (int i = 0; i < x->prog->nops; i++) {
        dx_op *d = &x->ops[i];
        if (!d->nsub)
            continue;
        const prog_op *op = d->op;
        const size_t T = (size_t)d->tile, in_row = d->pre ? d->pre_src_row : d->src_row;
        float *ref = malloc(sizeof(float) * T * d->dst_row);
        if (!ref) {
            snprintf(why, cap, "out of memory for the tile check");
            return ERT_OUT_OF_MEMORY;
        }
        const dx_sub whole = dx_whole(d);
        int same = 1;
        for (int k = -1; k < d->nsub && same; k++) {
            const dx_sub *t = k < 0 ? &whole : &d->sub[k];
            for (size_t r0 = 0; r0 + (size_t)t->tile <= T && same; r0 += T - (size_t)t->tile) {
                /* the inputs again before every run: an op may write in place */
                fill_rows(x->buf[op->in], T, in_row, 0x9e3779b97f4a7c15ull + (uint64_t)i);
                if (op->in2 >= 0 && op->in2 != op->in)
                    fill_rows(x->buf[op->in2], T, d->src1_row, 0x2545f4914f6cdd1dull + (uint64_t)i);
                if (dx_run_tile(x, d, t, r0) != dnnl_success ||
                    dnnl_stream_wait(x->stream) != dnnl_success) {
                    free(ref);
                    snprintf(why, cap, "oneDNN: %s failed in the tile check",
                             op->l ? op->l->name : "op");
                    return ERT_INTERNAL;
                }
                const float *y = x->buf[op->out] + r0 * d->dst_row;
                const size_t bytes = sizeof(float) * (size_t)t->tile * d->dst_row;
                if (k < 0)
                    memcpy(ref, y, bytes);
                else
                    same = memcmp(ref + r0 * d->dst_row, y, bytes) == 0;
                if (r0 + (size_t)t->tile == T)
                    break;
            }
        }
        free(ref);
        if (!same)
            dx_free_subs(d);
        else if (make_plan(d, why, cap) != ERT_OK)
            return ERT_OUT_OF_MEMORY;
    }
    return ERT_OK;
}

/* dnnl.c - the CPU backend's oneDNN path: see dnnl.h. */
#include "cpu/dnnl_internal.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "util.h"

int ert_cpu_test_dnnl_fail = 0;

void dx_set_threads(int threads)
{
    if (threads > 0)
        omp_set_num_threads(threads);
}

/* ---- creation ------------------------------------------------------------------------- */

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
    /* token rows (a mask value after each token's features) are no oneDNN
       layout: the transformer ops are the BLAS path's (src/cpu/tx_ops.h) */
    for (int i = 0; i < prog->nops; i++) {
        prog_op_kind k = prog->ops[i].kind;
        if (k == OP_PATCH_EMBED || k == OP_TOKEN_EMBED || k == OP_LAYER_NORM ||
            k == OP_TOKEN_POOL || k == OP_ATTENTION || k == OP_ENCODER) {
            snprintf(why, cap, "transformer layers run on the BLAS path");
            return ERT_UNSUPPORTED;
        }
    }
    dnnl_exec *x = calloc(1, sizeof *x);
    dx_build b;
    memset(&b, 0, sizeof b);
    b.plain_out = calloc(prog->nops ? (size_t)prog->nops : 1, 1);
    if (!x || !b.plain_out ||
        !(x->ops = calloc(prog->nops ? (size_t)prog->nops : 1, sizeof *x->ops))) {
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
            if ((st = dx_make_op(&b, i, why, cap)) != ERT_OK)
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
    for (int i = 0; i < prog->nops; i++) {
        if (x->ops[i].scratch)
            dnnl_memory_set_data_handle(x->ops[i].scratch, x->scratch);
        for (int k = 0; k < x->ops[i].nsub; k++)
            if (x->ops[i].sub[k].scratch)
                dnnl_memory_set_data_handle(x->ops[i].sub[k].scratch, x->scratch);
    }

    if ((st = dx_check_subs(x, why, cap)) != ERT_OK)
        goto fail;
    for (int i = 0; i < prog->nops; i++)
        x->subs += x->ops[i].nsub > 0;
    if ((st = probe(x, why, cap)) != ERT_OK)
        goto fail;
    if (!x->invariant && x->subs) {
        /* a kernel whose rows change with the tile size: back to whole,
           padded tiles, which the probe then checks again */
        x->subs = 0;
        if ((st = probe(x, why, cap)) != ERT_OK)
            goto fail;
    }
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
             "oneDNN %d.%d.%d, %d ops (%d convs), %d-row tiles (inner products %d), smaller "
             "tiles down to 1 row in %d ops, joins %d fused + %d after, %d reorders, %d "
             "channels-last, %d matmuls of any row count, %d reference kernels; %s",
             v->major, v->minor, v->patch, prog->nops, nconv, tile_conv, tile_linear, x->subs,
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
            dx_free_subs(d);
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

dnnl_status_t dx_run_tile(dnnl_exec *x, const dx_op *d, const dx_sub *t, size_t r0)
{
    const prog_op *op = d->op;
    dnnl_exec_arg_t args[7];
    int na = 0;
    dnnl_status_t r = dnnl_success;
    if (t->pre) {
        dnnl_memory_set_data_handle(t->pre_src, x->buf[op->in] + r0 * d->pre_src_row);
        dnnl_exec_arg_t ra[2] = {{DNNL_ARG_FROM, t->pre_src}, {DNNL_ARG_TO, t->pre_dst}};
        r = dnnl_primitive_execute(t->pre, x->stream, 2, ra);
    } else {
        dnnl_memory_set_data_handle(t->src, x->buf[op->in] + r0 * d->src_row);
    }
    float *dst = x->buf[op->out] + r0 * d->dst_row;
    dnnl_memory_set_data_handle(t->dst, dst);
    args[na++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, t->src};
    args[na++] = (dnnl_exec_arg_t){DNNL_ARG_DST, t->dst};
    if (t->src1)
        dnnl_memory_set_data_handle(t->src1, x->buf[op->in2] + r0 * d->src1_row);
    if (t->src1 && !t->post)
        args[na++] = (dnnl_exec_arg_t){d->src1_arg, t->src1};
    if (d->wei)
        args[na++] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, d->wei};
    if (d->bias)
        args[na++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, d->bias};
    if (t->scratch)
        args[na++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, t->scratch};
    if (r == dnnl_success)
        r = dnnl_primitive_execute(t->prim, x->stream, na, args);
    if (r == dnnl_success && t->post) {
        dnnl_memory_set_data_handle(t->post_dst, dst);
        dnnl_exec_arg_t pa[3] = {
            {DNNL_ARG_SRC_0, t->post_dst}, {DNNL_ARG_SRC_1, t->src1}, {DNNL_ARG_DST, t->post_dst}};
        r = dnnl_primitive_execute(t->post, x->stream, 3, pa);
    }
    return r;
}

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
        /* whole tiles, then the rest as the op's plan says (8 + 4 + 1 for
           13 rows of a convolution; a light op may pad); without smaller
           tiles, one padded tile */
        const dx_sub whole = dx_whole(d);
        static const signed char padded[2] = {DX_PLAN_WHOLE, DX_PLAN_END};
        int r0 = 0;
        const signed char *rest = NULL;
        for (;;) {
            const dx_sub *t = &whole;
            if (r0 + d->tile > n) { /* the rows left: as the op's plan says */
                if (!rest && r0 >= n)
                    break;
                if (!rest)
                    rest = x->subs && d->plan ? d->plan + (size_t)(n - r0) * DX_PLAN_LEN : padded;
                if (*rest == DX_PLAN_END)
                    break;
                t = *rest >= 0 ? &d->sub[*rest] : &whole;
                rest++;
            }
            if (dx_run_tile(x, d, t, (size_t)r0) != dnnl_success) {
                snprintf(why, cap, "oneDNN: %s failed", op->l ? op->l->name : "op");
                return ERT_INTERNAL;
            }
            r0 += t->tile;
        }
    }
    if (dnnl_stream_wait(x->stream) != dnnl_success) {
        snprintf(why, cap, "oneDNN: stream wait failed");
        return ERT_INTERNAL;
    }
    return ERT_OK;
}

ert_status dx_stage(dnnl_exec *x, int s, int n, int heads, const float *in, float *out, char *why,
                    size_t cap)
{
    const program *prog = x->prog;
    const prog_stage *ps = &prog->stages[s];
    const size_t K = (size_t)x->K;
    heads = heads && ps->has_exit;
    for (int b0 = 0; b0 < n; b0 += x->block) {
        const int m = n - b0 < x->block ? n - b0 : x->block;
        memcpy(x->buf[ps->in_buf], in + (size_t)b0 * x->in_row[s],
               sizeof(float) * x->in_row[s] * (size_t)m);
        ert_status st =
            run_ops(x, ps->backbone.begin, heads ? ps->conf.end : ps->backbone.end, m, why, cap);
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

/* test_kernels_host.c - the host-visible logic of the CUDA backend, checked
 * without a GPU:
 *   - kernels/compact_math.h: the exit kernel's single-block compaction
 *     (tiles, __ballot_sync words, popcounts below the lane, a shuffle scan
 *     of the warp totals) replayed on the CPU, against ert_compact_index;
 *   - kernels/tx_math.h: the transformer kernels' math (GELU and the other
 *     activations, token ids, layer norm, the masked softmax of attention)
 *     against plain loops in double, and the attention of src/cuda/tx_ops.c
 *     replayed call by call (its GEMMs' parameters through a plain
 *     column-major GEMM, the kernels' layouts) against attention computed
 *     from its definition;
 *   - src/cuda/program.c (CUDA builds only): the buffer assignment, by
 *     running each compiled program symbolically (every buffer holds a hash
 *     of how its value was computed) against the model's layer lists walked
 *     directly, so an op that overwrote a value still needed, or read the
 *     wrong buffer, shows as a wrong hash. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/compact_math.h"
#include "../../kernels/tx_math.h"
#include "fixtures.h"
#include "policy.h"

/* ---- compaction ------------------------------------------------------------------ */

Test(compact_math, lanemask_lt)
{
    cr_assert_eq(ert_lanemask_lt(0), 0u);
    cr_assert_eq(ert_lanemask_lt(1), 1u);
    cr_assert_eq(ert_lanemask_lt(5), 0x1fu);
    cr_assert_eq(ert_lanemask_lt(31), 0x7fffffffu);
    for (int lane = 0; lane < 32; lane++)
        cr_assert_eq(ert_popc(ert_lanemask_lt(lane)), lane);
}

Test(compact_math, block_size)
{
    cr_assert_eq(ert_compact_block(1), 32);
    cr_assert_eq(ert_compact_block(32), 32);
    cr_assert_eq(ert_compact_block(33), 64);
    cr_assert_eq(ert_compact_block(1000), 1024);
    cr_assert_eq(ert_compact_block(1024), 1024);
    cr_assert_eq(ert_compact_block(100000), 1024);
}

/* What exit_compact_kernel computes, thread by thread, on the host.
 * keep[i] = !exited[i]. Writes dst[i] (the slot or -1) and returns the
 * count the kernel writes to device memory. */
static int replay_block(const unsigned char *exited, int n, int *dst)
{
    const int block = ert_compact_block(n);
    const int nwarps = block / ERT_WARP;
    unsigned ballot[32];
    int warp_excl[32];
    int base = 0;
    for (int tile = 0; tile < n; tile += block) {
        for (int w = 0; w < nwarps; w++) {
            ballot[w] = 0;
            for (int lane = 0; lane < ERT_WARP; lane++) {
                int i = tile + w * ERT_WARP + lane;
                if (i < n && !exited[i])
                    ballot[w] |= 1u << lane;
            }
            warp_excl[w] = ert_popc(ballot[w]); /* lane 0 of warp w */
        }
        /* warp 0: Hillis-Steele inclusive scan with __shfl_up_sync */
        int v[32], incl[32];
        for (int lane = 0; lane < 32; lane++)
            incl[lane] = v[lane] = lane < nwarps ? warp_excl[lane] : 0;
        for (int d = 1; d < 32; d <<= 1) {
            int up[32];
            for (int lane = 0; lane < 32; lane++)
                up[lane] = lane >= d ? incl[lane - d] : incl[lane];
            for (int lane = 0; lane < 32; lane++)
                if (lane >= d)
                    incl[lane] += up[lane];
        }
        for (int lane = 0; lane < nwarps; lane++)
            warp_excl[lane] = incl[lane] - v[lane];
        int tile_total = incl[31];
        for (int t = 0; t < block; t++) {
            int i = tile + t, w = t / ERT_WARP, lane = t % ERT_WARP;
            if (i >= n)
                continue;
            dst[i] = exited[i] ? -1 : ert_warp_slot(base, warp_excl[w], ballot[w], lane);
        }
        base += tile_total;
    }
    return base;
}

Test(compact_math, block_replay_equals_compact_index)
{
    const int ns[] = {1,   2,    31,   32,   33,   63,   64,   65,   255, 256,
                      257, 1000, 1023, 1024, 1025, 2047, 2048, 2049, 4103};
    const unsigned rates[] = {0, 1, 128, 200, 255, 256}; /* exits: a random byte < rate */
    mw_rng rng = mw_rng_seed(88172645463325252ull);
    int cases = 0;
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof rates / sizeof rates[0]; b++)
            for (int rep = 0; rep < 4; rep++) {
                int n = ns[a];
                unsigned char *ex = malloc((size_t)n);
                int *want = malloc(sizeof(int) * (size_t)n);
                int *got = malloc(sizeof(int) * (size_t)n);
                cr_assert(ex && want && got);
                for (int i = 0; i < n; i++)
                    ex[i] = (mw_rng_next(&rng) & 255u) < rates[b];
                int kw = ert_compact_index(ex, n, want);
                int kg = replay_block(ex, n, got);
                cr_assert_eq(kg, kw, "n %d rate %u: count %d, want %d", n, rates[b], kg, kw);
                for (int i = 0; i < n; i++)
                    cr_assert_eq(got[i], want[i], "n %d rate %u row %d: slot %d, want %d", n,
                                 rates[b], i, got[i], want[i]);
                free(ex);
                free(want);
                free(got);
                cases++;
            }
    cr_assert_eq(cases, 19 * 6 * 4);
}

/* ---- program: symbolic execution (every build: src/program.c has no CUDA) ----------- */

#include "act.h"
#include "program.h"
#include "plan.h"

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

enum {
    T_LAYER = 1,
    T_ACT,
    T_ADD
};

static uint64_t h_act(uint64_t x, int act)
{
    return act == ERT_ACT_NONE ? x : mix(mix(T_ACT, (uint64_t)act), x);
}

static uint64_t h_layer(const layer *l, uint64_t x)
{
    return mix(mix(T_LAYER, (uint64_t)(uintptr_t)l), x);
}

/* The value a layer list computes from x, walked from the model. */
static uint64_t ref_list(const layer *items, int count, uint64_t x)
{
    for (int i = 0; i < count; i++) {
        const layer *l = &items[i];
        switch (l->kind) {
        case LAYER_RELU: x = h_act(x, ERT_ACT_RELU); break;
        case LAYER_SIGMOID: x = h_act(x, ERT_ACT_SIGMOID); break;
        case LAYER_GELU: x = h_act(x, ERT_ACT_GELU); break;
        case LAYER_TANH: x = h_act(x, ERT_ACT_TANH); break;
        case LAYER_FLATTEN:
        case LAYER_DROPOUT:
        case LAYER_BATCHNORM2D: break;
        case LAYER_RESIDUAL: {
            const residual_params *r = &l->p.residual;
            uint64_t b = ref_list(r->body.items, r->body.count, x);
            uint64_t s = ref_list(r->shortcut.items, r->shortcut.count, x);
            x = h_act(mix(mix(T_ADD, b), s), r->relu_after ? ERT_ACT_RELU : ERT_ACT_NONE);
            break;
        }
        default: x = h_layer(l, x); break;
        }
    }
    return x;
}

/* Runs ops [r.begin, r.end) on the symbolic buffers. */
static void sym_run(const program *g, prog_range r, uint64_t *buf)
{
    for (int i = r.begin; i < r.end; i++) {
        const prog_op *op = &g->ops[i];
        cr_assert(op->in >= 0 && op->in < g->nbuf && op->out >= 0 && op->out < g->nbuf,
                  "op %d: buffers %d -> %d of %d", i, op->in, op->out, g->nbuf);
        uint64_t v;
        if (op->kind == OP_ACT) {
            v = buf[op->in];
        } else if (op->kind == OP_ADD) {
            cr_assert(op->in2 >= 0 && op->in2 < g->nbuf);
            v = mix(mix(T_ADD, buf[op->in]), buf[op->in2]);
        } else {
            if (op->kind != OP_LAYER_NORM) /* the one op that may run in place */
                cr_assert_neq(op->in, op->out, "op %d (%s) runs in place", i, op->l->name);
            if (op->kind == OP_PATCH_EMBED) {
                /* its convolution's scratch: a third buffer, clobbered */
                cr_assert(op->tmp >= 0 && op->tmp < g->nbuf && op->tmp != op->in &&
                              op->tmp != op->out,
                          "op %d: scratch buffer %d", i, op->tmp);
                buf[op->tmp] = 0xbad5c4a7u;
            } else {
                cr_assert_eq(op->tmp, -1, "op %d: a scratch buffer on kind %d", i, (int)op->kind);
            }
            v = h_layer(op->l, buf[op->in]);
            if (op->in2 >= 0) { /* a conv with a fused residual join */
                cr_assert_eq(op->kind, OP_CONV, "op %d: in2 on a non-conv", i);
                cr_assert(op->in2 < g->nbuf && op->in2 != op->out && op->in != op->out);
                v = mix(mix(T_ADD, v), buf[op->in2]);
            }
        }
        buf[op->out] = h_act(v, op->act);
    }
}

/* Compiles m for mode and checks every stage's values and buffer roles. */
static void check_program(const ert_model *m, const plan *p, ert_mode mode,
                          const program_opts *opts)
{
    program g;
    ert_error err = {{0}};
    ert_status st = program_build(m, p, mode, opts, &g, &err);
    cr_assert_eq(st, ERT_OK, "program_build: %s", err.msg);
    cr_assert(g.nbuf >= 1 && g.nbuf <= PROG_MAX_BUF);
    cr_assert_eq(g.num_stages, m->num_exits);

    uint64_t buf[PROG_MAX_BUF];
    for (int i = 0; i < PROG_MAX_BUF; i++)
        buf[i] = 0xdead0000u + (uint64_t)i; /* garbage nobody may read as a value */
    uint64_t x = 12345;                     /* the normalised input */
    buf[g.stages[0].in_buf] = x;
    for (int s = 0; s < g.num_stages; s++) {
        const prog_stage *ps = &g.stages[s];
        const stage *sg = &p->stages[s];
        const exit_def *xd = &m->exits[s];
        int last = s == g.num_stages - 1;
        cr_assert_eq(buf[ps->in_buf], x, "stage %d: input clobbered", s);
        x = ref_list(m->backbone.items + sg->begin, sg->end - sg->begin, x);
        sym_run(&g, ps->backbone, buf);
        cr_assert_eq(buf[ps->out_buf], x, "stage %d: backbone output wrong", s);
        cr_assert_eq(ps->out_row, shape_size(sg->out));
        cr_assert_eq(ps->has_exit, last || mode != ERT_MODE_FULL);
        if (ps->has_exit) {
            uint64_t lg = ref_list(xd->head.items, xd->head.count, x);
            sym_run(&g, ps->head, buf);
            cr_assert_eq(buf[ps->logits_buf], lg, "stage %d: logits wrong", s);
            sym_run(&g, ps->conf, buf);
            if (xd->policy == ERT_POLICY_CONFIDENCE_HEAD) {
                uint64_t cf = ref_list(xd->confidence.items, xd->confidence.count, x);
                cr_assert(ps->conf_buf >= 0);
                cr_assert_eq(buf[ps->conf_buf], cf, "stage %d: confidence wrong", s);
            } else {
                cr_assert_eq(ps->conf_buf, -1);
                cr_assert_eq(ps->conf.begin, ps->conf.end);
            }
            /* the exit kernel reads both at once: nothing overwrote either */
            cr_assert_eq(buf[ps->logits_buf], lg, "stage %d: logits clobbered", s);
            cr_assert_eq(buf[ps->out_buf], x, "stage %d: the heads clobbered the stage output", s);
        } else {
            cr_assert_eq(ps->head.begin, ps->head.end);
        }
        if (mode == ERT_MODE_COMPACTED && !last) {
            cr_assert(ps->gather_buf >= 0 && ps->gather_buf != ps->out_buf);
            buf[ps->gather_buf] = buf[ps->out_buf]; /* the gather moves rows, not values */
            cr_assert_eq(g.stages[s + 1].in_buf, ps->gather_buf);
        } else {
            cr_assert_eq(ps->gather_buf, -1);
            if (!last)
                cr_assert_eq(g.stages[s + 1].in_buf, ps->out_buf);
        }
    }
    program_free(&g);
}

Test(program, random_models_all_modes)
{
    for (int kind = 0; kind < MW_KIND_COUNT; kind++) {
        ert_model *m = fx_random_model(7 + (uint64_t)kind, (mw_kind)kind);
        plan p;
        plan_build(m, &p);
        program_opts fused = {.fuse_residual = 1};
        for (int mode = ERT_MODE_FULL; mode <= ERT_MODE_COMPACTED; mode++) {
            check_program(m, &p, (ert_mode)mode, NULL);
            check_program(m, &p, (ert_mode)mode, &fused);
        }
        ert_model_free(m);
    }
}

/* ---- a hand-made graph: residuals inside a head, an empty final head ---------- */

static layer L(layer_kind k, const char *name, int c, int hw)
{
    layer l;
    memset(&l, 0, sizeof l);
    l.kind = k;
    strncpy(l.name, name, sizeof l.name - 1);
    l.in = l.out = (shape3){c, hw, hw, 0};
    return l;
}

Test(program, residual_heads_and_fusion)
{
    /* backbone: conv relu | residual(body conv relu conv, shortcut conv) sigmoid gap flatten
       exit 0 after the relu: head residual(body conv relu conv, identity) relu flatten
       linear, confidence linear sigmoid; final head empty */
    layer rb_body[3] = {L(LAYER_CONV2D, "c1", 4, 4), L(LAYER_RELU, "r", 4, 4),
                        L(LAYER_CONV2D, "c2", 4, 4)};
    layer rb_sc[1] = {L(LAYER_CONV2D, "sc", 4, 4)};
    layer hb_body[3] = {L(LAYER_CONV2D, "h1", 4, 4), L(LAYER_RELU, "hr", 4, 4),
                        L(LAYER_CONV2D, "h2", 4, 4)};
    layer backbone[6] = {L(LAYER_CONV2D, "stem", 4, 4),        L(LAYER_RELU, "relu", 4, 4),
                         L(LAYER_RESIDUAL, "block", 4, 4),     L(LAYER_SIGMOID, "sig", 4, 4),
                         L(LAYER_GLOBAL_AVGPOOL, "gap", 4, 4), L(LAYER_FLATTEN, "flat", 4, 1)};
    backbone[2].p.residual = (residual_params){{rb_body, 3}, {rb_sc, 1}, 1};
    backbone[4].out = (shape3){4, 1, 1, 0};
    backbone[5].in = backbone[5].out = (shape3){4, 1, 1, 0};
    layer head[4] = {L(LAYER_RESIDUAL, "hres", 4, 4), L(LAYER_RELU, "hrelu", 4, 4),
                     L(LAYER_FLATTEN, "hflat", 4, 4), L(LAYER_LINEAR, "fc", 4, 4)};
    head[0].p.residual = (residual_params){{hb_body, 3}, {NULL, 0}, 0};
    head[2].out = (shape3){64, 1, 1, 0};
    head[3].in = (shape3){64, 1, 1, 0};
    head[3].out = (shape3){4, 1, 1, 0};
    layer conf[2] = {L(LAYER_LINEAR, "cfc", 4, 4), L(LAYER_SIGMOID, "csig", 1, 1)};
    conf[0].out = (shape3){1, 1, 1, 0};

    ert_model *m = calloc(1, sizeof *m);
    cr_assert(m);
    m->input = (shape3){4, 4, 4, 0};
    m->num_classes = 4;
    m->backbone = (layer_list){backbone, 6};
    m->num_exits = 2;
    strcpy(m->exits[0].name, "e0");
    m->exits[0].after = 1;
    m->exits[0].head = (layer_list){head, 4};
    m->exits[0].confidence = (layer_list){conf, 2};
    m->exits[0].policy = ERT_POLICY_CONFIDENCE_HEAD;
    strcpy(m->exits[1].name, "final");
    m->exits[1].after = 5;
    m->exits[1].policy = ERT_POLICY_NONE;
    plan p;
    memset(&p, 0, sizeof p);
    p.num_stages = 2;
    p.stages[0] = (stage){0, 2, {4, 4, 4, 0}, {4, 4, 4, 0}, 0};
    p.stages[1] = (stage){2, 6, {4, 4, 4, 0}, {4, 1, 1, 0}, 0};
    p.max_act = 64;
    program_opts fused = {.fuse_residual = 1};
    for (int mode = ERT_MODE_FULL; mode <= ERT_MODE_COMPACTED; mode++) {
        check_program(m, &p, (ert_mode)mode, NULL);
        check_program(m, &p, (ert_mode)mode, &fused);
    }

    /* fused: no OP_ADD is left, and both joins are convs with in2 */
    program f;
    ert_error ferr;
    cr_assert_eq(program_build(m, &p, ERT_MODE_MASKED, &fused, &f, &ferr), ERT_OK, "%s", ferr.msg);
    int adds = 0, joins = 0;
    for (int i = 0; i < f.nops; i++) {
        adds += f.ops[i].kind == OP_ADD;
        joins += f.ops[i].kind == OP_CONV && f.ops[i].in2 >= 0;
    }
    cr_assert_eq(adds, 0);
    cr_assert_eq(joins, 2);
    program_free(&f);

    /* the ReLU after "stem" is fused into it; the one in the body too */
    program g;
    ert_error err;
    cr_assert_eq(program_build(m, &p, ERT_MODE_MASKED, NULL, &g, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(g.ops[0].kind, OP_CONV);
    cr_assert_eq(g.ops[0].act, ERT_ACT_RELU);
    int acts = 0;
    for (int i = 0; i < g.nops; i++)
        acts += g.ops[i].kind == OP_ACT;
    /* unfused: the sigmoid after the block's ReLU-ed add, the head's ReLU
       after an add without activation is fused, the confidence sigmoid is
       fused into its linear: only "sig" stays a separate op */
    cr_assert_eq(acts, 1, "%d separate activation ops", acts);
    cr_assert_eq(g.stages[1].logits_buf, g.stages[1].out_buf, "empty final head reads in place");
    program_free(&g);

    /* a plan whose largest activation is too small is refused, not overrun */
    p.max_act = 16;
    cr_assert_eq(program_build(m, &p, ERT_MODE_FULL, NULL, &g, &err), ERT_INTERNAL);
    free(m);
}

/* ---- tx_math.h: the transformer kernels' math ------------------------------------- */

#include <math.h>

static int close_rel(double got, double want, double rel)
{
    return fabs(got - want) <= rel * fmax(fabs(want), 1e-30) + 1e-7;
}

Test(tx_math, activations)
{
    for (int i = -4000; i <= 4000; i++) {
        float x = (float)i / 400.0f; /* [-10, 10] */
        double want = 0.5 * (double)x * (1.0 + erf((double)x / sqrt(2.0)));
        cr_assert(close_rel(ert_gelu(x), want, 1e-5), "gelu(%g) = %.9g, want %.9g", x, ert_gelu(x),
                  want);
        cr_assert_eq(ert_act_apply(x, ERT_ACT_GELU), ert_gelu(x));
        cr_assert(close_rel(ert_act_apply(x, ERT_ACT_TANH), tanh((double)x), 1e-6), "tanh(%g)", x);
        cr_assert(close_rel(ert_act_apply(x, ERT_ACT_SIGMOID), 1.0 / (1.0 + exp(-(double)x)), 1e-6),
                  "sigmoid(%g)", x);
        cr_assert_eq(ert_act_apply(x, ERT_ACT_RELU), x < 0 ? 0.0f : x);
        cr_assert_eq(ert_act_apply(x, ERT_ACT_NONE), x);
    }
    /* GELU: the exact form, not the tanh approximation, which differs by
       about 2e-4 at x = -2 (torch.nn.functional.gelu(-2.) = -0.04550027) */
    cr_assert(fabsf(ert_gelu(-2.0f) - -0.04550027f) < 1e-7f, "gelu(-2) = %.9g", ert_gelu(-2.0f));
    cr_assert(isnan(ert_act_apply(NAN, ERT_ACT_RELU)), "ReLU keeps NaN");
    cr_assert(isnan(ert_gelu(NAN)) && isnan(ert_act_apply(NAN, ERT_ACT_TANH)));
    cr_assert_eq(ert_gelu(-INFINITY) == 0.0f || isnan(ert_gelu(-INFINITY)), 1);
    cr_assert_eq(ert_act_apply(INFINITY, ERT_ACT_TANH), 1.0f);
}

Test(tx_math, token_rows)
{
    cr_assert_eq(ert_token_row(0.0f, 10), 0);
    cr_assert_eq(ert_token_row(9.0f, 10), 9);
    cr_assert_eq(ert_token_row(10.0f, 10), -1);
    cr_assert_eq(ert_token_row(-1.0f, 10), -1);
    cr_assert_eq(ert_token_row(-0.0f, 10), 0);
    cr_assert_eq(ert_token_row(2.5f, 10), -1);
    cr_assert_eq(ert_token_row(NAN, 10), -1);
    cr_assert_eq(ert_token_row(INFINITY, 10), -1);
    cr_assert_eq(ert_token_row(-INFINITY, 10), -1);
    cr_assert_eq(ert_token_row(1e30f, 10), -1);
    cr_assert_eq(ert_token_row(16777215.0f, 1 << 24), 16777215);
    cr_assert_eq(ert_token_row(16777216.0f, 1 << 24), -1);
    cr_assert_eq(ert_mask_value(0.0f), 0.0f);
    cr_assert_eq(ert_mask_value(-0.0f), 0.0f);
    cr_assert_eq(ert_mask_value(3.0f), 1.0f);
    cr_assert_eq(ert_mask_value(NAN), 1.0f); /* nonzero: attended */
}

/* Layer norm in double, PyTorch's definition. */
static void ln_naive(const float *x, const float *add, double *y, int D, double eps, const float *w,
                     const float *b)
{
    double mean = 0, var = 0;
    for (int j = 0; j < D; j++)
        mean += (double)x[j] + (add ? add[j] : 0.0);
    mean /= D;
    for (int j = 0; j < D; j++) {
        double d = (double)x[j] + (add ? add[j] : 0.0) - mean;
        var += d * d;
    }
    var /= D;
    for (int j = 0; j < D; j++)
        y[j] = ((double)x[j] + (add ? add[j] : 0.0) - mean) / sqrt(var + eps) * w[j] + b[j];
}

Test(tx_math, layer_norm_row)
{
    mw_rng r = mw_rng_seed(4242);
    const int dims[] = {1, 2, 7, 32, 33, 100, 768};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        const int D = dims[k];
        float *x = malloc(sizeof(float) * D * 5);
        cr_assert(x);
        float *add = x + D, *w = add + D, *b = w + D, *y = b + D;
        double *want = malloc(sizeof(double) * D);
        cr_assert(want);
        for (int with_add = 0; with_add < 2; with_add++) {
            for (int j = 0; j < D; j++) {
                x[j] = 3.0f + 2.0f * mw_rng_normal(&r); /* an offset mean */
                add[j] = mw_rng_normal(&r);
                w[j] = 1.0f + 0.1f * mw_rng_normal(&r);
                b[j] = 0.1f * mw_rng_normal(&r);
            }
            const float *a = with_add ? add : NULL;
            ln_naive(x, a, want, D, 1e-5, w, b);
            ert_ln_row(x, a, y, D, 1e-5f, w, b);
            for (int j = 0; j < D; j++)
                cr_assert(fabs(y[j] - want[j]) <= 1e-4 * (1.0 + fabs(want[j])),
                          "D %d add %d: y[%d] = %.9g, want %.9g", D, with_add, j, y[j], want[j]);
            ert_ln_row(x, a, x, D, 1e-5f, w, b); /* in place */
            cr_assert_eq(memcmp(x, y, sizeof(float) * D), 0, "D %d: in place differs", D);
        }
        free(want);
        free(x);
    }
    /* a constant vector: zero variance, eps keeps it finite: the bias */
    float c[4] = {5, 5, 5, 5}, one[4] = {1, 1, 1, 1}, bias[4] = {0.5f, -1, 2, 0}, out[4];
    ert_ln_row(c, NULL, out, 4, 1e-5f, one, bias);
    for (int j = 0; j < 4; j++)
        cr_assert_eq(out[j], bias[j]);
}

Test(tx_math, masked_softmax_row)
{
    mw_rng r = mw_rng_seed(777);
    for (int T = 1; T <= 70; T += 3) {
        float s[70], mask[2 * 70];
        double want[70];
        for (int rep = 0; rep < 4; rep++) {
            int attended = 0;
            for (int j = 0; j < T; j++) {
                s[j] = 4.0f * mw_rng_normal(&r);
                mask[2 * j] = mw_rng_uniform(&r) < 0.7f ? 1.0f : 0.0f; /* stride 2 */
                mask[2 * j + 1] = NAN;                                 /* never read */
                attended += mask[2 * j] != 0.0f;
            }
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < T; j++)
                if (mask[2 * j] != 0.0f)
                    mx = fmax(mx, s[j]);
            for (int j = 0; j < T; j++)
                sum += want[j] = mask[2 * j] != 0.0f ? exp(s[j] - mx) : 0.0;
            ert_masked_softmax_row(s, mask, 2, T);
            for (int j = 0; j < T; j++) {
                if (!attended) {
                    cr_assert(isnan(s[j]), "T %d: all padded: s[%d] = %g, want NaN", T, j, s[j]);
                } else if (mask[2 * j] == 0.0f) {
                    cr_assert_eq(s[j], 0.0f, "T %d: padded key %d has weight %g", T, j, s[j]);
                } else {
                    double wv = want[j] / sum;
                    cr_assert(fabs(s[j] - wv) <= 1e-6 + 1e-5 * wv, "T %d: p[%d] = %.9g, want %.9g",
                              T, j, s[j], wv);
                }
            }
        }
    }
    /* every key padded: NaN, as PyTorch's key_padding_mask */
    float s1[3] = {1, 2, 3}, m0[3] = {0, 0, 0};
    ert_masked_softmax_row(s1, m0, 1, 3);
    cr_assert(isnan(s1[0]) && isnan(s1[1]) && isnan(s1[2]));
    /* a NaN score spoils its row */
    float s2[3] = {1, NAN, 3}, m1[3] = {1, 1, 1};
    ert_masked_softmax_row(s2, m1, 1, 3);
    cr_assert(isnan(s2[0]) && isnan(s2[1]) && isnan(s2[2]));
    /* large scores do not overflow: the max is subtracted */
    float s3[2] = {1000, 1000}, m2[2] = {1, 1};
    ert_masked_softmax_row(s3, m2, 1, 2);
    cr_assert(s3[0] == 0.5f && s3[1] == 0.5f);
}

/* ---- tx_math.h's GEMMs: src/cuda/tx_ops.c's attention replayed --------------------- */

/* What cuBLAS computes for g (column-major; beta 0 reads no C). */
static void ref_gemm(ert_gemm g, float alpha, const float *a, const float *b, float *c, float beta)
{
    for (int p = 0; p < g.batch; p++) {
        const float *A = a + p * g.stride_a, *B = b + p * g.stride_b;
        float *C = c + p * g.stride_c;
        for (int j = 0; j < g.n; j++)
            for (int i = 0; i < g.m; i++) {
                double acc = 0;
                for (int l = 0; l < g.k; l++) {
                    float av = g.trans_a ? A[l + (size_t)i * g.lda] : A[i + (size_t)l * g.lda];
                    float bv = g.trans_b ? B[j + (size_t)l * g.ldb] : B[l + (size_t)j * g.ldb];
                    acc += (double)av * bv;
                }
                float *cv = &C[i + (size_t)j * g.ldc];
                *cv = (float)(beta != 0.0f ? alpha * acc + beta * *cv : alpha * acc);
            }
    }
}

/* The attention as tx_ops.c runs it, its queries in blocks of qblock rows
 * (ktile 0) or fused, its keys in tiles of ktile (k_attn_fused, as
 * ert_attn_row_online replays it), against its definition in double. */
static void attention_replay(int qblock, int ktile)
{
    enum {
        n = 3,
        T = 5,
        D = 8,
        H = 2,
        d = D / H,
        M = n * T,
        R = D + 1
    };
    mw_rng r = mw_rng_seed(99);
    static float x[M * R], inw[3 * D * D], inb[3 * D], outw[D * D], outb[D];
    static float qkv[M * 3 * D], q[M * D], k[M * D], v[M * D];
    /* the scores' scratch, as sized for the op (plus a guard that must stay) */
    const int qb = ert_attn_qrows(T, qblock);
    const size_t nsc = (size_t)n * H * qb * T;
    cr_assert_eq(ert_attn_ws_floats(T, D, H, qblock), 6 * (size_t)T * D + nsc / n);
    float *sc = malloc((nsc + 1) * sizeof *sc);
    cr_assert_not_null(sc);
    sc[nsc] = -555.0f;
    static float ctxh[M * D], ctx[M * D], y[M * R];
    for (int i = 0; i < M * R; i++)
        x[i] = mw_rng_normal(&r);
    for (int b = 0; b < n; b++) /* sample 0 attends to all, 1 to its first 3, 2 to none */
        for (int t = 0; t < T; t++)
            x[(b * T + t) * R + D] = b == 0 || (b == 1 && t < 3) ? 1.0f : 0.0f;
    for (int j = 0; j < D; j++) /* a padded token of NaN (an invalid id): no effect */
        x[(1 * T + 4) * R + j] = NAN;
    for (int i = 0; i < 3 * D * D; i++)
        inw[i] = mw_rng_normal(&r) / 3.0f;
    for (int i = 0; i < D * D; i++)
        outw[i] = mw_rng_normal(&r) / 3.0f;
    for (int i = 0; i < 3 * D; i++)
        inb[i] = 0.1f * mw_rng_normal(&r);
    for (int i = 0; i < D; i++)
        outb[i] = 0.1f * mw_rng_normal(&r);

    /* the op, as tx_ops.c runs it (attn_core, then run_attention) */
    ref_gemm(ert_gemm_rows(M, D, 3 * D, R, 3 * D), 1.0f, inw, x, qkv, 0.0f);
    for (int row = 0; row < M; row++) /* k_qkv_split */
        for (int c = 0; c < 3 * D; c++) {
            int b = row / T, t = row % T, which = c / D, h = (c % D) / d, e = c % d;
            float val = qkv[row * 3 * D + c] + inb[c];
            if (which == 2 && x[row * R + D] == 0.0f)
                val = 0.0f;
            float *dst = which == 0 ? q : which == 1 ? k : v;
            dst[ert_head_offset((size_t)b, h, t, e, T, H, d)] = val;
        }
    for (int i = 0; i < M * D; i++)
        ctxh[i] = NAN; /* every output row must be written by some block */
    for (int row = 0; ktile && row < n * H * T; row++) { /* k_attn_fused */
        const int b = row / (H * T);
        ert_attn_row_online(q + row * d, k + (row / T) * T * d, v + (row / T) * T * d,
                            x + b * T * R + D, R, T, d, ert_attn_scale(d), ktile, ctxh + row * d);
    }
    for (int q0 = 0; !ktile && q0 < T; q0 += qb) {
        const int qn = T - q0 < qb ? T - q0 : qb;
        ref_gemm(ert_gemm_scores(n, H, T, d, qn), ert_attn_scale(d), k, q + q0 * d, sc, 0.0f);
        for (int row = 0; row < n * H * qn; row++) /* k_attn_softmax */
            ert_masked_softmax_row(sc + row * T, x + (row / (H * qn)) * T * R + D, R, T);
        ref_gemm(ert_gemm_context(n, H, T, d, qn), 1.0f, v, sc, ctxh + q0 * d, 0.0f);
    }
    cr_assert_eq(sc[nsc], -555.0f, "qblock %d: the scores ran past their scratch", qblock);
    free(sc);
    for (int row = 0; row < M; row++) /* k_heads_merge */
        for (int c = 0; c < D; c++)
            ctx[row * D + c] =
                ctxh[ert_head_offset((size_t)(row / T), c / d, row % T, c % d, T, H, d)];
    for (int i = 0; i < M * R; i++)
        y[i] = -777.0f;
    ref_gemm(ert_gemm_rows(M, D, D, D, R), 1.0f, outw, ctx, y, 0.0f);
    for (int row = 0; row < M; row++) {
        cr_assert_eq(y[row * R + D], -777.0f, "token %d: the GEMM wrote the mask column", row);
        for (int j = 0; j < D; j++) /* k_token_bias */
            y[row * R + j] += outb[j];
        y[row * R + D] = x[row * R + D];
    }

    /* attention from its definition, in double */
    for (int b = 0; b < n; b++) {
        double pq[T][3 * D];
        for (int t = 0; t < T; t++)
            for (int c = 0; c < 3 * D; c++) {
                double acc = inb[c];
                for (int j = 0; j < D; j++)
                    acc += (double)inw[c * D + j] * x[(b * T + t) * R + j];
                pq[t][c] = acc;
            }
        double o[T][D];
        int any = 0;
        for (int t = 0; t < T; t++)
            any |= x[(b * T + t) * R + D] != 0.0f;
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double s[T], mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    double acc = 0;
                    for (int e = 0; e < d; e++)
                        acc += pq[i][h * d + e] * pq[j][D + h * d + e];
                    s[j] = x[(b * T + j) * R + D] != 0.0f ? acc / sqrt((double)d) : -INFINITY;
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j < T; j++)
                    sum += s[j] = s[j] == -INFINITY ? 0.0 : exp(s[j] - mx);
                for (int e = 0; e < d; e++) { /* padded keys take no part */
                    double acc = 0;
                    for (int j = 0; j < T; j++)
                        if (x[(b * T + j) * R + D] != 0.0f)
                            acc += s[j] / sum * pq[j][2 * D + h * d + e];
                    o[i][h * d + e] = acc;
                }
            }
        for (int t = 0; t < T; t++)
            for (int j = 0; j < D; j++) {
                double want = outb[j];
                for (int c = 0; c < D; c++)
                    want += (double)outw[j * D + c] * o[t][c];
                float got = y[(b * T + t) * R + j];
                if (!any || isnan(want)) /* all padded; the NaN token's own row */
                    cr_assert(isnan(got), "sample %d: y[%d][%d] = %g, want NaN", b, t, j, got);
                else
                    cr_assert(fabs(got - want) <= 1e-4 * (1.0 + fabs(want)),
                              "qblock %d: sample %d token %d feature %d: %.7g, want %.7g", qblock,
                              b, t, j, got, want);
            }
    }
}

/* T = 5: one block of every query (as ERT_ATTN_QBLOCK = 64 runs it), blocks of
 * 2, 2 and 1, and of one query each. */
Test(tx_math, attention_replay) { attention_replay(ERT_ATTN_QBLOCK, 0); }
Test(tx_math, attention_replay_blocks) { attention_replay(2, 0); }
Test(tx_math, attention_replay_rows) { attention_replay(1, 0); }
/* fused: keys in tiles of 32 (the kernel's), 2 and 1 */
Test(tx_math, attention_replay_fused) { attention_replay(ERT_ATTN_QBLOCK, 32); }
Test(tx_math, attention_replay_fused_tiles) { attention_replay(ERT_ATTN_QBLOCK, 2); }
Test(tx_math, attention_replay_fused_keys) { attention_replay(ERT_ATTN_QBLOCK, 1); }

/* The online softmax of one query row (ert_attn_row_online) against the
 * softmax in double, over T = 70 keys in tiles of 1, 3, 32 (the kernel's)
 * and 70: keys attended at random with padding after the last one, a
 * padded key holding NaN (no effect), every key padded (NaN), a NaN score
 * (its row NaN), and scores far apart (the rescaling). */
Test(tx_math, attention_online)
{
    enum {
        T = 70,
        d = 24
    };
    mw_rng r = mw_rng_seed(7);
    static float qv[d], K[T * d], V[T * d], mask[T * 2], out[d];
    const int tiles[] = {1, 3, 32, T};
    for (int c = 0; c < 6; c++) {
        for (int e = 0; e < d; e++)
            qv[e] = (c == 4 ? 8.0f : 1.0f) * mw_rng_normal(&r);
        for (int i = 0; i < T * d; i++) {
            K[i] = mw_rng_normal(&r);
            V[i] = mw_rng_normal(&r);
        }
        int last = c == 2 ? -1 : c == 1 ? 0 : 40 + (int)(mw_rng_next(&r) % 30);
        for (int j = 0; j < T; j++) {
            mask[2 * j] = j <= last && (j == last || mw_rng_next(&r) % 3 != 0) ? 1.0f : 0.0f;
            mask[2 * j + 1] = -9.0f; /* the stride's other value, never read */
        }
        if (c == 0) { /* a padded key of NaN */
            mask[2 * 5] = 0.0f;
            for (int e = 0; e < d; e++)
                K[5 * d + e] = NAN;
        }
        if (c == 3) /* an attended key of NaN */
            K[3 * d] = NAN, mask[2 * 3] = 1.0f;
        cr_assert_eq(ert_attn_key_len(mask, 2, T), last + 1);
        /* the softmax in double */
        double s[T], mx = -INFINITY, sum = 0, want[d];
        const double sc = 1.0 / sqrt((double)d);
        for (int j = 0; j < T; j++) {
            double acc = 0;
            for (int e = 0; e < d; e++)
                acc += (double)qv[e] * K[j * d + e];
            s[j] = mask[2 * j] != 0.0f ? acc * sc : -INFINITY;
            mx = fmax(mx, s[j]);
        }
        for (int j = 0; j < T; j++)
            sum += s[j] = mask[2 * j] != 0.0f ? exp(s[j] - mx) : 0.0;
        for (int e = 0; e < d; e++) {
            double acc = 0;
            for (int j = 0; j < T; j++)
                if (mask[2 * j] != 0.0f)
                    acc += s[j] / sum * V[j * d + e];
            want[e] = acc;
        }
        for (int t = 0; t < 4; t++) {
            ert_attn_row_online(qv, K, V, mask, 2, T, d, ert_attn_scale(d), tiles[t], out);
            for (int e = 0; e < d; e++) {
                if (c == 2 || c == 3)
                    cr_assert(isnan(out[e]), "case %d tile %d: out[%d] = %g, want NaN", c, tiles[t],
                              e, out[e]);
                else
                    cr_assert(fabs(out[e] - want[e]) <= 2e-5 * (1.0 + fabs(want[e])),
                              "case %d tile %d: out[%d] = %.7g, want %.7g", c, tiles[t], e, out[e],
                              want[e]);
            }
        }
    }
}

/* The attention's scratch grows with T, not T^2: from T = qblock on it is
 * linear (twice the tokens, exactly twice the floats), and for BERT-base
 * (D 768, H 12) at T = 128 and 512 it is what tx_ops.c's header says. */
Test(tx_math, attention_workspace_linear)
{
    const int D = 768, H = 12, qb = ERT_ATTN_QBLOCK;
    cr_assert_eq(ert_attn_qrows(16, qb), 16);
    cr_assert_eq(ert_attn_qrows(128, qb), qb);
    cr_assert_eq(ert_attn_ws_floats(16, D, H, qb), 6 * 16 * 768 + 12 * 16 * 16);
    for (int T = qb; T <= 8192; T *= 2)
        cr_assert_eq(ert_attn_ws_floats(2 * T, D, H, qb), 2 * ert_attn_ws_floats(T, D, H, qb),
                     "T %d", T);
    cr_assert_eq(ert_attn_ws_floats(128, D, H, qb), 589824 + 98304);
    /* the whole-row scores of T = 512 took H T^2 = 3.1 M floats; a block takes 0.39 M */
    const size_t scores512 = ert_attn_ws_floats(512, D, H, qb) - 6 * (size_t)512 * D;
    cr_assert_eq(scores512, (size_t)H * qb * 512);
    cr_assert(scores512 * 8 == (size_t)H * 512 * 512);
}

/* ---- program: transformer graphs ------------------------------------------------------ */

static layer TL(layer_kind k, const char *name, shape3 in, shape3 out)
{
    layer l;
    memset(&l, 0, sizeof l);
    l.kind = k;
    strncpy(l.name, name, sizeof l.name - 1);
    l.in = in;
    l.out = out;
    return l;
}

/* Counts the program's ops of kind k (acts: with activation act, or any
 * when act < 0). */
static int count_ops(const program *g, prog_op_kind k, int act)
{
    int n = 0;
    for (int i = 0; i < g->nops; i++)
        n += g->ops[i].kind == k && (act < 0 || g->ops[i].act == act);
    return n;
}

static void check_tx_model(ert_model *m, plan *p)
{
    program_opts fused = {.fuse_residual = 1};
    for (int mode = ERT_MODE_FULL; mode <= ERT_MODE_COMPACTED; mode++) {
        check_program(m, p, (ert_mode)mode, NULL);
        check_program(m, p, (ert_mode)mode, &fused);
    }
}

Test(program, vit_like)
{
    /* patch_embed (3x8x8, 4x4 patches, D 8, class token: T 5), three
       pre-LN blocks; exit 0 after block 0 and the final head, both
       [token_pool, layer_norm, linear] */
    const shape3 img = {3, 8, 8, 0}, tok = {5, 9, 1, SHAPE_TOKENS}, vec = {8, 1, 1, 0},
                 cls = {4, 1, 1, 0};
    layer backbone[4] = {
        TL(LAYER_PATCH_EMBED, "patch", img, tok), TL(LAYER_ENCODER_BLOCK, "b0", tok, tok),
        TL(LAYER_ENCODER_BLOCK, "b1", tok, tok), TL(LAYER_ENCODER_BLOCK, "b2", tok, tok)};
    layer h0[3] = {TL(LAYER_TOKEN_POOL, "pool0", tok, vec), TL(LAYER_LAYER_NORM, "ln0", vec, vec),
                   TL(LAYER_LINEAR, "fc0", vec, cls)};
    layer h1[3] = {TL(LAYER_TOKEN_POOL, "pool1", tok, vec), TL(LAYER_LAYER_NORM, "ln1", vec, vec),
                   TL(LAYER_LINEAR, "fc1", vec, cls)};
    ert_model *m = calloc(1, sizeof *m);
    cr_assert(m);
    m->input = img;
    m->num_classes = 4;
    m->backbone = (layer_list){backbone, 4};
    m->num_exits = 2;
    strcpy(m->exits[0].name, "e0");
    m->exits[0].after = 1;
    m->exits[0].head = (layer_list){h0, 3};
    m->exits[0].policy = ERT_POLICY_ENTROPY;
    strcpy(m->exits[1].name, "final");
    m->exits[1].after = 3;
    m->exits[1].head = (layer_list){h1, 3};
    m->exits[1].policy = ERT_POLICY_NONE;
    plan p;
    memset(&p, 0, sizeof p);
    p.num_stages = 2;
    p.stages[0] = (stage){0, 2, img, tok, 0};
    p.stages[1] = (stage){2, 4, tok, tok, 0};
    p.max_act = 192;
    check_tx_model(m, &p);

    program g;
    ert_error err;
    cr_assert_eq(program_build(m, &p, ERT_MODE_COMPACTED, NULL, &g, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(count_ops(&g, OP_PATCH_EMBED, -1), 1);
    cr_assert_eq(count_ops(&g, OP_ENCODER, -1), 3);
    cr_assert_eq(count_ops(&g, OP_TOKEN_POOL, -1), 2);
    cr_assert_eq(count_ops(&g, OP_LAYER_NORM, -1), 2);
    /* the head's layer norm runs in place on the pooled vector */
    for (int i = 0; i < g.nops; i++)
        if (g.ops[i].kind == OP_LAYER_NORM)
            cr_assert_eq(g.ops[i].in, g.ops[i].out, "op %d: a vector's layer norm not in place", i);
    cr_assert(g.nbuf <= PROG_MAX_BUF);
    program_free(&g);
    free(m);
}

Test(program, bert_like)
{
    /* token_embed (T 6, D 8), layer_norm over the tokens, two post-LN GELU
       blocks; a DeeBERT exit [token_pool, linear, tanh, linear] after each,
       the first with a confidence head [token_pool, linear, gelu, linear,
       sigmoid] */
    const shape3 ids = {2, 6, 1, SHAPE_IDS}, tok = {6, 9, 1, SHAPE_TOKENS}, vec = {8, 1, 1, 0},
                 cls = {3, 1, 1, 0}, one = {1, 1, 1, 0};
    layer backbone[4] = {
        TL(LAYER_TOKEN_EMBED, "embed", ids, tok), TL(LAYER_LAYER_NORM, "ln", tok, tok),
        TL(LAYER_ENCODER_BLOCK, "b0", tok, tok), TL(LAYER_ENCODER_BLOCK, "b1", tok, tok)};
    layer h0[4] = {TL(LAYER_TOKEN_POOL, "p0", tok, vec), TL(LAYER_LINEAR, "pool0", vec, vec),
                   TL(LAYER_TANH, "t0", vec, vec), TL(LAYER_LINEAR, "fc0", vec, cls)};
    layer c0[5] = {TL(LAYER_TOKEN_POOL, "cp", tok, vec), TL(LAYER_LINEAR, "c1", vec, vec),
                   TL(LAYER_GELU, "cg", vec, vec), TL(LAYER_LINEAR, "c2", vec, one),
                   TL(LAYER_SIGMOID, "cs", one, one)};
    layer h1[4] = {TL(LAYER_TOKEN_POOL, "p1", tok, vec), TL(LAYER_LINEAR, "pool1", vec, vec),
                   TL(LAYER_TANH, "t1", vec, vec), TL(LAYER_LINEAR, "fc1", vec, cls)};
    ert_model *m = calloc(1, sizeof *m);
    cr_assert(m);
    m->input = ids;
    m->input_tokens = 6;
    m->num_classes = 3;
    m->backbone = (layer_list){backbone, 4};
    m->num_exits = 2;
    strcpy(m->exits[0].name, "e0");
    m->exits[0].after = 2;
    m->exits[0].head = (layer_list){h0, 4};
    m->exits[0].confidence = (layer_list){c0, 5};
    m->exits[0].policy = ERT_POLICY_CONFIDENCE_HEAD;
    strcpy(m->exits[1].name, "final");
    m->exits[1].after = 3;
    m->exits[1].head = (layer_list){h1, 4};
    m->exits[1].policy = ERT_POLICY_NONE;
    plan p;
    memset(&p, 0, sizeof p);
    p.num_stages = 2;
    p.stages[0] = (stage){0, 3, ids, tok, 0};
    p.stages[1] = (stage){3, 4, tok, tok, 0};
    p.max_act = 54;
    check_tx_model(m, &p);

    program g;
    ert_error err;
    cr_assert_eq(program_build(m, &p, ERT_MODE_MASKED, NULL, &g, &err), ERT_OK, "%s", err.msg);
    /* tanh and GELU ride on the linear before them: no activation op */
    cr_assert_eq(count_ops(&g, OP_ACT, -1), 0);
    cr_assert_eq(count_ops(&g, OP_LINEAR, ERT_ACT_TANH), 2);
    cr_assert_eq(count_ops(&g, OP_LINEAR, ERT_ACT_GELU), 1);
    cr_assert_eq(count_ops(&g, OP_TOKEN_EMBED, -1), 1);
    /* the backbone's layer norm works in place on the embedding it owns */
    cr_assert_eq(g.ops[1].kind, OP_LAYER_NORM);
    cr_assert_eq(g.ops[1].in, g.ops[1].out);
    program_free(&g);
    free(m);
}

/* ---- bucket_math.h: the graphs' self-check rows ------------------------------------ */

#include "../../kernels/bucket_math.h"

/* src/cuda/graph.c's self-check sends every row to the first exit with
 * thresholds of -inf (+inf for entropy) and to the final head with +inf
 * (-inf): which holds only where every exit's score is finite. On the CPU
 * engine, ert_graph_check_rows's rows score finitely at every exit of every
 * kind of model, token models included; all-zero rows, which the check fed
 * before, are all padding for a token model: NaN, and the check failed (the
 * graphs fell back to off) for every BERT-like model. */
static int exit_scores_finite(ert_model *m, const float *x, int rows)
{
    const int E = ert_model_num_exits(m);
    ert_engine *e = fx_cpu_engine(m, ERT_MODE_MASKED, rows);
    float *sc = malloc(sizeof(float) * (size_t)rows * E);
    cr_assert_not_null(sc);
    cr_assert_eq(ert_engine_exit_outputs(e, x, rows, sc, NULL), ERT_OK, "%s", ert_engine_error(e));
    int finite = 1;
    for (int i = 0; i < rows * E; i++)
        finite &= isfinite(sc[i]) != 0;
    free(sc);
    ert_engine_free(e);
    return finite;
}

Test(bucket_math, self_check_rows)
{
    const int rows = 3;
    for (int kind = 0; kind < MW_ALL_KINDS; kind++) {
        ert_model *m = fx_random_model(4400 + (uint64_t)kind, (mw_kind)kind);
        const size_t per = ert_model_input_size(m);
        const int T = ert_model_input_tokens(m);
        float *x = malloc(sizeof(float) * per * rows);
        cr_assert_not_null(x);
        for (size_t i = 0; i < per * rows; i++)
            x[i] = 7.0f; /* every value must be written */
        ert_graph_check_rows(x, rows, per, T);
        for (int r = 0; r < rows; r++)
            for (size_t j = 0; j < per; j++) {
                float want = T > 0 && j >= (size_t)T ? 1.0f : 0.0f;
                cr_assert_eq(x[r * per + j], want, "%s: row %d value %zu", mw_kind_name(kind), r,
                             j);
            }
        cr_assert(exit_scores_finite(m, x, rows), "%s: a self-check row scores NaN or inf",
                  mw_kind_name(kind));
        if (T > 0 && kind == MW_BERT) {
            memset(x, 0, sizeof(float) * per * rows);
            cr_assert(!exit_scores_finite(m, x, rows),
                      "%s: all-zero (all-padding) rows scored finitely", mw_kind_name(kind));
        }
        free(x);
        ert_model_free(m);
    }
}

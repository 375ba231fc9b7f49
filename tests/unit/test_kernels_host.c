/* test_kernels_host.c - the host-visible logic of the CUDA backend, checked
 * without a GPU:
 *   - kernels/compact_math.h: the exit kernel's single-block compaction
 *     (tiles, __ballot_sync words, popcounts below the lane, a shuffle scan
 *     of the warp totals) replayed on the CPU, against ert_compact_index;
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
            cr_assert_neq(op->in, op->out, "op %d (%s) runs in place", i, op->l->name);
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
    l.in = l.out = (shape3){c, hw, hw};
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
    backbone[4].out = (shape3){4, 1, 1};
    backbone[5].in = backbone[5].out = (shape3){4, 1, 1};
    layer head[4] = {L(LAYER_RESIDUAL, "hres", 4, 4), L(LAYER_RELU, "hrelu", 4, 4),
                     L(LAYER_FLATTEN, "hflat", 4, 4), L(LAYER_LINEAR, "fc", 4, 4)};
    head[0].p.residual = (residual_params){{hb_body, 3}, {NULL, 0}, 0};
    head[2].out = (shape3){64, 1, 1};
    head[3].in = (shape3){64, 1, 1};
    head[3].out = (shape3){4, 1, 1};
    layer conf[2] = {L(LAYER_LINEAR, "cfc", 4, 4), L(LAYER_SIGMOID, "csig", 1, 1)};
    conf[0].out = (shape3){1, 1, 1};

    ert_model *m = calloc(1, sizeof *m);
    cr_assert(m);
    m->input = (shape3){4, 4, 4};
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
    p.stages[0] = (stage){0, 2, {4, 4, 4}, {4, 4, 4}, 0};
    p.stages[1] = (stage){2, 6, {4, 4, 4}, {4, 1, 1}, 0};
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

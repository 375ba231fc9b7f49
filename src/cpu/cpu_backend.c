/* cpu_backend.c - the CPU backend: the three execution modes on the ops of cpu_ops.c.
 *
 * Buffers, all sized once in create for cfg.max_batch rows:
 *   act[4]   activations, plan.max_act floats per row each. The stage's input
 *            sits in one; its backbone layers and then its heads run in the
 *            other three (run_layers never writes its input), so the stage's
 *            output survives the heads and feeds the next stage.
 *   col      im2col scratch (plus the batched conv's GEMM output) for
 *            CONV_CHUNK_MAX rows, and op_linear's padded tile
 *   conf     the confidence head's output, one float per row
 *   orig     COMPACTED: each active row's original sample index
 *   done     MASKED: whether a row has exited already
 *   pstate   each sample's patience state (policy.h), at its position in the
 *            call: compaction moves rows, never this, and orig finds it
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_core.h"
#include "cpu/cpu_ops.h"
#include "cpu/layers.h"
#include "cpu/threads.h"
#include "cpu/tx_ops.h"
#include "policy.h"
#include "program.h"
#include "util.h"
#ifdef ERT_HAVE_DNNL
#include "cpu/dnnl.h"
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct cpu_ctx {
    float *act[4];
    float *col;
    size_t act_cap, col_cap; /* floats */
    float *conf;             /* [max_batch] */
    int *orig;               /* [max_batch] */
    int *dst;                /* [max_batch] compaction index */
    unsigned char *done;     /* [max_batch] */
    ert_patience *pstate;    /* [max_batch] by sample position in the call */
    int conv_batched;
    int tile_rows;         /* linear GEMM tile (ops.h) */
    int tok_tile;          /* the transformer ops' GEMM tile (tx_ops.h) */
    int tok_threads;       /* their OpenMP team (tx_ops.h) */
    int tx_team;           /* the model has transformer layers and that team has > 1 thread */
    int has_dnnl;          /* the oneDNN path is there */
    unsigned char *finite; /* [max_batch] a row's input is finite (oneDNN path) */
    int *ids;              /* [max_batch] a group's rows (the two paths) */
    float *staging;        /* [max_batch * largest stage input] a group's rows */
#ifdef ERT_HAVE_DNNL
    program prog;  /* the MASKED program: serves every mode */
    dnnl_exec *dx; /* the oneDNN path, or NULL: only the ops above */
#endif
} cpu_ctx;

static void cpu_destroy(void *p)
{
    cpu_ctx *c = p;
    if (!c)
        return;
    for (int i = 0; i < 4; i++)
        free(c->act[i]);
    free(c->col);
    free(c->conf);
    free(c->orig);
    free(c->dst);
    free(c->done);
    free(c->pstate);
    free(c->finite);
    free(c->ids);
    free(c->staging);
#ifdef ERT_HAVE_DNNL
    dx_free(c->dx);
    program_free(&c->prog);
#endif
    free(c);
}

/* Rows per oneDNN convolution call (dnnl.h). */
#define DNNL_CONV_TILE 16

static const char *BLAS_NOTE_EXACT =
    "cpu: batch-invariant (the BLAS rounds rows alike wherever they sit): the modes agree "
    "bit for bit";
static const char *BLAS_NOTE_ROUNDING =
    "cpu: the BLAS rounds rows by their place in a call: the modes agree to float rounding, "
    "not bit for bit";

/* The oneDNN path (dnnl.h) when this build has it and it can run the model,
 * else the ops path; sets the engine's note either way. Only running out of
 * memory fails the engine. */
static ert_status dnnl_setup(ert_engine *e, cpu_ctx *c)
{
    e->exact_modes = ops_blas_batch_invariant();
    const char *blas = e->exact_modes ? BLAS_NOTE_EXACT : BLAS_NOTE_ROUNDING;
#ifdef ERT_HAVE_DNNL
    program_opts o = {.fuse_residual = 1};
    ert_error perr = {{0}};
    char why[ERT_ERROR_LEN / 2] = "";
    ert_status st = program_build(e->model, &e->plan, ERT_MODE_MASKED, &o, &c->prog, &perr);
    if (st == ERT_OK) {
        /* linear layers: the BLAS path's tile (ops.h); convs and the rest:
           small tiles (convs ran as fast with 8 to 64 rows, and a small tile
           pads a small batch less) */
        int B = e->cfg.max_batch;
        int tile_linear = B < c->tile_rows ? B : c->tile_rows;
        int tile_conv = B < DNNL_CONV_TILE ? B : DNNL_CONV_TILE;
        if (tile_linear < tile_conv && tile_linear == B)
            tile_conv = B;
        st = dx_create(e->model, &e->plan, &c->prog, B, tile_conv, tile_linear, e->cfg.threads,
                       &c->dx, why, sizeof why);
    } else {
        snprintf(why, sizeof why, "%.200s", perr.msg);
    }
    if (st == ERT_OUT_OF_MEMORY)
        return engine_fail(e, st, "cpu backend: %s", why);
    if (st == ERT_OK) {
        c->has_dnnl = 1;
        e->exact_modes = dx_batch_invariant(c->dx);
        snprintf(e->note, sizeof e->note, "cpu: %s: the modes agree %s", dx_describe(c->dx),
                 dx_batch_invariant(c->dx) ? "bit for bit" : "to float rounding, not bit for bit");
        return ERT_OK;
    }
    program_free(&c->prog);
    snprintf(e->note, sizeof e->note, "cpu: oneDNN off (%.200s), OpenBLAS path; %s", why, blas + 5);
    return ERT_OK;
#else
    (void)c;
    snprintf(e->note, sizeof e->note, "%s", blas);
    return ERT_OK;
#endif
}

static ert_status cpu_create(ert_engine *e, void **out)
{
    const plan *p = &e->plan;
    const size_t B = (size_t)e->cfg.max_batch;
    if (e->cfg.precision != ERT_PRECISION_FP32)
        return engine_fail(e, ERT_UNSUPPORTED,
                           "cpu backend: precision %s needs the CUDA backend's tensor cores; the "
                           "CPU runs fp32 only",
                           ert_precision_string(e->cfg.precision));
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return engine_fail(e, ERT_OUT_OF_MEMORY, "cpu backend: out of memory");
    /* im2col scratch for chunks of up to CONV_CHUNK_MAX rows, (max_col +
     * max_act) each (op_conv2d). Not max_batch rows: a GEMM over all rows at
     * once measured slower than per sample once the columns leave the cache
     * (ops.c), so the chunks stay small, and so does this buffer. */
    c->conv_batched = 1;
    /* Sized for CONV_CHUNK_MAX rows whatever max_batch is, so an engine's
     * chunking (and with it the rounding) never depends on max_batch; and
     * for op_linear's padded tile of tile_rows rows in and out. */
    c->tile_rows = linear_tile_rows(e->cfg.max_batch);
    /* one sample at a time: the chunk's own row count is the sample's */
    c->tok_tile = e->cfg.max_batch == 1 ? 0 : TX_TILE_ROWS;
#ifdef _OPENMP
    c->tok_threads = e->cfg.threads > 0 ? e->cfg.threads : omp_get_max_threads();
#else
    c->tok_threads = 1; /* no OpenMP: the ops run on the calling thread */
#endif
    size_t col_row, tile;
    if (!size_mul(p->max_act, B, &c->act_cap) || !size_add(p->max_col, p->max_act, &col_row) ||
        !size_mul(col_row, CONV_CHUNK_MAX, &c->col_cap) ||
        !size_mul(p->max_act, 2 * (size_t)c->tile_rows, &tile) ||
        c->act_cap > SIZE_MAX / sizeof(float) || c->col_cap > SIZE_MAX / sizeof(float) ||
        tile > SIZE_MAX / sizeof(float)) {
        cpu_destroy(c);
        return engine_fail(e, ERT_OUT_OF_MEMORY, "cpu backend: buffer sizes overflow");
    }
    if (tile > c->col_cap)
        c->col_cap = tile;
    /* the transformer layers' scratch (tx_ops.h): one chunk's at a time */
    const int tt = c->tok_threads;
    size_t tx = tx_list_scratch(&e->model->backbone, tt);
    for (int x = 0; x < e->model->num_exits; x++) {
        size_t h = tx_list_scratch(&e->model->exits[x].head, tt);
        size_t cf = tx_list_scratch(&e->model->exits[x].confidence, tt);
        tx = h > tx ? h : tx;
        tx = cf > tx ? cf : tx;
    }
    if (tx > c->col_cap)
        c->col_cap = tx;
    c->tx_team = tx > 0 && c->tok_threads > 1;
    for (int i = 0; i < 4; i++)
        c->act[i] = malloc(sizeof(float) * (c->act_cap ? c->act_cap : 1));
    c->col = malloc(sizeof(float) * (c->col_cap ? c->col_cap : 1));
    c->conf = malloc(sizeof(float) * B);
    c->orig = malloc(sizeof(int) * B);
    c->dst = malloc(sizeof(int) * B);
    c->done = malloc(B);
    c->pstate = malloc(sizeof(ert_patience) * B);
    if (!c->act[0] || !c->act[1] || !c->act[2] || !c->act[3] || !c->col || !c->conf || !c->orig ||
        !c->dst || !c->done || !c->pstate) {
        size_t act = c->act_cap, col = c->col_cap;
        cpu_destroy(c);
        return engine_fail(e, ERT_OUT_OF_MEMORY,
                           "cpu backend: out of memory for %zu activation floats x 4 and %zu "
                           "im2col floats (max_batch %d)",
                           act, col, e->cfg.max_batch);
    }
    /* the two paths' groups (see "the two paths" below) */
    size_t in_max = 0, floats;
    for (int s = 0; s < p->num_stages; s++)
        if (shape_size(p->stages[s].in) > in_max)
            in_max = shape_size(p->stages[s].in);
    c->finite = malloc(B);
    c->ids = malloc(sizeof(int) * B);
    if (!size_mul(in_max, B, &floats) || floats > SIZE_MAX / sizeof(float) || !c->finite ||
        !c->ids || !(c->staging = malloc(sizeof(float) * (floats ? floats : 1)))) {
        cpu_destroy(c);
        return engine_fail(e, ERT_OUT_OF_MEMORY, "cpu backend: out of memory for staging rows");
    }
    ert_status st = dnnl_setup(e, c);
    if (st != ERT_OK) {
        cpu_destroy(c);
        return st;
    }
    *out = c;
    return ERT_OK;
}

/* The scratch for a run whose input is act[busy]: the other three. */
static ops_ws ws_without(const cpu_ctx *c, const float *busy)
{
    ops_ws ws = {.act_cap = c->act_cap,
                 .col = c->col,
                 .col_cap = c->col_cap,
                 .conv_batched = c->conv_batched,
                 .tile_rows = c->tile_rows,
                 .tok_tile = c->tok_tile,
                 .threads = c->tok_threads};
    int k = 0;
    for (int i = 0; i < 4; i++)
        if (c->act[i] != busy && k < 3)
            ws.buf[k++] = c->act[i];
    return ws;
}

/* ---- the two paths ---------------------------------------------------------------------
 *
 * A row runs a stage on the oneDNN path (when the engine has one) unless its
 * stage input holds a NaN or an infinity: oneDNN's ReLU turns NaN into 0,
 * where PyTorch and the ops here keep it (ops.h), so such rows run the ops
 * path. The choice depends on the row alone, and each path is
 * batch-invariant on its own, so a row's results never depend on its
 * neighbours. A NaN persists through the ops path, so a row with a NaN input
 * stays there in every stage; in one call (cpu_run) a row keeps the path its
 * model input chose for all stages, in the refill stream (cpu_run_stage) the
 * path is chosen per stage from the stage input: the two differ only for a
 * row whose infinities vanish in some stage (the ReLU of -inf), and then by
 * float rounding. */

static int row_finite(const float *x, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

/* Where stage 0's normalised input goes on a path (dn: oneDNN). */
static float *stage0_input(cpu_ctx *c, int dn)
{
#ifdef ERT_HAVE_DNNL
    if (dn)
        return dx_io(c->dx, 0);
#endif
    (void)dn;
    return c->act[0];
}

/* Stage s on the n rows of cur: the backbone, then with `heads` the exit's
 * heads. Returns the stage output [n, stage out] (rows of the plan's size);
 * with heads, *z the logits [n, K] (the output itself when the head is
 * empty) and *conf the confidence head's output [n], or NULL when the exit
 * has none. On the ops path the output is one of the act buffers (or cur
 * itself for a stage of reshapes); on the oneDNN path one of dx_io(), the
 * one cur is not. */
static const float *run_stage_rows(ert_engine *e, cpu_ctx *c, int dn, int s, const float *cur,
                                   int n, int heads, const float **z, const float **conf,
                                   ert_status *st)
{
    const ert_model *m = e->model;
    const stage *sg = &e->plan.stages[s];
    const exit_def *x = &m->exits[s];
    *z = *conf = NULL;
    *st = ERT_OK;
#ifdef ERT_HAVE_DNNL
    if (dn) {
        float *y = cur == dx_io(c->dx, 0) ? dx_io(c->dx, 1) : dx_io(c->dx, 0);
        char why[ERT_ERROR_LEN / 2];
        if ((*st = dx_stage(c->dx, s, n, heads, cur, y, why, sizeof why)) != ERT_OK) {
            engine_fail(e, *st, "cpu backend: %s", why);
            return y;
        }
        if (heads) {
            *z = dx_logits(c->dx);
            *conf = dx_conf(c->dx, s);
        }
        return y;
    }
#endif
    (void)dn;
    ops_ws ws = ws_without(c, cur);
    layer_list range = {m->backbone.items + sg->begin, sg->end - sg->begin};
    const float *y = run_layers(&range, cur, n, &ws);
    if (!heads)
        return y;
    ws = ws_without(c, y);
    if (x->policy == ERT_POLICY_CONFIDENCE_HEAD && x->confidence.count > 0) {
        /* before the head: both use the same scratch */
        const float *cf = run_layers(&x->confidence, y, n, &ws);
        memcpy(c->conf, cf, sizeof(float) * (size_t)n);
        *conf = c->conf;
    }
    *z = run_layers(&x->head, y, n, &ws);
    return y;
}

/* Whether row r (of the n in z/conf) leaves at exit s, and its score.
 * *st: the row's patience state, updated with this exit (policy.h's
 * ert_exit_score); not read or written at the final head. */
static int row_decides(const ert_engine *e, const float *conf_col, int s, const float *z, int r,
                       ert_patience *st, float *score)
{
    const ert_model *m = e->model;
    const int K = m->num_classes;
    int last = s == m->num_exits - 1;
    int kind = last ? ERT_POLICY_NONE : (int)m->exits[s].policy;
    float conf = kind == ERT_POLICY_CONFIDENCE_HEAD && conf_col ? conf_col[r] : 0.0f;
    *score = ert_exit_score(kind, s, z + (size_t)r * K, K, conf, last ? NULL : st);
    return ert_policy_exits(kind, *score, e->thresholds[s]);
}

static void write_row(const ert_engine *e, ert_result *out, int sample, int s, const float *z,
                      int r, float score)
{
    const int K = e->model->num_classes;
    const float *zr = z + (size_t)r * K;
    out->samples[sample].exit_index = s;
    out->samples[sample].predicted = ert_argmax(zr, K);
    out->samples[sample].score = score;
    if (out->logits)
        memcpy(out->logits + (size_t)sample * K, zr, sizeof(float) * K);
}

/* ---- one call ------------------------------------------------------------------------- */

/* The n rows of input (contiguous) through every stage on one path; row i
 * is sample ids[i] of the call (ids NULL: sample i). out == NULL: every
 * exit's score and class of every row into scores / classes[sample *
 * num_exits + exit] instead (either may be NULL; MASKED work, no
 * decisions). Adds the MACs run to *macs. */
static ert_status run_rows(ert_engine *e, cpu_ctx *c, int dn, const float *input, int n,
                           const int *ids, ert_result *out, float *scores, int32_t *classes,
                           uint64_t *macs)
{
    const ert_model *m = e->model;
    const plan *p = &e->plan;
    const int E = m->num_exits, K = m->num_classes;
    const ert_mode mode = out ? e->cfg.mode : ERT_MODE_MASKED;

    float *cur = stage0_input(c, dn);
    op_normalize(m->input, input, n, cur, m->input_scale, m->mean, m->std);
    for (int i = 0; i < n; i++) {
        c->orig[i] = ids ? ids[i] : i;
        c->done[i] = 0;
    }

    for (int s = 0; s < p->num_stages && n > 0; s++) {
        const stage *st = &p->stages[s];
        const exit_def *x = &m->exits[s];
        int last = s == p->num_stages - 1;
        ert_status rs;
        const int heads = mode != ERT_MODE_FULL || last;
        const float *z, *conf;
        /* y: the stage's output buffer (its input was normalised into another) */
        float *y = (float *)run_stage_rows(e, c, dn, s, cur, n, heads, &z, &conf, &rs);
        if (rs != ERT_OK)
            return rs;
        *macs += (uint64_t)n * st->macs;
        cur = y;
        if (!heads)
            continue;
        *macs += (uint64_t)n * x->head_macs;

        if (!out) {
            for (int r = 0; r < n; r++) {
                size_t at = (size_t)c->orig[r] * E + s;
                float score;
                row_decides(e, conf, s, z, r, &c->pstate[c->orig[r]], &score);
                if (scores)
                    scores[at] = score;
                if (classes)
                    classes[at] = ert_argmax(z + (size_t)r * K, K);
            }
            continue;
        }
        if (mode != ERT_MODE_COMPACTED) {
            /* FULL (last stage only) and MASKED: every row stays in place */
            for (int r = 0; r < n; r++) {
                float score;
                if (c->done[r] || !row_decides(e, conf, s, z, r, &c->pstate[c->orig[r]], &score))
                    continue;
                write_row(e, out, c->orig[r], s, z, r, score);
                c->done[r] = 1;
            }
            continue;
        }

        /* COMPACTED: exiting rows go out at their original positions; the
         * survivors move to the front of y, in order, with their indices
         * (which is all their patience state needs to follow them). */
        for (int r = 0; r < n; r++) {
            float score;
            c->done[r] =
                (unsigned char)row_decides(e, conf, s, z, r, &c->pstate[c->orig[r]], &score);
            if (c->done[r])
                write_row(e, out, c->orig[r], s, z, r, score);
        }
        if (last)
            break;
        int kept = ert_compact_index(c->done, n, c->dst);
        if (kept < n) {
            size_t row = shape_size(st->out);
            for (int r = 0; r < n; r++) {
                int d = c->dst[r];
                if (d < 0 || d == r)
                    continue;
                /* d < r: the rows never overlap, and row d was read already */
                memcpy(y + (size_t)d * row, y + (size_t)r * row, sizeof(float) * row);
                c->orig[d] = c->orig[r];
            }
        }
        n = kept;
    }
    return ERT_OK;
}

/* The whole batch: rows with a finite input on the oneDNN path (when the
 * engine has it), the others on the ops path (see "the two paths"). */
static ert_status cpu_run(ert_engine *e, const float *input, int batch, ert_result *out,
                          float *scores, int32_t *classes)
{
    cpu_ctx *c = e->ctx;
    uint64_t macs = 0;
    ert_status st = ERT_OK;
    if (!c->has_dnnl) {
        st = run_rows(e, c, 0, input, batch, NULL, out, scores, classes, &macs);
    } else {
        const size_t per = shape_size(e->model->input);
        int good = 0;
        for (int i = 0; i < batch; i++)
            c->finite[i] = (unsigned char)row_finite(input + (size_t)i * per, per);
        for (int i = 0; i < batch; i++)
            good += c->finite[i];
        if (good == batch) {
            st = run_rows(e, c, 1, input, batch, NULL, out, scores, classes, &macs);
        } else {
            /* each group gathered into the staging rows, with its samples' ids */
            for (int want = 1; want >= 0 && st == ERT_OK; want--) {
                int k = 0;
                for (int i = 0; i < batch; i++)
                    if (c->finite[i] == want) {
                        memcpy(c->staging + (size_t)k * per, input + (size_t)i * per,
                               sizeof(float) * per);
                        c->ids[k++] = i;
                    }
                if (k)
                    st = run_rows(e, c, want, c->staging, k, c->ids, out, scores, classes, &macs);
            }
        }
    }
    if (st == ERT_OK && out) {
        out->macs_executed = macs;
        out->host_waits = 0;
    }
    return st;
}

static ert_status cpu_infer(ert_engine *e, const float *input, int batch, ert_result *out)
{
    return cpu_run(e, input, batch, out, NULL, NULL);
}

static ert_status cpu_exit_outputs(ert_engine *e, const float *input, int batch, float *scores,
                                   int32_t *classes)
{
    return cpu_run(e, input, batch, NULL, scores, classes);
}

/* ---- one stage of the refill stream ------------------------------------------------------- */

/* Stage s for the n rows of `in` whose ids[k] are rows of the call, on one
 * path: results at those rows of res/logits/exited/state, the stage output
 * of every row in *y_out (NULL for a FULL stage without a head) in group
 * order. */
static ert_status stage_rows(ert_engine *e, cpu_ctx *c, int dn, int s, const float *in, int n,
                             const int *ids, ert_sample *res, float *logits, unsigned char *exited,
                             ert_patience *state, uint64_t *macs, const float **y_out)
{
    const ert_model *m = e->model;
    const stage *st = &e->plan.stages[s];
    const int K = m->num_classes;
    const int last = s == e->plan.num_stages - 1;
    const float *cur = in;
    if (s == 0) {
        float *x0 = stage0_input(c, dn);
        op_normalize(m->input, in, n, x0, m->input_scale, m->mean, m->std);
        cur = x0;
    }
    ert_status rs;
    const int heads = e->cfg.mode != ERT_MODE_FULL || last;
    const float *z, *conf;
    /* y: one of the act buffers or dx_io(), or `cur` itself for a stage of
       reshapes */
    const float *y = run_stage_rows(e, c, dn, s, cur, n, heads, &z, &conf, &rs);
    if (rs != ERT_OK)
        return rs;
    *macs += (uint64_t)n * st->macs;
    *y_out = y;
    if (!heads) {
        for (int k = 0; k < n; k++)
            exited[ids[k]] = 0; /* no early heads: every row goes on */
        return ERT_OK;
    }
    *macs += (uint64_t)n * m->exits[s].head_macs;
    for (int k = 0; k < n; k++) {
        float score;
        int r = ids[k];
        exited[r] = (unsigned char)row_decides(e, conf, s, z, k, &state[r], &score);
        if (exited[r]) {
            const float *zr = z + (size_t)k * K;
            res[r].exit_index = s;
            res[r].predicted = ert_argmax(zr, K);
            res[r].score = score;
            memcpy(logits + (size_t)r * K, zr, sizeof(float) * K);
        }
    }
    return ERT_OK;
}

/* One stage of the refill stream (engine_core.h's run_stage): the same ops,
 * buffers and decisions as cpu_run, on rows whose input lives in the
 * stream's queue; each row on the path its stage input chooses. Batch
 * invariance (ops.h) makes every row's output equal MASKED's bit for bit
 * (but see "the two paths" above). */
static ert_status cpu_run_stage(ert_engine *e, int s, const float *in, int n, float *out,
                                ert_sample *res, float *logits, unsigned char *exited,
                                ert_patience *state, uint64_t *macs)
{
    cpu_ctx *c = e->ctx;
    const stage *st = &e->plan.stages[s];
    const size_t in_row = shape_size(st->in), row = shape_size(st->out);
    const int last = s == e->plan.num_stages - 1;

    /* the groups: rows whose stage input is finite (oneDNN), the others */
    int ngroup[2] = {0, 0}; /* [path]: 0 ops, 1 oneDNN */
    const float *grp_in[2] = {in, in};
    for (int r = 0; r < n; r++) {
        c->finite[r] = (unsigned char)(c->has_dnnl && row_finite(in + (size_t)r * in_row, in_row));
        ngroup[c->finite[r]]++;
    }
    const float *y[2] = {NULL, NULL};
    for (int dn = 1; dn >= 0; dn--) {
        if (!ngroup[dn])
            continue;
        int k = 0;
        int *ids = dn ? c->ids : c->dst;
        if (ngroup[dn] == n) {
            for (int r = 0; r < n; r++)
                ids[r] = r;
        } else {
            float *g = dn ? c->staging : c->staging + (size_t)ngroup[1] * in_row;
            for (int r = 0; r < n; r++)
                if (c->finite[r] == dn) {
                    memcpy(g + (size_t)k * in_row, in + (size_t)r * in_row, sizeof(float) * in_row);
                    ids[k++] = r;
                }
            grp_in[dn] = g;
        }
        ert_status rs = stage_rows(e, c, dn, s, grp_in[dn], ngroup[dn], ids, res, logits, exited,
                                   state, macs, &y[dn]);
        if (rs != ERT_OK)
            return rs;
    }
    if (last)
        return ERT_OK;
    /* the survivors in row order: survivor j at row j of out */
    int kept = 0, at[2] = {0, 0};
    for (int r = 0; r < n; r++) {
        int dn = c->finite[r];
        const float *yr = y[dn] + (size_t)at[dn]++ * row;
        if (!exited[r])
            memcpy(out + (size_t)kept++ * row, yr, sizeof(float) * row);
    }
    return ERT_OK;
}

/* ---- the engine's thread counts, scoped to each call (cpu/threads.h) ---------------------- *
 *
 * Every entry point runs with the engine's counts and gives back the
 * caller's (exitrt.h, ert_engine_config.threads). A model with transformer
 * layers runs its blocks on the OpenMP team (tx_ops.h) with OpenBLAS at one
 * thread inside it; its other BLAS calls (the heads' linear layers) stay at
 * one thread too, so that OpenBLAS's own pool never wakes beside the team's
 * threads. Otherwise OpenBLAS runs the engine's count. threads 0: the
 * libraries' own counts. */

static void scope_enter(const ert_engine *e, const cpu_ctx *c, cpu_threads *saved)
{
    const int t = e->cfg.threads;
    cpu_threads_enter(t, c && c->tx_team ? 1 : t, saved);
}

static ert_status scoped_create(ert_engine *e, void **out)
{
    cpu_threads saved;
    scope_enter(e, NULL, &saved); /* oneDNN's primitives are made and probed here */
    ert_status st = cpu_create(e, out);
    cpu_threads_leave(&saved);
    return st;
}

static ert_status scoped_infer(ert_engine *e, const float *input, int batch, ert_result *out)
{
    cpu_threads saved;
    scope_enter(e, e->ctx, &saved);
    ert_status st = cpu_infer(e, input, batch, out);
    cpu_threads_leave(&saved);
    return st;
}

static ert_status scoped_exit_outputs(ert_engine *e, const float *input, int batch, float *scores,
                                      int32_t *classes)
{
    cpu_threads saved;
    scope_enter(e, e->ctx, &saved);
    ert_status st = cpu_exit_outputs(e, input, batch, scores, classes);
    cpu_threads_leave(&saved);
    return st;
}

static ert_status scoped_run_stage(ert_engine *e, int s, const float *in, int n, float *out,
                                   ert_sample *res, float *logits, unsigned char *exited,
                                   ert_patience *state, uint64_t *macs)
{
    cpu_threads saved;
    scope_enter(e, e->ctx, &saved);
    ert_status st = cpu_run_stage(e, s, in, n, out, res, logits, exited, state, macs);
    cpu_threads_leave(&saved);
    return st;
}

const backend_ops cpu_backend_ops = {
    .name = "cpu",
    .kind = ERT_BACKEND_CPU,
    .create = scoped_create,
    .destroy = cpu_destroy,
    .infer = scoped_infer,
    .exit_outputs = scoped_exit_outputs,
    .infer_device = NULL,
    .run_stage = scoped_run_stage,
};

/* backend.c - the CPU backend: the three execution modes on the ops of ops.c.
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
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/ops.h"
#include "policy.h"
#include "util.h"

typedef struct cpu_ctx {
    float *act[4];
    float *col;
    size_t act_cap, col_cap; /* floats */
    float *conf;             /* [max_batch] */
    int *orig;               /* [max_batch] */
    int *dst;                /* [max_batch] compaction index */
    unsigned char *done;     /* [max_batch] */
    int conv_batched;
    int tile_rows;           /* linear GEMM tile (ops.h) */
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
    free(c);
}

static ert_status cpu_create(ert_engine *e, void **out)
{
    const plan *p = &e->plan;
    const size_t B = (size_t)e->cfg.max_batch;
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
    size_t col_row, tile;
    if (!size_mul(p->max_act, B, &c->act_cap) || !size_add(p->max_col, p->max_act, &col_row) ||
        !size_mul(col_row, CONV_CHUNK_MAX, &c->col_cap) ||
        !size_mul(p->max_act, 2 * (size_t)c->tile_rows, &tile) ||
        c->act_cap > SIZE_MAX / sizeof(float) ||
        c->col_cap > SIZE_MAX / sizeof(float) || tile > SIZE_MAX / sizeof(float)) {
        cpu_destroy(c);
        return engine_fail(e, ERT_OUT_OF_MEMORY, "cpu backend: buffer sizes overflow");
    }
    if (tile > c->col_cap)
        c->col_cap = tile;
    for (int i = 0; i < 4; i++)
        c->act[i] = malloc(sizeof(float) * (c->act_cap ? c->act_cap : 1));
    c->col = malloc(sizeof(float) * (c->col_cap ? c->col_cap : 1));
    c->conf = malloc(sizeof(float) * B);
    c->orig = malloc(sizeof(int) * B);
    c->dst = malloc(sizeof(int) * B);
    c->done = malloc(B);
    if (!c->act[0] || !c->act[1] || !c->act[2] || !c->act[3] || !c->col || !c->conf ||
        !c->orig || !c->dst || !c->done) {
        size_t act = c->act_cap, col = c->col_cap;
        cpu_destroy(c);
        return engine_fail(e, ERT_OUT_OF_MEMORY,
                           "cpu backend: out of memory for %zu activation floats x 4 and %zu "
                           "im2col floats (max_batch %d)",
                           act, col, e->cfg.max_batch);
    }
    snprintf(e->note, sizeof e->note, "%s",
             ops_blas_batch_invariant()
                 ? "cpu: batch-invariant (the BLAS rounds rows alike wherever they sit): the "
                   "modes agree bit for bit"
                 : "cpu: the BLAS rounds rows by their place in a call: the modes agree to "
                   "float rounding, not bit for bit");
    *out = c;
    return ERT_OK;
}

/* The scratch for a run whose input is act[busy]: the other three. */
static ops_ws ws_without(const cpu_ctx *c, const float *busy)
{
    ops_ws ws = {.act_cap = c->act_cap, .col = c->col, .col_cap = c->col_cap,
                 .conv_batched = c->conv_batched, .tile_rows = c->tile_rows};
    int k = 0;
    for (int i = 0; i < 4; i++)
        if (c->act[i] != busy && k < 3)
            ws.buf[k++] = c->act[i];
    return ws;
}

/* Runs exit s's heads on the n rows of y (the stage output).
 *   y       [n, stage out]
 *   return  the logits [n, K], in a buffer other than y (or y itself when
 *           the head is empty); c->conf[0..n) holds the confidence head's
 *           output when the exit has one. */
static const float *run_heads(cpu_ctx *c, const exit_def *x, const float *y, int n)
{
    ops_ws ws = ws_without(c, y);
    if (x->policy == ERT_POLICY_CONFIDENCE_HEAD && x->confidence.count > 0) {
        /* before the head: both use the same scratch */
        const float *cf = run_layers(&x->confidence, y, n, &ws);
        memcpy(c->conf, cf, sizeof(float) * (size_t)n);
    }
    return run_layers(&x->head, y, n, &ws);
}

/* Whether row r (of the n in z/conf) leaves at exit s, and its score. */
static int row_decides(const ert_engine *e, const cpu_ctx *c, int s, const float *z, int r,
                       float *score)
{
    const ert_model *m = e->model;
    const int K = m->num_classes;
    int last = s == m->num_exits - 1;
    int kind = last ? ERT_POLICY_NONE : (int)m->exits[s].policy;
    float conf = kind == ERT_POLICY_CONFIDENCE_HEAD ? c->conf[r] : 0.0f;
    *score = ert_policy_score(kind, z + (size_t)r * K, K, conf);
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

/* The whole batch. out == NULL: write every exit's score of every row into
 * scores[row * num_exits + exit] instead (MASKED work, no decisions). */
static ert_status cpu_run(ert_engine *e, const float *input, int batch, ert_result *out,
                          float *scores)
{
    cpu_ctx *c = e->ctx;
    const ert_model *m = e->model;
    const plan *p = &e->plan;
    const int E = m->num_exits;
    const ert_mode mode = scores ? ERT_MODE_MASKED : e->cfg.mode;
    uint64_t macs = 0;

    if (e->cfg.threads > 0)
        openblas_set_num_threads(e->cfg.threads);

    float *cur = c->act[0];
    op_normalize(m->input, input, batch, cur, m->input_scale, m->mean, m->std);
    int n = batch;
    for (int i = 0; i < batch; i++) {
        c->orig[i] = i;
        c->done[i] = 0;
    }

    for (int s = 0; s < p->num_stages && n > 0; s++) {
        const stage *st = &p->stages[s];
        const exit_def *x = &m->exits[s];
        int last = s == p->num_stages - 1;
        ops_ws ws = ws_without(c, cur);
        layer_list range = {m->backbone.items + st->begin, st->end - st->begin};
        /* y is one of the act buffers: the input was normalised into one */
        float *y = (float *)run_layers(&range, cur, n, &ws);
        macs += (uint64_t)n * st->macs;
        cur = y;
        if (mode == ERT_MODE_FULL && !last)
            continue;

        const float *z = run_heads(c, x, y, n);
        macs += (uint64_t)n * x->head_macs;

        if (scores) {
            for (int r = 0; r < n; r++)
                row_decides(e, c, s, z, r, &scores[(size_t)r * E + s]);
            continue;
        }
        if (mode != ERT_MODE_COMPACTED) {
            /* FULL (last stage only) and MASKED: row r is sample r */
            for (int r = 0; r < n; r++) {
                float score;
                if (c->done[r] || !row_decides(e, c, s, z, r, &score))
                    continue;
                write_row(e, out, r, s, z, r, score);
                c->done[r] = 1;
            }
            continue;
        }

        /* COMPACTED: exiting rows go out at their original positions; the
         * survivors move to the front of y, in order, with their indices. */
        for (int r = 0; r < n; r++) {
            float score;
            c->done[r] = (unsigned char)row_decides(e, c, s, z, r, &score);
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
    if (out) {
        out->macs_executed = macs;
        out->host_waits = 0;
    }
    return ERT_OK;
}

static ert_status cpu_infer(ert_engine *e, const float *input, int batch, ert_result *out)
{
    return cpu_run(e, input, batch, out, NULL);
}

static ert_status cpu_scores(ert_engine *e, const float *input, int batch, float *scores)
{
    return cpu_run(e, input, batch, NULL, scores);
}

/* One stage of the refill stream (backend.h's run_stage): the same ops,
 * buffers and decisions as cpu_run, on rows whose input lives in the
 * stream's queue. Batch invariance (ops.h) makes every row's output equal
 * MASKED's bit for bit. */
static ert_status cpu_run_stage(ert_engine *e, int s, const float *in, int n, float *out,
                                ert_sample *res, float *logits, unsigned char *exited,
                                uint64_t *macs)
{
    cpu_ctx *c = e->ctx;
    const ert_model *m = e->model;
    const plan *p = &e->plan;
    const stage *st = &p->stages[s];
    const exit_def *x = &m->exits[s];
    const int K = m->num_classes;
    const int last = s == p->num_stages - 1;

    if (e->cfg.threads > 0)
        openblas_set_num_threads(e->cfg.threads);
    const float *cur = in;
    if (s == 0) {
        op_normalize(m->input, in, n, c->act[0], m->input_scale, m->mean, m->std);
        cur = c->act[0];
    }
    ops_ws ws = ws_without(c, cur);
    layer_list range = {m->backbone.items + st->begin, st->end - st->begin};
    /* y: one of the act buffers, or `cur` itself for a stage of reshapes */
    const float *y = run_layers(&range, cur, n, &ws);
    *macs += (uint64_t)n * st->macs;
    const size_t row = shape_size(st->out);

    if (e->cfg.mode == ERT_MODE_FULL && !last) {
        /* no early heads: every row goes on */
        memcpy(out, y, sizeof(float) * row * (size_t)n);
        memset(exited, 0, (size_t)n);
        return ERT_OK;
    }
    const float *z = run_heads(c, x, y, n);
    *macs += (uint64_t)n * x->head_macs;
    int kept = 0;
    for (int r = 0; r < n; r++) {
        float score;
        exited[r] = (unsigned char)row_decides(e, c, s, z, r, &score);
        if (exited[r]) {
            const float *zr = z + (size_t)r * K;
            res[r].exit_index = s;
            res[r].predicted = ert_argmax(zr, K);
            res[r].score = score;
            memcpy(logits + (size_t)r * K, zr, sizeof(float) * K);
        } else if (!last) {
            memcpy(out + (size_t)kept * row, y + (size_t)r * row, sizeof(float) * row);
            kept++;
        }
    }
    return ERT_OK;
}

const backend_ops cpu_backend_ops = {
    .name = "cpu",
    .kind = ERT_BACKEND_CPU,
    .create = cpu_create,
    .destroy = cpu_destroy,
    .infer = cpu_infer,
    .scores = cpu_scores,
    .infer_device = NULL,
    .run_stage = cpu_run_stage,
};

/* test_stream.c - the refill stream (exitrt.h, src/stream.c) on the backend
 * under test (backend_test.h).
 *
 * The property: whatever the submission pattern, queue size, batch,
 * deadline and schedule, every sample comes back exactly once with what
 * ert_infer in MASKED mode gives it on the same engine: bit for bit where
 * tests/common/exact.h requires it (the CPU with batch-invariant libraries,
 * cpu/cpu_ops.h), elsewhere with the modes' tolerance and exits equal
 * except within rounding of a threshold. And the counters add up: rows run
 * per stage = rows entering it, MACs = the ideal MACs of the exits taken
 * (no padding: padding_rows is always 0). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_test.h"
#include "tolerance.h"
#include "plan.h"
#include "policy.h"

#define IS_CPU (ERT_TEST_BACKEND == ERT_BACKEND_CPU)
/* bit-for-bit agreement: an engine whose modes agree exactly (its note) */
#define EXACT (tb_exact(f->e))
#define NEVER (-1.0) /* deadline_ms: partial batches on flush only */

/* ---- helpers ----------------------------------------------------------------- */

typedef struct fixture {
    ert_model *m;
    ert_engine *e;   /* the stream's engine */
    ert_engine *ref; /* MASKED: the reference (== e when e is MASKED) */
    plan p;
    int K, E, N;
    size_t per;
    float *x;           /* [N, per] */
    ert_sample *want;   /* [N] MASKED's */
    float *want_logits; /* [N, K] */
    int32_t want_counts[ERT_MAX_EXITS];
} fixture;

/* MASKED's results for all N samples, in batches of up to max_batch. */
static void reference(fixture *f, int max_batch)
{
    memset(f->want_counts, 0, sizeof f->want_counts);
    tb_result t;
    tb_result_init(&t, max_batch, f->K);
    for (int off = 0; off < f->N; off += max_batch) {
        int b = f->N - off < max_batch ? f->N - off : max_batch;
        tb_infer(f->ref, f->x + (size_t)off * f->per, b, &t);
        memcpy(f->want + off, t.samples, sizeof(ert_sample) * (size_t)b);
        memcpy(f->want_logits + (size_t)off * f->K, t.logits, sizeof(float) * (size_t)b * f->K);
        for (int i = 0; i < ERT_MAX_EXITS; i++)
            f->want_counts[i] += t.r.exit_counts[i];
    }
    tb_result_free(&t);
}

/* mode: the stream engine's; its reference is a MASKED engine (itself when
 * MASKED; for FULL, FULL's own ert_infer is the reference). */
static void fixture_open(fixture *f, mw_kind kind, uint64_t seed, ert_mode mode, int max_batch,
                         int N)
{
    memset(f, 0, sizeof *f);
    f->m = fx_random_model(seed, kind);
    f->e = tb_engine(f->m, mode, max_batch);
    f->ref = mode == ERT_MODE_COMPACTED ? tb_engine(f->m, ERT_MODE_MASKED, max_batch) : f->e;
    plan_build(f->m, &f->p);
    f->K = ert_model_num_classes(f->m);
    f->E = ert_model_num_exits(f->m);
    f->N = N;
    f->per = ert_model_input_size(f->m);
    f->x = malloc(sizeof(float) * f->per * (size_t)N);
    f->want = calloc((size_t)N, sizeof *f->want);
    f->want_logits = calloc((size_t)N * f->K, sizeof(float));
    cr_assert(f->x && f->want && f->want_logits);
    mw_model_inputs(f->m, f->x, N, seed * 7919 + 1); /* token rows for a token model */
    reference(f, max_batch);
}

static void fixture_close(fixture *f)
{
    if (f->ref != f->e)
        ert_engine_free(f->ref);
    ert_engine_free(f->e);
    ert_model_free(f->m);
    free(f->x);
    free(f->want);
    free(f->want_logits);
}

/* Sets the same thresholds on both engines (then the reference again). */
static void set_thresholds(fixture *f, const float *thr, int max_batch)
{
    for (int i = 0; i < f->E - 1; i++) {
        cr_assert_eq(ert_engine_set_threshold(f->e, i, thr[i]), ERT_OK, "%s",
                     ert_engine_error(f->e));
        cr_assert_eq(ert_engine_set_threshold(f->ref, i, thr[i]), ERT_OK);
    }
    reference(f, max_batch);
}

static ert_stream *stream_new(ert_engine *e, int batch, int queue, double deadline_ms,
                              ert_stream_schedule sched)
{
    ert_stream_config cfg = ert_stream_config_default();
    cfg.batch = batch;
    cfg.queue = queue;
    cfg.deadline_ms = deadline_ms;
    cfg.schedule = sched;
    ert_stream *s = NULL;
    ert_error err = {{0}};
    ert_status st = ert_stream_create(e, &cfg, &s, &err);
    cr_assert_eq(st, ERT_OK, "ert_stream_create (batch %d, queue %d): %s: %s", batch, queue,
                 ert_status_string(st), err.msg);
    cr_assert_not_null(s);
    return s;
}

/* What came back, by sample index. Ids are id_base + 3 * index when the
 * driver passes ids, the submission index otherwise. */
typedef struct collect {
    int N;
    uint64_t id_base;
    ert_sample *got;
    float *logits;
    unsigned char *seen, *has_logits;
    int count;
    ert_stream_result *buf; /* poll buffer */
    float *zbuf;
    int cap;
} collect;

static void collect_init(collect *c, int N, int K, int cap, uint64_t id_base)
{
    memset(c, 0, sizeof *c);
    c->N = N;
    c->id_base = id_base;
    c->got = calloc((size_t)N, sizeof *c->got);
    c->logits = calloc((size_t)N * K, sizeof(float));
    c->seen = calloc((size_t)N, 1);
    c->has_logits = calloc((size_t)N, 1);
    c->cap = cap;
    c->buf = calloc((size_t)cap + 1, sizeof *c->buf);
    c->zbuf = calloc(((size_t)cap + 1) * K, sizeof(float));
    cr_assert(c->got && c->logits && c->seen && c->has_logits && c->buf && c->zbuf);
}

static void collect_free(collect *c)
{
    free(c->got);
    free(c->logits);
    free(c->seen);
    free(c->has_logits);
    free(c->buf);
    free(c->zbuf);
}

/* One poll of up to max results; checks and records each. Returns got. */
static int take(collect *c, ert_stream *s, int K, int max, int want_logits)
{
    if (max > c->cap)
        max = c->cap;
    /* poison what the call must write */
    for (int i = 0; i < max; i++)
        c->buf[i] = (ert_stream_result){.id = UINT64_MAX, .sample = {-7, -7, -7.0f}};
    int got = -1;
    ert_status st = ert_stream_poll(s, c->buf, want_logits ? c->zbuf : NULL, max, &got);
    cr_assert_eq(st, ERT_OK, "poll: %s: %s", ert_status_string(st), ert_stream_error(s));
    cr_assert(got >= 0 && got <= max, "poll: got %d of max %d", got, max);
    for (int i = 0; i < got; i++) {
        const ert_stream_result *r = &c->buf[i];
        cr_assert(c->id_base == 0 || (r->id >= c->id_base && (r->id - c->id_base) % 3 == 0),
                  "unknown id %llu", (unsigned long long)r->id);
        uint64_t idx = c->id_base ? (r->id - c->id_base) / 3 : r->id;
        cr_assert_lt(idx, (uint64_t)c->N, "id %llu out of range", (unsigned long long)r->id);
        cr_assert_eq(c->seen[idx], 0, "sample %llu returned twice", (unsigned long long)idx);
        cr_assert(isfinite(r->latency_s) && r->latency_s >= 0.0, "latency %g", r->latency_s);
        c->seen[idx] = 1;
        c->got[idx] = r->sample;
        if (want_logits) {
            memcpy(c->logits + idx * K, c->zbuf + (size_t)i * K, sizeof(float) * K);
            c->has_logits[idx] = 1;
        }
        c->count++;
    }
    return got;
}


/* Every sample came back once, with MASKED's results. */
static void check_results(const fixture *f, const collect *c)
{
    cr_assert_eq(c->count, f->N, "%d of %d samples came back", c->count, f->N);
    int flips = 0;
    for (int i = 0; i < f->N; i++) {
        cr_assert(c->seen[i], "sample %d lost", i);
        const ert_sample *a = &f->want[i], *b = &c->got[i];
        const float *al = f->want_logits + (size_t)i * f->K, *bl = c->logits + (size_t)i * f->K;
        if (EXACT) {
            cr_assert_eq(a->exit_index, b->exit_index, "sample %d: exit %d, MASKED %d", i,
                         b->exit_index, a->exit_index);
            cr_assert_eq(a->predicted, b->predicted, "sample %d: class", i);
            cr_assert(memcmp(&a->score, &b->score, sizeof(float)) == 0,
                      "sample %d: score %.9g, MASKED %.9g", i, b->score, a->score);
            if (c->has_logits[i])
                cr_assert(memcmp(al, bl, sizeof(float) * f->K) == 0,
                          "sample %d: logits differ from MASKED's", i);
            continue;
        }
        if (tb_flip(f->e, b, a, "stream vs MASKED", i)) {
            flips++;
            continue;
        }
        cr_assert(tol_score_ok(b->score, a->score), "sample %d: score %.9g, MASKED %.9g", i,
                  b->score, a->score);
        if (c->has_logits[i]) {
            fx_check_logits(bl, al, f->K, "stream vs MASKED", i);
            cr_assert_eq(b->predicted, ert_argmax(bl, f->K));
        }
    }
    cr_assert(tol_flips_ok(flips, f->N), "%d exits differ of %d", flips, f->N);
}

/* The counters of a stream that has handed out all N samples. */
static void check_stats(const fixture *f, ert_stream *s, int batch)
{
    ert_stream_stats st = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(s, &st);
    cr_assert_eq(st.num_stages, f->E);
    cr_assert_eq(st.batch, batch);
    cr_assert_eq(st.admitted, 0);
    cr_assert_eq(st.submitted, (uint64_t)f->N);
    cr_assert_eq(st.finished, (uint64_t)f->N);
    cr_assert_eq(st.polled, (uint64_t)f->N);
    uint64_t entering = 0;
    int32_t counts[ERT_MAX_EXITS] = {0};
    for (int si = f->E - 1; si >= 0; si--) {
        counts[si] = (int32_t)st.exit_counts[si];
        if (EXACT)
            cr_assert_eq(st.exit_counts[si], (uint64_t)f->want_counts[si],
                         "exit %d: %llu, MASKED %d", si, (unsigned long long)st.exit_counts[si],
                         f->want_counts[si]);
        entering += st.exit_counts[si];
        cr_assert_eq(st.stage_rows[si], entering, "stage %d ran %llu rows, %llu entered", si,
                     (unsigned long long)st.stage_rows[si], (unsigned long long)entering);
        cr_assert_geq(st.stage_runs[si] * (uint64_t)batch, st.stage_rows[si]);
        cr_assert_leq(st.stage_partial_runs[si], st.stage_runs[si]);
        cr_assert_leq(st.stage_runs[si], st.stage_rows[si]); /* no empty run */
    }
    cr_assert_eq(entering, (uint64_t)f->N);
    cr_assert_eq(st.padding_rows, 0);
    cr_assert_eq(st.macs_executed, st.macs_ideal, "MACs %llu, ideal %llu",
                 (unsigned long long)st.macs_executed, (unsigned long long)st.macs_ideal);
    if (ert_engine_mode(f->e) != ERT_MODE_FULL)
        cr_assert_eq(st.macs_ideal, plan_ideal_macs(f->m, &f->p, counts));
    cr_assert_eq(st.macs_full, (uint64_t)f->N * ert_model_macs_full(f->m));
}

/* Submits everything in chunks (polling when the queue is full), then
 * flushes and polls the rest. */
static void drive_chunks(const fixture *f, ert_stream *s, collect *c, int chunk, int queue)
{
    int off = 0;
    while (off < f->N) {
        int n = f->N - off < chunk ? f->N - off : chunk;
        ert_status st = ert_stream_submit(s, f->x + (size_t)off * f->per, n, NULL);
        if (st == ERT_QUEUE_FULL) {
            int got = take(c, s, f->K, queue, 1);
            if (got == 0) {
                cr_assert_eq(ert_stream_flush(s), ERT_OK, "%s", ert_stream_error(s));
                cr_assert_gt(take(c, s, f->K, queue, 1), 0, "full queue, nothing finished");
            }
            continue;
        }
        cr_assert_eq(st, ERT_OK, "submit: %s: %s", ert_status_string(st), ert_stream_error(s));
        off += n;
    }
    cr_assert_eq(ert_stream_flush(s), ERT_OK, "%s", ert_stream_error(s));
    while (take(c, s, f->K, queue, 1) > 0)
        ;
}

static uint32_t rnd(mw_rng *r, uint32_t n) { return (uint32_t)(mw_rng_next(r) % n); }

/* Random submits (sizes 1 .. 2 * batch + 1), polls (any max, logits or
 * not), flushes and no-op calls, seeded; then flush and poll the rest. */
static void drive_random(const fixture *f, ert_stream *s, collect *c, int batch, int queue,
                         uint64_t seed)
{
    mw_rng r = mw_rng_seed(seed);
    uint64_t *ids = malloc(sizeof(uint64_t) * (size_t)queue);
    cr_assert_not_null(ids);
    int off = 0;
    while (off < f->N) {
        uint32_t a = rnd(&r, 10);
        if (a < 5) {
            int n = 1 + (int)rnd(&r, (uint32_t)(2 * batch + 1));
            if (n > queue)
                n = queue;
            if (n > f->N - off)
                n = f->N - off;
            for (int i = 0; i < n; i++)
                ids[i] = c->id_base + 3 * (uint64_t)(off + i);
            ert_stream_stats before = ERT_STREAM_STATS_INIT, after = ERT_STREAM_STATS_INIT;
            ert_stream_get_stats(s, &before);
            ert_status st =
                ert_stream_submit(s, f->x + (size_t)off * f->per, n, c->id_base ? ids : NULL);
            ert_stream_get_stats(s, &after);
            if (st == ERT_QUEUE_FULL) {
                /* all or nothing, and refused only when it did not fit */
                cr_assert_gt(before.admitted + n, queue);
                cr_assert_eq(after.submitted, before.submitted);
                cr_assert_eq(after.admitted, before.admitted);
                cr_assert(memcmp(after.stage_rows, before.stage_rows, sizeof after.stage_rows) == 0,
                          "a refused submit ran stages");
                continue;
            }
            cr_assert_eq(st, ERT_OK, "submit %d: %s: %s", n, ert_status_string(st),
                         ert_stream_error(s));
            cr_assert_eq(after.submitted, before.submitted + (uint64_t)n);
            off += n;
        } else if (a < 8) {
            take(c, s, f->K, (int)rnd(&r, (uint32_t)queue + 1), rnd(&r, 4) != 0);
        } else if (a < 9) {
            cr_assert_eq(ert_stream_flush(s), ERT_OK, "%s", ert_stream_error(s));
            ert_stream_stats st = ERT_STREAM_STATS_INIT;
            ert_stream_get_stats(s, &st);
            cr_assert_eq((uint64_t)st.admitted, st.finished - st.polled,
                         "after flush, samples are still queued");
        } else {
            cr_assert_eq(ert_stream_submit(s, NULL, 0, NULL), ERT_OK);
        }
        ert_stream_stats st = ERT_STREAM_STATS_INIT;
        ert_stream_get_stats(s, &st);
        cr_assert_leq(st.admitted, queue);
        cr_assert_eq((uint64_t)st.admitted, st.submitted - st.polled);
    }
    free(ids);
    cr_assert_eq(ert_stream_flush(s), ERT_OK, "%s", ert_stream_error(s));
    while (take(c, s, f->K, queue, 1) > 0)
        ;
}

/* ---- equivalence with MASKED --------------------------------------------------- */

static void chunks(mw_kind kind, uint64_t seed)
{
    static const int batches[] = {1, 5, 32};
    fixture f;
    fixture_open(&f, kind, seed, ERT_MODE_MASKED, 32, 150);
    for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
        int batch = batches[b];
        int queue = 4 * batch;
        ert_stream *s = stream_new(f.e, batch, 0, NEVER, ERT_SCHEDULE_DEEPEST_FIRST);
        collect c;
        collect_init(&c, f.N, f.K, queue, 0);
        drive_chunks(&f, s, &c, batch + 3, queue);
        check_results(&f, &c);
        check_stats(&f, s, batch);
        collect_free(&c);
        ert_stream_free(s);
    }
    fixture_close(&f);
}

Test(stream, mlp_equals_masked) { chunks(MW_MLP, 101); }
Test(stream, cnn_equals_masked) { chunks(MW_CNN, 102); }
Test(stream, resnet_equals_masked) { chunks(MW_RESNET, 103); }
/* transformer encoders: a token row is one row like any other */
Test(stream, vit_equals_masked) { chunks(MW_VIT, 104); }
Test(stream, bert_equals_masked) { chunks(MW_BERT, 105); }

/* Random interleavings over queue sizes, batches, deadlines and schedules. */
static void interleavings(mw_kind kind, uint64_t seed, ert_mode mode)
{
    static const int batches[] = {1, 3, 16};
    fixture f;
    fixture_open(&f, kind, seed, mode, 16, 120);
    int round = 0;
    for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
        int batch = batches[b];
        const int queues[] = {1, batch + 1, 4 * batch, 1000};
        for (size_t q = 0; q < sizeof queues / sizeof queues[0]; q++) {
            for (int v = 0; v < 2; v++, round++) {
                double deadline = v ? 0.0 : NEVER;
                ert_stream_schedule sched =
                    (round & 2) ? ERT_SCHEDULE_SHALLOWEST_FIRST : ERT_SCHEDULE_DEEPEST_FIRST;
                ert_stream *s = stream_new(f.e, batch, queues[q], deadline, sched);
                collect c;
                collect_init(&c, f.N, f.K, queues[q], round & 1 ? 1000 : 0);
                drive_random(&f, s, &c, batch, queues[q], seed * 1000 + (uint64_t)round);
                check_results(&f, &c);
                check_stats(&f, s, batch);
                collect_free(&c);
                ert_stream_free(s);
            }
        }
    }
    fixture_close(&f);
}

Test(stream, random_mlp) { interleavings(MW_MLP, 201, ERT_MODE_MASKED); }
Test(stream, random_cnn) { interleavings(MW_CNN, 202, ERT_MODE_MASKED); }
Test(stream, random_resnet) { interleavings(MW_RESNET, 203, ERT_MODE_MASKED); }
/* On CUDA a COMPACTED engine's program has other buffers (the gather's). */
Test(stream, random_resnet_compacted_engine) { interleavings(MW_RESNET, 204, ERT_MODE_COMPACTED); }
Test(stream, random_bert_compacted_engine) { interleavings(MW_BERT, 205, ERT_MODE_COMPACTED); }

/* An engine in FULL mode: everybody takes the final head, as ert_infer gives. */
Test(stream, full_mode_engine)
{
    fixture f;
    fixture_open(&f, MW_RESNET, 301, ERT_MODE_FULL, 8, 40);
    ert_stream *s = stream_new(f.e, 8, 0, NEVER, ERT_SCHEDULE_DEEPEST_FIRST);
    collect c;
    collect_init(&c, f.N, f.K, 32, 0);
    drive_chunks(&f, s, &c, 7, 32);
    check_results(&f, &c);
    check_stats(&f, s, 8);
    ert_stream_stats st = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(s, &st);
    cr_assert_eq(st.exit_counts[f.E - 1], (uint64_t)f.N);
    cr_assert_eq(st.macs_executed, st.macs_full);
    collect_free(&c);
    ert_stream_free(s);
    fixture_close(&f);
}

/* Thresholds at the bounds: nobody leaves early, then everybody leaves at
 * the first exit. */
static void bounds(mw_kind kind, uint64_t seed)
{
    fixture f;
    fixture_open(&f, kind, seed, ERT_MODE_MASKED, 8, 60);
    for (int everybody = 0; everybody < 2; everybody++) {
        float thr[ERT_MAX_EXITS];
        fx_bound_thresholds(f.m, everybody, thr);
        set_thresholds(&f, thr, 8);
        ert_stream *s = stream_new(f.e, 8, 20, NEVER, ERT_SCHEDULE_DEEPEST_FIRST);
        collect c;
        collect_init(&c, f.N, f.K, 20, 0);
        drive_random(&f, s, &c, 8, 20, seed + (uint64_t)everybody);
        check_results(&f, &c);
        check_stats(&f, s, 8);
        ert_stream_stats st = ERT_STREAM_STATS_INIT;
        ert_stream_get_stats(s, &st);
        if (everybody) {
            cr_assert_eq(st.exit_counts[0], (uint64_t)f.N);
            for (int si = 1; si < f.E; si++)
                cr_assert_eq(st.stage_rows[si], 0, "stage %d ran rows", si);
        } else if (f.want_counts[f.E - 1] == f.N) { /* the usual case, see test_modes */
            for (int si = 0; si < f.E; si++)
                cr_assert_eq(st.stage_rows[si], (uint64_t)f.N);
        }
        collect_free(&c);
        ert_stream_free(s);
    }
    fixture_close(&f);
}

Test(stream, bounds_mlp) { bounds(MW_MLP, 401); }
Test(stream, bounds_cnn) { bounds(MW_CNN, 402); }
Test(stream, bounds_resnet) { bounds(MW_RESNET, 403); }

/* ---- queue, deadline, arguments -------------------------------------------------- */

Test(stream, back_pressure)
{
    fixture f;
    fixture_open(&f, MW_MLP, 501, ERT_MODE_MASKED, 4, 30);
    ert_stream *s = stream_new(f.e, 4, 10, NEVER, ERT_SCHEDULE_DEEPEST_FIRST);
    collect c;
    collect_init(&c, f.N, f.K, 10, 0);
    cr_assert_eq(ert_stream_submit(s, f.x, 8, NULL), ERT_OK);
    ert_stream_stats before = ERT_STREAM_STATS_INIT, after = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(s, &before);
    cr_assert_eq(before.admitted, 8);
    /* 3 more do not fit (8 + 3 > 10): refused, nothing enqueued or run */
    cr_assert_eq(ert_stream_submit(s, f.x + 8 * f.per, 3, NULL), ERT_QUEUE_FULL);
    cr_assert_neq(ert_stream_error(s)[0], '\0');
    ert_stream_get_stats(s, &after);
    cr_assert(memcmp(&before, &after, sizeof before) == 0, "a refused submit changed the stream");
    /* finished but unpolled samples still hold their room */
    cr_assert_eq(ert_stream_flush(s), ERT_OK);
    cr_assert_eq(ert_stream_submit(s, f.x + 8 * f.per, 3, NULL), ERT_QUEUE_FULL);
    /* polling frees it */
    cr_assert_eq(take(&c, s, f.K, 2, 1), 2);
    cr_assert_eq(ert_stream_submit(s, f.x + 8 * f.per, 3, NULL), ERT_OK);
    cr_assert_eq(ert_stream_submit(s, f.x + 11 * f.per, 2, NULL), ERT_QUEUE_FULL); /* 9 + 2 */
    /* more than the queue can ever hold is an argument error */
    cr_assert_eq(ert_stream_submit(s, f.x, 11, NULL), ERT_INVALID_ARGUMENT);
    while (take(&c, s, f.K, 10, 1) > 0)
        ;
    cr_assert_eq(ert_stream_flush(s), ERT_OK);
    take(&c, s, f.K, 10, 1);
    for (int off = 11; off < f.N; off += 10) {
        int n = f.N - off < 10 ? f.N - off : 10;
        cr_assert_eq(ert_stream_submit(s, f.x + (size_t)off * f.per, n, NULL), ERT_OK, "%s",
                     ert_stream_error(s));
        cr_assert_eq(ert_stream_flush(s), ERT_OK);
        cr_assert_eq(take(&c, s, f.K, 10, 1), n);
    }
    check_results(&f, &c);
    check_stats(&f, s, 4);
    collect_free(&c);
    ert_stream_free(s);
    fixture_close(&f);
}

/* Without a deadline, only full batches run until the flush; the flush then
 * runs each stage's remainder, deepest first. */
Test(stream, full_batches_until_flush)
{
    fixture f;
    fixture_open(&f, MW_RESNET, 550, ERT_MODE_MASKED, 8, 96);
    for (int sched = 0; sched < 2; sched++) {
        ert_stream *s = stream_new(f.e, 8, 32, NEVER, (ert_stream_schedule)sched);
        collect c;
        collect_init(&c, f.N, f.K, 32, 0);
        for (int off = 0; off < f.N; off += 8) {
            cr_assert_eq(ert_stream_submit(s, f.x + (size_t)off * f.per, 8, NULL), ERT_OK, "%s",
                         ert_stream_error(s));
            take(&c, s, f.K, 32, 1);
        }
        ert_stream_stats st = ERT_STREAM_STATS_INIT;
        ert_stream_get_stats(s, &st);
        cr_assert_eq(st.stage_runs[0], 12, "stage 0: %llu runs for 12 full batches",
                     (unsigned long long)st.stage_runs[0]);
        for (int si = 0; si < f.E; si++) {
            cr_assert_eq(st.stage_partial_runs[si], 0, "stage %d: a partial run before flush", si);
            cr_assert_eq(st.stage_rows[si], st.stage_runs[si] * 8);
        }
        cr_assert_eq(ert_stream_flush(s), ERT_OK);
        while (take(&c, s, f.K, 32, 1) > 0)
            ;
        ert_stream_get_stats(s, &st);
        /* stage 0 had no remainder; stage s > 0 is drained at most once per
           shallower stage that still sends it rows */
        for (int si = 0; si < f.E; si++)
            cr_assert_leq(st.stage_partial_runs[si], (uint64_t)si, "stage %d: %llu partial runs",
                          si, (unsigned long long)st.stage_partial_runs[si]);
        check_results(&f, &c);
        check_stats(&f, s, 8);
        collect_free(&c);
        ert_stream_free(s);
    }
    fixture_close(&f);
}

/* Partial batches: never without flush when there is no deadline; at every
 * call with deadline 0; after the deadline otherwise. */
Test(stream, deadline)
{
    fixture f;
    fixture_open(&f, MW_MLP, 601, ERT_MODE_MASKED, 8, 3);
    collect c;
    int got = -1;
    ert_stream_result r[8];

    ert_stream *s = stream_new(f.e, 8, 0, NEVER, ERT_SCHEDULE_DEEPEST_FIRST);
    cr_assert_eq(ert_stream_submit(s, f.x, 3, NULL), ERT_OK);
    cr_assert_eq(ert_stream_poll(s, r, NULL, 8, &got), ERT_OK);
    cr_assert_eq(got, 0, "a partial batch ran without a deadline or flush");
    ert_stream_stats st = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(s, &st);
    cr_assert_eq(st.stage_runs[0], 0);
    cr_assert_eq(ert_stream_flush(s), ERT_OK);
    collect_init(&c, f.N, f.K, 8, 0);
    cr_assert_eq(take(&c, s, f.K, 8, 1), 3);
    check_results(&f, &c);
    collect_free(&c);
    ert_stream_free(s);

    s = stream_new(f.e, 8, 0, 0.0, ERT_SCHEDULE_DEEPEST_FIRST);
    cr_assert_eq(ert_stream_submit(s, f.x, 3, NULL), ERT_OK);
    collect_init(&c, f.N, f.K, 8, 0);
    cr_assert_eq(take(&c, s, f.K, 8, 1), 3, "deadline 0: the partial batch waited");
    check_results(&f, &c);
    collect_free(&c);
    ert_stream_free(s);

    s = stream_new(f.e, 8, 0, 20.0, ERT_SCHEDULE_DEEPEST_FIRST);
    cr_assert_eq(ert_stream_submit(s, f.x, 3, NULL), ERT_OK);
    collect_init(&c, f.N, f.K, 8, 0);
    struct timespec ts = {0, 60 * 1000 * 1000};
    nanosleep(&ts, NULL);
    cr_assert_eq(take(&c, s, f.K, 8, 1), 3, "past the deadline, the partial batch waited");
    cr_assert_eq(c.count, 3);
    check_results(&f, &c);
    collect_free(&c);
    ert_stream_free(s);
    fixture_close(&f);
}

Test(stream, caller_ids_and_order)
{
    fixture f;
    fixture_open(&f, MW_CNN, 701, ERT_MODE_MASKED, 4, 12);
    ert_stream *s = stream_new(f.e, 4, 12, NEVER, ERT_SCHEDULE_DEEPEST_FIRST);
    uint64_t ids[12];
    for (int i = 0; i < 12; i++)
        ids[i] = 1000 + 3 * (uint64_t)i;
    cr_assert_eq(ert_stream_submit(s, f.x, 12, ids), ERT_OK);
    cr_assert_eq(ert_stream_flush(s), ERT_OK);
    collect c;
    collect_init(&c, f.N, f.K, 12, 1000);
    cr_assert_eq(take(&c, s, f.K, 12, 1), 12);
    check_results(&f, &c);
    /* finish order: every ring is FIFO, so the samples leaving at one exit
     * come back in the order they were submitted in */
    for (int i = 0; i < 12; i++)
        for (int j = i + 1; j < 12; j++)
            if (c.buf[i].sample.exit_index == c.buf[j].sample.exit_index)
                cr_assert_lt(c.buf[i].id, c.buf[j].id, "exit %d: id %llu after %llu",
                             c.buf[i].sample.exit_index, (unsigned long long)c.buf[j].id,
                             (unsigned long long)c.buf[i].id);
    int got = 0;
    ert_stream_result r[12];
    cr_assert_eq(ert_stream_poll(s, r, NULL, 12, &got), ERT_OK);
    cr_assert_eq(got, 0);
    collect_free(&c);
    ert_stream_free(s);
    fixture_close(&f);
}

Test(stream, arguments)
{
    fixture f;
    fixture_open(&f, MW_MLP, 801, ERT_MODE_MASKED, 8, 4);
    ert_stream *s = (ert_stream *)1;
    ert_error err = {{0}};
    ert_stream_config cfg = ert_stream_config_default();
    cr_assert_eq(cfg.batch, 0);
    cr_assert_eq(cfg.queue, 0);
    cr_assert_eq(ert_stream_create(NULL, &cfg, &s, &err), ERT_INVALID_ARGUMENT);
    cr_assert_null(s);
    cr_assert_eq(ert_stream_create(f.e, &cfg, NULL, &err), ERT_INVALID_ARGUMENT);
    cfg.batch = 9; /* > max_batch */
    cr_assert_eq(ert_stream_create(f.e, &cfg, &s, &err), ERT_INVALID_ARGUMENT);
    cr_assert(strstr(err.msg, "batch") != NULL, "%s", err.msg);
    cfg.batch = -1;
    cr_assert_eq(ert_stream_create(f.e, &cfg, &s, &err), ERT_INVALID_ARGUMENT);
    cfg = ert_stream_config_default();
    cfg.queue = -5;
    cr_assert_eq(ert_stream_create(f.e, &cfg, &s, &err), ERT_INVALID_ARGUMENT);
    cfg = ert_stream_config_default();
    cfg.deadline_ms = NAN;
    cr_assert_eq(ert_stream_create(f.e, &cfg, &s, &err), ERT_INVALID_ARGUMENT);
    cfg = ert_stream_config_default();
    cfg.schedule = (ert_stream_schedule)7;
    cr_assert_eq(ert_stream_create(f.e, &cfg, &s, &err), ERT_INVALID_ARGUMENT);

    /* defaults: the engine's max_batch, 4 batches of queue */
    cr_assert_eq(ert_stream_create(f.e, NULL, &s, &err), ERT_OK, "%s", err.msg);
    ert_stream_stats st = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(s, &st);
    cr_assert_eq(st.batch, 8);
    cr_assert_eq(st.queue, 32);
    int got = 7;
    ert_stream_result r[4];
    cr_assert_eq(ert_stream_submit(s, f.x, -1, NULL), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_stream_submit(s, f.x, 33, NULL), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_stream_submit(s, NULL, 2, NULL), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_stream_submit(NULL, f.x, 2, NULL), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_stream_poll(s, r, NULL, 4, NULL), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_stream_poll(s, r, NULL, -1, &got), ERT_INVALID_ARGUMENT);
    cr_assert_eq(got, 0);
    cr_assert_eq(ert_stream_poll(s, NULL, NULL, 4, &got), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_stream_poll(s, NULL, NULL, 0, &got), ERT_OK);
    cr_assert_eq(ert_stream_poll(NULL, r, NULL, 4, &got), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_stream_flush(NULL), ERT_INVALID_ARGUMENT);
    ert_stream_get_stats(NULL, &st);
    cr_assert_eq(st.submitted, 0);
    ert_stream_free(NULL);

    /* the engine stays usable between stream calls, and the stream after */
    cr_assert_eq(ert_stream_submit(s, f.x, 4, NULL), ERT_OK);
    tb_result t;
    tb_result_init(&t, 4, f.K);
    tb_infer(f.e, f.x, 4, &t);
    cr_assert_eq(ert_stream_flush(s), ERT_OK);
    collect c;
    collect_init(&c, f.N, f.K, 4, 0);
    cr_assert_eq(take(&c, s, f.K, 4, 1), 4);
    check_results(&f, &c);
    collect_free(&c);
    tb_result_free(&t);
    ert_stream_free(s);
    fixture_close(&f);
}

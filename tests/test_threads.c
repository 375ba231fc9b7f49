/* test_threads.c - one engine used from several threads at once, as the
 * API allows (exitrt.h: a concurrent call returns ERT_BUSY): ert_infer,
 * calls with bad arguments, thresholds, scores and a stream's calls race
 * on one CPU engine. Every call must return OK (with the results of a
 * call made alone) or ERT_BUSY, and nothing else.
 *
 * First, deterministically: while the main thread holds the engine (as a
 * running call does, engine_enter), another thread makes every kind of call
 * on it; each must return ERT_BUSY and write nothing, the engine's message
 * included, which the holder writes meanwhile. Then freely: two threads,
 * then a thread and a stream, race on the engine (whether their calls
 * overlap depends on the scheduler; the counts are printed).
 *
 * A plain program, not a Criterion suite: CI runs it under
 * ThreadSanitizer (.ci/run), where Criterion's runner cannot start (it maps
 * its shared arena at fixed addresses that ThreadSanitizer's memory layout
 * reserves). Any data race in the library is a ThreadSanitizer report, which
 * fails the run; without the sanitizer it checks the statuses alone.
 * Run it with OPENBLAS_NUM_THREADS=1 (CTest and CI do): OpenBLAS's worker
 * threads hand work over by spinning on flags ThreadSanitizer cannot see,
 * and its reports would be about OpenBLAS, not exitrt.
 * Exits 0 when every check passed, 1 otherwise (the first failure printed). */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_core.h"
#include "exitrt.h"
#include "model_writer.h"

enum {
    B = 32,       /* rows per call */
    ROUNDS = 150, /* rounds of calls per thread, more until some were refused */
    MIN_BUSY = 20,
};

static atomic_int failures;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            if (atomic_fetch_add(&failures, 1) == 0) {                        \
                fprintf(stderr, "test_threads: %s:%d: ", __FILE__, __LINE__); \
                fprintf(stderr, __VA_ARGS__);                                 \
                fputc('\n', stderr);                                          \
            }                                                                 \
        }                                                                     \
    } while (0)

typedef struct shared {
    ert_engine *e;
    const float *x;           /* B rows */
    const ert_sample *want;   /* ert_infer's answer on them, alone */
    const float *want_scores; /* ert_engine_scores' answer, alone */
    int E;                    /* exits */
    float thr0;               /* exit 0's threshold, read before the threads start */
    atomic_int ready, go;     /* threads set up; start */
    atomic_int ran, busy;     /* calls that ran, calls refused */
} shared;

static int same_scores(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(a[i] == b[i] || (isnan(a[i]) && isnan(b[i]))))
            return 0;
    return 1;
}

/* status is OK or BUSY; counts it. */
static int ran(shared *sh, ert_status st, ert_status want, const char *what)
{
    if (st == ERT_BUSY) {
        atomic_fetch_add(&sh->busy, 1);
        return 0;
    }
    CHECK(st == want, "%s: status %s, expected %s or ERT_BUSY", what, ert_status_string(st),
          ert_status_string(want));
    atomic_fetch_add(&sh->ran, 1);
    return st == want;
}

/* One thread: a round of every kind of call on the shared engine. */
static void *hammer(void *arg)
{
    shared *sh = arg;
    ert_sample s[B];
    float *scores = malloc(sizeof(float) * B * (size_t)sh->E);
    CHECK(scores != NULL, "out of memory");
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load(&sh->go))
        ;
    /* the threads may not overlap at first (one can run its time slice
       alone): go on until some calls were refused, within a bound */
    for (int i = 0; scores && (i < ROUNDS || atomic_load(&sh->busy) < MIN_BUSY) && i < 40 * ROUNDS;
         i++) {
        ert_result r = {.struct_size = sizeof(ert_result), .samples = s};
        if (ran(sh, ert_infer(sh->e, sh->x, B, &r), ERT_OK, "ert_infer"))
            CHECK(memcmp(s, sh->want, sizeof s) == 0, "ert_infer: other results than alone");
        /* a refused call with a bad argument: the argument is checked by
           the call that holds the engine, never by a refused one */
        ran(sh, ert_infer(sh->e, sh->x, 0, &r), ERT_INVALID_ARGUMENT, "ert_infer batch 0");
        ran(sh, ert_engine_set_threshold(sh->e, 0, NAN), ERT_INVALID_ARGUMENT, "set_threshold NaN");
        /* the model's own threshold, set again: no result changes */
        ran(sh, ert_engine_set_threshold(sh->e, 0, sh->thr0), ERT_OK, "set_threshold");
        if (ran(sh, ert_engine_scores(sh->e, sh->x, B, scores), ERT_OK, "ert_engine_scores"))
            CHECK(same_scores(scores, sh->want_scores, (size_t)B * sh->E),
                  "ert_engine_scores: other scores than alone");
        sched_yield();
    }
    free(scores);
    return NULL;
}

/* A stream on the engine, its calls racing the other thread's. */
static void *streamer(void *arg)
{
    shared *sh = arg;
    ert_stream_config cfg = ert_stream_config_default();
    cfg.batch = 8;
    cfg.deadline_ms = 0;
    ert_stream *st = NULL;
    ert_error err = {{0}};
    ert_status rc = ert_stream_create(sh->e, &cfg, &st, &err);
    CHECK(rc == ERT_OK, "ert_stream_create: %s", err.msg);
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load(&sh->go))
        ;
    ert_stream_result res[B];
    /* cycles of 4B samples, each until every sample is back (once the
       other thread is done nothing is refused; a bound all the same); more
       cycles until some calls were refused */
    for (int cycle = 0; st && cycle < 40 && (cycle < 1 || atomic_load(&sh->busy) < MIN_BUSY);
         cycle++) {
        int submitted = 0, polled = 0;
        for (long i = 0; polled < 4 * B && i < 1000000; i++) {
            if (submitted < 4 * B &&
                ran(sh, ert_stream_submit(st, sh->x + (size_t)(submitted % B) * 64, 1, NULL),
                    ERT_OK, "ert_stream_submit"))
                submitted++;
            int got = 0;
            if (ran(sh, ert_stream_poll(st, res, NULL, B, &got), ERT_OK, "ert_stream_poll"))
                for (int k = 0; k < got; k++) {
                    /* ids count submissions over the stream's life, 4B a cycle */
                    int row = (int)(res[k].id % B);
                    CHECK(res[k].sample.exit_index == sh->want[row].exit_index &&
                              res[k].sample.predicted == sh->want[row].predicted,
                          "stream: sample %llu: exit %d class %d, alone exit %d class %d",
                          (unsigned long long)res[k].id, res[k].sample.exit_index,
                          res[k].sample.predicted, sh->want[row].exit_index,
                          sh->want[row].predicted);
                    polled++;
                }
            sched_yield();
        }
        CHECK(polled == 4 * B, "the stream handed out %d results of %d", polled, 4 * B);
    }
    ert_stream_free(st);
    return NULL;
}

typedef struct held {
    ert_engine *e;
    ert_stream *st; /* created before the engine was held */
    const float *x;
    atomic_int done; /* relaxed: no ordering for ThreadSanitizer to see */
} held;

/* Every call on a held engine: ERT_BUSY, and nothing written on it. */
static void *refused(void *arg)
{
    held *h = arg;
    ert_engine *e = h->e;
    ert_sample s[B];
    ert_result r = {.struct_size = sizeof(ert_result), .samples = s};
    ert_device_result dr = {.struct_size = sizeof(ert_device_result), .samples = s};
    float scores[B * ERT_MAX_EXITS];
    int32_t classes[B * ERT_MAX_EXITS], ids[B] = {0};
    ert_stream_result res[B];
    int got = 0;
    const struct {
        ert_status st;
        const char *what;
    } calls[] = {
        {ert_infer(e, h->x, B, &r), "ert_infer"},
        {ert_infer(e, h->x, 0, &r), "ert_infer with batch 0"},
        {ert_infer(e, NULL, B, &r), "ert_infer with no input"},
        {ert_infer_tokens(e, ids, ids, B, &r), "ert_infer_tokens on an image model"},
        {ert_infer_device(e, h->x, B, &dr, NULL), "ert_infer_device"},
        {ert_engine_scores(e, h->x, B, scores), "ert_engine_scores"},
        {ert_engine_scores(e, h->x, B, NULL), "ert_engine_scores with no scores"},
        {ert_engine_exit_outputs(e, h->x, B, scores, classes), "ert_engine_exit_outputs"},
        {ert_engine_set_threshold(e, 0, 0.25f), "ert_engine_set_threshold"},
        {ert_engine_set_threshold(e, 99, NAN), "ert_engine_set_threshold out of range"},
        {ert_stream_submit(h->st, h->x, 1, NULL), "ert_stream_submit"},
        {ert_stream_poll(h->st, res, NULL, B, &got), "ert_stream_poll"},
        {ert_stream_flush(h->st), "ert_stream_flush"},
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
        CHECK(calls[i].st == ERT_BUSY, "%s on a held engine: %s, not ERT_BUSY", calls[i].what,
              ert_status_string(calls[i].st));
    atomic_store_explicit(&h->done, 1, memory_order_relaxed);
    return NULL;
}

/* The main thread holds the engine as a call does, and writes its message
 * while the other thread is refused. */
static void held_engine(ert_engine *e, const float *x)
{
    held h = {.e = e, .x = x};
    ert_stream_config cfg = ert_stream_config_default();
    ert_error err = {{0}};
    CHECK(ert_stream_create(e, &cfg, &h.st, &err) == ERT_OK, "ert_stream_create: %s", err.msg);
    const float thr = ert_engine_threshold(e, 0);
    CHECK(engine_enter(e), "the engine is busy before the test");
    engine_fail(e, ERT_OK, "the holder's message");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, refused, &h) == 0, "pthread_create");
    while (!atomic_load_explicit(&h.done, memory_order_relaxed))
        sched_yield();
    CHECK(strcmp(e->err, "the holder's message") == 0, "a refused call wrote '%s'", e->err);
    engine_fail(e, ERT_OK, "the holder's second message"); /* as a running call may */
    pthread_join(t, NULL);
    CHECK(strcmp(ert_engine_error(e), "the holder's second message") == 0, "the message: '%s'",
          ert_engine_error(e));
    CHECK(ert_engine_threshold(e, 0) == thr, "a refused call set a threshold");
    engine_leave(e);
    ert_stream_stats ss = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(h.st, &ss);
    CHECK(ss.submitted == 0, "a refused submit enqueued %llu samples",
          (unsigned long long)ss.submitted);
    ert_stream_free(h.st);
    printf("test_threads: a held engine: every call refused, nothing written\n");
}

int main(void)
{
    char dir[64];
    ert_model *m = NULL;
    ert_engine *e = NULL;
    ert_error err = {{0}};
    if (mw_tempdir(dir, sizeof dir) != 0 || mw_random_model(dir, 11, MW_MLP) != 0) {
        fprintf(stderr, "test_threads: cannot write the model\n");
        return 1;
    }
    if (ert_model_load(dir, &m, &err) != ERT_OK) {
        fprintf(stderr, "test_threads: %s\n", err.msg);
        mw_rmtree(dir);
        return 1;
    }
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_BACKEND_CPU;
    cfg.mode = ERT_MODE_COMPACTED;
    cfg.max_batch = B;
    if (ert_engine_create(m, &cfg, &e, &err) != ERT_OK) {
        fprintf(stderr, "test_threads: %s\n", err.msg);
        ert_model_free(m);
        mw_rmtree(dir);
        return 1;
    }
    const size_t per = ert_model_input_size(m);
    const int E = ert_model_num_exits(m);
    /* the stream thread takes rows of 64 floats: the MLP's 1x8x8 input */
    CHECK(per == 64, "the MLP's input is %zu floats, not 64", per);
    float *x = malloc(sizeof(float) * B * per), *want_scores = malloc(sizeof(float) * B * E);
    ert_sample want[B];
    if (x && want_scores) {
        mw_random_input(x, B * per, 9);
        ert_result r = {.struct_size = sizeof(ert_result), .samples = want};
        CHECK(ert_infer(e, x, B, &r) == ERT_OK, "ert_infer alone: %s", ert_engine_error(e));
        CHECK(ert_engine_scores(e, x, B, want_scores) == ERT_OK, "ert_engine_scores alone: %s",
              ert_engine_error(e));
    }

    if (x)
        held_engine(e, x);

    for (int pair = 0; x && want_scores && pair < 2; pair++) {
        shared sh = {.e = e,
                     .x = x,
                     .want = want,
                     .want_scores = want_scores,
                     .E = E,
                     .thr0 = ert_engine_threshold(e, 0)};
        pthread_t t[2];
        /* pair 0: two threads making every call; pair 1: one of them and a stream */
        pthread_create(&t[0], NULL, hammer, &sh);
        pthread_create(&t[1], NULL, pair == 0 ? hammer : streamer, &sh);
        while (atomic_load(&sh.ready) < 2)
            ;
        atomic_store(&sh.go, 1);
        pthread_join(t[0], NULL);
        pthread_join(t[1], NULL);
        /* alone again: the engine is free and its message readable */
        ert_result r = {.struct_size = sizeof(ert_result), .samples = want};
        CHECK(ert_infer(e, x, B, &r) == ERT_OK && ert_engine_error(e)[0] == '\0',
              "ert_infer after the threads: %s", ert_engine_error(e));
        CHECK(ert_infer(e, x, 0, &r) == ERT_INVALID_ARGUMENT &&
                  strstr(ert_engine_error(e), "batch 0") != NULL,
              "a bad call after the threads: '%s'", ert_engine_error(e));
        printf("test_threads: %s: %d calls ran, %d refused with ERT_BUSY\n",
               pair == 0 ? "two threads" : "a thread and a stream", atomic_load(&sh.ran),
               atomic_load(&sh.busy));
        CHECK(atomic_load(&sh.ran) > 0, "no call ran");
    }
    free(x);
    free(want_scores);
    ert_engine_free(e);
    ert_model_free(m);
    mw_rmtree(dir);
    if (atomic_load(&failures)) {
        fprintf(stderr, "test_threads: %d checks failed\n", atomic_load(&failures));
        return 1;
    }
    printf("test_threads: passed\n");
    return 0;
}

/* test_engine_threads.c - an engine's `threads` is scoped to its own calls
 * (exitrt.h, ert_engine_config.threads; src/cpu/threads.h): engines with
 * different counts (1, 2, and 0: the libraries' own) on a convnet (the
 * oneDNN path where built), an MLP and a transformer (the OpenMP team with
 * OpenBLAS at one thread inside), created and called in turn and from two
 * threads at once, leave the host's OpenMP and OpenBLAS thread counts as
 * the host set them (read back around every call), and each engine's
 * results are the ones it gives alone, bit for bit. */
#include <criterion/criterion.h>
#include <cblas.h>
#include <pthread.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/threads.h"
#include "exitrt.h"
#include "fixtures.h"

enum {
    B = 8,
    HOST = 3,
    ROUNDS = 6
};

static int host_omp(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return HOST;
#endif
}

static void host_set(int n)
{
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    openblas_set_num_threads(n);
}

#define ASSERT_HOST(when)                                                                  \
    do {                                                                                   \
        cr_assert_eq(openblas_get_num_threads(), HOST, "OpenBLAS's count after %s", when); \
        cr_assert_eq(host_omp(), HOST, "OpenMP's count after %s", when);                   \
    } while (0)

/* One engine's outcome on the inputs: samples and logits. */
typedef struct {
    ert_sample s[B];
    float z[B * 16];
} outcome;

static void run(ert_engine *e, const float *x, outcome *o)
{
    memset(o, 0, sizeof *o);
    ert_result r = ERT_RESULT_INIT;
    r.samples = o->s;
    r.logits = o->z;
    cr_assert_eq(ert_infer(e, x, B, &r), ERT_OK, "%s", ert_engine_error(e));
}

static const int counts[3] = {1, 2, 0};

static void engines_for(ert_model *m, ert_engine *e[3])
{
    for (int i = 0; i < 3; i++) {
        ert_engine_config c = ERT_ENGINE_CONFIG_INIT;
        c.backend = ERT_BACKEND_CPU;
        c.mode = ERT_MODE_MASKED;
        c.max_batch = B;
        c.threads = counts[i];
        e[i] = fx_engine(m, &c);
        ASSERT_HOST("creating an engine");
    }
}

Test(engine_threads, engines_in_turn_leave_the_host_counts)
{
    const mw_kind kinds[] = {MW_CNN, MW_MLP, MW_VIT};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        host_set(HOST);
        ert_model *m = fx_random_model(31 + k, kinds[k]);
        cr_assert_leq(ert_model_num_classes(m), 16);
        float *x = fx_random_inputs(m, B, 7);
        ert_engine *e[3];
        engines_for(m, e);
        outcome ref[3], got;
        for (int i = 0; i < 3; i++) {
            run(e[i], x, &ref[i]);
            ASSERT_HOST("a call");
        }
        /* in another order, and the other entry points between */
        const int order[] = {1, 0, 2, 0, 1, 2, 1};
        float scores[B * ERT_MAX_EXITS];
        for (size_t j = 0; j < sizeof order / sizeof order[0]; j++) {
            const int i = order[j];
            run(e[i], x, &got);
            ASSERT_HOST("a call");
            cr_assert_eq(memcmp(&got, &ref[i], sizeof got), 0,
                         "%s: the engine with threads %d gave other results after the others ran",
                         mw_kind_name(kinds[k]), counts[i]);
            cr_assert_eq(ert_engine_scores(e[2 - i], x, B, scores), ERT_OK);
            ASSERT_HOST("ert_engine_scores");
        }
        ert_stream *s;
        ert_error err = {{0}};
        cr_assert_eq(ert_stream_create(e[1], NULL, &s, &err), ERT_OK, "%s", err.msg);
        cr_assert_eq(ert_stream_submit(s, x, B, NULL), ERT_OK);
        cr_assert_eq(ert_stream_flush(s), ERT_OK, "%s", ert_stream_error(s));
        ASSERT_HOST("a stream's stages");
        ert_stream_free(s);
        for (int i = 0; i < 3; i++)
            ert_engine_free(e[i]);
        free(x);
        ert_model_free(m);
    }
}

typedef struct {
    ert_engine *e;
    const float *x;
    const outcome *ref;
    int omp_changed, differed;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    const int mine = host_omp(); /* this thread's own OpenMP count */
    for (int i = 0; i < ROUNDS; i++) {
        outcome got;
        memset(&got, 0, sizeof got);
        ert_result res = ERT_RESULT_INIT;
        res.samples = got.s;
        res.logits = got.z;
        if (ert_infer(r->e, r->x, B, &res) != ERT_OK)
            r->differed++;
        r->differed += memcmp(&got, r->ref, sizeof got) != 0;
        r->omp_changed += host_omp() != mine;
    }
    return NULL;
}

Test(engine_threads, engines_at_once_give_back_the_host_counts)
{
    host_set(HOST);
    ert_model *m = fx_random_model(5, MW_VIT);
    float *x = fx_random_inputs(m, B, 9);
    ert_engine *e[3];
    engines_for(m, e);
    outcome ref[2];
    racer r[2];
    for (int i = 0; i < 2; i++) {
        run(e[i], x, &ref[i]);
        r[i] = (racer){.e = e[i], .x = x, .ref = &ref[i]};
    }
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, race, &r[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(r[i].differed, 0, "threads %d: %d calls differed from the engine alone",
                     counts[i], r[i].differed);
        cr_assert_eq(r[i].omp_changed, 0, "threads %d: the calling thread's OpenMP count changed",
                     counts[i]);
    }
    ASSERT_HOST("two engines at once");
    for (int i = 0; i < 3; i++)
        ert_engine_free(e[i]);
    free(x);
    ert_model_free(m);
}

/* The scope itself: each call sets its counts; calls nest on a thread
 * (OpenMP's count is the thread's); on OpenBLAS's process-wide count,
 * calls overlapping from several threads give the host's count back only
 * when the last returns, whatever order they return in. */
Test(engine_threads, scopes_nest_and_overlap)
{
    host_set(HOST);
    cpu_threads a, b;
    cpu_threads_enter(2, 4, &a);
    cr_assert_eq(openblas_get_num_threads(), 4);
#ifdef _OPENMP
    cr_assert_eq(omp_get_max_threads(), 2);
#endif
    cpu_threads_enter(1, 1, &b); /* nested */
    cr_assert_eq(openblas_get_num_threads(), 1);
    cr_assert_eq(host_omp(), 1);
    cpu_threads_leave(&b);
#ifdef _OPENMP
    cr_assert_eq(omp_get_max_threads(), 2);
#endif
    cpu_threads_leave(&a);
    ASSERT_HOST("nested scopes");
    /* overlapping (as from two threads; OpenBLAS's count alone) */
    cpu_threads_enter(0, 4, &a);
    cpu_threads_enter(0, 1, &b);
    cr_assert_eq(openblas_get_num_threads(), 1);
    cpu_threads_leave(&a); /* the first returns first: b still runs */
    cr_assert_eq(openblas_get_num_threads(), 1);
    cpu_threads_leave(&b);
    ASSERT_HOST("overlapping scopes");
    cpu_threads_enter(0, 0, &a); /* threads 0: nothing changes */
    cpu_threads_leave(&a);
    ASSERT_HOST("an empty scope");
}

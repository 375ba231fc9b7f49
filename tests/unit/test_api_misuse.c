/* test_api_misuse.c - the public API called wrongly: NULL handles and
 * pointers, batches out of range, bad thresholds, absurd configurations, a
 * model freed before its engines, concurrent calls on one engine, and
 * non-finite inputs. Each must return a status with a message and never
 * crash. Run under AddressSanitizer in CI, so leaks count too. */
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "engine_core.h"
#include "exitrt.h"
#include "fixtures.h"
#include "model_writer.h"

/* Under AddressSanitizer a failed huge malloc must return NULL (as it does
 * without it), not abort: the out-of-memory tests below rely on it. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

static char dir[64];
static ert_model *m;

static void setup(void)
{
    cr_assert_eq(mw_tempdir(dir, sizeof dir), 0);
    cr_assert_eq(mw_random_model(dir, 11, MW_MLP), 0);
    ert_error err = {{0}};
    cr_assert_eq(ert_model_load(dir, &m, &err), ERT_OK, "%s", err.msg);
}

static void teardown(void)
{
    ert_model_free(m);
    m = NULL;
    mw_rmtree(dir);
}

TestSuite(api_misuse, .init = setup, .fini = teardown);

/* ---- loading ------------------------------------------------------------------ */

Test(api_misuse, model_load_null_arguments)
{
    ert_model *x = (ert_model *)&x; /* must be set to NULL */
    ert_error err = {{0}};
    cr_assert_eq(ert_model_load(NULL, &x, &err), ERT_INVALID_ARGUMENT);
    cr_assert_null(x);
    cr_assert(strstr(err.msg, "NULL path"), "%s", err.msg);
    cr_assert_eq(ert_model_load(dir, NULL, &err), ERT_INVALID_ARGUMENT);
    cr_assert(strstr(err.msg, "NULL out"), "%s", err.msg);
    /* no error struct: just the status */
    cr_assert_eq(ert_model_load("/nonexistent/model", &x, NULL), ERT_IO);
    cr_assert_null(x);
    cr_assert_eq(ert_model_load("", &x, &err), ERT_IO, "%s", err.msg);
    cr_assert_null(x);
}

Test(api_misuse, getters_out_of_range)
{
    int E = ert_model_num_exits(m);
    cr_assert_null(ert_model_exit_name(m, -1));
    cr_assert_null(ert_model_exit_name(m, E));
    cr_assert_null(ert_model_exit_name(m, INT_MAX));
    cr_assert(isnan(ert_model_exit_threshold(m, E)));
    cr_assert(isnan(ert_model_exit_threshold(m, -5)));
    cr_assert(isnan(ert_model_exit_threshold(m, E - 1)), "the final head has no threshold");
    cr_assert_eq(ert_model_exit_policy(m, E), ERT_POLICY_NONE);
    cr_assert_eq(ert_model_exit_index(m, NULL), -1);
    cr_assert_eq(ert_model_exit_index(m, ""), -1);
    ert_model_input_shape(m, NULL, NULL, NULL);
    ert_model_input_shape(NULL, NULL, NULL, NULL);
    cr_assert_null(ert_model_sample_data(NULL));
    cr_assert_eq(ert_model_macs_full(NULL), 0);
    ert_model_free(NULL);
    ert_engine_free(NULL);
    cr_assert_str_eq(ert_status_string((ert_status)-1), "unknown status");
    cr_assert_str_eq(ert_backend_string((ert_backend)77), "unknown");
    cr_assert_str_eq(ert_mode_string((ert_mode)77), "unknown");
    cr_assert_str_eq(ert_policy_string((ert_policy_kind)77), "unknown");
}

/* ---- engine creation ----------------------------------------------------------- */

static void expect_create_fails(ert_engine_config cfg, ert_status want, const char *msg)
{
    ert_engine *e = (ert_engine *)&e;
    ert_error err = {{0}};
    ert_status st = ert_engine_create(m, &cfg, &e, &err);
    cr_assert_eq(st, want, "status %s, want %s: %s", ert_status_string(st), ert_status_string(want),
                 err.msg);
    cr_assert_null(e);
    cr_assert(strstr(err.msg, msg), "message '%s' lacks '%s'", err.msg, msg);
}

Test(api_misuse, engine_create_null_arguments)
{
    ert_engine_config cfg = ert_engine_config_default();
    ert_engine *e = (ert_engine *)&e;
    ert_error err = {{0}};
    cr_assert_eq(ert_engine_create(NULL, &cfg, &e, &err), ERT_INVALID_ARGUMENT);
    cr_assert_null(e);
    cr_assert(strstr(err.msg, "model is NULL"), "%s", err.msg);
    e = (ert_engine *)&e;
    cr_assert_eq(ert_engine_create(m, NULL, &e, &err), ERT_INVALID_ARGUMENT);
    cr_assert_null(e);
    cr_assert(strstr(err.msg, "config is NULL"), "%s", err.msg);
    cr_assert_eq(ert_engine_create(m, &cfg, NULL, &err), ERT_INVALID_ARGUMENT);
    cr_assert(strstr(err.msg, "out is NULL"), "%s", err.msg);
    cr_assert_eq(ert_engine_create(m, &cfg, NULL, NULL), ERT_INVALID_ARGUMENT);
}

Test(api_misuse, engine_create_absurd_config)
{
    ert_engine_config d = ert_engine_config_default(), c;
    d.backend = ERT_BACKEND_CPU;
    int batches[] = {0, -1, INT_MIN, (1 << 20) + 1, INT_MAX};
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++) {
        c = d;
        c.max_batch = batches[i];
        expect_create_fails(c, ERT_INVALID_ARGUMENT, "max_batch");
    }
    c = d;
    c.threads = -1;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "threads");
    c = d;
    c.threads = INT_MAX;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "threads");
    c = d;
    c.inflight = 0;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "inflight");
    c = d;
    c.inflight = INT_MAX;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "inflight");
    c = d;
    c.device = -1;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "device");
    c = d;
    c.mode = (ert_mode)99;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "unknown mode 99");
    c = d;
    c.mode = (ert_mode)-1;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "unknown mode");
    c = d;
    c.backend = (ert_backend)42;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "unknown backend 42");
    c = d;
    c.precision = (ert_precision)7;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "unknown precision 7");
    c = d;
    c.cuda_options = 0x80u;
    expect_create_fails(c, ERT_INVALID_ARGUMENT, "cuda_options 0x80 has unknown bits");
}

/* Precision: the CPU runs FP32 only and says so for TF32; the CUDA options
 * are the CUDA backend's, and a CPU engine given one runs as without it
 * (bit for bit). */
Test(api_misuse, precision_and_cuda_options_on_the_cpu)
{
    cr_assert_str_eq(ert_precision_string(ERT_PRECISION_FP32), "fp32");
    cr_assert_str_eq(ert_precision_string(ERT_PRECISION_TF32), "tf32");
    cr_assert_str_eq(ert_precision_string((ert_precision)9), "unknown");
    ert_engine_config c = ert_engine_config_default();
    cr_assert_eq(c.precision, ERT_PRECISION_FP32);
    cr_assert_eq(c.cuda_options, 0u);
    c.backend = ERT_BACKEND_CPU;
    c.max_batch = 8;
    c.precision = ERT_PRECISION_TF32;
    expect_create_fails(c, ERT_UNSUPPORTED, "precision tf32 needs the CUDA backend");
    c.precision = ERT_PRECISION_FP32;
    ert_engine *plain = fx_engine(m, &c);
    c.cuda_options = ERT_CUDA_FUSED_ATTENTION;
    ert_engine *opt = fx_engine(m, &c);
    const size_t per = ert_model_input_size(m);
    const int K = ert_model_num_classes(m);
    float *x = malloc(sizeof(float) * per * 8), z1[8 * 64], z2[8 * 64];
    cr_assert(x && K <= 64);
    mw_random_input(x, per * 8, 5);
    ert_sample s1[8], s2[8];
    ert_result r1 = ERT_RESULT_INIT, r2 = ERT_RESULT_INIT;
    r1.samples = s1, r1.logits = z1;
    r2.samples = s2, r2.logits = z2;
    cr_assert_eq(ert_infer(plain, x, 8, &r1), ERT_OK, "%s", ert_engine_error(plain));
    cr_assert_eq(ert_infer(opt, x, 8, &r2), ERT_OK, "%s", ert_engine_error(opt));
    cr_assert(memcmp(s1, s2, sizeof s1) == 0 && memcmp(z1, z2, sizeof(float) * 8 * K) == 0);
    free(x);
    ert_engine_free(opt);
    ert_engine_free(plain);
}

/* The CUDA backend without CUDA (a CPU-only build, or no device): a status
 * and a message, never a crash; AUTO then falls back to the CPU. */
Test(api_misuse, cuda_backend_without_device)
{
    if (ert_cuda_available())
        cr_skip_test("a CUDA device is present: nothing to refuse");
    ert_engine_config c = ert_engine_config_default();
    c.backend = ERT_BACKEND_CUDA;
#ifdef ERT_HAVE_CUDA
    expect_create_fails(c, ERT_NO_DEVICE, "CUDA"); /* the backend is there, no device */
#else
    expect_create_fails(c, ERT_UNSUPPORTED, "no CUDA backend");
#endif
    c.backend = ERT_BACKEND_AUTO;
    ert_engine *e = NULL;
    ert_error err = {{0}};
    cr_assert_eq(ert_engine_create(m, &c, &e, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(ert_engine_backend(e), ERT_BACKEND_CPU);
    ert_engine_free(e);
}

/* Buffers that cannot be allocated: ERT_OUT_OF_MEMORY with a message, nothing
 * leaked (ASan's leak check), and the next engine is created normally. */
Test(api_misuse, engine_create_out_of_memory_then_works)
{
    char big[64];
    cr_assert_eq(mw_tempdir(big, sizeof big), 0);
    char path[128];
    /* [4, 512, 512] inputs: 1M floats a row; 2^20 rows need 4 TiB a buffer */
    mw_path(path, sizeof path, big, "model.json");
    cr_assert_eq(
        mw_write_text(path,
                      "{\"format\":\"exitrt-model\",\"version\":1,\"weights\":\"w.safetensors\","
                      "\"input\":{\"shape\":[4,512,512]},\"num_classes\":4,"
                      "\"backbone\":[{\"name\":\"gap\",\"type\":\"global_avgpool\"}],"
                      "\"final\":{\"head\":[]}}"),
        0);
    mw_path(path, sizeof path, big, "w.safetensors");
    mw_st *st = mw_st_new();
    cr_assert_eq(mw_st_write(st, path), 0);
    mw_st_free(st);
    ert_model *bm = NULL;
    ert_error err = {{0}};
    cr_assert_eq(ert_model_load(big, &bm, &err), ERT_OK, "%s", err.msg);

    ert_engine_config c = ert_engine_config_default();
    c.backend = ERT_BACKEND_CPU;
    c.max_batch = 1 << 20;
    ert_engine *e = (ert_engine *)&e;
    ert_status s = ert_engine_create(bm, &c, &e, &err);
    cr_assert_eq(s, ERT_OUT_OF_MEMORY, "status %s: %s", ert_status_string(s), err.msg);
    cr_assert_null(e);
    cr_assert(err.msg[0], "no message");
    c.max_batch = 2;
    cr_assert_eq(ert_engine_create(bm, &c, &e, &err), ERT_OK, "%s", err.msg);
    float *x = calloc(2 * ert_model_input_size(bm), sizeof *x);
    ert_sample smp[2];
    ert_result r = {.struct_size = sizeof(ert_result), .samples = smp};
    cr_assert_eq(ert_infer(e, x, 2, &r), ERT_OK, "%s", ert_engine_error(e));
    free(x);
    ert_engine_free(e);
    ert_model_free(bm);
    mw_rmtree(big);
}

/* ---- inference ------------------------------------------------------------------ */

static void expect_engine_fail(ert_engine *e, ert_status got, ert_status want, const char *msg)
{
    cr_assert_eq(got, want, "status %s, want %s: %s", ert_status_string(got),
                 ert_status_string(want), ert_engine_error(e));
    cr_assert(strstr(ert_engine_error(e), msg), "message '%s' lacks '%s'", ert_engine_error(e),
              msg);
}

Test(api_misuse, infer_bad_arguments)
{
    ert_engine *e = fx_cpu_engine(m, ERT_MODE_COMPACTED, 4);
    size_t per = ert_model_input_size(m);
    float *x = calloc(8 * per, sizeof *x);
    float scores[8 * ERT_MAX_EXITS];
    ert_sample s[8];
    ert_result r = {.struct_size = sizeof(ert_result), .samples = s};

    cr_assert_eq(ert_infer(NULL, x, 1, &r), ERT_INVALID_ARGUMENT);
    cr_assert_str_neq(ert_engine_error(NULL), "");
    expect_engine_fail(e, ert_infer(e, NULL, 1, &r), ERT_INVALID_ARGUMENT, "input is NULL");
    expect_engine_fail(e, ert_infer(e, x, 1, NULL), ERT_INVALID_ARGUMENT, "result is NULL");
    ert_result nos = ERT_RESULT_INIT;
    expect_engine_fail(e, ert_infer(e, x, 1, &nos), ERT_INVALID_ARGUMENT, "samples is NULL");
    int bad[] = {0, -1, 5, INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        expect_engine_fail(e, ert_infer(e, x, bad[i], &r), ERT_INVALID_ARGUMENT,
                           "out of range [1, 4]");
        expect_engine_fail(e, ert_engine_scores(e, x, bad[i], scores), ERT_INVALID_ARGUMENT,
                           "out of range [1, 4]");
    }
    cr_assert_eq(ert_engine_scores(NULL, x, 1, scores), ERT_INVALID_ARGUMENT);
    expect_engine_fail(e, ert_engine_scores(e, NULL, 1, scores), ERT_INVALID_ARGUMENT, "is NULL");
    expect_engine_fail(e, ert_engine_scores(e, x, 1, NULL), ERT_INVALID_ARGUMENT, "is NULL");
    int32_t classes[8 * ERT_MAX_EXITS];
    cr_assert_eq(ert_engine_exit_outputs(NULL, x, 1, scores, classes), ERT_INVALID_ARGUMENT);
    expect_engine_fail(e, ert_engine_exit_outputs(e, x, 1, NULL, NULL), ERT_INVALID_ARGUMENT,
                       "both NULL");
    expect_engine_fail(e, ert_engine_exit_outputs(e, NULL, 1, NULL, classes), ERT_INVALID_ARGUMENT,
                       "input is NULL");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_engine_fail(e, ert_engine_exit_outputs(e, x, bad[i], NULL, classes),
                           ERT_INVALID_ARGUMENT, "out of range [1, 4]");

    /* the device entry point on a CPU engine */
    ert_device_result dr = {.struct_size = sizeof(ert_device_result), .samples = s};
    cr_assert_eq(ert_infer_device(NULL, x, 1, &dr, NULL), ERT_INVALID_ARGUMENT);
    expect_engine_fail(e, ert_infer_device(e, x, 1, &dr, NULL), ERT_UNSUPPORTED, "CUDA backend");
    expect_engine_fail(e, ert_infer_device(e, x, 0, &dr, NULL), ERT_INVALID_ARGUMENT,
                       "out of range");

    /* after all that, a good call works and clears the message */
    cr_assert_eq(ert_infer(e, x, 4, &r), ERT_OK, "%s", ert_engine_error(e));
    cr_assert_str_eq(ert_engine_error(e), "");
    free(x);
    ert_engine_free(e);
}

Test(api_misuse, thresholds_out_of_range)
{
    ert_engine *e = fx_cpu_engine(m, ERT_MODE_MASKED, 2);
    int E = ert_model_num_exits(m);
    cr_assert(E >= 3, "the MLP test model has two early exits");
    cr_assert_eq(ert_engine_set_threshold(NULL, 0, 0.5f), ERT_INVALID_ARGUMENT);
    expect_engine_fail(e, ert_engine_set_threshold(e, -1, 0.5f), ERT_INVALID_ARGUMENT,
                       "no threshold");
    expect_engine_fail(e, ert_engine_set_threshold(e, E - 1, 0.5f), ERT_INVALID_ARGUMENT,
                       "no threshold");
    expect_engine_fail(e, ert_engine_set_threshold(e, INT_MAX, 0.5f), ERT_INVALID_ARGUMENT,
                       "no threshold");
    for (int i = 0; i < E - 1; i++) {
        float before = ert_engine_threshold(e, i);
        expect_engine_fail(e, ert_engine_set_threshold(e, i, NAN), ERT_INVALID_ARGUMENT, "NaN");
        expect_engine_fail(e, ert_engine_set_threshold(e, i, -0.25f), ERT_INVALID_ARGUMENT,
                           "out of range");
        expect_engine_fail(e, ert_engine_set_threshold(e, i, -INFINITY), ERT_INVALID_ARGUMENT,
                           "out of range");
        if (ert_model_exit_policy(m, i) != ERT_POLICY_ENTROPY) {
            expect_engine_fail(e, ert_engine_set_threshold(e, i, 1.5f), ERT_INVALID_ARGUMENT,
                               "out of range");
            expect_engine_fail(e, ert_engine_set_threshold(e, i, INFINITY), ERT_INVALID_ARGUMENT,
                               "out of range");
        }
        cr_assert_eq(ert_engine_threshold(e, i), before, "a refused threshold changed exit %d", i);
        cr_assert_eq(ert_engine_set_threshold(e, i, 0.0f), ERT_OK);
    }
    cr_assert(isnan(ert_engine_threshold(NULL, 0)));
    cr_assert(isnan(ert_engine_threshold(e, -1)));
    cr_assert(isnan(ert_engine_threshold(e, E)));
    ert_engine_free(e);
}

/* ---- a model freed before its engines ---------------------------------------------- */

Test(api_misuse, model_freed_before_engines)
{
    ert_engine *a = fx_cpu_engine(m, ERT_MODE_COMPACTED, 3);
    ert_engine *b = fx_cpu_engine(m, ERT_MODE_FULL, 3);
    size_t per = ert_model_input_size(m);
    int K = ert_model_num_classes(m);
    float *x = malloc(3 * per * sizeof *x), la[3 * 16], lb[3 * 16];
    cr_assert(K <= 16);
    mw_random_input(x, 3 * per, 5);
    ert_sample sa[3], sb[3];
    ert_result ra = {.struct_size = sizeof(ert_result), .samples = sa, .logits = la};
    cr_assert_eq(ert_infer(a, x, 3, &ra), ERT_OK);

    ert_model_free(m); /* engines alive: only marked */
    m = NULL;
    ert_result rb = {.struct_size = sizeof(ert_result), .samples = sb, .logits = lb};
    cr_assert_eq(ert_infer(a, x, 3, &rb), ERT_OK, "%s", ert_engine_error(a));
    cr_assert_eq(memcmp(sa, sb, sizeof sa), 0, "results changed after ert_model_free");
    cr_assert_eq(memcmp(la, lb, 3 * (size_t)K * sizeof(float)), 0);
    ert_engine_free(a);
    cr_assert_eq(ert_infer(b, x, 3, &rb), ERT_OK, "%s", ert_engine_error(b));
    ert_engine_free(b); /* the last one releases the model (ASan: no leak) */
    free(x);
}

Test(api_misuse, engine_create_on_freed_model_is_refused)
{
    ert_engine *a = fx_cpu_engine(m, ERT_MODE_MASKED, 2);
    ert_model *keep = m;
    ert_model_free(m);
    m = NULL;
    ert_engine_config c = ert_engine_config_default();
    c.backend = ERT_BACKEND_CPU;
    ert_engine *e = (ert_engine *)&e;
    ert_error err = {{0}};
    cr_assert_eq(ert_engine_create(keep, &c, &e, &err), ERT_INVALID_ARGUMENT);
    cr_assert_null(e);
    cr_assert(strstr(err.msg, "freed"), "%s", err.msg);
    ert_engine_free(a);
}

/* Engines of one model created and freed from many threads at once: the
 * model's count of engines is atomic, and it is released exactly once. */
static ert_model *shared_model;

static void *create_free_loop(void *arg)
{
    (void)arg;
    for (int i = 0; i < 50; i++) {
        ert_engine_config c = ert_engine_config_default();
        c.backend = ERT_BACKEND_CPU;
        c.max_batch = 1;
        ert_engine *e = NULL;
        if (ert_engine_create(shared_model, &c, &e, NULL) != ERT_OK)
            return (void *)1;
        ert_engine_free(e);
    }
    return NULL;
}

Test(api_misuse, engines_from_threads)
{
    ert_engine *hold = fx_cpu_engine(m, ERT_MODE_FULL, 1); /* keeps the model alive */
    shared_model = m;
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, create_free_loop, NULL), 0);
    for (int i = 0; i < 4; i++) {
        void *rv;
        pthread_join(t[i], &rv);
        cr_assert_null(rv, "an engine creation failed");
    }
    ert_model_free(m);
    m = NULL;
    ert_engine_free(hold); /* releases the model */
}

/* ---- concurrent calls on one engine ------------------------------------------------- */

/* Deterministic: while a call holds the engine (the busy flag set, as
 * engine.c does on entry), every other call returns ERT_BUSY at once and
 * writes nothing on the engine: its message belongs to the call that holds
 * it (exitrt.h), so the text of the last failure stays as it was, even for
 * a refused call whose arguments are wrong. */
Test(api_misuse, concurrent_call_is_busy)
{
    ert_engine *e = fx_cpu_engine(m, ERT_MODE_COMPACTED, 2);
    size_t per = ert_model_input_size(m);
    float *x = calloc(2 * per, sizeof *x), scores[2 * ERT_MAX_EXITS];
    int32_t classes[2 * ERT_MAX_EXITS];
    ert_sample s[2];
    ert_result r = {.struct_size = sizeof(ert_result), .samples = s};
    ert_device_result dr = {.struct_size = sizeof(ert_device_result), .samples = s};
    int32_t ids[2] = {0, 0};
    expect_engine_fail(e, ert_infer(e, x, 99, &r), ERT_INVALID_ARGUMENT, "batch 99");
    char before[sizeof e->err];
    memcpy(before, e->err, sizeof before);
    const float thr = ert_engine_threshold(e, 0);
    atomic_store(&e->busy, 1);
    cr_assert_eq(ert_infer(e, x, 2, &r), ERT_BUSY);
    cr_assert_eq(ert_infer(e, x, 0, &r), ERT_BUSY);
    cr_assert_eq(ert_infer(e, NULL, 2, &r), ERT_BUSY);
    cr_assert_eq(ert_infer_tokens(e, ids, ids, 2, &r), ERT_BUSY);
    cr_assert_eq(ert_infer_device(e, x, 2, &dr, NULL), ERT_BUSY);
    cr_assert_eq(ert_engine_scores(e, x, 2, scores), ERT_BUSY);
    cr_assert_eq(ert_engine_scores(e, x, 2, NULL), ERT_BUSY);
    cr_assert_eq(ert_engine_exit_outputs(e, x, 2, scores, classes), ERT_BUSY);
    cr_assert_eq(ert_engine_exit_outputs(e, x, 2, NULL, NULL), ERT_BUSY);
    cr_assert_eq(ert_engine_set_threshold(e, 0, 0.5f), ERT_BUSY);
    cr_assert_eq(ert_engine_set_threshold(e, 99, NAN), ERT_BUSY);
    cr_assert_eq(memcmp(before, e->err, sizeof before), 0, "a refused call wrote '%s'", e->err);
    cr_assert_eq(ert_engine_threshold(e, 0), thr, "a refused call set a threshold");
    atomic_store(&e->busy, 0);
    cr_assert_eq(ert_infer(e, x, 2, &r), ERT_OK, "%s", ert_engine_error(e));
    cr_assert_str_empty(ert_engine_error(e), "a call that ran keeps an old message");
    cr_assert_eq(ert_engine_set_threshold(e, 0, 0.5f), ERT_OK, "%s", ert_engine_error(e));
    cr_assert_eq(ert_engine_threshold(e, 0), 0.5f);
    free(x);
    ert_engine_free(e);
}

typedef struct race {
    ert_engine *e;
    const float *x;
    int batch;
    const ert_sample *want;
    atomic_int *go;
    int ok, busy, other, wrong;
} race;

static void *race_loop(void *arg)
{
    race *r = arg;
    ert_sample s[64];
    while (!atomic_load(r->go))
        ;
    for (int i = 0; i < 200; i++) {
        ert_result res = {.struct_size = sizeof(ert_result), .samples = s};
        ert_status st = ert_infer(r->e, r->x, r->batch, &res);
        if (st == ERT_OK) {
            r->ok++;
            if (memcmp(s, r->want, sizeof *s * (size_t)r->batch) != 0)
                r->wrong++;
        } else if (st == ERT_BUSY) {
            r->busy++;
        } else {
            r->other++;
        }
    }
    return NULL;
}

/* Two threads hammer one engine: each call either runs (with the right
 * results) or returns ERT_BUSY; nothing else, nothing crashes. */
Test(api_misuse, two_threads_one_engine)
{
    ert_engine *e = fx_cpu_engine(m, ERT_MODE_COMPACTED, 64);
    size_t per = ert_model_input_size(m);
    float *x = malloc(64 * per * sizeof *x);
    mw_random_input(x, 64 * per, 9);
    ert_sample want[64];
    ert_result res = {.struct_size = sizeof(ert_result), .samples = want};
    cr_assert_eq(ert_infer(e, x, 64, &res), ERT_OK);
    atomic_int go = 0;
    race r[2] = {{e, x, 64, want, &go, 0, 0, 0, 0}, {e, x, 64, want, &go, 0, 0, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, race_loop, &r[i]), 0);
    atomic_store(&go, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(r[i].other, 0, "a status other than OK or BUSY");
        cr_assert_eq(r[i].wrong, 0, "a call that ran gave other results");
        cr_assert_eq(r[i].ok + r[i].busy, 200);
    }
    /* how many ran depends on the interleaving (a thread that finds the
       engine busy spends an iteration without waiting): at least some did */
    cr_assert(r[0].ok + r[1].ok >= 1, "no call ran");
    cr_assert_eq(atomic_load(&e->busy), 0, "the engine stayed busy");
    free(x);
    ert_engine_free(e);
}

/* ---- non-finite inputs ---------------------------------------------------------------- */

/* NaN, +Inf and -Inf in the input: no crash in any mode, the sample is
 * counted in nonfinite_samples, a sample never leaves early on a non-finite
 * score, and on the MLP (linear layers: a NaN reaches every logit) a NaN row
 * takes the final head. Its neighbours' results do not change. */
Test(api_misuse, nonfinite_inputs_every_mode)
{
    size_t per = ert_model_input_size(m);
    int E = ert_model_num_exits(m), K = ert_model_num_classes(m);
    const int n = 6;
    float *x = malloc(n * per * sizeof *x);
    mw_random_input(x, n * per, 21);
    ert_mode modes[] = {ERT_MODE_FULL, ERT_MODE_MASKED, ERT_MODE_COMPACTED};
    for (int mi = 0; mi < 3; mi++) {
        ert_engine *e = fx_cpu_engine(m, modes[mi], n);
        ert_sample clean[6], s[6];
        float *logits = malloc((size_t)n * (size_t)K * sizeof *logits);
        ert_result r = {.struct_size = sizeof(ert_result), .samples = clean};
        cr_assert_eq(ert_infer(e, x, n, &r), ERT_OK);
        cr_assert_eq(r.nonfinite_samples, 0);
        float *y = malloc(n * per * sizeof *y);
        memcpy(y, x, n * per * sizeof *y);
        y[1 * per + 3] = NAN;
        y[2 * per] = INFINITY;
        y[3 * per + per - 1] = -INFINITY;
        for (size_t i = 0; i < per; i++)
            y[5 * per + i] = NAN; /* a row of NaNs */
        r = (ert_result){.struct_size = sizeof(ert_result), .samples = s, .logits = logits};
        cr_assert_eq(ert_infer(e, y, n, &r), ERT_OK, "%s", ert_engine_error(e));
        cr_assert_eq(r.nonfinite_samples, 4, "%s: %d", ert_mode_string(modes[mi]),
                     r.nonfinite_samples);
        for (int i = 0; i < n; i++) {
            cr_assert(s[i].exit_index >= 0 && s[i].exit_index < E);
            cr_assert(s[i].exit_index == E - 1 || isfinite(s[i].score),
                      "row %d left early on a non-finite score", i);
        }
        cr_assert_eq(s[1].exit_index, E - 1, "%s: a NaN row left early",
                     ert_mode_string(modes[mi]));
        cr_assert_eq(s[5].exit_index, E - 1, "%s: a NaN row left early",
                     ert_mode_string(modes[mi]));
        cr_assert(isnan(logits[5 * K]), "NaN does not reach the logits");
        cr_assert_eq(memcmp(&s[0], &clean[0], sizeof s[0]), 0, "row 0 changed");
        cr_assert_eq(memcmp(&s[4], &clean[4], sizeof s[4]), 0, "row 4 changed");
        float sc[6 * ERT_MAX_EXITS];
        cr_assert_eq(ert_engine_scores(e, y, n, sc), ERT_OK);
        for (int x2 = 0; x2 < E; x2++)
            cr_assert(isnan(sc[5 * E + x2]), "a NaN row has a finite score at exit %d", x2);
        free(y);
        free(logits);
        ert_engine_free(e);
    }
    free(x);
}

/* backend_test.c - see backend_test.h. */
#include "backend_test.h"
#include "engine_core.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

ert_engine *tb_engine(ert_model *m, ert_mode mode, int max_batch)
{
    if (ERT_TEST_BACKEND == ERT_BACKEND_CUDA && !ert_cuda_available())
        cr_skip_test("no CUDA device");
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_TEST_BACKEND;
    cfg.mode = mode;
    cfg.max_batch = max_batch;
    ert_engine *e = NULL;
    ert_error err = {{0}};
    ert_status st = ert_engine_create(m, &cfg, &e, &err);
    cr_assert_eq(st, ERT_OK, "ert_engine_create (%s, %s, max_batch %d): %s: %s",
                 ERT_TEST_BACKEND_NAME, ert_mode_string(mode), max_batch, ert_status_string(st),
                 err.msg);
    cr_assert_not_null(e);
    cr_assert_eq(ert_engine_backend(e), ERT_TEST_BACKEND);
    return e;
}

ert_engine *tb_engine_on(ert_model *m, ert_backend be, ert_mode mode, int max_batch,
                         int graph_buckets, int inflight)
{
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = be;
    cfg.mode = mode;
    cfg.max_batch = max_batch;
    cfg.graph_buckets = graph_buckets;
    cfg.inflight = inflight;
    ert_engine *e = NULL;
    ert_error err = {{0}};
    ert_status st = ert_engine_create(m, &cfg, &e, &err);
    cr_assert_eq(st, ERT_OK, "ert_engine_create (%s, %s, max_batch %d, graph_buckets %d, "
                 "inflight %d): %s: %s",
                 ert_backend_string(be), ert_mode_string(mode), max_batch, graph_buckets,
                 inflight, ert_status_string(st), err.msg);
    return e;
}

int tb_exact(const ert_engine *e) { return e->exact_modes; }

ert_model *tb_random_model(uint64_t seed, mw_kind kind)
{
    char dir[256];
    cr_assert_eq(mw_tempdir(dir, sizeof dir), 0, "mw_tempdir");
    cr_assert_eq(mw_random_model(dir, seed, kind), 0, "mw_random_model %s seed %llu",
                 mw_kind_name(kind), (unsigned long long)seed);
    ert_model *m = NULL;
    ert_error err = {{0}};
    ert_status st = ert_model_load(dir, &m, &err);
    mw_rmtree(dir);
    cr_assert_eq(st, ERT_OK, "loading the random %s model: %s", mw_kind_name(kind), err.msg);
    return m;
}

void tb_result_init(tb_result *t, int batch, int k)
{
    memset(t, 0, sizeof *t);
    t->samples = calloc((size_t)batch, sizeof *t->samples);
    t->logits = calloc((size_t)batch * k, sizeof *t->logits);
    cr_assert(t->samples && t->logits);
    t->k = k;
    t->r.samples = t->samples;
    t->r.logits = t->logits;
}

void tb_result_free(tb_result *t)
{
    free(t->samples);
    free(t->logits);
    memset(t, 0, sizeof *t);
}

void tb_infer(ert_engine *e, const float *input, int batch, tb_result *t)
{
    /* poison: every field the call must write */
    for (int i = 0; i < batch; i++)
        t->samples[i] = (ert_sample){-7, -7, -7.0f};
    for (size_t i = 0; i < (size_t)batch * t->k; i++)
        t->logits[i] = -12345.0f;
    memset(&t->r.exit_counts, 0xff, sizeof t->r.exit_counts);
    t->r.macs_executed = UINT64_MAX;
    ert_status st = ert_infer(e, input, batch, &t->r);
    cr_assert_eq(st, ERT_OK, "ert_infer (%s, batch %d): %s: %s", ERT_TEST_BACKEND_NAME, batch,
                 ert_status_string(st), ert_engine_error(e));
    int sum = 0;
    for (int i = 0; i < ERT_MAX_EXITS; i++)
        sum += t->r.exit_counts[i];
    cr_assert_eq(sum, batch, "exit_counts sum to %d, batch %d", sum, batch);
    for (int i = 0; i < batch; i++) {
        cr_assert(t->samples[i].exit_index >= 0 && t->samples[i].predicted >= 0 &&
                      t->samples[i].predicted < t->k,
                  "sample %d not written: exit %d class %d", i, t->samples[i].exit_index,
                  t->samples[i].predicted);
        for (int j = 0; j < t->k; j++)
            cr_assert_neq(t->logits[(size_t)i * t->k + j], -12345.0f,
                          "logits of sample %d not written", i);
    }
}

/* backend_test.c - see backend_test.h. */
#include "backend_test.h"
#include "engine_core.h"
#include "exact.h"
#include "tolerance.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

void tb_only(ert_backend be, const char *about)
{
    if (ERT_TEST_BACKEND != be)
        cr_skip_test("about %s: runs in %s", about,
                     be == ERT_BACKEND_CUDA ? "test_gpu" : "test_cpu");
    if (be == ERT_BACKEND_CUDA && !ert_cuda_available())
        cr_skip_test("no CUDA device");
}

ert_engine *tb_engine(ert_model *m, ert_mode mode, int max_batch)
{
    if (ERT_TEST_BACKEND == ERT_BACKEND_CUDA && !ert_cuda_available())
        cr_skip_test("no CUDA device");
    ert_engine_config d = ert_engine_config_default();
    ert_engine *e = tb_engine_on(m, ERT_TEST_BACKEND, mode, max_batch, d.graph_buckets, d.inflight);
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
    return fx_engine(m, &cfg);
}

int tb_exact(const ert_engine *e) { return exact_engine(e); }

int tb_note_is(const ert_engine *e, const char *prefix)
{
    return strncmp(ert_engine_note(e), prefix, strlen(prefix)) == 0;
}

void tb_result_init(tb_result *t, int batch, int k)
{
    memset(t, 0, sizeof *t);
    t->samples = calloc((size_t)batch, sizeof *t->samples);
    t->logits = calloc((size_t)batch * k, sizeof *t->logits);
    cr_assert(t->samples && t->logits);
    t->k = k;
    t->r.struct_size = sizeof t->r;
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

int tb_flip(const ert_engine *e, const ert_sample *a, const ert_sample *b, const char *what,
            int row)
{
    if (a->exit_index == b->exit_index)
        return 0;
    const ert_sample *early = a->exit_index < b->exit_index ? a : b;
    float thr = ert_engine_threshold(e, early->exit_index);
    cr_assert(tol_near_threshold(early->score, thr),
              "%s: sample %d: exit %d vs %d (score %.9g, threshold %.9g)", what, row, a->exit_index,
              b->exit_index, early->score, thr);
    return 1;
}

int tb_compare(const ert_engine *e, const tb_result *got, const tb_result *want, int batch,
               const char *what)
{
    int flips = 0, K = got->k;
    for (int i = 0; i < batch; i++) {
        if (tb_flip(e, &got->samples[i], &want->samples[i], what, i)) {
            flips++;
            continue;
        }
        fx_check_logits(got->logits + (size_t)i * K, want->logits + (size_t)i * K, K, what, i);
    }
    cr_assert(tol_flips_ok(flips, batch), "%s: %d exits differ in a batch of %d", what, flips,
              batch);
    return flips;
}

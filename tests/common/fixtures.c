/* fixtures.c - see fixtures.h. */
#include "fixtures.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "tolerance.h"

/* ---- models, engines, inputs -------------------------------------------------- */

ert_model *fx_policy_model(uint64_t seed, mw_kind kind, const char *const *types, const double *thr,
                           int n)
{
    char dir[256];
    cr_assert_eq(mw_tempdir(dir, sizeof dir), 0, "mw_tempdir");
    cr_assert_eq(mw_random_model(dir, seed, kind), 0, "mw_random_model %s seed %llu",
                 mw_kind_name(kind), (unsigned long long)seed);
    for (int i = 0; i < n; i++)
        if (types[i])
            cr_assert_eq(mw_set_policy(dir, i, types[i], thr[i]), 0, "exit %d: %s %g", i, types[i],
                         thr[i]);
    ert_model *m = NULL;
    ert_error err = {{0}};
    ert_status st = ert_model_load(dir, &m, &err);
    mw_rmtree(dir);
    cr_assert_eq(st, ERT_OK, "loading the random %s model: %s", mw_kind_name(kind), err.msg);
    return m;
}

ert_model *fx_random_model(uint64_t seed, mw_kind kind)
{
    return fx_policy_model(seed, kind, NULL, NULL, 0);
}

ert_engine *fx_engine(ert_model *m, const ert_engine_config *cfg)
{
    ert_engine *e = NULL;
    ert_error err = {{0}};
    ert_status st = ert_engine_create(m, cfg, &e, &err);
    cr_assert_eq(st, ERT_OK,
                 "ert_engine_create (%s, %s, max_batch %d, graph_buckets %d, "
                 "inflight %d): %s: %s",
                 ert_backend_string(cfg->backend), ert_mode_string(cfg->mode), cfg->max_batch,
                 cfg->graph_buckets, cfg->inflight, ert_status_string(st), err.msg);
    return e;
}

ert_engine *fx_cpu_engine(ert_model *m, ert_mode mode, int max_batch)
{
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_BACKEND_CPU;
    cfg.mode = mode;
    cfg.max_batch = max_batch;
    return fx_engine(m, &cfg);
}

float *fx_random_inputs(const ert_model *m, int n, uint64_t seed)
{
    size_t len = ert_model_input_size(m) * (size_t)n;
    float *x = malloc(sizeof(float) * len);
    cr_assert_not_null(x);
    mw_model_inputs(m, x, n, seed);
    return x;
}

/* ---- thresholds ---------------------------------------------------------------- */

void fx_random_thresholds(const ert_model *m, mw_rng *r, float *thr)
{
    int k = ert_model_num_classes(m);
    for (int i = 0; i < ert_model_num_exits(m) - 1; i++) {
        float u = mw_rng_uniform(r);
        switch (ert_model_exit_policy(m, i)) {
        case ERT_POLICY_ENTROPY: thr[i] = u * logf((float)k); break;
        case ERT_POLICY_MAX_PROB: thr[i] = 1.0f / k + u * (1.0f - 1.0f / k); break;
        default: thr[i] = u; break; /* margin, confidence head */
        }
    }
}

void fx_bound_thresholds(const ert_model *m, int everybody_first, float *thr)
{
    int k = ert_model_num_classes(m);
    for (int i = 0; i < ert_model_num_exits(m) - 1; i++) {
        int entropy = ert_model_exit_policy(m, i) == ERT_POLICY_ENTROPY;
        int leave = everybody_first && i == 0;
        thr[i] = leave ? (entropy ? logf((float)k) + 1.0f : 0.0f) : (entropy ? 0.0f : 1.0f);
    }
}

/* ---- comparisons (tolerance.h) -------------------------------------------------- */

void fx_check_logits(const float *got, const float *want, int k, const char *what, int row)
{
    float scale = 0.0f;
    for (int j = 0; j < k; j++)
        if (isfinite(want[j]))
            scale = fmaxf(scale, fabsf(want[j]));
    for (int j = 0; j < k; j++) {
        if (!isfinite(want[j]) || !isfinite(got[j])) {
            cr_assert((isnan(want[j]) && isnan(got[j])) || want[j] == got[j],
                      "%s: row %d logit %d: %g vs %g", what, row, j, got[j], want[j]);
            continue;
        }
        cr_assert(tol_logit_ok(got[j], want[j], scale), "%s: row %d logit %d: %.9g vs %.9g", what,
                  row, j, got[j], want[j]);
    }
}

int fx_near_tie(const float *z, int k)
{
    float a = -INFINITY, b = -INFINITY, scale = 0.0f;
    for (int j = 0; j < k; j++) {
        scale = fmaxf(scale, fabsf(z[j]));
        if (z[j] > a) {
            b = a;
            a = z[j];
        } else if (z[j] > b) {
            b = z[j];
        }
    }
    return a - b <= ERT_TOL_LOGIT * (fabsf(a) + scale) + 1e-6f;
}

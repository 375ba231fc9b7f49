/* test_modes.c - the execution modes against each other and against a plain
 * reference, on the backend under test (backend_test.h).
 *
 * The core property (docs/ARCHITECTURE.md, "The data flow of one batch"): for
 * one model, input and thresholds, MASKED and COMPACTED give every sample
 * the same exit, class and logits; FULL gives the final head's, which MASKED
 * computes too. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_test.h"
#include "tolerance.h"
#include "plan.h"
#include "policy.h"

#define MAXB 257

static const int batches[] = {1, 2, 7, 64, 257};

/* a and b agree within tol, or are both NaN, or the same infinity */
static int close_or_same(float a, float b, float tol)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b))
        return a == b;
    return fabsf(a - b) <= tol;
}

/* Logits rows a and b of two modes on one backend agree: 1e-5 relative,
 * with a floor of 1e-5 of the row's largest magnitude (a logit near 0 has
 * no relative precision). Tighter than tolerance.h's rule between backends
 * (fx_check_logits): the same kernels, only the rows around differ. */
static void check_logits_modes(const float *a, const float *b, int k, const char *what, int row)
{
    float scale = 0.0f;
    for (int j = 0; j < k; j++)
        if (isfinite(a[j]) && isfinite(b[j]))
            scale = fmaxf(scale, fmaxf(fabsf(a[j]), fabsf(b[j])));
    for (int j = 0; j < k; j++) {
        float tol = 1e-5f * fmaxf(fabsf(a[j]), fabsf(b[j])) + 1e-5f * scale + 1e-7f;
        cr_assert(close_or_same(a[j], b[j], tol), "%s: row %d logit %d: %.9g vs %.9g", what, row, j,
                  a[j], b[j]);
    }
}

static void set_thresholds(ert_engine **es, int ne, const ert_model *m, const float *thr)
{
    for (int i = 0; i < ert_model_num_exits(m) - 1; i++)
        for (int j = 0; j < ne; j++)
            cr_assert_eq(ert_engine_set_threshold(es[j], i, thr[i]), ERT_OK, "exit %d thr %g: %s",
                         i, thr[i], ert_engine_error(es[j]));
}

typedef struct mode_run {
    tb_result full, masked, comp;
    int early; /* rows COMPACTED sent out before the final head */
    int flips; /* rows whose exit differed, each within rounding of a threshold */
} mode_run;

/* Runs FULL, MASKED and COMPACTED on the same batch and checks everything
 * that must hold between them. es: {full, masked, compacted}. */
static void run_modes(ert_model *m, const plan *p, ert_engine **es, const float *x, int batch,
                      mode_run *mr)
{
    const int E = ert_model_num_exits(m), K = ert_model_num_classes(m);
    tb_infer(es[0], x, batch, &mr->full);
    tb_infer(es[1], x, batch, &mr->masked);
    tb_infer(es[2], x, batch, &mr->comp);
    mr->early = batch - mr->comp.r.exit_counts[E - 1];
    mr->flips = 0;

    for (int i = 0; i < batch; i++) {
        const ert_sample *f = &mr->full.samples[i], *a = &mr->masked.samples[i],
                         *c = &mr->comp.samples[i];
        const float *fl = mr->full.logits + (size_t)i * K, *al = mr->masked.logits + (size_t)i * K,
                    *cl = mr->comp.logits + (size_t)i * K;
        /* FULL: the final head for everyone */
        cr_assert_eq(f->exit_index, E - 1, "FULL: sample %d left at exit %d", i, f->exit_index);
        /* a different exit is only legal when the earlier exit's score sat
         * on its threshold */
        if (tb_flip(es[1], a, c, "MASKED vs COMPACTED", i)) {
            mr->flips++;
            continue;
        }
        cr_assert_eq(a->predicted, c->predicted, "sample %d: class %d vs %d", i, a->predicted,
                     c->predicted);
        cr_assert(close_or_same(a->score, c->score, 1e-5f * (1.0f + fabsf(a->score))),
                  "sample %d: score %.9g vs %.9g", i, a->score, c->score);
        check_logits_modes(al, cl, K, "MASKED vs COMPACTED", i);
        if (a->exit_index == E - 1) {
            check_logits_modes(al, fl, K, "MASKED vs FULL final", i);
            cr_assert_eq(a->predicted, f->predicted);
            cr_assert(close_or_same(a->score, f->score, 1e-5f * (1.0f + fabsf(a->score))));
        }
        cr_assert_eq(c->predicted, ert_argmax(cl, K));
    }
    cr_assert(tol_flips_ok(mr->flips, batch), "%d exits differ in a batch of %d", mr->flips, batch);
    if (tb_exact(es[1]) && tb_exact(es[2])) {
        /* The engines are batch-invariant (their notes say so): a row's
         * numbers do not depend on the rows beside it, so the modes agree
         * bit for bit. */
        cr_assert_eq(mr->flips, 0, "CPU: %d exits differ between MASKED and COMPACTED", mr->flips);
        for (int i = 0; i < batch; i++) {
            const ert_sample *a = &mr->masked.samples[i], *c = &mr->comp.samples[i];
            cr_assert(memcmp(&a->score, &c->score, sizeof(float)) == 0,
                      "CPU: sample %d score %.9g vs %.9g", i, a->score, c->score);
            cr_assert(memcmp(mr->masked.logits + (size_t)i * K, mr->comp.logits + (size_t)i * K,
                             sizeof(float) * K) == 0,
                      "CPU: sample %d logits differ between MASKED and COMPACTED", i);
        }
    }

    /* the work done */
    cr_assert_eq(mr->full.r.macs_executed, (uint64_t)batch * ert_model_macs_full(m));
    cr_assert_eq(mr->full.r.macs_full, (uint64_t)batch * ert_model_macs_full(m));
    cr_assert_eq(mr->masked.r.macs_executed, (uint64_t)batch * p->macs_all_heads);
    uint64_t ideal = plan_ideal_macs(m, p, mr->comp.r.exit_counts);
    cr_assert_eq(mr->comp.r.macs_executed, ideal, "COMPACTED ran %llu MACs, ideal %llu",
                 (unsigned long long)mr->comp.r.macs_executed, (unsigned long long)ideal);
    /* the same from each sample's exit: a sample leaving at x ran stages
     * and heads 0..x (no rows-entering bookkeeping, unlike plan.c) */
    uint64_t per_sample = 0;
    for (int i = 0; i < batch; i++)
        for (int s = 0; s <= mr->comp.samples[i].exit_index; s++)
            per_sample += p->stages[s].macs + m->exits[s].head_macs;
    cr_assert_eq(mr->comp.r.macs_executed, per_sample);
    if (mr->early > 0)
        cr_assert_lt(mr->comp.r.macs_executed, mr->masked.r.macs_executed);
    /* Below FULL only when the rows that left early saved more than every
     * row's early heads cost: a few rows leaving at a late exit of a model
     * with heavy heads can cost more than FULL (the random CNN does). */
    if (ERT_TEST_BACKEND == ERT_BACKEND_CPU)
        cr_assert(mr->full.r.host_waits == 0 && mr->masked.r.host_waits == 0 &&
                  mr->comp.r.host_waits == 0);
}

/* ---- the modes against each other --------------------------------------------- */

typedef struct fixture {
    ert_model *m;
    plan p;
    ert_engine *es[3]; /* FULL, MASKED, COMPACTED */
    float *x;          /* [MAXB] inputs */
    mode_run mr;
} fixture;

static void fixture_open(fixture *f, uint64_t seed, mw_kind kind)
{
    memset(f, 0, sizeof *f);
    f->m = fx_random_model(seed, kind);
    plan_build(f->m, &f->p);
    f->es[0] = tb_engine(f->m, ERT_MODE_FULL, MAXB);
    f->es[1] = tb_engine(f->m, ERT_MODE_MASKED, MAXB);
    f->es[2] = tb_engine(f->m, ERT_MODE_COMPACTED, MAXB);
    f->x = fx_random_inputs(f->m, MAXB, seed * 7 + 3);
    int K = ert_model_num_classes(f->m);
    tb_result_init(&f->mr.full, MAXB, K);
    tb_result_init(&f->mr.masked, MAXB, K);
    tb_result_init(&f->mr.comp, MAXB, K);
}

static void fixture_close(fixture *f)
{
    for (int i = 0; i < 3; i++)
        ert_engine_free(f->es[i]);
    ert_model_free(f->m);
    free(f->x);
    tb_result_free(&f->mr.full);
    tb_result_free(&f->mr.masked);
    tb_result_free(&f->mr.comp);
}

/* Every batch size of bs[nb], the model's calibrated thresholds and then
 * `sets` random ones. Returns the early exits seen in all. */
static long sweep_batches(mw_kind kind, uint64_t seed, int sets, const int *bs, size_t nb)
{
    fixture f;
    fixture_open(&f, seed, kind);
    mw_rng r = mw_rng_seed(seed + 1000);
    float thr[ERT_MAX_EXITS];
    long early = 0, rows = 0;
    for (int set = 0; set <= sets; set++) {
        if (set > 0) {
            fx_random_thresholds(f.m, &r, thr);
            set_thresholds(f.es, 3, f.m, thr);
        }
        for (size_t b = 0; b < nb; b++) {
            /* a different slice of the inputs for each batch */
            int batch = bs[b];
            size_t off = ((size_t)set * 13 + b * 5) % (MAXB - batch + 1);
            run_modes(f.m, &f.p, f.es, f.x + off * ert_model_input_size(f.m), batch, &f.mr);
            if (set == 0 && batch >= 64) /* calibrated: about half leave early */
                cr_assert_lt(f.mr.comp.r.macs_executed, f.mr.full.r.macs_executed,
                             "%s batch %d: COMPACTED %llu MACs, FULL %llu", mw_kind_name(kind),
                             batch, (unsigned long long)f.mr.comp.r.macs_executed,
                             (unsigned long long)f.mr.full.r.macs_executed);
            early += f.mr.early;
            rows += batch;
        }
    }
    /* the calibrated thresholds send about half the rows out early; a
     * sweep that never exits early would test nothing */
    cr_assert_gt(early, rows / 10, "%s: only %ld of %ld rows left early", mw_kind_name(kind), early,
                 rows);
    fixture_close(&f);
    return early;
}

static long sweep(mw_kind kind, uint64_t seed, int sets)
{
    return sweep_batches(kind, seed, sets, batches, sizeof batches / sizeof batches[0]);
}

Test(modes, mlp_equivalent) { sweep(MW_MLP, 1, 8); }
Test(modes, cnn_equivalent) { sweep(MW_CNN, 2, 8); }
Test(modes, resnet_equivalent) { sweep(MW_RESNET, 3, 8); }
Test(modes, resnet_other_seed) { sweep(MW_RESNET, 44, 4); }

/* Transformer encoders (model_writer.h's ViT-like and BERT-like random
 * models; each seed its own D, H, T and depth): fewer batch sizes, the
 * models cost more per row. */
static const int tx_batches[] = {1, 7, 64};

static void tx_sweep(mw_kind kind, uint64_t seed, int sets)
{
    sweep_batches(kind, seed, sets, tx_batches, sizeof tx_batches / sizeof tx_batches[0]);
}

Test(modes, vit_equivalent) { tx_sweep(MW_VIT, 31, 3); }
Test(modes, vit_other_seed) { tx_sweep(MW_VIT, 32, 1); }
Test(modes, bert_equivalent) { tx_sweep(MW_BERT, 33, 3); }
Test(modes, bert_other_seed) { tx_sweep(MW_BERT, 34, 1); }
/* more seeds: other D (16, 24, 32), H (1, 2, 4, D), T, depths, ReLU or GELU */
Test(modes, vit_many_seeds)
{
    for (uint64_t seed = 50; seed < 58; seed++)
        tx_sweep(MW_VIT, seed, 0);
}
Test(modes, bert_many_seeds)
{
    for (uint64_t seed = 60; seed < 68; seed++)
        tx_sweep(MW_BERT, seed, 0);
}

/* Thresholds at the bounds: nobody leaves early, then everybody leaves at
 * the first exit. */
static void bounds(mw_kind kind, uint64_t seed)
{
    fixture f;
    fixture_open(&f, seed, kind);
    const int E = ert_model_num_exits(f.m);
    float thr[ERT_MAX_EXITS];
    for (int everybody = 0; everybody < 2; everybody++) {
        fx_bound_thresholds(f.m, everybody, thr);
        set_thresholds(f.es, 3, f.m, thr);
        for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
            int batch = batches[b];
            run_modes(f.m, &f.p, f.es, f.x, batch, &f.mr);
            const ert_result *c = &f.mr.comp.r;
            if (everybody) {
                cr_assert_eq(c->exit_counts[0], batch, "%s: %d of %d left at exit 0",
                             mw_kind_name(kind), c->exit_counts[0], batch);
                cr_assert_eq(c->macs_executed,
                             (uint64_t)batch * (f.p.stages[0].macs + f.m->exits[0].head_macs));
                cr_assert_lt(c->macs_executed, f.mr.full.r.macs_executed);
            } else {
                /* thresholds 1 (0 for entropy) let out only rows whose
                 * probability or confidence rounds to exactly 1 */
                for (int i = 0; i < batch; i++) {
                    const ert_sample *s = &f.mr.comp.samples[i];
                    if (s->exit_index < E - 1) {
                        cr_assert_neq(ert_model_exit_policy(f.m, s->exit_index),
                                      ERT_POLICY_ENTROPY);
                        cr_assert_eq(s->score, 1.0f);
                    }
                }
                if (c->exit_counts[E - 1] == batch) /* the usual case */
                    cr_assert_eq(c->macs_executed, (uint64_t)batch * f.p.macs_all_heads);
            }
        }
    }
    fixture_close(&f);
}

Test(modes, bounds_mlp) { bounds(MW_MLP, 5); }
Test(modes, bounds_cnn) { bounds(MW_CNN, 6); }
Test(modes, bounds_resnet) { bounds(MW_RESNET, 7); }
Test(modes, bounds_bert) { bounds(MW_BERT, 8); }

/* A sample's outcome does not depend on the batch around it: each row of a
 * COMPACTED batch equals that row run alone. */
Test(modes, batch_independent)
{
    fixture f;
    fixture_open(&f, 9, MW_RESNET);
    const int K = ert_model_num_classes(f.m), n = 64;
    size_t per = ert_model_input_size(f.m);
    run_modes(f.m, &f.p, f.es, f.x, n, &f.mr);
    tb_result one;
    tb_result_init(&one, 1, K);
    for (int i = 0; i < n; i++) {
        tb_infer(f.es[2], f.x + i * per, 1, &one);
        const ert_sample *b = &f.mr.comp.samples[i];
        if (tb_flip(f.es[2], b, &one.samples[0], "in the batch vs alone", i))
            continue;
        cr_assert_eq(one.samples[0].predicted, b->predicted);
        check_logits_modes(one.logits, f.mr.comp.logits + (size_t)i * K, K, "alone vs batch", i);
    }
    tb_result_free(&one);
    fixture_close(&f);
}

/* A row with a NaN input never leaves early; its neighbours are unaffected. */
Test(modes, nonfinite_rows)
{
    fixture f;
    fixture_open(&f, 10, MW_CNN);
    const int E = ert_model_num_exits(f.m), n = 7;
    size_t per = ert_model_input_size(f.m);
    float *x = malloc(sizeof(float) * per * n);
    memcpy(x, f.x, sizeof(float) * per * n);
    run_modes(f.m, &f.p, f.es, x, n, &f.mr);
    ert_sample clean[7];
    memcpy(clean, f.mr.comp.samples, sizeof clean);
    x[2 * per + 5] = NAN;
    x[4 * per] = INFINITY;
    run_modes(f.m, &f.p, f.es, x, n, &f.mr);
    for (int i = 0; i < n; i++) {
        const ert_sample *s = &f.mr.comp.samples[i];
        if (i == 2 || i == 4) {
            cr_assert_eq(s->exit_index, E - 1, "a non-finite row left at %d", s->exit_index);
        } else {
            cr_assert_eq(s->exit_index, clean[i].exit_index);
            cr_assert_eq(s->predicted, clean[i].predicted);
        }
    }
    cr_assert_eq(f.mr.comp.r.nonfinite_samples, 2);
    free(x);
    fixture_close(&f);
}

/* A token row that attends to nothing (mask all 0) or holds an invalid id
 * at an attended token (negative, past the vocabulary, not an integer,
 * NaN) has NaN logits (models/FORMAT.md, "Token inputs"): it never leaves
 * early; its neighbours are unaffected. */
Test(modes, token_rows_nan)
{
    fixture f;
    fixture_open(&f, 11, MW_BERT);
    const int E = ert_model_num_exits(f.m), K = ert_model_num_classes(f.m), n = 9;
    const int T = f.m->input_tokens, V = f.m->vocab;
    size_t per = ert_model_input_size(f.m);
    cr_assert_eq(per, (size_t)2 * T);
    float *x = malloc(sizeof(float) * per * n);
    memcpy(x, f.x, sizeof(float) * per * n);
    run_modes(f.m, &f.p, f.es, x, n, &f.mr);
    ert_sample clean[9];
    memcpy(clean, f.mr.comp.samples, sizeof clean);
    for (int t = 0; t < T; t++)
        x[1 * per + T + t] = 0.0f; /* all padded */
    x[2 * per + 0] = -1.0f;        /* token 0 is always attended; row 4 attends to all */
    x[4 * per + T - 1] = (float)V;
    x[8 * per + 0] = 0.5f;
    x[8 * per + T + 0] = 1.0f;
    x[6 * per + 0] = NAN;
    x[6 * per + T + 0] = 1.0f;
    run_modes(f.m, &f.p, f.es, x, n, &f.mr);
    for (int i = 0; i < n; i++) {
        const ert_sample *s = &f.mr.comp.samples[i];
        if (i == 1 || i == 2 || i == 4 || i == 6 || i == 8) {
            cr_assert_eq(s->exit_index, E - 1, "row %d with NaN logits left at %d", i,
                         s->exit_index);
            for (int k = 0; k < K; k++)
                cr_assert(isnan(f.mr.comp.logits[(size_t)i * K + k]), "row %d logit %d: %g", i, k,
                          f.mr.comp.logits[(size_t)i * K + k]);
        } else {
            cr_assert_eq(s->exit_index, clean[i].exit_index);
            cr_assert_eq(s->predicted, clean[i].predicted);
        }
    }
    /* the count is of rows whose input holds NaN or Inf (exitrt.h): the NaN
       id's row; the others' inputs are finite numbers */
    cr_assert_eq(f.mr.comp.r.nonfinite_samples, 1);
    free(x);
    fixture_close(&f);
}

/* A padded token 0 (models/FORMAT.md, "Token inputs"): `token_pool first`
 * reads token 0 whatever its mask (as PyTorch's x[:, 0] and BERT's pooler
 * do), so its id counts there. On the random BERT (exit 0 and exit 2 pool
 * the mean, exit 1 and the final head pool `first`):
 *   row 1: token 0 padded, a valid id: as the float64 reference;
 *   row 4: row 1 with another valid id at token 0: exit 1 and the final
 *          head change (token 0 is read), the mean-pooled exits do not;
 *   rows 2, 3: an invalid id (past the vocabulary, negative) at padded
 *          token 0: exit 1's and the final head's logits NaN, the others
 *          finite, so the row takes the final exit once exits 0 and 2 are
 *          out of reach (thresholds 1), with NaN logits;
 *   rows 5, 6: a padded token in the middle (5: an invalid id, 6: a valid
 *          one) and row 7 a padded last token with an invalid id: no
 *          effect, every exit as the reference and rows 5 and 6 equal. */
Test(modes, padded_first_token)
{
    fixture f;
    fixture_open(&f, 37, MW_BERT);
    const int E = ert_model_num_exits(f.m), K = ert_model_num_classes(f.m), n = 8;
    const int T = f.m->input_tokens, V = f.m->vocab;
    cr_assert_eq(E, 4);
    const size_t per = ert_model_input_size(f.m);
    float *x = malloc(sizeof(float) * per * n);
    for (int i = 0; i < n; i++) /* every token attended, the same valid ids */
        for (int t = 0; t < T; t++) {
            x[i * per + t] = (float)((7 * t + 3) % V);
            x[i * per + T + t] = 1.0f;
        }
    for (int i = 1; i <= 4; i++)
        x[i * per + T] = 0.0f; /* token 0 padded */
    x[2 * per] = (float)V;
    x[3 * per] = -1.0f;
    x[4 * per] = (float)((int)x[1 * per] + 1) == (float)V ? 0.0f : x[1 * per] + 1.0f;
    memcpy(x + 6 * per, x + 5 * per, sizeof(float) * per);
    x[5 * per + T + 2] = x[6 * per + T + 2] = 0.0f; /* token 2 padded */
    x[5 * per + 2] = (float)(V + 5);
    x[7 * per + 2 * T - 1] = 0.0f; /* the last token padded */
    x[7 * per + T - 1] = 1e6f;

    /* exits 0 and 2 (max_prob, margin) out of reach; exit 1 as calibrated */
    float thr[ERT_MAX_EXITS] = {1.0f, f.m->exits[1].threshold, 1.0f};
    set_thresholds(f.es, 3, f.m, thr);

    /* the reference: every exit's logits, then the exits walked with thr */
    ert_sample rs[8], ws[8];
    float *all = calloc((size_t)E * n * K, sizeof *all), *z = calloc((size_t)E * K, sizeof *z);
    float conf[ERT_MAX_EXITS] = {0};
    cr_assert_eq(mw_reference_infer(f.m, x, n, rs, NULL, all, NULL), 0);
    for (int i = 0; i < n; i++) {
        for (int e = 0; e < E; e++)
            memcpy(z + (size_t)e * K, all + ((size_t)e * n + i) * K, sizeof(float) * K);
        mw_walk_exits(f.m, thr, z, conf, &ws[i], NULL, NULL);
    }
#define REF(e, i) (all + ((size_t)(e)*n + (i)) * K)
    /* the rule, in the reference first */
    for (int i = 0; i < n; i++)
        for (int e = 0; e < E; e++) {
            int nan_head = (i == 2 || i == 3) && (e == 1 || e == E - 1);
            for (int k = 0; k < K; k++)
                cr_assert(nan_head ? isnan(REF(e, i)[k]) : isfinite(REF(e, i)[k]),
                          "reference: row %d exit %d logit %d: %g", i, e, k, REF(e, i)[k]);
        }
    int differs = 0;
    for (int k = 0; k < K; k++)
        differs |= REF(1, 1)[k] != REF(1, 4)[k];
    cr_assert(differs, "reference: the id at padded token 0 does not reach exit 1");
    cr_assert_eq(memcmp(REF(0, 1), REF(0, 4), sizeof(float) * K), 0,
                 "reference: the id at padded token 0 reaches the mean-pooled exit 0");
    for (int e = 0; e < E; e++)
        cr_assert_eq(memcmp(REF(e, 5), REF(e, 6), sizeof(float) * K), 0,
                     "reference: an invalid id at a padded token changed exit %d", e);
    cr_assert_eq(ws[2].exit_index, E - 1);
    cr_assert_eq(ws[3].exit_index, E - 1);

    /* the backend: the same, in every mode */
    run_modes(f.m, &f.p, f.es, x, n, &f.mr);
    for (int i = 0; i < n; i++) {
        fx_check_logits(f.mr.full.logits + (size_t)i * K, REF(E - 1, i), K, "FULL vs reference", i);
        const ert_sample *a = &f.mr.masked.samples[i];
        if (tb_flip(f.es[1], a, &ws[i], "MASKED vs reference", i))
            continue;
        fx_check_logits(f.mr.masked.logits + (size_t)i * K, REF(a->exit_index, i), K,
                        "MASKED vs reference", i);
    }
    for (int i = 2; i <= 3; i++) {
        cr_assert_eq(f.mr.masked.samples[i].exit_index, E - 1, "row %d left at exit %d", i,
                     f.mr.masked.samples[i].exit_index);
        cr_assert_eq(f.mr.comp.samples[i].exit_index, E - 1, "row %d left at exit %d", i,
                     f.mr.comp.samples[i].exit_index);
        for (int k = 0; k < K; k++)
            cr_assert(isnan(f.mr.comp.logits[(size_t)i * K + k]) &&
                          isnan(f.mr.full.logits[(size_t)i * K + k]),
                      "row %d logit %d: %g", i, k, f.mr.comp.logits[(size_t)i * K + k]);
    }
    check_logits_modes(f.mr.full.logits + 5 * (size_t)K, f.mr.full.logits + 6 * (size_t)K, K,
                       "an invalid id at a padded token", 5);
    /* the finite ids count as finite input rows */
    cr_assert_eq(f.mr.comp.r.nonfinite_samples, 0);

    /* every exit's score, where the backend gives them: NaN at exit 1
       for rows 2 and 3, finite elsewhere */
    float *sc = calloc((size_t)E * n, sizeof *sc);
    ert_status st = ert_engine_scores(f.es[2], x, n, sc);
    if (st != ERT_UNSUPPORTED) {
        cr_assert_eq(st, ERT_OK, "%s", ert_engine_error(f.es[2]));
        for (int i = 0; i < n; i++)
            for (int e = 0; e < E; e++) {
                int nan_score = (i == 2 || i == 3) && (e == 1 || e == E - 1);
                cr_assert(nan_score ? isnan(sc[(size_t)i * E + e])
                                    : isfinite(sc[(size_t)i * E + e]),
                          "row %d exit %d: score %g", i, e, sc[(size_t)i * E + e]);
            }
    }
#undef REF
    free(sc);
    free(all);
    free(z);
    free(x);
    fixture_close(&f);
}

/* ---- against the plain reference ----------------------------------------------- */

/* The backend against mw_reference_infer (tests/common: plain loops over
 * the loaded model in double, written independently of src/cpu), so the
 * whole stage pipeline is checked, not only self-consistency: FULL's final
 * logits for every row, MASKED's exits, classes and logits, and every
 * exit's score (ert_engine_scores) where the backend offers it. */
static void vs_reference(mw_kind kind, uint64_t seed)
{
    fixture f;
    fixture_open(&f, seed, kind);
    const int E = ert_model_num_exits(f.m), K = ert_model_num_classes(f.m), n = 64;
    ert_sample *rs = calloc(n, sizeof *rs);
    float *rl = calloc((size_t)n * K, sizeof *rl);
    float *all = calloc((size_t)E * n * K, sizeof *all);
    float *rsc = calloc((size_t)E * n, sizeof *rsc);
    float *sc = calloc((size_t)E * n, sizeof *sc);
    cr_assert_eq(mw_reference_infer(f.m, f.x, n, rs, rl, all, rsc), 0);
    run_modes(f.m, &f.p, f.es, f.x, n, &f.mr);

    int flips = 0;
    for (int i = 0; i < n; i++) {
        /* FULL: the final head's logits for every row */
        fx_check_logits(f.mr.full.logits + (size_t)i * K, all + ((size_t)(E - 1) * n + i) * K, K,
                        "FULL vs reference", i);
        /* (MASKED's thresholds are still the model's) */
        const ert_sample *a = &f.mr.masked.samples[i];
        if (tb_flip(f.es[1], a, &rs[i], "MASKED vs reference", i)) {
            flips++;
            continue;
        }
        cr_assert_eq(a->predicted, rs[i].predicted, "sample %d: class %d, reference %d", i,
                     a->predicted, rs[i].predicted);
        fx_check_logits(f.mr.masked.logits + (size_t)i * K, rl + (size_t)i * K, K,
                        "MASKED vs reference", i);
    }
    cr_assert_leq(flips, 1);

    ert_status st = ert_engine_scores(f.es[2], f.x, n, sc);
    if (st != ERT_UNSUPPORTED) {
        cr_assert_eq(st, ERT_OK, "%s", ert_engine_error(f.es[2]));
        for (int e = 0; e < E; e++)
            for (int i = 0; i < n; i++) {
                float got = sc[(size_t)i * E + e], want = rsc[(size_t)e * n + i];
                cr_assert(tol_score_ok(got, want), "exit %d sample %d: score %.9g, reference %.9g",
                          e, i, got, want);
            }
    }
    free(rs);
    free(rl);
    free(all);
    free(rsc);
    free(sc);
    fixture_close(&f);
}

Test(modes_vs_reference, mlp) { vs_reference(MW_MLP, 21); }
Test(modes_vs_reference, cnn) { vs_reference(MW_CNN, 22); }
Test(modes_vs_reference, resnet) { vs_reference(MW_RESNET, 23); }
Test(modes_vs_reference, vit) { vs_reference(MW_VIT, 27); }
Test(modes_vs_reference, vit_other_seed) { vs_reference(MW_VIT, 28); }
Test(modes_vs_reference, bert) { vs_reference(MW_BERT, 29); }
Test(modes_vs_reference, bert_other_seed) { vs_reference(MW_BERT, 30); }

/* ---- every exit's outputs (ert_engine_exit_outputs) ----------------------------- */

/* Thresholds that send a sample to exit j: the exits before it never fire
 * (entropy 0; the others 1, which only a probability or confidence rounding
 * to exactly 1 passes), exit j fires for any finite score. */
static void forcing_thresholds(const ert_model *m, int j, float *thr)
{
    for (int i = 0; i < ert_model_num_exits(m) - 1; i++) {
        int entropy = ert_model_exit_policy(m, i) == ERT_POLICY_ENTROPY;
        if (i < j)
            thr[i] = entropy ? 0.0f : 1.0f;
        else
            thr[i] = entropy ? 3.0e38f : 0.0f;
    }
}

/* Every exit's score and class from each mode's engine against the sample
 * MASKED sends to that exit when the thresholds force it there: its class
 * is the argmax of the logits at that exit, and its score the one the
 * decision saw (bit for bit on the CPU, where the call is MASKED's work on
 * MASKED's path). The scores equal ert_engine_scores', with or without
 * classes asked for. */
static void exit_outputs(mw_kind kind, uint64_t seed)
{
    fixture f;
    fixture_open(&f, seed, kind);
    const int E = ert_model_num_exits(f.m), K = ert_model_num_classes(f.m), n = 64;
    const int cpu = ERT_TEST_BACKEND == ERT_BACKEND_CPU;
    const size_t cells = (size_t)n * E;
    float *sc[3], *only_sc = malloc(sizeof(float) * cells), *old = malloc(sizeof(float) * cells);
    int32_t *cl[3], *only_cl = malloc(sizeof(int32_t) * cells);
    cr_assert(only_sc && old && only_cl);
    for (int x = 0; x < 3; x++) {
        sc[x] = malloc(sizeof(float) * cells);
        cl[x] = malloc(sizeof(int32_t) * cells);
        cr_assert(sc[x] && cl[x]);
        for (size_t i = 0; i < cells; i++) {
            sc[x][i] = -7.0f;
            cl[x][i] = -7;
        }
        ert_engine *e = f.es[x];
        cr_assert_eq(ert_engine_exit_outputs(e, f.x, n, sc[x], cl[x]), ERT_OK, "%s: %s",
                     ert_mode_string(ert_engine_mode(e)), ert_engine_error(e));
        cr_assert_eq(ert_engine_exit_outputs(e, f.x, n, only_sc, NULL), ERT_OK, "%s",
                     ert_engine_error(e));
        cr_assert_eq(ert_engine_exit_outputs(e, f.x, n, NULL, only_cl), ERT_OK, "%s",
                     ert_engine_error(e));
        cr_assert_eq(ert_engine_scores(e, f.x, n, old), ERT_OK, "%s", ert_engine_error(e));
        cr_assert(memcmp(sc[x], only_sc, sizeof(float) * cells) == 0,
                  "%s: the scores depend on whether classes were asked for",
                  ert_mode_string(ert_engine_mode(e)));
        cr_assert(memcmp(sc[x], old, sizeof(float) * cells) == 0,
                  "%s: ert_engine_scores and ert_engine_exit_outputs differ",
                  ert_mode_string(ert_engine_mode(e)));
        cr_assert(memcmp(cl[x], only_cl, sizeof(int32_t) * cells) == 0);
        for (size_t i = 0; i < cells; i++)
            cr_assert(cl[x][i] >= 0 && cl[x][i] < K, "cell %zu: class %d", i, cl[x][i]);
    }

    tb_result forced;
    tb_result_init(&forced, n, K);
    float thr[ERT_MAX_EXITS];
    for (int j = 0; j < E; j++) {
        forcing_thresholds(f.m, j, thr);
        set_thresholds(&f.es[1], 1, f.m, thr);
        tb_infer(f.es[1], f.x, n, &forced);
        int seen = 0;
        for (int i = 0; i < n; i++) {
            const ert_sample *s = &forced.samples[i];
            if (s->exit_index != j)
                continue; /* left earlier at a probability of exactly 1 */
            seen++;
            const float *z = forced.logits + (size_t)i * K;
            cr_assert_eq(s->predicted, ert_argmax(z, K));
            for (int x = 0; x < 3; x++) {
                size_t at = (size_t)i * E + j;
                const char *mode = ert_mode_string(ert_engine_mode(f.es[x]));
                if (cpu) {
                    cr_assert_eq(cl[x][at], s->predicted, "%s: sample %d exit %d: class %d, %d",
                                 mode, i, j, cl[x][at], s->predicted);
                    cr_assert(memcmp(&sc[x][at], &s->score, sizeof(float)) == 0,
                              "%s: sample %d exit %d: score %.9g, MASKED %.9g", mode, i, j,
                              sc[x][at], s->score);
                } else {
                    cr_assert(cl[x][at] == s->predicted || fx_near_tie(z, K),
                              "%s: sample %d exit %d: class %d, %d", mode, i, j, cl[x][at],
                              s->predicted);
                    cr_assert(tol_score_ok(sc[x][at], s->score),
                              "%s: sample %d exit %d: score %.9g, MASKED %.9g", mode, i, j,
                              sc[x][at], s->score);
                }
            }
        }
        cr_assert_geq(seen, n - n / 8, "exit %d: only %d of %d samples could be sent there", j,
                      seen, n);
    }
    tb_result_free(&forced);
    for (int x = 0; x < 3; x++) {
        free(sc[x]);
        free(cl[x]);
    }
    free(only_sc);
    free(only_cl);
    free(old);
    fixture_close(&f);
}

Test(exit_outputs, mlp) { exit_outputs(MW_MLP, 24); }
Test(exit_outputs, cnn_confidence_head) { exit_outputs(MW_CNN, 25); }
Test(exit_outputs, resnet) { exit_outputs(MW_RESNET, 26); }
Test(exit_outputs, vit) { exit_outputs(MW_VIT, 35); }
Test(exit_outputs, bert) { exit_outputs(MW_BERT, 36); }

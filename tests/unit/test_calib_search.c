/* test_calib_search.c - calibrate's threshold search against brute force
 * over every threshold vector on small synthetic problems, its outcome
 * counts against a hand count, the Clopper-Pearson bounds against closed
 * forms and a direct binomial sum, the drop bound's coverage in simulation,
 * and the seeded split. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib_search.h"
#include "model_writer.h"
#include "policy.h"


/* ---- outcome counts ----------------------------------------------------------- */

Test(calib_search, evaluate_counts_by_hand)
{
    /* 4 samples, exit0 max_prob, final. thresholds 0.5: samples 0 and 2 leave
     * at exit0. */
    ert_policy_kind kinds[2] = {ERT_POLICY_MAX_PROB, ERT_POLICY_NONE};
    float scores[8] = {0.9f, 0.7f, 0.2f, 0.8f, 0.6f, 0.9f, NAN, 0.9f};
    int32_t classes[8] = {1, 2, 0, 2, 0, 3, 2, 2};
    int32_t labels[4] = {1, 2, 3, 2};
    double cost[2] = {10.0, 25.0};
    calib_problem p = {4, 2, kinds, scores, classes, labels, cost, 4};
    float thr = 0.5f;
    calib_outcome o;
    calib_evaluate(&p, &thr, NULL, 0, &o);
    /* s0 exit0 right (final wrong: 2 != 1), s1 final right (exit0 wrong),
     * s2 exit0 wrong (final 3 right), s3 final right (NaN never fires) */
    cr_assert_eq(o.taken[0], 2);
    cr_assert_eq(o.taken[1], 2);
    cr_assert_eq(o.right[0], 1);
    cr_assert_eq(o.right[1], 2);
    cr_assert_eq(o.correct, 3);
    cr_assert_eq(o.correct_final, 3);
    cr_assert_eq(o.final_only, 1); /* s2 */
    cr_assert_eq(o.exit_only, 1);  /* s0 */
    cr_assert_eq(o.cost, 2 * 10.0 + 2 * 25.0);
    int rows[2] = {3, 0};
    calib_evaluate(&p, &thr, rows, 2, &o);
    cr_assert_eq(o.taken[0], 1);
    cr_assert_eq(o.correct, 2);
}

/* ---- the search against brute force ------------------------------------------ */

enum {
    BN = 24,
    BE = 3
};

typedef struct synth {
    ert_policy_kind kinds[BE];
    float scores[BN * BE];
    int32_t classes[BN * BE];
    int32_t labels[BN];
    double cost[BE];
    calib_problem p;
} synth;

/* Scores from a few levels (ties), classes right more often at later exits
 * and when the score is confident, so the trade-off is real. */
static void make_synth(synth *s, mw_rng *rng, ert_policy_kind k0, ert_policy_kind k1)
{
    s->kinds[0] = k0;
    s->kinds[1] = k1;
    s->kinds[2] = ERT_POLICY_NONE;
    s->cost[0] = 3 + (double)(mw_rng_next(rng) % 5);
    s->cost[1] = s->cost[0] + 2 + (double)(mw_rng_next(rng) % 6);
    s->cost[2] = s->cost[1] + 2 + (double)(mw_rng_next(rng) % 8);
    for (int i = 0; i < BN; i++) {
        s->labels[i] = (int32_t)(mw_rng_next(rng) % 3);
        for (int e = 0; e < BE; e++) {
            float conf = (float)(mw_rng_next(rng) % 6) / 5.0f; /* 0, 0.2, .. 1 */
            ert_policy_kind k = s->kinds[e];
            float sc = conf;
            if (k == ERT_POLICY_ENTROPY)
                sc = 1.0f - conf;
            else if (k == ERT_POLICY_PATIENCE)
                sc = (float)(1 + mw_rng_next(rng) % (uint64_t)(e + 1));
            if (e < BE - 1 && mw_rng_next(rng) % 17 == 0)
                sc = NAN;
            s->scores[i * BE + e] = sc;
            double p_right = 0.35 + 0.2 * e + 0.3 * conf;
            s->classes[i * BE + e] =
                mw_rng_uniform(rng) < p_right ? s->labels[i] : (s->labels[i] + 1) % 3;
        }
    }
    calib_problem p = {BN, BE, s->kinds, s->scores, s->classes, s->labels, s->cost, 3};
    s->p = p;
}

/* Every threshold in the policy's valid range that can change an outcome
 * for exit e: never, always, and at and just above each score. */
static int candidates(const synth *s, int e, float *out)
{
    int m = 0;
    out[m++] = calib_never(&s->p, e);
    ert_policy_kind k = s->kinds[e];
    out[m++] = k == ERT_POLICY_ENTROPY ? 100.0f : k == ERT_POLICY_PATIENCE ? 1.0f : 0.0f;
    for (int i = 0; i < BN; i++) {
        float v = s->scores[i * BE + e];
        if (!isfinite(v))
            continue;
        /* just above and at each score covers every cut of both rules */
        out[m++] = v;
        if (k == ERT_POLICY_ENTROPY)
            out[m++] = nextafterf(v, 2.0f);
        else if (k != ERT_POLICY_PATIENCE) /* the valid range ends at 1 */
            out[m++] = fminf(nextafterf(v, 2.0f), 1.0f);
        else
            out[m++] = v + 1.0f;
    }
    return m;
}

typedef struct best {
    double cost;
    int64_t correct;
    int found;
} best;

static best brute_force(const synth *s, int64_t need)
{
    float c0[2 * BN + 2], c1[2 * BN + 2];
    int m0 = candidates(s, 0, c0), m1 = candidates(s, 1, c1);
    best b = {0, 0, 0};
    for (int a = 0; a < m0; a++)
        for (int c = 0; c < m1; c++) {
            float thr[2] = {c0[a], c1[c]};
            calib_outcome o;
            calib_evaluate(&s->p, thr, NULL, 0, &o);
            if (o.correct >= need && (!b.found || o.cost < b.cost)) {
                b.cost = o.cost;
                b.correct = o.correct;
                b.found = 1;
            }
        }
    return b;
}

Test(calib_search, matches_brute_force)
{
    mw_rng rng = mw_rng_seed(0x5eed1234abcdull);
    ert_policy_kind kinds[][2] = {{ERT_POLICY_ENTROPY, ERT_POLICY_ENTROPY},
                                  {ERT_POLICY_MAX_PROB, ERT_POLICY_MARGIN},
                                  {ERT_POLICY_CONFIDENCE_HEAD, ERT_POLICY_ENTROPY},
                                  {ERT_POLICY_PATIENCE, ERT_POLICY_PATIENCE},
                                  {ERT_POLICY_ENTROPY, ERT_POLICY_PATIENCE}};
    int trials = 0, optimal = 0;
    for (int t = 0; t < 400; t++) {
        synth s;
        make_synth(&s, &rng, kinds[t % 5][0], kinds[t % 5][1]);
        float never[2] = {calib_never(&s.p, 0), calib_never(&s.p, 1)};
        calib_outcome base;
        calib_evaluate(&s.p, never, NULL, 0, &base);
        /* targets from "no loss" to "anything goes" */
        int64_t need = base.correct_final - (int64_t)(t % 7);
        best b = brute_force(&s, need);
        float thr[2];
        int met = calib_search(&s.p, NULL, 0, need, thr);
        cr_assert_eq(met, b.found, "trial %d: met %d, brute force found %d", t, met, b.found);
        if (!b.found)
            continue;
        calib_outcome o;
        calib_evaluate(&s.p, thr, NULL, 0, &o);
        cr_assert_geq(o.correct, need, "trial %d: the returned thresholds miss the target", t);
        cr_assert_geq(o.cost, b.cost, "trial %d: cheaper than the optimum?", t);
        if (s.kinds[0] == ERT_POLICY_PATIENCE)
            cr_assert_eq(thr[0], floorf(thr[0]), "patience thresholds are whole numbers");
        trials++;
        optimal += o.cost == b.cost;
    }
    /* Coordinate descent is not guaranteed to find the optimum; from the
     * Lagrangian starts it should almost always. */
    cr_log_info("the search found the optimum in %d of %d problems", optimal, trials);
    cr_assert_geq(optimal, trials * 95 / 100, "optimal in %d of %d", optimal, trials);
}

Test(calib_search, coordinatewise_optimal)
{
    /* No single exit's threshold can be moved to a cheaper feasible vector. */
    mw_rng rng = mw_rng_seed(77);
    for (int t = 0; t < 100; t++) {
        synth s;
        make_synth(&s, &rng, ERT_POLICY_ENTROPY, ERT_POLICY_MAX_PROB);
        float never[2] = {calib_never(&s.p, 0), calib_never(&s.p, 1)};
        calib_outcome base, o;
        calib_evaluate(&s.p, never, NULL, 0, &base);
        int64_t need = base.correct_final - 1;
        float thr[2];
        if (!brute_force(&s, need).found)
            continue; /* scores of exactly 1 can make every vector miss */
        cr_assert_eq(calib_search(&s.p, NULL, 0, need, thr), 1);
        calib_evaluate(&s.p, thr, NULL, 0, &o);
        for (int e = 0; e < 2; e++) {
            float c[2 * BN + 2];
            int m = candidates(&s, e, c);
            for (int j = 0; j < m; j++) {
                float v[2] = {thr[0], thr[1]};
                v[e] = c[j];
                calib_outcome q;
                calib_evaluate(&s.p, v, NULL, 0, &q);
                cr_assert(!(q.correct >= need && q.cost < o.cost),
                          "trial %d: exit %d threshold %g is cheaper", t, e, (double)c[j]);
            }
        }
    }
}

Test(calib_search, rows_subset_only)
{
    /* The search sees only its rows: duplicating the problem's rows with
     * other labels outside the subset changes nothing. */
    mw_rng rng = mw_rng_seed(99);
    synth s;
    make_synth(&s, &rng, ERT_POLICY_ENTROPY, ERT_POLICY_ENTROPY);
    int rows[BN / 2];
    for (int i = 0; i < BN / 2; i++)
        rows[i] = 2 * i;
    float never[2] = {calib_never(&s.p, 0), calib_never(&s.p, 1)};
    calib_outcome base;
    calib_evaluate(&s.p, never, rows, BN / 2, &base);
    float a[2], b[2];
    cr_assert_eq(calib_search(&s.p, rows, BN / 2, base.correct_final - 1, a), 1);
    for (int i = 1; i < BN; i += 2)
        s.labels[i] = (s.labels[i] + 1) % 3;
    cr_assert_eq(calib_search(&s.p, rows, BN / 2, base.correct_final - 1, b), 1);
    cr_assert_eq(a[0], b[0]);
    cr_assert_eq(a[1], b[1]);
}

Test(calib_search, unreachable_target)
{
    mw_rng rng = mw_rng_seed(5);
    synth s;
    make_synth(&s, &rng, ERT_POLICY_MAX_PROB, ERT_POLICY_MAX_PROB);
    float thr[2];
    cr_assert_eq(calib_search(&s.p, NULL, 0, BN + 1, thr), 0);
}

/* ---- binomial bounds ----------------------------------------------------------- */

static double cdf_direct(int x, int n, double p)
{
    double s = 0;
    for (int k = 0; k <= x; k++) {
        double c = 1;
        for (int j = 0; j < k; j++)
            c = c * (double)(n - j) / (double)(j + 1);
        s += c * pow(p, k) * pow(1 - p, n - k);
    }
    return s;
}

Test(calib_search, clopper_pearson)
{
    /* closed forms at the ends */
    cr_assert_float_eq(calib_binom_upper(0, 10, 0.05), 1 - pow(0.05, 0.1), 1e-9);
    cr_assert_float_eq(calib_binom_lower(10, 10, 0.05), pow(0.05, 0.1), 1e-9);
    cr_assert_eq(calib_binom_upper(10, 10, 0.05), 1.0);
    cr_assert_eq(calib_binom_lower(0, 10, 0.05), 0.0);
    /* inside: the defining tail probabilities, by a direct sum */
    for (int n = 5; n <= 40; n += 7)
        for (int x = 1; x < n; x += 3) {
            double u = calib_binom_upper(x, n, 0.025), l = calib_binom_lower(x, n, 0.025);
            cr_assert_float_eq(cdf_direct(x, n, u), 0.025, 1e-7, "upper n %d x %d", n, x);
            cr_assert_float_eq(1 - cdf_direct(x - 1, n, l), 0.025, 1e-7, "lower n %d x %d", n, x);
            cr_assert(l < (double)x / n && (double)x / n < u);
        }
    /* large n stays finite and ordered */
    double u = calib_binom_upper(120, 100000, 0.025), l = calib_binom_lower(120, 100000, 0.025);
    cr_assert(l < 0.0012 && 0.0012 < u && u < 0.0015 && l > 0.0009, "%g %g", l, u);
}

Test(calib_search, drop_bound_covers)
{
    /* Samples where the final head alone is right with rate pb more than the
     * early-exit run, and the reverse with rate pc: the true drop is pb - pc.
     * The 90% bound must hold in at least ~90% of simulated held-out sets. */
    mw_rng rng = mw_rng_seed(2024);
    const double pb = 0.04, pc = 0.015, truth = pb - pc;
    const int n = 400, trials = 1000;
    int covered = 0;
    for (int t = 0; t < trials; t++) {
        int64_t b = 0, c = 0;
        for (int i = 0; i < n; i++) {
            double u = mw_rng_uniform(&rng);
            b += u < pb;
            c += u >= pb && u < pb + pc;
        }
        covered += calib_drop_upper(b, c, n, 0.90) >= truth;
    }
    cr_assert_geq(covered, trials * 88 / 100, "covered %d of %d", covered, trials);
    /* and it is not vacuous: well under the worst case */
    cr_assert_lt(calib_drop_upper(16, 6, n, 0.90), 0.06);
}

/* ---- split --------------------------------------------------------------------- */

Test(calib_search, shuffle_is_a_seeded_permutation)
{
    enum {
        N = 1000
    };
    int a[N], b[N], c[N], seen[N] = {0};
    calib_shuffle(a, N, 7);
    calib_shuffle(b, N, 7);
    calib_shuffle(c, N, 8);
    int same = 1, moved = 0;
    for (int i = 0; i < N; i++) {
        cr_assert(a[i] >= 0 && a[i] < N);
        seen[a[i]]++;
        same &= a[i] == b[i];
        moved += a[i] != c[i];
    }
    for (int i = 0; i < N; i++)
        cr_assert_eq(seen[i], 1);
    cr_assert(same, "the same seed gives the same split");
    cr_assert_gt(moved, N / 2, "another seed gives another split");
}

/* test_policy.c - src/policy.h: scores against a double-precision softmax,
 * non-finite logits, ties, thresholds at the bounds, compaction indices. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "model_writer.h"
#include "policy.h"

/* The test's random stream (tests/common's mw_rng), seeded by each test
 * that draws from it: Criterion runs every test in a process of its own. */
static mw_rng rng;

static void rng_seed(uint64_t s) { rng = mw_rng_seed(s); }

static double rnd01(void) { return mw_rng_uniform(&rng); } /* [0, 1) */

/* The reference: softmax in double, then the policy's formula as the design
 * states it (entropy = -sum p log p, max p, top1 - top2). */
static double ref_score(int kind, const float *z, int k)
{
    double m = -INFINITY;
    for (int i = 0; i < k; i++)
        m = z[i] > m ? z[i] : m;
    double s = 0;
    double p[256];
    for (int i = 0; i < k; i++)
        s += exp((double)z[i] - m);
    double h = 0, p1 = 0, p2 = 0;
    for (int i = 0; i < k; i++) {
        p[i] = exp((double)z[i] - m) / s;
        if (p[i] > 0)
            h -= p[i] * log(p[i]);
        if (p[i] > p1) {
            p2 = p1;
            p1 = p[i];
        } else if (p[i] > p2) {
            p2 = p[i];
        }
    }
    switch (kind) {
    case ERT_POLICY_ENTROPY: return h;
    case ERT_POLICY_MARGIN: return k > 1 ? p1 - p2 : 1.0;
    default: return p1;
    }
}

Test(policy, scores_match_double_reference)
{
    rng_seed(11);
    const int ks[] = {1, 2, 3, 10, 37, 100, 256};
    const float scales[] = {0.01f, 1.0f, 8.0f, 40.0f};
    const int kinds[] = {ERT_POLICY_NONE, ERT_POLICY_ENTROPY, ERT_POLICY_MAX_PROB,
                         ERT_POLICY_MARGIN};
    float z[256];
    int checked = 0;
    for (int trial = 0; trial < 200; trial++)
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
            for (int si = 0; si < 4; si++) {
                int k = ks[ki];
                /* an offset too: softmax must not care about a shift */
                float off = (float)((rnd01() * 2 - 1) * 500.0);
                for (int i = 0; i < k; i++)
                    z[i] = off + (float)((rnd01() * 2 - 1) * scales[si]);
                for (int c = 0; c < 4; c++) {
                    float got = ert_policy_score(kinds[c], z, k, 0.0f);
                    double want = ref_score(kinds[c], z, k);
                    cr_assert(isfinite(got));
                    /* probabilities and entropy are O(1) (entropy <= log k):
                     * float32 softmax gets them to a few ulps of that scale */
                    double tol = 1e-5 * fabs(want) + 2e-6 * (1.0 + log(k));
                    cr_assert(fabs(got - want) <= tol, "kind %d k %d scale %g: %.9g vs %.9g",
                              kinds[c], k, scales[si], got, want);
                    cr_assert(got >= 0.0f);
                    if (kinds[c] != ERT_POLICY_ENTROPY)
                        cr_assert(got <= 1.0f + 1e-6f);
                    checked++;
                }
            }
    cr_assert_eq(checked, 200 * 7 * 4 * 4);
}

Test(policy, confidence_head_score_is_the_head_output)
{
    float z[3] = {1, 2, 3};
    cr_assert_eq(ert_policy_score(ERT_POLICY_CONFIDENCE_HEAD, z, 3, 0.625f), 0.625f);
    cr_assert(isnan(ert_policy_score(ERT_POLICY_CONFIDENCE_HEAD, z, 3, NAN)));
    cr_assert(isnan(ert_policy_score(ERT_POLICY_CONFIDENCE_HEAD, z, 3, INFINITY)));
    /* the logits do not matter to it, even non-finite ones */
    float bad[3] = {NAN, 1, 2};
    cr_assert_eq(ert_policy_score(ERT_POLICY_CONFIDENCE_HEAD, bad, 3, 0.5f), 0.5f);
}

Test(policy, nonfinite_logits_never_exit_early)
{
    const float bads[] = {NAN, INFINITY, -INFINITY};
    const int kinds[] = {ERT_POLICY_ENTROPY, ERT_POLICY_MAX_PROB, ERT_POLICY_MARGIN};
    /* the loosest thresholds each policy accepts */
    const float loosest[] = {INFINITY, 0.0f, 0.0f};
    for (int b = 0; b < 3; b++)
        for (int pos = 0; pos < 4; pos++)
            for (int c = 0; c < 3; c++) {
                float z[4] = {0.5f, -1.0f, 2.0f, 0.0f};
                z[pos] = bads[b];
                float s = ert_policy_score(kinds[c], z, 4, 0.0f);
                cr_assert(isnan(s), "kind %d bad %g at %d: score %g", kinds[c], bads[b], pos, s);
                cr_assert_not(ert_policy_exits(kinds[c], s, loosest[c]));
                cr_assert_not(ert_policy_exits(kinds[c], s, 1e30f));
                cr_assert_not(ert_policy_exits(kinds[c], s, -1e30f));
            }
    /* a non-finite confidence never exits */
    cr_assert_not(ert_policy_exits(ERT_POLICY_CONFIDENCE_HEAD, NAN, 0.0f));
    cr_assert_not(ert_policy_exits(ERT_POLICY_CONFIDENCE_HEAD, INFINITY, 0.0f));
    cr_assert_not(ert_policy_exits(ERT_POLICY_CONFIDENCE_HEAD, -INFINITY, 0.0f));
    cr_assert_not(ert_policy_exits(ERT_POLICY_MAX_PROB, INFINITY, 0.0f));
    /* the final head always takes the row, whatever its score */
    cr_assert(ert_policy_exits(ERT_POLICY_NONE, NAN, 0.0f));
    cr_assert(ert_policy_exits(ERT_POLICY_NONE, 0.1f, NAN));
}

Test(policy, ties)
{
    float z[5] = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f};
    cr_assert_eq(ert_argmax(z, 5), 1);
    float eq[4] = {-2.0f, -2.0f, -2.0f, -2.0f};
    cr_assert_eq(ert_argmax(eq, 4), 0);
    /* a tie at the top: margin exactly 0, max prob 1/2 */
    float t[3] = {4.0f, 4.0f, -1.0f};
    cr_assert_eq(ert_policy_score(ERT_POLICY_MARGIN, t, 3, 0), 0.0f);
    cr_assert(ert_policy_exits(ERT_POLICY_MARGIN, 0.0f, 0.0f), "margin 0 >= threshold 0");
    cr_assert_not(ert_policy_exits(ERT_POLICY_MARGIN, 0.0f, 1e-7f));
    float mp = ert_policy_score(ERT_POLICY_MAX_PROB, t, 3, 0);
    cr_assert(fabs(mp - ref_score(ERT_POLICY_MAX_PROB, t, 3)) < 1e-6);
    /* uniform logits: entropy log k, margin 0, max prob 1/k */
    float u[8] = {0};
    cr_assert_float_eq(ert_policy_score(ERT_POLICY_ENTROPY, u, 8, 0), logf(8.0f), 1e-6);
    cr_assert_eq(ert_policy_score(ERT_POLICY_MARGIN, u, 8, 0), 0.0f);
    cr_assert_float_eq(ert_policy_score(ERT_POLICY_MAX_PROB, u, 8, 0), 0.125f, 1e-7);
}

Test(policy, argmax_skips_nan)
{
    float a[4] = {NAN, 1.0f, 5.0f, 2.0f};
    cr_assert_eq(ert_argmax(a, 4), 2);
    float b[3] = {1.0f, NAN, 0.5f};
    cr_assert_eq(ert_argmax(b, 3), 0);
    float c[3] = {NAN, NAN, NAN};
    cr_assert_eq(ert_argmax(c, 3), 0);
    float d[3] = {-INFINITY, -5.0f, INFINITY};
    cr_assert_eq(ert_argmax(d, 3), 2);
}

Test(policy, thresholds_at_the_bounds)
{
    rng_seed(12);
    float z[10];
    for (int trial = 0; trial < 500; trial++) {
        for (int i = 0; i < 10; i++)
            z[i] = (float)((rnd01() * 2 - 1) * 20.0);
        float mp = ert_policy_score(ERT_POLICY_MAX_PROB, z, 10, 0);
        float mg = ert_policy_score(ERT_POLICY_MARGIN, z, 10, 0);
        float en = ert_policy_score(ERT_POLICY_ENTROPY, z, 10, 0);
        /* threshold 0: every finite row exits on max_prob and margin ... */
        cr_assert(ert_policy_exits(ERT_POLICY_MAX_PROB, mp, 0.0f));
        cr_assert(ert_policy_exits(ERT_POLICY_MARGIN, mg, 0.0f));
        /* ... and none on entropy (entropy < 0 never holds) */
        cr_assert_not(ert_policy_exits(ERT_POLICY_ENTROPY, en, 0.0f));
        /* threshold 1: only a certain row (probability rounding to 1) */
        cr_assert_eq(ert_policy_exits(ERT_POLICY_MAX_PROB, mp, 1.0f), mp == 1.0f);
        cr_assert_eq(ert_policy_exits(ERT_POLICY_MARGIN, mg, 1.0f), mg == 1.0f);
    }
    float certain[3] = {0.0f, -200.0f, -300.0f}; /* exp(-200) underflows in float */
    float unsure[3] = {0.0f, -1.0f, -2.0f};
    cr_assert(ert_policy_exits(ERT_POLICY_MAX_PROB,
                               ert_policy_score(ERT_POLICY_MAX_PROB, certain, 3, 0), 1.0f));
    cr_assert(ert_policy_exits(ERT_POLICY_MARGIN,
                               ert_policy_score(ERT_POLICY_MARGIN, certain, 3, 0), 1.0f));
    cr_assert_not(ert_policy_exits(ERT_POLICY_MAX_PROB,
                                   ert_policy_score(ERT_POLICY_MAX_PROB, unsure, 3, 0), 1.0f));
    cr_assert_eq(ert_policy_score(ERT_POLICY_ENTROPY, certain, 3, 0), 0.0f);
    cr_assert_not(ert_policy_exits(ERT_POLICY_ENTROPY, 0.0f, 0.0f), "entropy thr 0: never");
    cr_assert(ert_policy_exits(ERT_POLICY_ENTROPY, 0.0f, 1e-9f));
    /* confidence head: thr 0 takes any finite non-negative output, thr 1 only 1 */
    cr_assert(ert_policy_exits(ERT_POLICY_CONFIDENCE_HEAD, 0.0f, 0.0f));
    cr_assert(ert_policy_exits(ERT_POLICY_CONFIDENCE_HEAD, 1.0f, 1.0f));
    cr_assert_not(ert_policy_exits(ERT_POLICY_CONFIDENCE_HEAD, 0.99999994f, 1.0f));
    /* a single class is certain */
    float one[1] = {3.0f};
    cr_assert_eq(ert_policy_score(ERT_POLICY_MAX_PROB, one, 1, 0), 1.0f);
    cr_assert_eq(ert_policy_score(ERT_POLICY_MARGIN, one, 1, 0), 1.0f);
    cr_assert_eq(ert_policy_score(ERT_POLICY_ENTROPY, one, 1, 0), 0.0f);
}

Test(policy, compact_index)
{
    rng_seed(13);
    unsigned char ex[600];
    int dst[600];
    const int ns[] = {1, 2, 7, 64, 257, 600};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
        for (int trial = 0; trial < 20; trial++) {
            int n = ns[ni];
            double rate = trial == 0 ? 0.0 : trial == 1 ? 1.0 : rnd01();
            int want_kept = 0;
            for (int i = 0; i < n; i++) {
                ex[i] = rnd01() < rate;
                want_kept += !ex[i];
            }
            int kept = ert_compact_index(ex, n, dst);
            cr_assert_eq(kept, want_kept);
            /* survivors get 0, 1, 2, ... in their original order */
            int next = 0;
            for (int i = 0; i < n; i++) {
                if (ex[i]) {
                    cr_assert_eq(dst[i], -1);
                } else {
                    cr_assert_eq(dst[i], next, "row %d: slot %d, want %d", i, dst[i], next);
                    next++;
                }
            }
            if (trial == 0)
                for (int i = 0; i < n; i++)
                    cr_assert_eq(dst[i], i); /* nobody exits: identity */
            if (trial == 1)
                cr_assert_eq(kept, 0);
        }
    cr_assert_eq(ert_survivor_slot(5, 0), 5);
    cr_assert_eq(ert_survivor_slot(5, 1), -1);
}

/* ---- patience ------------------------------------------------------------------------ */

/* A row of k logits whose argmax is c (the others below it). */
static void row_for(float *z, int k, int c)
{
    for (int i = 0; i < k; i++)
        z[i] = (float)(i % 3) - 3.0f;
    z[c] = 2.0f;
}

/* The state after each exit of a walk, and the streak, class and score. */
Test(policy, patience_streaks)
{
    /* classes per exit; -1: a NaN logit there, -2: an infinite one */
    const int cls[] = {2, 2, 2, 1, 1, -1, 1, 1, 0, -2, 0, 3};
    const int want[] = {1, 2, 3, 1, 2, 0, 1, 2, 1, 0, 1, 1};
    float z[5];
    ert_patience st = 0xdeadbeefu; /* exit 0 must not read it */
    for (int e = 0; e < (int)(sizeof cls / sizeof cls[0]); e++) {
        row_for(z, 5, cls[e] >= 0 ? cls[e] : 4);
        if (cls[e] == -1)
            z[1] = NAN;
        if (cls[e] == -2)
            z[3] = -INFINITY;
        float s = ert_exit_score(ERT_POLICY_PATIENCE, e, z, 5, 0.0f, &st);
        cr_assert_eq(ert_patience_streak(st), want[e], "exit %d: streak %d, want %d", e,
                     ert_patience_streak(st), want[e]);
        if (want[e]) {
            cr_assert_eq(s, (float)want[e]);
            cr_assert_eq(ert_patience_class(st), cls[e]);
        } else {
            cr_assert(isnan(s), "exit %d: non-finite logits scored %g", e, s);
            cr_assert_eq(st, ERT_PATIENCE_START);
        }
        /* the rule: fires iff the streak reaches k */
        for (int k = 1; k <= 4; k++) {
            cr_assert_eq(ert_patience_fires(st, (float)k), want[e] >= k);
            cr_assert_eq(ert_policy_exits(ERT_POLICY_PATIENCE, s, (float)k), want[e] >= k);
        }
    }
}

/* Every exit counts, whatever its policy: an entropy exit moves the streak
 * on too, and returns its own score. */
Test(policy, patience_counts_every_exit)
{
    float z[4] = {0.1f, 3.0f, -1.0f, 0.5f};
    ert_patience st = ERT_PATIENCE_START;
    const int kinds[] = {ERT_POLICY_ENTROPY, ERT_POLICY_MAX_PROB, ERT_POLICY_MARGIN,
                         ERT_POLICY_CONFIDENCE_HEAD, ERT_POLICY_PATIENCE};
    for (int e = 0; e < 5; e++) {
        float s = ert_exit_score(kinds[e], e, z, 4, 0.75f, &st);
        cr_assert_eq(ert_patience_streak(st), e + 1);
        cr_assert_eq(ert_patience_class(st), 1);
        if (kinds[e] == ERT_POLICY_PATIENCE)
            cr_assert_eq(s, 5.0f);
        else
            cr_assert_eq(s, ert_policy_score(kinds[e], z, 4, 0.75f), "kind %d", kinds[e]);
    }
    /* without a state (the final head) patience cannot score, the others do */
    cr_assert(isnan(ert_exit_score(ERT_POLICY_PATIENCE, 3, z, 4, 0.0f, NULL)));
    cr_assert_eq(ert_exit_score(ERT_POLICY_NONE, 3, z, 4, 0.0f, NULL),
                 ert_policy_score(ERT_POLICY_NONE, z, 4, 0.0f));
    /* ert_policy_score knows no state: patience is NaN there */
    cr_assert(isnan(ert_policy_score(ERT_POLICY_PATIENCE, z, 4, 0.0f)));
}

/* Ties go to the lowest index, at every exit alike, so a tie keeps a streak
 * on the lower class. */
Test(policy, patience_ties)
{
    float a[4] = {1.0f, 4.0f, 4.0f, 0.0f}; /* 1 and 2 tie: class 1 */
    float b[4] = {4.0f, 4.0f, 4.0f, 4.0f}; /* all tie: class 0 */
    float c[4] = {0.0f, 4.0f, 1.0f, 4.0f}; /* 1 and 3 tie: class 1 */
    ert_patience st = ert_patience_update(ERT_PATIENCE_START, a, 4);
    cr_assert_eq(ert_patience_class(st), 1);
    st = ert_patience_update(st, c, 4);
    cr_assert_eq(ert_patience_class(st), 1);
    cr_assert_eq(ert_patience_streak(st), 2);
    st = ert_patience_update(st, b, 4);
    cr_assert_eq(ert_patience_class(st), 0);
    cr_assert_eq(ert_patience_streak(st), 1);
}

/* The first exit fires only with k = 1; exit i (0-based) never with
 * k > i + 1, however long the classes agree. */
Test(policy, patience_position_bounds)
{
    float z[3] = {0.0f, 1.0f, 2.0f};
    ert_patience st = 0x12345678u;
    for (int e = 0; e < ERT_MAX_EXITS; e++) {
        ert_exit_score(ERT_POLICY_PATIENCE, e, z, 3, 0.0f, &st);
        cr_assert(ert_patience_fires(st, (float)(e + 1)));
        cr_assert_not(ert_patience_fires(st, (float)(e + 2)));
    }
    /* a non-finite state never fires, whatever the threshold */
    cr_assert_not(ert_patience_fires(ERT_PATIENCE_START, 1.0f));
    cr_assert_not(ert_patience_fires(ERT_PATIENCE_START, -INFINITY));
}

/* The packed word's limits: 65536 classes (model.json's most) keep their
 * index; a streak stops at 255 instead of wrapping to 0. */
Test(policy, patience_limits)
{
    static float z[65536];
    for (int i = 0; i < 65536; i++)
        z[i] = -1.0f;
    z[65535] = 1.0f;
    ert_patience st = ert_patience_update(ERT_PATIENCE_START, z, 65536);
    cr_assert_eq(ert_patience_class(st), 65535);
    cr_assert_eq(ert_patience_streak(st), 1);
    for (int i = 0; i < 300; i++)
        st = ert_patience_update(st, z, 65536);
    cr_assert_eq(ert_patience_class(st), 65535);
    cr_assert_eq(ert_patience_streak(st), 255);
    cr_assert_eq(ert_patience_score(st), 255.0f);
}

/* tolerance.h - how far two backends (or a backend and a float64
 * reference) may differ, stated once. The C tests include this; the device
 * check's comparison (tests/cuda/compare_predictions.py) reads the numbers
 * from this file, so the rule cannot drift between them.
 *
 * Why any difference: device expf/logf, FMA contraction of policy.h's
 * arithmetic and cuDNN/cuBLAS summation order round differently from the
 * CPU's. So:
 *   - exit decisions agree, except on rows whose score lies within
 *     ERT_TOL_THRESHOLD * (1 + |threshold|) of the threshold of the earlier
 *     of the two exits (the score may fall either way); such flips are
 *     counted and reported, and at most ERT_TOL_FLIP_PERCENT % of the rows
 *     (+1) may flip;
 *   - where the exits agree, logits agree within ERT_TOL_LOGIT relative:
 *     |got - want| <= ERT_TOL_LOGIT * (|want| + max_j |want_j|) + 1e-6,
 *     and the scores within ERT_TOL_THRESHOLD * (1 + |score|);
 *   - the classes agree unless the top two logits are within the logit
 *     tolerance of each other (a tie either way).
 */
#ifndef ERT_TOLERANCE_H
#define ERT_TOLERANCE_H

#include <math.h>

#define ERT_TOL_THRESHOLD 1e-4f
#define ERT_TOL_LOGIT 1e-4f
#define ERT_TOL_FLIP_PERCENT 1

static inline int tol_near_threshold(float score, float thr)
{
    return fabsf(score - thr) <= ERT_TOL_THRESHOLD * (1.0f + fabsf(thr));
}

static inline int tol_score_ok(float got, float want)
{
    return fabsf(got - want) <= ERT_TOL_THRESHOLD * (1.0f + fabsf(want));
}

/* scale: max_j |want_j| over the row's finite logits */
static inline int tol_logit_ok(float got, float want, float scale)
{
    return fabsf(got - want) <= ERT_TOL_LOGIT * (fabsf(want) + scale) + 1e-6f;
}

static inline int tol_flips_ok(int flips, int rows)
{
    return flips <= rows * ERT_TOL_FLIP_PERCENT / 100 + 1;
}

#endif /* ERT_TOLERANCE_H */

/* policy.h - exit policy math and compaction index logic, written once.
 *
 * Included by the C backends and by the CUDA kernels (the .cu files), so the
 * CPU and the GPU cannot drift: everything here is static inline, float32,
 * and uses nothing from libc beyond math functions available on the device.
 *
 * Score semantics (DESIGN.md, "Exit policies"):
 *   entropy          score = softmax entropy (nats), exits when score <  threshold
 *   max_prob         score = max softmax probability, exits when >= threshold
 *   margin           score = top1 - top2 probability, exits when >= threshold
 *   confidence_head  score = the head's sigmoid output, exits when >= threshold
 *   none (final)     score = max softmax probability, always exits
 * A non-finite logit or score never exits early.
 */
#ifndef ERT_POLICY_H
#define ERT_POLICY_H

#include <math.h>

#include "exitrt.h"

#ifdef __CUDACC__
#define ERT_HD __host__ __device__
#else
#define ERT_HD
#endif

/* Index of the largest logit, the lowest index on ties (as torch.argmax).
 * NaN logits are never chosen unless all are NaN (then 0). */
static inline ERT_HD int ert_argmax(const float *z, int k)
{
    int best = 0;
    float bv = z[0];
    for (int i = 1; i < k; i++) {
        float v = z[i];
        if (v > bv || (bv != bv && v == v)) {
            bv = v;
            best = i;
        }
    }
    return best;
}

/* The policy score of one row of k logits. conf: the confidence head's
 * output (only read by ERT_POLICY_CONFIDENCE_HEAD). Returns NaN when any
 * logit (or conf) is not finite. */
static inline ERT_HD float ert_policy_score(int kind, const float *z, int k, float conf)
{
    if (kind == ERT_POLICY_CONFIDENCE_HEAD)
        return isfinite(conf) ? conf : NAN;
    float m = -INFINITY, m2 = -INFINITY;
    for (int i = 0; i < k; i++) {
        float v = z[i];
        if (!isfinite(v))
            return NAN;
        if (v > m) {
            m2 = m;
            m = v;
        } else if (v > m2) {
            m2 = v;
        }
    }
    /* softmax with the max subtracted: p_i = e_i / s, e_i = exp(z_i - m) */
    float s = 0.0f, t = 0.0f;
    for (int i = 0; i < k; i++) {
        float d = z[i] - m;
        float e = expf(d);
        s += e;
        t += e * d;
    }
    switch (kind) {
    case ERT_POLICY_ENTROPY: {
        /* H = -sum p log p = log s - sum(e*d)/s; rounding may dip below 0 */
        float h = logf(s) - t / s;
        return h > 0.0f ? h : 0.0f;
    }
    case ERT_POLICY_MARGIN:
        /* k == 1: a single class is certain */
        return k > 1 ? (1.0f - expf(m2 - m)) / s : 1.0f;
    default: /* MAX_PROB, NONE */
        return 1.0f / s;
    }
}

/* Whether a row with this score leaves at an exit with this policy. */
static inline ERT_HD int ert_policy_exits(int kind, float score, float threshold)
{
    if (kind == ERT_POLICY_NONE)
        return 1;
    if (!isfinite(score))
        return 0;
    if (kind == ERT_POLICY_ENTROPY)
        return score < threshold;
    return score >= threshold;
}

/* Stable compaction index over n rows: for each row that stays
 * (exited[i] == 0) dst[i] is its new position among the survivors, for each
 * row that leaves dst[i] = -1. Returns the number of survivors. The CUDA
 * kernels compute the same positions as an exclusive prefix count of
 * survivors (ert_survivor_slot). */
static inline ERT_HD int ert_survivor_slot(int survivors_before, int exited)
{
    return exited ? -1 : survivors_before;
}

static inline int ert_compact_index(const unsigned char *exited, int n, int *dst)
{
    int kept = 0;
    for (int i = 0; i < n; i++) {
        dst[i] = ert_survivor_slot(kept, exited[i]);
        kept += !exited[i];
    }
    return kept;
}

#endif /* ERT_POLICY_H */

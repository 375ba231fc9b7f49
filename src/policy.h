/* policy.h - exit policy math and compaction index logic, written once.
 *
 * Included by the C backends and by the CUDA kernels (the .cu files), so the
 * CPU and the GPU cannot drift: everything here is static inline, float32,
 * and uses nothing from libc beyond math functions available on the device.
 *
 * Score semantics (models/FORMAT.md, "Policies and thresholds"):
 *   entropy          score = softmax entropy (nats), exits when score <  threshold
 *   max_prob         score = max softmax probability, exits when >= threshold
 *   margin           score = top1 - top2 probability, exits when >= threshold
 *   confidence_head  score = the head's sigmoid output, exits when >= threshold
 *   patience         score = the streak: how many exits in a row, this one
 *                    included, predicted this exit's class; exits when
 *                    >= threshold (an integer k >= 1). Needs the row's state
 *                    from the exits before (ert_exit_score, below)
 *   none (final)     score = max softmax probability, always exits
 * A non-finite logit or score never exits early.
 */
#ifndef ERT_POLICY_H
#define ERT_POLICY_H

#include <math.h>
#include <stdint.h>

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
 * logit (or conf) is not finite, and for ERT_POLICY_PATIENCE, whose score
 * depends on the earlier exits too (ert_exit_score). */
static inline ERT_HD float ert_policy_score(int kind, const float *z, int k, float conf)
{
    if (kind == ERT_POLICY_CONFIDENCE_HEAD)
        return isfinite(conf) ? conf : NAN;
    if (kind == ERT_POLICY_PATIENCE)
        return NAN;
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
    default: /* MAX_PROB, NONE */ return 1.0f / s;
    }
}

/* Whether t is a valid threshold for an early exit of policy p: >= 0 for
 * entropy (+inf included: every finite score exits), [0, 1] for max_prob,
 * margin and confidence_head, a finite integer >= 1 for patience; never for
 * the final head (ERT_POLICY_NONE). The one rule of the model loader (which
 * also wants a file's thresholds finite) and ert_engine_set_threshold. */
static inline int ert_threshold_ok(ert_policy_kind p, float t)
{
    switch (p) {
    case ERT_POLICY_ENTROPY: return t >= 0.0f; /* NaN fails every comparison */
    case ERT_POLICY_MAX_PROB:
    case ERT_POLICY_MARGIN:
    case ERT_POLICY_CONFIDENCE_HEAD: return t >= 0.0f && t <= 1.0f;
    /* a streak length: 2.5 would act as 3, and a file or a calibrator
       saying 2.5 has most likely mistaken the policy for another */
    case ERT_POLICY_PATIENCE: return isfinite(t) && t >= 1.0f && t == floorf(t);
    case ERT_POLICY_NONE: break;
    }
    return 0;
}

/* The valid thresholds in words, for messages ("[0, 1]", ">= 0", ...). */
static inline const char *ert_threshold_range(ert_policy_kind p)
{
    switch (p) {
    case ERT_POLICY_ENTROPY: return ">= 0";
    case ERT_POLICY_PATIENCE: return "an integer >= 1";
    case ERT_POLICY_NONE: return "none: the final head has no threshold";
    default: return "[0, 1]";
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

/* ---- patience (PABEE: "BERT loses patience", Zhou et al. 2020) --------------------
 *
 * A patience exit with threshold k fires when the predicted class
 * (ert_argmax) has been the same at the last k exits, this one included.
 * Every exit before it counts, whatever its policy (every exit has class
 * logits). An exit whose logits are not all finite never fires and breaks
 * the streak, which restarts at the next exit with finite logits. So the
 * first exit fires only with k = 1, and an exit at position p (0-based) never
 * fires with k > p + 1.
 *
 * The state a row carries from exit to exit is one 32-bit word:
 *   bits 0-7   the streak after the last exit: 0 before the first exit and
 *              after an exit with non-finite logits, else 1..255
 *   bits 8-31  the class of that streak
 * Limits this implies: classes below 2^24 (model.json allows at most 65536)
 * and streaks up to 255 (a model has at most ERT_MAX_EXITS = 16 exits; a
 * longer streak would stay at 255). The backends keep the word per sample,
 * indexed by the sample's position in the call, which compaction never
 * changes (src/cpu/cpu_backend.c, kernels/exit.cu); the refill stream keeps it
 * beside each queued row (src/stream.c). */
typedef uint32_t ert_patience;

#define ERT_PATIENCE_START 0u /* no exit seen yet */

static inline ERT_HD int ert_patience_streak(ert_patience st) { return (int)(st & 0xffu); }
static inline ERT_HD int ert_patience_class(ert_patience st) { return (int)(st >> 8); }

/* The state after an exit whose logits are z[0..k), given the state after
 * the exit before it. */
static inline ERT_HD ert_patience ert_patience_update(ert_patience st, const float *z, int k)
{
    for (int i = 0; i < k; i++)
        if (!isfinite(z[i]))
            return ERT_PATIENCE_START;
    uint32_t c = (uint32_t)ert_argmax(z, k);
    uint32_t n = st & 0xffu;
    if (n && (st >> 8) == c)
        n += n < 0xffu;
    else
        n = 1;
    return (c << 8) | n;
}

/* The patience policy's score of a row in state st: its streak, NaN after
 * non-finite logits (as every policy's score is there). */
static inline ERT_HD float ert_patience_score(ert_patience st)
{
    int n = ert_patience_streak(st);
    return n ? (float)n : NAN;
}

/* Whether a patience exit with threshold k fires for a row in state st: the
 * streak is at least k (ert_policy_exits on its score). */
static inline ERT_HD int ert_patience_fires(ert_patience st, float k)
{
    return ert_policy_exits(ERT_POLICY_PATIENCE, ert_patience_score(st), k);
}

/* One row at exit `exit_index`: updates its patience state *st from the
 * logits (every early exit does, whatever its policy; exit 0 starts afresh
 * and never reads *st, so nobody needs to clear the state before a batch),
 * then returns the exit's policy score. st NULL: no state kept, for the
 * final head (whose state no later exit reads); patience then scores NaN. */
static inline ERT_HD float ert_exit_score(int kind, int exit_index, const float *z, int k,
                                          float conf, ert_patience *st)
{
    if (st)
        *st = ert_patience_update(exit_index == 0 ? ERT_PATIENCE_START : *st, z, k);
    if (kind == ERT_POLICY_PATIENCE)
        return st ? ert_patience_score(*st) : NAN;
    return ert_policy_score(kind, z, k, conf);
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

/* bench_calibrate.h - the bench's bookkeeping: thresholds from score quantiles so
 * that an exit profile is met, and the ideal-speedup arithmetic.
 *
 * No timing and no engine calls here, so the unit test can check every
 * number by hand (tests/unit/test_bench.c).
 *
 * An exit profile gives the target share of all N samples for each early
 * exit, in order: exit e should take round(share[e] * N) samples of those
 * still running after exits 0..e-1; the final head takes the rest.
 */
#ifndef ERT_BENCH_CALIBRATE_H
#define ERT_BENCH_CALIBRATE_H

#include <stdint.h>

#include "exitrt.h"
#include "model.h"
#include "plan.h"

/* The valid threshold range of a policy (ert_engine_set_threshold's):
 * entropy [0, +inf), patience the integers >= 1 (t rounded up: a streak
 * reaches t iff it reaches ceil(t)), every other early-exit policy [0, 1]. */
float calib_clamp_threshold(ert_policy_kind kind, float t);

/* Chooses a threshold for one exit so that as close to `take` of the n
 * scores as possible exit under the policy's rule (entropy: score < t;
 * max_prob, margin, confidence_head, patience: score >= t). Non-finite scores never
 * exit and are never counted. The threshold falls between two consecutive
 * distinct sorted scores (their midpoint, for a margin against rounding
 * differences between engines), so ties move the count as a block: then the
 * achievable count nearest to `take` is chosen (the smaller one on a tie).
 * The threshold is clamped into the policy's valid range, which can make
 * the count differ from the chosen one (a score of exactly 1.0 always
 * exits a [0,1] policy). scratch: n floats. Returns the number of the n
 * scores that exit at the returned *thr (counted with ert_policy_exits). */
int calib_pick_threshold(ert_policy_kind kind, const float *scores, int n, int take, float *scratch,
                         float *thr);

/* Calibrates a whole profile.
 *   kinds     [num_exits] the exits' policies (the last one NONE)
 *   scores    [n * num_exits] row-major, as ert_engine_scores writes them
 *   shares    [nshares] target share of all n per early exit; missing
 *             entries (nshares < num_exits-1) count as 0, extra ones are
 *             ignored
 * Writes thresholds[num_exits-1], targets[num_exits] (round(share*n),
 * capped by the samples still running; the final head's target is what is
 * left of n after the early targets) and counts[num_exits] (the samples
 * each exit takes with these thresholds, the final head included).
 * exits (optional, [n]) receives each sample's exit index.
 * Returns 0, or -1 on bad arguments or out of memory. */
int calib_profile(int num_exits, const ert_policy_kind *kinds, const float *scores, int n,
                  const double *shares, int nshares, float *thresholds, int32_t *targets,
                  int32_t *counts, int32_t *exits);

/* Ideal speedup of a run whose exit counts are given: full MACs over the
 * ideal early-exit MACs (plan_ideal_macs), both for the sum of counts. */
double calib_ideal_speedup(const ert_model *m, const plan *p, const int32_t *counts);

/* Efficiency: measured speedup over FULL divided by the ideal speedup
 * (0 when the ideal is not positive). */
double calib_efficiency(double measured_speedup, double ideal_speedup);

/* The q-quantile (0..1) of n values by nearest rank on a sorted copy
 * (scratch: n doubles). For p50/p99 latencies. 0 when n is 0. */
double calib_percentile(const double *v, int n, double q, double *scratch);

#endif /* ERT_BENCH_CALIBRATE_H */

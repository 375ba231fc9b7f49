/* calib_search.h - choosing every exit's threshold to an accuracy target,
 * from scores computed once, and the held-out statement of what it costs.
 *
 * Used by `exitrt calibrate`. No engine calls and no timing here: the
 * inputs are every exit's score and predicted class for every sample (as
 * ert_engine_exit_outputs writes them) and the labels, so the unit test
 * (tests/unit/test_calib_search.c) can check each result against brute
 * force.
 *
 * Cost model: a sample that leaves at exit e costs cost[e] MACs, the work
 * of stages 0..e and heads 0..e (plan_ideal_macs for one sample), which is
 * what COMPACTED and the refill stream execute. The search minimises the
 * summed cost subject to a number of correct predictions.
 */
#ifndef ERT_CALIB_SEARCH_H
#define ERT_CALIB_SEARCH_H

#include <stdint.h>

#include "exitrt.h"

/* n samples of a model with num_exits exits (the last the final head).
 * Row-major [n * num_exits] arrays, sample * num_exits + exit. */
typedef struct calib_problem {
    int n, num_exits;
    const ert_policy_kind *kinds; /* [num_exits]; the last is ERT_POLICY_NONE */
    const float *scores;          /* [n * num_exits] policy scores */
    const int32_t *classes;       /* [n * num_exits] predicted class per exit */
    const int32_t *labels;        /* [n] */
    const double *cost;           /* [num_exits] MACs of a sample leaving at e */
    int num_classes;              /* K: the entropy of a K-class softmax is <= log K */
} calib_problem;

/* The outcome of one threshold vector over a problem's samples. */
typedef struct calib_outcome {
    int64_t correct;              /* samples predicted right */
    int64_t correct_final;        /* ... by the final head alone */
    int64_t final_only;           /* right at the final head, wrong where they left */
    int64_t exit_only;            /* wrong at the final head, right where they left */
    double cost;                  /* summed cost[] of the exits taken */
    int64_t taken[ERT_MAX_EXITS]; /* samples leaving at each exit */
    int64_t right[ERT_MAX_EXITS]; /* ... of them predicted right */
} calib_outcome;

/* Applies thresholds (num_exits - 1 values) with the engine's own rule
 * (ert_policy_exits): each sample leaves at the first exit that fires.
 * rows: the sample indices to count ([count]), or NULL for all n. */
void calib_evaluate(const calib_problem *p, const float *thresholds, const int *rows, int count,
                    calib_outcome *out);

/* The threshold under which exit e fires for no finite score, where the
 * policy's range allows it (entropy 0, patience above the exit's position);
 * [0,1] policies get 1, at which only a score of exactly 1 fires. */
float calib_never(const calib_problem *p, int e);

/* A threshold t with lo < t <= hi for distinct neighbouring scores lo < hi:
 * the midpoint, or hi where rounding puts the midpoint on lo. Both rules
 * fire the same side of it (score >= t fires hi and up, score < t fires lo
 * and down), and scores that move by rounding on another engine keep their
 * side. Shared with the bench's profile calibration (bench_calibrate.c). */
float calib_between(float lo, float hi);

/* Searches thresholds[num_exits - 1] minimising the summed cost over the
 * rows (NULL: all n) subject to at least `need` correct predictions.
 * Exits are searched jointly: coordinate descent in which each step sets
 * one exit's threshold to the best cut among the sorted scores of the rows
 * that reach it (every candidate at once, O(rows log rows)), started from
 * "no early exit" and from the solutions of a sweep of Lagrangian problems
 * (minimise cost - lambda * correct; each gives a point of the lower convex
 * hull of cost against accuracy), the best feasible result kept.
 * Thresholds lie between distinct neighbouring scores (their midpoint), so
 * scores that move by rounding on another engine keep their side.
 * Returns 1 when the target was met, 0 when no threshold vector found meets
 * it (then the most accurate one found is returned), -1 when out of memory. */
int calib_search(const calib_problem *p, const int *rows, int count, int64_t need,
                 float *thresholds);

/* One-sided Clopper-Pearson bounds on a binomial rate: the p with
 * P(X <= x | n, p) = alpha (upper; 1 when x == n) and with
 * P(X >= x | n, p) = alpha (lower; 0 when x == 0). */
double calib_binom_upper(int64_t x, int64_t n, double alpha);
double calib_binom_lower(int64_t x, int64_t n, double alpha);

/* An upper bound, holding with probability >= confidence, on the accuracy
 * drop (final head's accuracy minus the early-exit run's) on new samples
 * from the distribution the n held-out samples came from:
 *   drop = P(final right, exit wrong) - P(final wrong, exit right)
 *        <= upper(final_only) - lower(exit_only),
 * each bound at level 1 - (1 - confidence) / 2 (Bonferroni over the two).
 * Valid because the thresholds were chosen without these samples. */
double calib_drop_upper(int64_t final_only, int64_t exit_only, int64_t n, double confidence);

/* A seeded permutation of 0..n-1 (Fisher-Yates on splitmix64), so the
 * calibration/held-out split is reproducible from --seed. */
void calib_shuffle(int *idx, int n, uint64_t seed);

#endif /* ERT_CALIB_SEARCH_H */

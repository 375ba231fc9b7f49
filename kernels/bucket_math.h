/* bucket_math.h - row-count buckets of the size-bucketed CUDA graphs.
 *
 * With graph_buckets = K and max_batch = B, every stage is captured for the
 * row counts step, 2 step, ..., B where step = ceil(B / K); the last bucket
 * is clipped to B, so there are ceil(B / step) <= K of them (B = 10, K = 8:
 * step 2, 5 buckets). A stage entered by n rows runs the smallest bucket
 * holding them, bucket (n - 1) / step; n = 0 selects "no bucket", the
 * index nbuckets, which a SWITCH conditional node of nbuckets bodies takes
 * as "run nothing". The rows between n and the bucket's size are padding:
 * computed, then ignored by the exit kernels (they read n from device
 * memory), never written to the results.
 *
 * Written once here: the kernels (kernels/graph.cu, kernels/exit.cu) and the
 * host (src/cuda/graph.c, tests/unit/test_kernels_host.c) use the same
 * functions.
 */
#ifndef ERT_BUCKET_MATH_H
#define ERT_BUCKET_MATH_H

#include <stddef.h>
#include <stdint.h>

#include "policy.h" /* ERT_HD, and exitrt.h for ERT_MAX_EXITS */

/* Rows per bucket step: ceil(max_rows / k); k >= 1, max_rows >= 1. */
static inline ERT_HD int ert_bucket_step(int max_rows, int k) { return (max_rows + k - 1) / k; }

/* Buckets for this step: ceil(max_rows / step) (<= k). */
static inline ERT_HD int ert_bucket_count(int max_rows, int step)
{
    return (max_rows + step - 1) / step;
}

/* Rows bucket i runs: (i + 1) * step, clipped to max_rows. */
static inline ERT_HD int ert_bucket_rows(int i, int step, int max_rows)
{
    long long r = (long long)(i + 1) * step;
    return r < max_rows ? (int)r : max_rows;
}

/* The smallest bucket holding n rows; nbuckets ("none") when n <= 0. A
 * count above the largest bucket cannot happen (n <= max_rows); it is
 * clamped to the last bucket all the same, so a switch value is never out
 * of the bodies by accident. */
static inline ERT_HD int ert_bucket_of(int n, int step, int nbuckets)
{
    if (n <= 0)
        return nbuckets;
    int b = (n - 1) / step;
    return b < nbuckets ? b : nbuckets - 1;
}

/* The per-slot counters the device writes in a bucketed graph:
 * stats[ERT_STATS_ROWS + s] rows entering stage s (0: it did not run),
 * stats[ERT_STATS_BUCKET + s] the bucket stage s ran (-1: none). */
#define ERT_STATS_ROWS 0
#define ERT_STATS_BUCKET ERT_MAX_EXITS
#define ERT_STATS_LEN (2 * ERT_MAX_EXITS)

/* Padding of one sub-batch from its counters: the rows run beyond those
 * entering, summed over nstages stages. When stage_cost is not NULL
 * (stage_cost[s]: MACs per row of stage s and its head), *macs gets the
 * MACs those padding rows cost. A stage with no bucket adds nothing. */
static inline int ert_padding_rows(const int32_t *stats, int nstages, int step, int max_rows,
                                   const uint64_t *stage_cost, uint64_t *macs)
{
    int pad = 0;
    uint64_t m = 0;
    for (int s = 0; s < nstages; s++) {
        int b = stats[ERT_STATS_BUCKET + s];
        if (b < 0)
            continue;
        int p = ert_bucket_rows(b, step, max_rows) - stats[ERT_STATS_ROWS + s];
        if (p < 0)
            p = 0; /* not reachable with counters the kernels wrote */
        pad += p;
        if (stage_cost)
            m += (uint64_t)p * stage_cost[s];
    }
    if (macs)
        *macs = m;
    return pad;
}

/* The input rows of the graphs' self-check at creation (src/cuda/graph.c):
 * rows every model accepts and scores finitely at every exit, so that
 * thresholds of -inf / +inf send each row to the first exit / the final
 * head whatever the weights. An image or vector model gets zeros. A token
 * model's row is [2, T] (tokens = T: the ids, then the mask): id 0 (valid
 * in any vocabulary) at every token, every token attended. All zeros there
 * would be all padding, which pooling and attention turn into NaN (FORMAT.md),
 * and a NaN score leaves at no exit. per: floats per row. Host only. */
static inline void ert_graph_check_rows(float *x, int rows, size_t per, int tokens)
{
    for (size_t i = 0; i < (size_t)rows * per; i++)
        x[i] = 0.0f;
    if (tokens <= 0 || per != 2 * (size_t)tokens)
        return;
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < tokens; t++)
            x[(size_t)r * per + (size_t)tokens + (size_t)t] = 1.0f;
}

#endif /* ERT_BUCKET_MATH_H */

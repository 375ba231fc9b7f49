/* test_buckets.c - the row-count buckets of the CUDA graphs
 * (kernels/bucket_math.h), checked on the host: the same functions the
 * graph kernels and src/cuda/graph.c call. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "../../kernels/bucket_math.h"

Test(buckets, sizes)
{
    /* {max_batch, K, step, buckets, last bucket's rows} */
    const int cases[][5] = {
        {256, 8, 32, 8, 256},     {257, 8, 33, 8, 257},     {10, 8, 2, 5, 10},
        {1, 8, 1, 1, 1},          {100, 3, 34, 3, 100},     {7, 64, 1, 7, 7},
        {1024, 1, 1024, 1, 1024}, {1024, 64, 16, 64, 1024}, {100, 8, 13, 8, 100},
        {9, 4, 3, 3, 9},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int B = cases[i][0], K = cases[i][1];
        int step = ert_bucket_step(B, K);
        int nb = ert_bucket_count(B, step);
        cr_assert_eq(step, cases[i][2], "B %d K %d: step %d", B, K, step);
        cr_assert_eq(nb, cases[i][3], "B %d K %d: %d buckets", B, K, nb);
        cr_assert_eq(ert_bucket_rows(nb - 1, step, B), cases[i][4]);
    }
}

Test(buckets, selection)
{
    const int B = 100, step = 13, nb = 8;
    cr_assert_eq(ert_bucket_of(0, step, nb), nb, "0 rows: no body (value >= the switch's size)");
    cr_assert_eq(ert_bucket_of(-3, step, nb), nb);
    cr_assert_eq(ert_bucket_of(1, step, nb), 0);
    cr_assert_eq(ert_bucket_of(13, step, nb), 0);
    cr_assert_eq(ert_bucket_of(14, step, nb), 1);
    cr_assert_eq(ert_bucket_of(91, step, nb), 6);
    cr_assert_eq(ert_bucket_of(92, step, nb), 7);
    cr_assert_eq(ert_bucket_of(B, step, nb), 7);
    cr_assert_eq(ert_bucket_of(B + 50, step, nb), 7, "clamped, never past the bodies");
    cr_assert_eq(ert_bucket_rows(7, step, B), 100);
    cr_assert_eq(ert_bucket_rows(6, step, B), 91);
}

/* For every max_batch and K in a range and every row count: the bucket
 * chosen holds the rows, the one below does not, bucket sizes grow, there
 * are at most K, and the last is exactly max_batch. */
Test(buckets, smallest_holding_bucket)
{
    for (int B = 1; B <= 300; B++)
        for (int K = 1; K <= 20; K++) {
            int step = ert_bucket_step(B, K);
            int nb = ert_bucket_count(B, step);
            cr_assert(nb >= 1 && nb <= K, "B %d K %d: %d buckets", B, K, nb);
            cr_assert_eq(ert_bucket_rows(nb - 1, step, B), B);
            for (int b = 1; b < nb; b++)
                cr_assert_lt(ert_bucket_rows(b - 1, step, B), ert_bucket_rows(b, step, B));
            for (int n = 1; n <= B; n++) {
                int b = ert_bucket_of(n, step, nb);
                cr_assert(b >= 0 && b < nb);
                cr_assert_geq(ert_bucket_rows(b, step, B), n, "B %d K %d n %d: bucket %d", B, K, n,
                              b);
                if (b > 0)
                    cr_assert_lt(ert_bucket_rows(b - 1, step, B), n);
                /* padding below one step */
                cr_assert_lt(ert_bucket_rows(b, step, B) - n, step);
            }
        }
}

static void stats_set(int32_t *k, int s, int rows, int bucket)
{
    k[ERT_STATS_ROWS + s] = rows;
    k[ERT_STATS_BUCKET + s] = bucket;
}

Test(buckets, padding_accounting)
{
    int32_t k[ERT_STATS_LEN];
    for (int s = 0; s < ERT_MAX_EXITS; s++)
        stats_set(k, s, 0, -1);
    const int B = 100, step = 13;
    const uint64_t cost[4] = {1000, 300, 20, 7};
    /* 100 rows -> bucket 7 (100 rows, no padding); 40 survivors -> bucket 3
     * (52 rows: 12 padding); 1 survivor -> bucket 0 (13 rows: 12 padding);
     * nobody reaches stage 3 */
    stats_set(k, 0, 100, 7);
    stats_set(k, 1, 40, 3);
    stats_set(k, 2, 1, 0);
    uint64_t macs = 1;
    cr_assert_eq(ert_padding_rows(k, 4, step, B, cost, &macs), 24);
    cr_assert_eq(macs, 12u * 300 + 12u * 20);
    cr_assert_eq(ert_padding_rows(k, 4, step, B, NULL, NULL), 24);
    /* only the stages asked for count */
    cr_assert_eq(ert_padding_rows(k, 1, step, B, cost, &macs), 0);
    cr_assert_eq(macs, 0u);
    /* the clipped last bucket of a max_batch that is not a multiple */
    stats_set(k, 0, 95, 7);
    cr_assert_eq(ert_padding_rows(k, 1, step, B, cost, &macs), 5);
    cr_assert_eq(macs, 5000u);
}

/* test_refill_bench.c - src/cli/refill_bench.c: the refill benchmark case
 * returns every sample with MASKED's results and consistent figures. */
#include <criterion/criterion.h>

#include "engine_core.h"
#include <stdlib.h>
#include <string.h>

#include "exact.h"
#include "fixtures.h"
#include "refill_bench.h"

Test(refill_bench, matches_masked_and_adds_up)
{
    ert_model *m = fx_random_model(77, MW_RESNET);
    ert_engine *e = fx_cpu_engine(m, ERT_MODE_MASKED, 16);
    ert_error err = {{0}};

    const size_t n = 100, per = ert_model_input_size(m);
    float *x = fx_random_inputs(m, (int)n, 5);
    ert_sample *want = calloc(n, sizeof *want), *got = calloc(n, sizeof *got);
    cr_assert(want && got);
    for (size_t off = 0; off < n; off += 16) {
        ert_result r = ERT_RESULT_INIT;
        r.samples = want + off;
        int b = n - off < 16 ? (int)(n - off) : 16;
        cr_assert_eq(ert_infer(e, x + off * per, b, &r), ERT_OK);
    }
    for (int sched = 0; sched < 2; sched++) {
        refill_bench_result rr;
        memset(got, 0xff, sizeof *got * n);
        cr_assert_eq(
            refill_bench_run(e, x, n, per, 16, -1.0, (ert_stream_schedule)sched, got, &rr, &err),
            ERT_OK, "%s", err.msg);
        if (exact_engine(e)) {
            cr_assert(memcmp(want, got, sizeof *got * n) == 0, "refill differs from MASKED");
        } else { /* rounding may move a sample sitting on a threshold */
            size_t same = 0;
            for (size_t i = 0; i < n; i++)
                same += want[i].exit_index == got[i].exit_index;
            cr_assert_geq(same * 100, n * 99, "refill: %zu of %zu exits as MASKED's", same, n);
        }
        cr_assert_eq(rr.macs_executed, rr.macs_ideal);
        cr_assert_eq(rr.macs_full, n * ert_model_macs_full(m));
        cr_assert_gt(rr.seconds, 0.0);
        cr_assert(rr.latency_p50_s <= rr.latency_p99_s);
        int64_t sum = 0;
        for (int i = 0; i < ERT_MAX_EXITS; i++)
            sum += rr.exit_counts[i];
        cr_assert_eq(sum, (int64_t)n);
        cr_assert_leq(rr.partial_runs, rr.stage_runs);
    }
    ert_error e2 = {{0}};
    refill_bench_result rr;
    cr_assert_eq(
        refill_bench_run(e, x, n, per, 17, -1.0, ERT_SCHEDULE_DEEPEST_FIRST, NULL, &rr, &e2),
        ERT_INVALID_ARGUMENT);
    cr_assert(strstr(e2.msg, "batch") != NULL, "%s", e2.msg);
    free(x);
    free(want);
    free(got);
    ert_engine_free(e);
    ert_model_free(m);
}

/* test_refill_bench.c - src/cli/refill_bench.c: the refill benchmark case
 * returns every sample with MASKED's results and consistent figures. */
#include <criterion/criterion.h>

#include "engine_core.h"
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_ops.h"
#include "model_writer.h"
#include "refill_bench.h"

Test(refill_bench, matches_masked_and_adds_up)
{
    char dir[256];
    cr_assert_eq(mw_tempdir(dir, sizeof dir), 0);
    cr_assert_eq(mw_random_model(dir, 77, MW_RESNET), 0);
    ert_model *m = NULL;
    ert_error err = {{0}};
    cr_assert_eq(ert_model_load(dir, &m, &err), ERT_OK, "%s", err.msg);
    mw_rmtree(dir);
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_BACKEND_CPU;
    cfg.mode = ERT_MODE_MASKED;
    cfg.max_batch = 16;
    ert_engine *e = NULL;
    cr_assert_eq(ert_engine_create(m, &cfg, &e, &err), ERT_OK, "%s", err.msg);

    const size_t n = 100, per = ert_model_input_size(m);
    float *x = malloc(sizeof(float) * n * per);
    ert_sample *want = calloc(n, sizeof *want), *got = calloc(n, sizeof *got);
    cr_assert(x && want && got);
    mw_random_input(x, n * per, 5);
    for (size_t off = 0; off < n; off += 16) {
        ert_result r;
        memset(&r, 0, sizeof r);
        r.samples = want + off;
        int b = n - off < 16 ? (int)(n - off) : 16;
        cr_assert_eq(ert_infer(e, x + off * per, b, &r), ERT_OK);
    }
    for (int sched = 0; sched < 2; sched++) {
        refill_bench_result rr;
        memset(got, 0xff, sizeof *got * n);
        cr_assert_eq(refill_bench_run(e, x, n, per, 16, -1.0, (ert_stream_schedule)sched, got, &rr,
                                      &err),
                     ERT_OK, "%s", err.msg);
        if (e->exact_modes) {
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
    cr_assert_eq(refill_bench_run(e, x, n, per, 17, -1.0, ERT_SCHEDULE_DEEPEST_FIRST, NULL, &rr,
                                  &e2),
                 ERT_INVALID_ARGUMENT);
    cr_assert(strstr(e2.msg, "batch") != NULL, "%s", e2.msg);
    free(x);
    free(want);
    free(got);
    ert_engine_free(e);
    ert_model_free(m);
}

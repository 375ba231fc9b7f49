/* test_exact.c - the exactness table of tests/common/exact.h against the
 * engines' own probes: for every model kind, in every mode and at batch
 * sizes that pick different tiles, a CPU engine's probe (e->exact_modes)
 * must say what the table says for its path and this machine's libraries.
 * The tests that compare modes, refill stages and streams bit for bit take
 * their strictness from the same table (tb_exact, exact_blas). */
#include <criterion/criterion.h>

#include "exact.h"
#include "fixtures.h"

Test(exact, cpu_engines_follow_the_stated_table)
{
    static const ert_mode modes[] = {ERT_MODE_FULL, ERT_MODE_MASKED, ERT_MODE_COMPACTED};
    static const int batches[] = {8, 64, 256};
    int exact = 0, engines = 0;
    for (int kind = 0; kind < MW_ALL_KINDS; kind++) {
        ert_model *m = fx_random_model(900u + (uint64_t)kind, (mw_kind)kind);
        for (int mi = 0; mi < 3; mi++)
            for (int bi = 0; bi < 3; bi++) {
                ert_engine *e = fx_cpu_engine(m, modes[mi], batches[bi]);
                exact += exact_engine(e); /* fails the test on a disagreement */
                engines++;
                ert_engine_free(e);
            }
        ert_model_free(m);
    }
    cr_log_info("%d of %d CPU engines required to be exact (BLAS: %s)", exact, engines,
                exact_blas() ? "exact" : "not required");
}

/* gpu_main.c - entry of test_gpu: the backend tests on the CUDA backend.
 *
 * Criterion 2.4 leaves skipped tests out of its count and exits 0, so CTest
 * would call a run with no device "Passed". Without a device this main exits
 * 77 before running anything; CTest's SKIP_RETURN_CODE turns that into
 * "Skipped". Each test also calls cr_skip_test itself (see test_common.h), so
 * running the executable by hand says why. */
#include <criterion/criterion.h>
#include <stdio.h>

#include "exitrt.h"

int main(int argc, char *argv[])
{
    if (!ert_cuda_available()) {
        fprintf(stderr, "test_gpu: skipped: no CUDA device\n");
        return 77;
    }
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    if (criterion_handle_args(argc, argv, true))
        result = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    return result;
}

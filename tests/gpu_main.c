/* gpu_main.c - entry of test_gpu: the backend tests on the CUDA backend.
 *
 * Criterion 2.4 leaves skipped tests out of its count and exits 0, so CTest
 * would call a run with no device "Passed". Without a device this main exits
 * 77 before running anything; CTest's SKIP_RETURN_CODE turns that into
 * "Skipped". A machine with an NVIDIA driver whose CUDA runtime cannot start
 * fails instead (exit 1, with the runtime's error): gpu_probe.h. Each test
 * also calls cr_skip_test itself (tb_engine and tb_only in
 * backend/backend_test.h), so running the executable by hand says why. */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <stdio.h>

#include "gpu_probe.h"

int main(int argc, char *argv[])
{
    int count = 0;
    cudaError_t r = cudaGetDeviceCount(&count);
    int driver = gpu_driver_present();
    switch (gpu_probe_verdict(r == cudaSuccess, count, r == cudaErrorNoDevice, driver)) {
    case GPU_SKIP:
        fprintf(stderr, "test_gpu: skipped: no CUDA device (%s%s)\n",
                r == cudaSuccess ? "0 devices visible" : cudaGetErrorString(r),
                driver ? "" : "; no NVIDIA driver on this machine");
        return 77;
    case GPU_FAIL:
        fprintf(stderr,
                "test_gpu: FAILED: an NVIDIA driver is present but the CUDA runtime cannot "
                "start: cudaGetDeviceCount: %s (%s)\n",
                cudaGetErrorName(r), cudaGetErrorString(r));
        return 1;
    case GPU_RUN: break;
    }
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    if (criterion_handle_args(argc, argv, true))
        result = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    return result;
}

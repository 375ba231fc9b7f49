/* test_gpu_probe.c - gpu_probe.h's table: test_gpu skips only where there
 * is no GPU, and fails where a GPU's CUDA cannot start. */
#include <criterion/criterion.h>

#include "gpu_probe.h"

Test(gpu_probe, runs_with_a_device) { cr_assert_eq(gpu_probe_verdict(1, 1, 0, 1), GPU_RUN); }

Test(gpu_probe, skips_without_a_device)
{
    cr_assert_eq(gpu_probe_verdict(1, 0, 0, 1), GPU_SKIP, "0 devices visible");
    cr_assert_eq(gpu_probe_verdict(0, 0, 1, 1), GPU_SKIP, "cudaErrorNoDevice");
    cr_assert_eq(gpu_probe_verdict(0, 0, 0, 0), GPU_SKIP, "no driver: a CPU machine");
}

Test(gpu_probe, fails_when_cuda_cannot_start_on_a_gpu_machine)
{
    /* e.g. cudaErrorInsufficientDriver with /proc/driver/nvidia present */
    cr_assert_eq(gpu_probe_verdict(0, 0, 0, 1), GPU_FAIL);
}

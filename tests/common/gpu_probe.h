/* gpu_probe.h - whether test_gpu runs, skips or fails on this machine.
 *
 * "Skipped" must mean "no GPU here", never "the GPU is there but CUDA could
 * not start" (a driver older than the runtime, a missing library): that is
 * a failure, and CTest must show it as one. The verdict from what the CUDA
 * runtime said and whether an NVIDIA driver shows on the machine:
 *
 *   runtime ok, >= 1 device          run
 *   runtime ok, 0 devices            skip (none visible, e.g. CUDA_VISIBLE_DEVICES="")
 *   runtime: no device               skip
 *   runtime: any other error,
 *     no NVIDIA driver on the machine  skip (a machine without a GPU)
 *     an NVIDIA driver present         FAIL (a GPU machine whose CUDA is broken)
 *
 * Pure, so test_cpu checks the table (tests/unit/test_gpu_probe.c). */
#ifndef ERT_GPU_PROBE_H
#define ERT_GPU_PROBE_H

#include <unistd.h>

typedef enum gpu_verdict {
    GPU_RUN = 0,
    GPU_SKIP,
    GPU_FAIL
} gpu_verdict;

/* runtime_ok: cudaGetDeviceCount returned cudaSuccess; count: what it gave;
 * no_device: it returned cudaErrorNoDevice; driver: gpu_driver_present(). */
static inline gpu_verdict gpu_probe_verdict(int runtime_ok, int count, int no_device, int driver)
{
    if (runtime_ok)
        return count > 0 ? GPU_RUN : GPU_SKIP;
    if (no_device || !driver)
        return GPU_SKIP;
    return GPU_FAIL;
}

/* Whether the NVIDIA kernel driver shows on this machine. */
static inline int gpu_driver_present(void)
{
    return access("/proc/driver/nvidia/version", F_OK) == 0 || access("/dev/nvidiactl", F_OK) == 0;
}

#endif /* ERT_GPU_PROBE_H */

/* info.c - ert_cuda_info(): the device and library versions in one line,
 * for reports, benchmarks and bug reports. */
#include <stdio.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "backend.h"

static int ver_major(int v) { return v / 1000; }
static int ver_minor(int v) { return v % 1000 / 10; }

ert_status ert_cuda_info(int device, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return ERT_INVALID_ARGUMENT;
    int drv = 0, rt = 0, blas[3] = {0, 0, 0};
    (void)cudaDriverGetVersion(&drv);
    (void)cudaRuntimeGetVersion(&rt);
    cublasGetProperty(MAJOR_VERSION, &blas[0]);
    cublasGetProperty(MINOR_VERSION, &blas[1]);
    cublasGetProperty(PATCH_LEVEL, &blas[2]);
    size_t dnn = cudnnGetVersion(); /* 91900 for 9.19.0 */
    char libs[256];
    snprintf(libs, sizeof libs,
             "CUDA driver %d.%d, runtime %d.%d; cuDNN %zu.%zu.%zu (built with %d.%d.%d); "
             "cuBLAS %d.%d.%d",
             ver_major(drv), ver_minor(drv), ver_major(rt), ver_minor(rt), dnn / 10000,
             dnn % 10000 / 100, dnn % 100, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL, blas[0],
             blas[1], blas[2]);
    struct cudaDeviceProp p;
    cudaError_t r = cudaGetDeviceProperties(&p, device);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(buf, cap, "no CUDA device %d (%s); %s", device, cudaGetErrorString(r), libs);
        return ERT_NO_DEVICE;
    }
    snprintf(buf, cap, "%s (sm_%d%d, %d SMs, %.1f GiB); %s", p.name, p.major, p.minor,
             p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30), libs);
    return ERT_OK;
}

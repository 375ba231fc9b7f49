/* info.c - the device and library versions (cuda_info.h), and the line
 * ert_cuda_info() prints them as; the library reaches both through the
 * plugin table (backend_plugin.h, plugin.c). */
#include <stdio.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "backend_plugin.h"
#include "cuda_info.h"

int cuda_device_info(int device, cuda_info *out)
{
    memset(out, 0, sizeof *out);
    out->built = 1;
    (void)cudaDriverGetVersion(&out->driver);
    (void)cudaRuntimeGetVersion(&out->runtime);
    cublasGetProperty(MAJOR_VERSION, &out->cublas[0]);
    cublasGetProperty(MINOR_VERSION, &out->cublas[1]);
    cublasGetProperty(PATCH_LEVEL, &out->cublas[2]);
    out->cudnn = (int)cudnnGetVersion();
    out->cudnn_built = CUDNN_VERSION;
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    if (f) {
        char line[256];
        /* "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04
           Release Build ...", or without "Open" and "for": the version is the
           first word after "Module" that starts with a digit and holds a dot */
        if (fgets(line, sizeof line, f)) {
            char *k = strstr(line, "Module");
            for (char *w = k ? strtok(k, " \t\n") : NULL; w; w = strtok(NULL, " \t\n"))
                if (w[0] >= '0' && w[0] <= '9' && strchr(w, '.')) {
                    snprintf(out->kernel_driver, sizeof out->kernel_driver, "%s", w);
                    break;
                }
        }
        fclose(f);
    }
    struct cudaDeviceProp p;
    cudaError_t r = cudaGetDeviceProperties(&p, device);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(out->error, sizeof out->error, "no CUDA device %d (%s)", device,
                 cudaGetErrorString(r));
        return 0;
    }
    out->present = 1;
    snprintf(out->name, sizeof out->name, "%s", p.name);
    out->cc_major = p.major;
    out->cc_minor = p.minor;
    out->sms = p.multiProcessorCount;
    out->mem_gib = (double)p.totalGlobalMem / (1 << 30);
    return 1;
}

#define CUDA_VER(v) (v) / 1000, (v) % 1000 / 10
#define DNN_VER(v) (v) / 10000, (v) % 10000 / 100, (v) % 100

ert_status cuda_info_line(int device, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return ERT_INVALID_ARGUMENT;
    cuda_info i;
    cuda_device_info(device, &i);
    char libs[256];
    snprintf(libs, sizeof libs,
             "driver %s (CUDA %d.%d), runtime %d.%d; cuDNN %d.%d.%d (built with %d.%d.%d); "
             "cuBLAS %d.%d.%d",
             i.kernel_driver[0] ? i.kernel_driver : "?", CUDA_VER(i.driver), CUDA_VER(i.runtime),
             DNN_VER(i.cudnn), DNN_VER(i.cudnn_built), i.cublas[0], i.cublas[1], i.cublas[2]);
    if (!i.present) {
        snprintf(buf, cap, "%s; %s", i.error, libs);
        return ERT_NO_DEVICE;
    }
    snprintf(buf, cap, "%s (sm_%d%d, %d SMs, %.1f GiB); %s", i.name, i.cc_major, i.cc_minor, i.sms,
             i.mem_gib, libs);
    return ERT_OK;
}

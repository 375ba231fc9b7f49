/* cuda_check.h - one macro family for CUDA, cuBLAS and cuDNN calls.
 *
 * CUDA_TRY(e, call), CUBLAS_TRY(e, call), CUDNN_TRY(e, call): when the call
 * fails, record "<call text> failed at file:line: <error string>" on engine e
 * with engine_fail(), store the status in the local `ert_status st`, and
 * `goto fail`. An allocation failure becomes ERT_OUT_OF_MEMORY, everything
 * else ERT_CUDA. The enclosing function needs `ert_status st` and a `fail:`
 * label that frees what it made (one cleanup path).
 *
 * KERNEL_TRY(e, call) is CUDA_TRY for the kernels.h entries: they return a
 * cudaError_t from cudaGetLastError() after the launch.
 */
#ifndef ERT_CUDA_CHECK_H
#define ERT_CUDA_CHECK_H

#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "engine_core.h"

/* The file's name without its directories: messages carry no build paths. */
static inline const char *ert_file_base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static inline int ert_cudnn_oom(cudnnStatus_t r)
{
    return r == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
           r == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED;
}

#define ERT_TRY_GEN_(e, type, ok, is_oom, to_string, call)                                       \
    do {                                                                                         \
        type r_ = (call);                                                                        \
        if (r_ != (ok)) {                                                                        \
            st = engine_fail((e), (is_oom) ? ERT_OUT_OF_MEMORY : ERT_CUDA,                       \
                             "%s failed at %s:%d: %s", #call, ert_file_base(__FILE__), __LINE__, \
                             to_string(r_));                                                     \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

/* Whether a failed CUDA call ran out of memory. Also clears the runtime's
 * last-error slot: a non-sticky error (a bad argument, an allocation
 * failure) must not be reported again by the next launch check. */
static inline int ert_cuda_oom(cudaError_t r)
{
    (void)cudaGetLastError();
    return r == cudaErrorMemoryAllocation;
}

#define CUDA_TRY(e, call) \
    ERT_TRY_GEN_(e, cudaError_t, cudaSuccess, ert_cuda_oom(r_), cudaGetErrorString, call)
#define KERNEL_TRY(e, call) CUDA_TRY(e, call)
#define CUBLAS_TRY(e, call)                                                                  \
    ERT_TRY_GEN_(e, cublasStatus_t, CUBLAS_STATUS_SUCCESS, r_ == CUBLAS_STATUS_ALLOC_FAILED, \
                 cublasGetStatusString, call)
#define CUDNN_TRY(e, call)                                                                       \
    ERT_TRY_GEN_(e, cudnnStatus_t, CUDNN_STATUS_SUCCESS, ert_cudnn_oom(r_), cudnnGetErrorString, \
                 call)

#endif /* ERT_CUDA_CHECK_H */

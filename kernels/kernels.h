/* kernels.h - the C entry points of the CUDA kernels (the kernels/ .cu files).
 *
 * Each entry checks its shapes, launches on the given stream and returns the
 * launch status (cudaErrorInvalidValue for a bad shape; it never launches on
 * the legacy default stream unless handed it). Nothing here synchronises.
 * Shapes: n rows (active samples), C channels, HW = H*W, K classes.
 */
#ifndef ERT_KERNELS_H
#define ERT_KERNELS_H

#include <stddef.h>
#include <cuda_runtime_api.h>

#include "exitrt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise.cu -------------------------------------------------------- */

/* The model's input normalisation, per channel c (C <= 4):
 * y = (x * scale - mean[c]) * inv_std[c], inv_std[c] = 1.0f / std[c]
 * computed on the host, each step rounded as the CPU backend's op_normalize
 * rounds it (no fused multiply-add). x [n, C, HW]; y may equal x. */
typedef struct ert_norm_params {
    float scale;
    float mean[4], inv_std[4];
} ert_norm_params;
cudaError_t ert_k_normalise(const float *x, float *y, int n, int C, int HW, ert_norm_params p,
                            cudaStream_t s);

/* idx[i] = base + i for i < n. */
cudaError_t ert_k_iota(int *idx, int n, int base, cudaStream_t s);

enum { ERT_ACT_NONE = 0, ERT_ACT_RELU = 1, ERT_ACT_SIGMOID = 2 };

/* y[r, c, p] = act(y[r, c, p] + bias[c]) in place; y [n, C, HW]; bias [C]
 * or NULL. ReLU keeps NaN (as PyTorch). */
cudaError_t ert_k_bias_act(float *y, const float *bias, int n, int C, int HW, int act,
                           cudaStream_t s);

/* y[i] = act(x[i]) for i < count; y may equal x. */
cudaError_t ert_k_act(const float *x, float *y, size_t count, int act, cudaStream_t s);

/* y[i] = act(a[i] + b[i]); y may equal a or b. */
cudaError_t ert_k_add(const float *a, const float *b, float *y, size_t count, int act,
                      cudaStream_t s);

/* y[r] = mean of x[r, 0..hw) for r < rows (rows = n*C). */
cudaError_t ert_k_global_avgpool(const float *x, float *y, int rows, int hw, cudaStream_t s);

/* ---- gather.cu --------------------------------------------------------------- */

/* dst[j, :] = src[src_row[j], :] for j < *d_count (read on the device), rows
 * of `row` floats. n_max bounds *d_count and sizes the grid, so the launch
 * needs no count on the host. 16-byte accesses when row % 4 == 0 and both
 * pointers are 16-byte aligned. src and dst must not overlap. */
cudaError_t ert_k_gather_rows(const float *src, float *dst, const int *src_row,
                              const int *d_count, int n_max, size_t row, cudaStream_t s);

/* ---- exit.cu ------------------------------------------------------------------ */

/* One exit over n active rows in their current order. */
typedef struct ert_exit_args {
    const float *logits;  /* [n, K] */
    const float *conf;    /* [n] confidence head output, or NULL */
    const int *orig;      /* [n] each row's original sample position */
    int n, K;
    int policy;           /* ert_policy_kind */
    float threshold;
    int exit_index;
    unsigned char *done;  /* decide: [n] rows already out (MASKED), or NULL */
    ert_sample *samples;  /* results at original positions */
    float *out_logits;    /* [batch, K] at original positions, or NULL */
    int *new_orig;        /* compact: [n] survivors' original positions */
    int *src_row;         /* compact: [n] survivors' rows in the current order */
    int *count;           /* compact: one int, the number of survivors */
} ert_exit_args;

/* Scores every row not yet done, and writes the rows that exit (sample and
 * logits at orig[i]); marks them in done when done is not NULL. No
 * compaction: for MASKED, FULL and the final head. */
cudaError_t ert_k_exit_decide(const ert_exit_args *a, cudaStream_t s);

/* The same decision, plus the stable compaction of the survivors in one
 * thread block: new_orig/src_row [0, *count) in their current order. */
cudaError_t ert_k_exit_compact(const ert_exit_args *a, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif /* ERT_KERNELS_H */

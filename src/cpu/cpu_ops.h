/* cpu_ops.h - the CPU layer ops: the reference semantics of every layer.
 *
 * Every op works on a batch of n rows (samples) in NCHW float32, row after
 * row, with no allocation: the caller passes every buffer. The CUDA backend
 * is tested against these functions.
 *
 * Shape letters: n rows, C channels, H/W spatial, Ho/Wo output spatial.
 * Unless an op says otherwise, `in` and `out` must not overlap.
 */
#ifndef ERT_CPU_OPS_H
#define ERT_CPU_OPS_H

#include <stddef.h>

#include "model.h"

/* Output size of a conv or pool along one axis (floor mode, as PyTorch). */
static inline int conv_out_dim(int in, int k, int stride, int pad, int dil)
{
    return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

/* ---- single ops ----------------------------------------------------------- */

/* Batch invariance: every GEMM runs with a shape that does not depend on n
 * (linear: tiles of a fixed number of rows, chosen per engine from its
 * max_batch; conv: chunks of conv_chunk_rows() samples, chosen per layer),
 * the last tile padded. OpenBLAS rounds a row the same wherever it sits
 * inside a call of one shape, but differently in calls of other shapes
 * (gemv for one row, other kernels for small problems), so a sample's
 * outputs are bit-identical whatever batch it runs in on one engine, and
 * MASKED, COMPACTED and refill agree exactly -- provided the BLAS kernels
 * round a row the same at every position inside a call. OpenBLAS's AVX-512
 * (SkylakeX) kernels do; its Haswell/Zen kernels do not (measured: with
 * OPENBLAS_CORETYPE=Haswell a row's result depends on its slot in the tile),
 * and there the modes agree to float rounding only.
 * ops_blas_batch_invariant() tells which, and the engine's note says it.
 *
 * The tile is a trade: each call packs the whole weight matrix, so small
 * tiles repack often (a 1024x1024 layer ran at 54% of the one-call GEMM's
 * speed with 32-row tiles, 72% with 64), while large tiles pad the few rows
 * that survive late exits. Measured on fmnist-mlp3 (bench/RESULTS.md):
 * 64-row tiles were fastest at batch 256 in every mode, 32-row tiles for
 * the early-exit modes at batch 64. */
#define GEMM_ROWS_MIN 16
#define GEMM_ROWS_MAX 64

/* 1 when the BLAS rounds a row the same at every position of a GEMM call of
 * one shape (probed on two small shapes, ~1 ms), so the backend is
 * batch-invariant; 0 when not, or when it cannot tell. */
int ops_blas_batch_invariant(void);

/* Linear tile rows for an engine of this max_batch: the largest power of
 * two in [GEMM_ROWS_MIN, GEMM_ROWS_MAX] that is at most max_batch / 2. */
int linear_tile_rows(int max_batch);
/* Most samples a batched conv chunk holds (the scratch is sized for it). */
#define CONV_CHUNK_MAX 16

/* Samples per batched conv GEMM for this layer (1: per sample). */
int conv_chunk_rows(const conv_params *p, shape3 in_s);
/* Scratch floats a batched conv needs per chunk row: im2col + one group's
 * output. */
size_t conv_chunk_row_floats(const conv_params *p, shape3 in_s);

/* Convolution as im2col + SGEMM, plus bias and (relu=1) a fused ReLU.
 *   in   [n, p->in_ch, in_s.h, in_s.w]
 *   out  [n, p->out_ch, Ho, Wo]   (Ho/Wo from conv_out_dim)
 *   col  scratch of col_cap floats: at least conv_col_floats(p, in_s, 1)
 *        (per-sample im2col). With batched=1 and conv_chunk_rows() > 1,
 *        rows run in chunks of conv_chunk_rows() samples (one im2col and one
 *        GEMM per group per chunk), which needs conv_chunk_rows() *
 *        conv_chunk_row_floats() floats; with less, per sample. The two
 *        agree to float rounding only: an engine always uses one of them.
 * A 1x1, stride-1, pad-0 conv skips im2col: the input already is the column
 * matrix. Groups run as one GEMM per group. */
void op_conv2d(const conv_params *p, shape3 in_s, const float *in, int n, float *out, int relu,
               float *col, size_t col_cap, int batched);

/* Floats of the im2col matrix for n samples of one group:
 * (in_ch/groups * kh * kw) * (n * Ho * Wo). 0 for a 1x1/stride-1/pad-0 conv. */
size_t conv_col_floats(const conv_params *p, shape3 in_s, int n);

/* Fully connected: out = in W^T + b, SGEMMs of exactly t rows.
 *   in    [n, p->in_features]   (any per-sample shape of in_features values)
 *   out   [n, p->out_features]
 *   tile  scratch of t * (in_features + out_features) floats for the padded
 *         last tile
 * relu=1 applies a fused ReLU. */
void op_linear(const linear_params *p, const float *in, int n, float *out, int relu, int t,
               float *tile);

/* Max pooling; padding is -inf (PyTorch requires pad <= k/2, so every window
 * holds at least one input element; one that held none would give -inf).
 *   in [n, C, H, W] -> out [n, C, Ho, Wo] */
void op_maxpool2d(const pool_params *p, shape3 in_s, const float *in, int n, float *out);

/* Average pooling; padded zeros count in the divisor (count_include_pad):
 * the divisor is the window clipped to the padded input, as in PyTorch,
 * which in floor mode is always kh*kw.
 *   in [n, C, H, W] -> out [n, C, Ho, Wo] */
void op_avgpool2d(const pool_params *p, shape3 in_s, const float *in, int n, float *out);

/* Mean over H*W: in [n, C, H, W] -> out [n, C]. */
void op_global_avgpool(shape3 in_s, const float *in, int n, float *out);

/* Elementwise over len = n * per-sample size floats; in == out allowed. */
void op_relu(const float *in, float *out, size_t len);
void op_sigmoid(const float *in, float *out, size_t len);

/* out = a + b, then ReLU when relu=1; out may equal a or b.
 *   a, b, out [len] */
void op_add(const float *a, const float *b, float *out, size_t len, int relu);

/* The model's input normalisation: out = (in * scale - mean[c]) / std[c].
 *   in, out [n, C, H, W]; mean, std [C]; in == out allowed. */
void op_normalize(shape3 s, const float *in, int n, float *out, float scale, const float *mean,
                  const float *std);

#endif /* ERT_CPU_OPS_H */

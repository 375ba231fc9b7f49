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
#include <stdint.h>
#include <cuda_runtime_api.h>

#include "act.h"
#include "exitrt.h"
#include "policy.h"

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
cudaError_t k_normalize(const float *x, float *y, int n, int C, int HW, ert_norm_params p,
                        cudaStream_t s);

/* idx[i] = base + i for i < n. */
cudaError_t k_iota(int *idx, int n, int base, cudaStream_t s);


/* y[r, c, p] = act(y[r, c, p] + bias[c]) in place; y [n, C, HW]; bias [C]
 * or NULL. act: any of act.h's (kernels/tx_math.h's ert_act_apply); ReLU
 * keeps NaN (as PyTorch). */
cudaError_t k_bias_act(float *y, const float *bias, int n, int C, int HW, int act, cudaStream_t s);

/* y[i] = act(x[i]) for i < count; y may equal x. */
cudaError_t k_act(const float *x, float *y, size_t count, int act, cudaStream_t s);

/* y[i] = act(a[i] + b[i]); y may equal a or b. */
cudaError_t k_add(const float *a, const float *b, float *y, size_t count, int act, cudaStream_t s);

/* y[r] = mean of x[r, 0..hw) for r < rows (rows = n*C). */
cudaError_t k_global_avgpool(const float *x, float *y, int rows, int hw, cudaStream_t s);

/* ---- gather.cu --------------------------------------------------------------- */

/* dst[j, :] = src[src_row[j], :] for j < *d_count (read on the device), rows
 * of `row` floats. n_max bounds *d_count and sizes the grid, so the launch
 * needs no count on the host. 16-byte accesses when row % 4 == 0 and both
 * pointers are 16-byte aligned. src and dst must not overlap. */
cudaError_t k_gather_rows(const float *src, float *dst, const int *src_row, const int *d_count,
                          int n_max, size_t row, cudaStream_t s);

/* ---- exit.cu ------------------------------------------------------------------ */

/* In a bucketed graph (src/cuda/graph.c): the SWITCH conditional node that
 * runs stage `stage`, and how a row count picks its body (bucket_math.h).
 * One thread calls cudaGraphSetConditional(handle, bucket) and records the
 * rows and bucket in stats[ERT_STATS_ROWS + stage], [ERT_STATS_BUCKET +
 * stage]. Only valid in a kernel launched from the graph that owns handle. */
typedef struct ert_switch_args {
    cudaGraphConditionalHandle handle;
    int on;    /* 0: no switch to set (every path but the graphs) */
    int stage; /* the stage whose bucket is chosen */
    int step, nbuckets, max_rows;
    int *stats; /* device [ERT_STATS_LEN] */
} ert_switch_args;

/* One exit over n active rows in their current order. */
typedef struct ert_exit_args {
    const float *logits; /* [n, K] */
    const float *conf;   /* [n] confidence head output, or NULL */
    const int *orig;     /* [n] each row's original sample position */
    int n, K;
    int policy; /* ert_policy_kind */
    float threshold;
    int exit_index;
    unsigned char *done;  /* decide: [n] rows already out (MASKED), or NULL */
    ert_patience *state;  /* each row's patience state (policy.h) at
                             state[orig[i]], updated with this exit by every
                             row scored; NULL at the final head (no later
                             exit reads it). Indexed by the original
                             position, so compaction never moves it. */
    ert_sample *samples;  /* results at original positions */
    float *out_logits;    /* [batch, K] at original positions, or NULL */
    int *new_orig;        /* compact: [n] survivors' original positions */
    int *src_row;         /* compact: [n] survivors' rows in the current order */
    int *count;           /* compact: one int, the number of survivors */
    float *out_scores;    /* outputs: [batch * num_exits] scores at (orig[i],
                             exit_index), or NULL */
    int32_t *out_classes; /* outputs: [batch * num_exits] classes, or NULL */
    int num_exits;        /* outputs: the row stride of out_scores / out_classes */
    /* bucketed graphs (NULL / off elsewhere): */
    const int *d_n;           /* the real row count on the device (<= n); rows
                             [*d_n, n) are bucket padding: never scored,
                             written or kept. n then bounds the launch. */
    const float *d_threshold; /* read instead of threshold: a captured graph
                                 sees later ert_engine_set_threshold calls */
    ert_switch_args sw;       /* compact: select the next stage's bucket */
} ert_exit_args;

/* Scores every row not yet done, and writes the rows that exit (sample and
 * logits at orig[i]); marks them in done when done is not NULL. No
 * compaction: for MASKED, FULL and the final head. */
cudaError_t k_exit_decide(const ert_exit_args *a, cudaStream_t s);

/* The same decision, plus the stable compaction of the survivors in one
 * thread block: new_orig/src_row [0, *count) in their current order. */
cudaError_t k_exit_compact(const ert_exit_args *a, cudaStream_t s);

/* No decision: every row's score and class (argmax of its logits) into
 * out_scores / out_classes[orig[i] * num_exits + exit_index] (either may be
 * NULL, not both), for ert_engine_exit_outputs. Writes no sample. */
cudaError_t k_exit_outputs(const ert_exit_args *a, cudaStream_t s);

/* ---- graph.cu ------------------------------------------------------------------ */

/* Before each launch of a bucketed graph, on the slot's stream: writes the
 * sub-batch's row count to *d_rows and thr[0..nthr) to d_thr, passed by
 * value (no pinned staging that a later call could overwrite before the
 * copy ran). nthr <= ERT_MAX_EXITS. */
cudaError_t k_graph_prep(int *d_rows, int rows, float *d_thr, const float *thr, int nthr,
                         cudaStream_t s);

/* The graph's first node: resets sw.stats (rows 0, bucket -1 for every
 * stage), then selects stage 0's bucket for *d_rows rows (sw.stage = 0).
 * With sw.on = 0 only the reset (a warm-up launch outside the graph, so the
 * kernel's module is loaded before any capture). */
cudaError_t k_graph_root(const int *d_rows, ert_switch_args sw, cudaStream_t s);

/* ---- transformer.cu ------------------------------------------------------------ */
/* Token rows (models/FORMAT.md, "Token activations"): T tokens of D
 * features, each followed by its mask value, T * (D + 1) floats per sample.
 * The math per value and per row is kernels/tx_math.h. */

/* Token ids to tokens: out[r, t, :D] = w[id] + seg + pos[t], out[r, t, D] =
 * 1 where the input's mask value is nonzero, else 0. in [n, 2T] (T ids,
 * then T mask values); out [n, T, D + 1]; w [vocab, D]; pos [T, D] and seg
 * [D] or NULL. An id that is not an integer in [0, vocab) gives NaN
 * features (never an out-of-bounds read). */
cudaError_t k_token_embed(const float *in, float *out, const float *w, const float *pos,
                          const float *seg, int n, int T, int D, int vocab, cudaStream_t s);

/* A patch convolution's output to tokens. conv [n, D, P] (P patches in
 * row-major order, without bias); out [n, T, D + 1], T = P + (cls != NULL):
 * token 0 is cls [D] when given, then conv[:, p] + bias[D] (bias may be
 * NULL); + pos [T, D] when given; every mask value 1. conv != out. */
cudaError_t k_patch_tokens(const float *conv, const float *bias, const float *cls, const float *pos,
                           float *out, int n, int P, int D, cudaStream_t s);

/* Layer norm of `rows` vectors of D values: tokens (tokens = 1: rows of
 * stride D + 1, the mask value copied) or plain vectors (stride D). add [D]
 * (or NULL) is added to each value first (a bias not yet applied). w, b
 * [D]. y may equal x. */
cudaError_t k_layer_norm(const float *x, const float *add, float *y, size_t rows, int D, int tokens,
                         float eps, const float *w, const float *b, cudaStream_t s);

/* Over `tokens` token rows of D + 1 floats: y[r, j] += bias[j] for j < D
 * (bias may be NULL), and with mask_src (same layout as y) y[r, D] =
 * mask_src[r, D]. Not both NULL. */
cudaError_t k_token_bias(float *y, const float *bias, const float *mask_src, size_t tokens, int D,
                         cudaStream_t s);

/* The input projection [n * T, 3D] (q, k, v columns; + bias [3D] or NULL)
 * split into q, k, v, each [n, H, T, d] (D = H * d). The value row of a
 * token whose mask value in x (the attention's input tokens [n, T, D + 1])
 * is 0 is written as zeros: a padded key has weight 0 and must not turn
 * the weighted sum NaN (models/FORMAT.md, "Token inputs"). */
cudaError_t k_qkv_split(const float *qkv, const float *bias, const float *x, float *q, float *k,
                        float *v, int n, int T, int H, int d, cudaStream_t s);

/* Softmax over the keys of scores [n, H, Tq, T] (Tq query rows of one
 * block, key columns) in place; key j of sample b is padded where the
 * tokens x [n, T, D + 1] have mask value 0 there (score -inf). A row with
 * every key padded: NaN. */
cudaError_t k_attn_softmax(float *scores, const float *x, int n, int H, int Tq, int T, int D,
                           cudaStream_t s);

/* The whole attention of q, k, v [n, H, T, d] into the heads' outputs o
 * [n, H, T, d] in one kernel, no score stored (tx_math.h, "fused
 * attention"): key j of sample b is padded where the tokens x [n, T, H d +
 * 1] have mask value 0 there; keys after a sample's last attended one are
 * not read; a row with every key padded is NaN. d <= ERT_ATTN_FUSED_MAX_D. */
cudaError_t k_attn_fused(const float *q, const float *k, const float *v, const float *x, float *o,
                         int n, int H, int T, int d, cudaStream_t s);

/* The heads' outputs [n, H, T, d] concatenated per token: ctx [n, T, H * d]. */
cudaError_t k_heads_merge(const float *ctx_h, float *ctx, int n, int T, int H, int d,
                          cudaStream_t s);

/* Tokens [n, T, D + 1] to vectors y [n, D]: token 0 (mean = 0) or the mean
 * over the tokens with mask value nonzero (NaN where there is none). */
cudaError_t k_token_pool(const float *x, float *y, int n, int T, int D, int mean, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif /* ERT_KERNELS_H */

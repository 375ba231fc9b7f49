/* exit.cu - exit decisions, results at original positions, stable compaction,
 * and in a bucketed graph the choice of the next stage's bucket.
 *
 * The policy math is policy.h's, the same functions the CPU backend calls, so
 * the two backends cannot drift (they can still differ by the last bits of
 * expf/logf and of the logits themselves). So is the patience state: each
 * row's word sits at its original position (a.state[orig[i]]), which the
 * compaction below carries along with the row (new_orig); nothing else
 * needs to move. */
#include "kernels.h"
#include "compact_math.h"
#include "switch.cuh"

#define CEIL_DIV(a, b) (((a) + (b)-1) / (b))

/* The rows to decide: n, or in a bucketed graph the real count the device
 * holds (the rows past it are bucket padding). */
static __device__ __forceinline__ int rows_of(const ert_exit_args &a)
{
    if (!a.d_n)
        return a.n;
    int n = *a.d_n;
    return n < a.n ? n : a.n;
}

static __device__ __forceinline__ float threshold_of(const ert_exit_args &a)
{
    return a.d_threshold ? *a.d_threshold : a.threshold;
}

/* Row i's score at this exit, its patience state (when kept) updated first:
 * policy.h's ert_exit_score, as the CPU backend calls it. */
static __device__ __forceinline__ float score_row(const ert_exit_args &a, int i, const float *z)
{
    float conf = a.conf ? a.conf[i] : 0.0f;
    ert_patience *st = a.state ? a.state + a.orig[i] : NULL;
    return ert_exit_score(a.policy, a.exit_index, z, a.K, conf, st);
}

/* Scores row i; when it exits, writes its sample and logits at orig[i].
 * Returns whether it exited. */
static __device__ int decide_row(const ert_exit_args &a, int i, float thr)
{
    const float *z = a.logits + (size_t)i * a.K;
    float score = score_row(a, i, z);
    if (!ert_policy_exits(a.policy, score, thr))
        return 0;
    int o = a.orig[i];
    ert_sample smp;
    smp.exit_index = a.exit_index;
    smp.predicted = ert_argmax(z, a.K);
    smp.score = score;
    a.samples[o] = smp;
    if (a.out_logits) {
        float *dst = a.out_logits + (size_t)o * a.K;
        for (int k = 0; k < a.K; k++)
            dst[k] = z[k];
    }
    return 1;
}

/* ---- decide: one thread per row, no compaction -------------------------------- */

static __global__ void exit_decide_kernel(ert_exit_args a)
{
    const int n = rows_of(a);
    const float thr = threshold_of(a);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        if (a.done && a.done[i])
            continue;
        if (decide_row(a, i, thr) && a.done)
            a.done[i] = 1;
    }
}

static cudaError_t launch_exit_decide(const ert_exit_args &a, cudaStream_t s)
{
    int block = 256;
    int grid = CEIL_DIV(a.n, block);
    exit_decide_kernel<<<grid, block, 0, s>>>(a);
    return cudaGetLastError();
}

extern "C" cudaError_t k_exit_decide(const ert_exit_args *a, cudaStream_t s)
{
    if (!a || a->n < 1 || a->K < 1 || !a->logits || !a->orig || !a->samples)
        return cudaErrorInvalidValue;
    if (a->policy == ERT_POLICY_CONFIDENCE_HEAD && !a->conf)
        return cudaErrorInvalidValue;
    if (a->sw.on) /* the last stage has no next bucket to choose */
        return cudaErrorInvalidValue;
    return launch_exit_decide(*a, s);
}

/* ---- compact: one block, ballot + popc + shared-memory warp scan -------------
 *
 * Tiles of blockDim.x rows in order; within a tile, warp w's survivors go
 * after those of warps < w, and within a warp in lane order, so the result is
 * the stable order ert_compact_index() defines. A single block makes the
 * count final when the kernel ends (no grid-wide sync, no second launch);
 * the price is one SM, fine for the few thousand rows of a batch. */
static __global__ void exit_compact_kernel(ert_exit_args a)
{
    __shared__ int warp_excl[1024 / ERT_WARP];
    __shared__ int tile_total;
    const int lane = threadIdx.x % ERT_WARP;
    const int warp = threadIdx.x / ERT_WARP;
    const int nwarps = blockDim.x / ERT_WARP;
    int base = 0; /* survivors of earlier tiles; the same in every thread */
    const int n = rows_of(a);
    const float thr = threshold_of(a);

    for (int tile = 0; tile < n; tile += blockDim.x) {
        int i = tile + threadIdx.x;
        int keep = i < n ? !decide_row(a, i, thr) : 0;
        unsigned ballot = __ballot_sync(0xffffffffu, keep);
        if (lane == 0)
            warp_excl[warp] = __popc(ballot);
        __syncthreads();
        if (warp == 0) {
            /* inclusive scan of the warp totals across lanes, then exclusive */
            int v = lane < nwarps ? warp_excl[lane] : 0;
            int incl = v;
            for (int d = 1; d < ERT_WARP; d <<= 1) {
                int t = __shfl_up_sync(0xffffffffu, incl, d);
                if (lane >= d)
                    incl += t;
            }
            if (lane < nwarps)
                warp_excl[lane] = incl - v;
            if (lane == ERT_WARP - 1)
                tile_total = incl;
        }
        __syncthreads();
        if (keep) {
            int slot = ert_warp_slot(base, warp_excl[warp], ballot, lane);
            a.new_orig[slot] = a.orig[i];
            a.src_row[slot] = i;
        }
        base += tile_total;
        /* warp_excl and tile_total are rewritten by the next tile */
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        *a.count = base;
        /* the count is final here (one block): in a bucketed graph, choose
           the next stage's body now, with no host in the loop */
        if (a.sw.on)
            ert_switch_select(a.sw, base);
    }
}

static cudaError_t launch_exit_compact(const ert_exit_args &a, cudaStream_t s)
{
    exit_compact_kernel<<<1, ert_compact_block(a.n), 0, s>>>(a);
    return cudaGetLastError();
}

extern "C" cudaError_t k_exit_compact(const ert_exit_args *a, cudaStream_t s)
{
    if (!a || a->n < 1 || a->K < 1 || !a->logits || !a->orig || !a->samples || !a->new_orig ||
        !a->src_row || !a->count || a->done)
        return cudaErrorInvalidValue;
    if (a->sw.on && (!a->sw.stats || a->sw.stage < 1 || a->sw.stage >= ERT_MAX_EXITS ||
                     a->sw.step < 1 || a->sw.nbuckets < 1))
        return cudaErrorInvalidValue;
    if (a->policy == ERT_POLICY_CONFIDENCE_HEAD && !a->conf)
        return cudaErrorInvalidValue;
    return launch_exit_compact(*a, s);
}

/* ---- outputs: one thread per row, every row scored, nothing decided ------------ */

static __global__ void exit_outputs_kernel(ert_exit_args a)
{
    const int n = rows_of(a);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float *z = a.logits + (size_t)i * a.K;
        const size_t at = (size_t)a.orig[i] * a.num_exits + a.exit_index;
        float score = score_row(a, i, z); /* always: it moves the patience state on */
        if (a.out_scores)
            a.out_scores[at] = score;
        if (a.out_classes)
            a.out_classes[at] = ert_argmax(z, a.K);
    }
}

extern "C" cudaError_t k_exit_outputs(const ert_exit_args *a, cudaStream_t s)
{
    if (!a || a->n < 1 || a->K < 1 || !a->logits || !a->orig ||
        (!a->out_scores && !a->out_classes) || a->num_exits < 1 || a->exit_index < 0 ||
        a->exit_index >= a->num_exits)
        return cudaErrorInvalidValue;
    if (a->policy == ERT_POLICY_CONFIDENCE_HEAD && !a->conf)
        return cudaErrorInvalidValue;
    int block = 256;
    exit_outputs_kernel<<<CEIL_DIV(a->n, block), block, 0, s>>>(*a);
    return cudaGetLastError();
}

/* graph.cu - the small kernels around a bucketed graph (src/cuda/graph.c):
 * the per-launch parameters, and the graph's root that picks stage 0's
 * bucket. The stages after an exit get theirs from the exit kernel
 * (kernels/exit.cu), which knows the survivors' count first. */
#include "kernels.h"
#include "switch.cuh"

/* by value: a launch's own copy, whatever the host does next */
typedef struct graph_params {
    int rows, nthr;
    float thr[ERT_MAX_EXITS];
} graph_params;

static __global__ void graph_prep_kernel(int *d_rows, float *d_thr, graph_params p)
{
    int i = threadIdx.x;
    if (i == 0)
        *d_rows = p.rows;
    if (i < p.nthr)
        d_thr[i] = p.thr[i];
}

extern "C" cudaError_t k_graph_prep(int *d_rows, int rows, float *d_thr, const float *thr, int nthr,
                                    cudaStream_t s)
{
    if (!d_rows || rows < 0 || nthr < 0 || nthr > ERT_MAX_EXITS || (nthr > 0 && (!d_thr || !thr)))
        return cudaErrorInvalidValue;
    graph_params p;
    p.rows = rows;
    p.nthr = nthr;
    for (int i = 0; i < ERT_MAX_EXITS; i++)
        p.thr[i] = i < nthr ? thr[i] : 0.0f;
    graph_prep_kernel<<<1, ERT_MAX_EXITS, 0, s>>>(d_rows, d_thr, p);
    return cudaGetLastError();
}

/* One thread: the counters of the previous launch must not survive into
 * this one (a stage this launch does not reach keeps rows 0, bucket -1). */
static __global__ void graph_root_kernel(const int *d_rows, ert_switch_args sw)
{
    if (threadIdx.x != 0)
        return;
    for (int s = 0; s < ERT_MAX_EXITS; s++) {
        sw.stats[ERT_STATS_ROWS + s] = 0;
        sw.stats[ERT_STATS_BUCKET + s] = -1;
    }
    if (!sw.on) /* a warm-up launch outside any graph: no switch to set */
        return;
    int n = *d_rows;
    ert_switch_select(sw, n < sw.max_rows ? n : sw.max_rows);
}

extern "C" cudaError_t k_graph_root(const int *d_rows, ert_switch_args sw, cudaStream_t s)
{
    if (!d_rows || !sw.stats)
        return cudaErrorInvalidValue;
    if (sw.on && (sw.stage != 0 || sw.step < 1 || sw.nbuckets < 1 || sw.max_rows < 1))
        return cudaErrorInvalidValue;
    graph_root_kernel<<<1, 32, 0, s>>>(d_rows, sw);
    return cudaGetLastError();
}

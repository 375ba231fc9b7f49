/* switch.cuh - the device side of a bucketed graph's SWITCH nodes, shared by
 * kernels/graph.cu (stage 0) and kernels/exit.cu (the stages after an exit).
 * A header of static __device__ functions: no relocatable device code. */
#ifndef ERT_SWITCH_CUH
#define ERT_SWITCH_CUH

#include "bucket_math.h"
#include "kernels.h"

/* Call from ONE thread (concurrent cudaGraphSetConditional calls are
 * undefined): n rows enter stage sw.stage; run the smallest bucket holding
 * them, or no body at all when n == 0 (value nbuckets >= the switch's
 * size). Records the choice for the host. */
static __device__ __forceinline__ void ert_switch_select(const ert_switch_args &sw, int n)
{
    int b = ert_bucket_of(n, sw.step, sw.nbuckets);
    cudaGraphSetConditional(sw.handle, (unsigned)b);
    sw.stats[ERT_STATS_ROWS + sw.stage] = n > 0 ? n : 0;
    sw.stats[ERT_STATS_BUCKET + sw.stage] = n > 0 ? b : -1;
}

#endif /* ERT_SWITCH_CUH */

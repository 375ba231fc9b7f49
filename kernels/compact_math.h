/* compact_math.h - the index math of the single-block stable compaction.
 *
 * The exit kernel (kernels/exit.cu) compacts the surviving rows of one exit
 * in one thread block: rows are taken in tiles of blockDim.x; in each tile a
 * warp's survivors are found with __ballot_sync, a row's place inside its
 * warp is the popcount of the ballot bits below its lane, the warps' totals
 * are scanned in shared memory, and a running base carries the survivors of
 * earlier tiles. These helpers are that arithmetic, written once so the host
 * test (tests/unit/test_kernels_host.c) can replay the whole block on the CPU
 * and check it against ert_compact_index() from policy.h.
 */
#ifndef ERT_COMPACT_MATH_H
#define ERT_COMPACT_MATH_H

#include "policy.h"

#define ERT_WARP 32

/* Bits of the lanes below `lane` (0..31). lane 0 gives 0; written without
 * 1u << 32, which is undefined in C. */
static inline ERT_HD unsigned ert_lanemask_lt(int lane)
{
    return lane ? (0xffffffffu >> (ERT_WARP - lane)) : 0u;
}

static inline ERT_HD int ert_popc(unsigned x)
{
#ifdef __CUDA_ARCH__
    return __popc(x);
#else
    return __builtin_popcount(x);
#endif
}

/* The new position of a surviving row: the survivors of earlier tiles
 * (base), of earlier warps in this tile (warp_excl, the exclusive scan of the
 * warps' popcounts), and of earlier lanes in this warp. Equals
 * ert_survivor_slot(survivors before the row, 0). */
static inline ERT_HD int ert_warp_slot(int base, int warp_excl, unsigned ballot, int lane)
{
    return base + warp_excl + ert_popc(ballot & ert_lanemask_lt(lane));
}

/* The block size used for n rows: n rounded up to whole warps, at most
 * 1024. At least one warp. */
static inline ERT_HD int ert_compact_block(int n)
{
    int b = (n + ERT_WARP - 1) / ERT_WARP * ERT_WARP;
    if (b < ERT_WARP)
        b = ERT_WARP;
    return b > 1024 ? 1024 : b;
}

#endif /* ERT_COMPACT_MATH_H */

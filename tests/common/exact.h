/* exact.h - which engines the tests require to agree bit for bit, stated
 * here rather than read from the engine.
 *
 * A CPU engine's modes (MASKED and COMPACTED on the rows they share, FULL's
 * final head), its refill stages and a stream on it agree bit for bit when
 * every product rounds a row alike wherever the row sits in a call
 * (docs/ARCHITECTURE.md, "Batch invariance"). Whether the libraries do is a
 * property of the library and the kernels it picks for this CPU, measured
 * and written down below; the engine probes the same property at creation
 * (e->exact_modes, its note). These functions return the tests' expectation
 * and fail the calling test when the engine's probe disagrees with a stated
 * one, so lost exactness fails a test instead of loosening it.
 *
 *   OpenBLAS path: exact with its AVX-512 kernels (core SkylakeX,
 *     Cooperlake or SapphireRapids); not with its Haswell or Zen kernels
 *     (a row's result depends on its slot in the tile; measured with
 *     OPENBLAS_CORETYPE=Haswell).
 *   oneDNN path: exact when oneDNN runs AVX-512 kernels (effective ISA
 *     avx512_core or above). Its AVX2 kernels round rows by their place for
 *     some models and not others (measured with ONEDNN_MAX_CPU_ISA=AVX2):
 *     not stated.
 *   CUDA: never (cuDNN and cuBLAS pick kernels by the call's row count).
 *
 * Any other combination is not stated: the expectation is 0 (compare to
 * float rounding) and the probe is not checked. */
#ifndef ERT_TEST_EXACT_H
#define ERT_TEST_EXACT_H

#include "exitrt.h"

/* 1 when the tests require the BLAS to round a row alike at every position
 * of a GEMM call of one shape (ops_blas_batch_invariant must then say 1,
 * and 0 where the table says the BLAS does not). */
int exact_blas(void);

/* 1 when the tests require engine e's modes, refill stages and streams to
 * agree bit for bit; checks e->exact_modes against a stated expectation. */
int exact_engine(const ert_engine *e);

#endif /* ERT_TEST_EXACT_H */

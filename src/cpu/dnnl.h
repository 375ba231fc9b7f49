/* dnnl.h - the CPU backend's oneDNN path: the engine's program (program.h)
 * as oneDNN primitives.
 *
 * Every primitive is created once, at engine creation, for a fixed tile of
 * `tile` rows, with the layouts oneDNN prefers (blocked, nChw16c on AVX-512
 * machines, or channels-last where blocking would pad the channels); the
 * weights are reordered into the primitive's layout once. A call runs the
 * ops of a range one after the other, each over all its whole tiles, then
 * the rows left as the op's plan says: smaller tiles of the same op (every
 * power of two below its tile, same layouts and weights, each checked at
 * creation to give a row bit for bit what the whole tile gives it) and at
 * most one padded tile (dnnl_tiles.c). So a row's result does not depend on
 * how many rows the call has (batch invariance, ops.h), only -- possibly --
 * on its place inside a tile, which dx_create probes.
 *
 * Layouts keep the batch outermost: in nchw, nhwc and nChw16c alike a
 * sample's activations are one contiguous row, so the backend's compaction
 * (copying surviving rows) and the refill stream's queues work on rows of
 * dx_row() floats whatever the layout. Logits and confidence outputs are
 * plain [n, K] and [n, 1] rows; stage outputs are never padded, so a row is
 * the plan's per-sample size.
 *
 * Nothing is allocated per call: the program's buffers (for one block of
 * rows), the stage rows, weights and one scratchpad are made at creation.
 */
#ifndef ERT_CPU_DNNL_H
#define ERT_CPU_DNNL_H

#include <stddef.h>

#include "engine_core.h"
#include "program.h"

typedef struct dnnl_exec dnnl_exec;

/* Creates the primitives of prog (compiled with program_opts.fuse_residual)
 * for tiles of tile_linear rows (linear layers) and tile_conv rows (every
 * other op), both powers of two or max_batch, and buffers for max_batch
 * rows. threads: the
 * OpenMP threads to create them for (0: the default). On failure returns
 * ERT_UNSUPPORTED (a primitive oneDNN cannot make: the reason in why) or
 * ERT_OUT_OF_MEMORY. */
ert_status dx_create(const ert_model *m, const plan *p, const program *prog, int max_batch,
                     int tile_conv, int tile_linear, int threads, dnnl_exec **out, char *why,
                     size_t cap);
void dx_free(dnnl_exec *x);

/* Stage s on n rows (n <= max_batch): in [n, stage in] rows (plain, the
 * plan's size) through the backbone into out [n, stage out]; with heads,
 * also the exit's heads, whose logits [n, K] and confidence outputs [n]
 * dx_logits() and dx_conf() then hold. The rows run in blocks, each through
 * all the ops before the next (its activations stay in the cache); in and
 * out may be dx_io() arrays but not the same one. ERT_INTERNAL (reason in
 * why) if oneDNN fails. */
ert_status dx_stage(dnnl_exec *x, int s, int n, int heads, const float *in, float *out, char *why,
                    size_t cap);

/* Two arrays of max_batch rows of the largest stage input or output, for
 * the caller's stage inputs and outputs (ping-pong). */
float *dx_io(const dnnl_exec *x, int k);
const float *dx_logits(const dnnl_exec *x);
/* NULL when stage s's exit has no confidence head. */
const float *dx_conf(const dnnl_exec *x, int s);

/* 1 when a row's outputs do not depend on its place in a tile (probed at
 * creation on the first stage), so the modes agree bit for bit. */
int dx_batch_invariant(const dnnl_exec *x);

/* What runs where, for the engine's note ("oneDNN 2.6.3: 21 convs (3
 * residual joins fused), ... in nChw16c"). */
const char *dx_describe(const dnnl_exec *x);

/* Sets OpenMP's thread count for this thread's oneDNN calls (threads > 0). */
void dx_set_threads(int threads);

/* Test hook: non-zero makes dx_create fail as if a primitive were
 * unsupported, so the engine's fallback to the BLAS path can be tested. */
extern int ert_cpu_test_dnnl_fail;

#endif /* ERT_CPU_DNNL_H */

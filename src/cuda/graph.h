/* graph.h - COMPACTED mode with no host wait: size-bucketed CUDA graphs
 * whose branches the device chooses.
 *
 * One graph per slot (a graph holding conditional nodes has one
 * instantiation at a time, so each batch in flight needs its own), built at
 * engine creation when cfg.mode is COMPACTED and cfg.graph_buckets > 0:
 *
 *   root kernel --> SWITCH 0 --> SWITCH 1 --> ... --> SWITCH E-1   (top level)
 *
 *   root kernel  resets the counters, reads the sub-batch's rows, sets
 *                switch 0 to the smallest bucket holding them
 *   SWITCH s     nbuckets bodies; body b runs stage s for bucket b's rows:
 *                [s = 0: normalise, row ids] backbone ops, head ops, then
 *                s < E-1: the exit kernel with compaction, which sets
 *                switch s+1 from the survivors' count (0: a value past the
 *                bodies, so switch s+1 runs nothing), and the gather;
 *                s = E-1: the final exit kernel
 *
 * The switches are chained at the top level rather than nested (a switch
 * inside each body): nested, stage s would need nbuckets^s bodies; chained,
 * E * nbuckets. The handle of switch s+1 belongs to the top-level graph and
 * is set from a kernel inside a body of switch s: the CUDA 13.0 headers ask
 * only that the handle be created on the graph holding its node and that
 * the setting kernel run in the same context (cuda_device_runtime_api.h,
 * cudaGraphConditionalHandleCreate). Each handle is created with the
 * default "none" (nbuckets) and cudaGraphCondAssignDefault, so a switch
 * whose predecessor ran no body runs none either.
 *
 * Bodies are filled by stream capture into them
 * (cudaStreamBeginCaptureToGraph on the slot's stream, whose cuBLAS and
 * cuDNN handles are bound to it): the same op_run calls as the wait-based
 * path, at the bucket's row count, with the slot's fixed workspaces
 * (cublasSetWorkspace, one cuDNN workspace). Before capture every body is
 * run once eagerly with a real count of 0, so no library or module
 * initialises lazily inside a capture; after capture each body is checked
 * to hold only node types a conditional body may hold.
 *
 * If any step fails (a call that cannot be captured, a node type a body
 * may not hold, instantiation), everything made here is freed, the engine
 * keeps the wait-based path, and e->note says "graphs: off: <reason>".
 * Test hook (the library reads no environment): ert_cuda_test_graph_fault =
 * "host-node" captures a host function into the first body (a node no body
 * may hold), and "instantiate" fails before instantiation, to exercise that
 * fallback.
 */
#ifndef ERT_CUDA_GRAPH_H
#define ERT_CUDA_GRAPH_H

#include "cuda_internal.h"

typedef struct graph_state graph_state;

/* The test hook above; NULL (the default): no fault. */
extern const char *ert_cuda_test_graph_fault;

/* Builds the bucketed graphs when the engine asks for them (COMPACTED,
 * cfg.graph_buckets > 0, at least one early exit), and sets e->note.
 * Returns ERT_OK when the engine can run, with c->graphs set (graphs on) or
 * NULL (wait-based, the note says why). An error status only when the
 * device itself failed (a sticky CUDA error): the engine is then unusable. */
ert_status graph_setup(ert_engine *e, cuda_ctx *c);

/* Frees c->graphs (NULL accepted) after its slots' streams are idle. */
void graph_free(cuda_ctx *c);

/* Enqueues call k through the graphs: per sub-batch (cut as
 * cuda_job_span cuts them; *njobs of them) the input copy, the graph and
 * the results' copies to where k wants them (host staging or the caller's
 * device arrays). The caller synchronises or orders after the slots'
 * streams, as for the wait-based path. */
ert_status graph_run(ert_engine *e, cuda_ctx *c, const cuda_call *k, int batch, int *njobs);

/* After the slots' streams of a graph_run finished: out->macs_executed,
 * macs_padding, padding_rows, bucket and host_waits (0) from the counters
 * the graphs wrote. */
void graph_figures(const cuda_ctx *c, int nj, ert_result *out);

#endif /* ERT_CUDA_GRAPH_H */

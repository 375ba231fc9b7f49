/* engine_core.h - the engine as the backends and the stream see it: the
 * backend interface, the engine struct, failure messages and the busy flag.
 *
 * Layering: engine.c (the public API, which picks a backend) and stream.c
 * sit above the backends; the backends and stream.c include this header and
 * call engine_core.c, never engine.c.
 *
 * A backend is a table of function pointers plus a context. engine.c
 * validates every argument before calling a backend, so a backend may assume
 * 1 <= batch <= cfg.max_batch and non-NULL pointers where the API requires
 * them. A backend reports failures by returning a status after writing the
 * message with engine_fail().
 */
#ifndef ERT_ENGINE_CORE_H
#define ERT_ENGINE_CORE_H

#include <stdatomic.h>

#include "exitrt.h"
#include "model.h"
#include "plan.h"
#include "policy.h"

typedef struct backend_ops {
    const char *name;
    ert_backend kind;
    /* Allocates everything the engine needs for e->cfg.max_batch; sets *ctx. */
    ert_status (*create)(ert_engine *e, void **ctx);
    void (*destroy)(void *ctx);
    /* Runs a host batch in e->cfg.mode with e->thresholds. Fills
     * out->samples, out->logits (when not NULL), out->macs_executed and
     * out->host_waits, and (bucketed graphs only) out->padding_rows,
     * out->bucket and out->macs_padding, which engine.c sets to 0 / -1 / 0
     * before the call. engine.c fills the rest. */
    ert_status (*infer)(ert_engine *e, const float *input, int batch, ert_result *out);
    /* Optional (NULL: unsupported): every exit's score and class for every
     * row, scores[row * num_exits + exit] and classes[...] (either may be
     * NULL, not both), computing every head whatever e->cfg.mode (MASKED
     * work, no decisions). ert_engine_exit_outputs and ert_engine_scores. */
    ert_status (*exit_outputs)(ert_engine *e, const float *input, int batch, float *scores,
                               int32_t *classes);
    /* Optional (NULL: unsupported). */
    ert_status (*infer_device)(ert_engine *e, const void *d_input, int batch,
                               ert_device_result *out, void *stream);
    /* Optional (NULL: no streams). One stage of the refill stream
     * (src/stream.c) on n rows, 1 <= n <= cfg.max_batch, host memory:
     *   in      [n, plan.stages[stage].in]: stage 0 raw input rows
     *           (normalised inside), later stages the previous stage's
     *           output as this op wrote it; read only
     *   out     [n, plan.stages[stage].out]: the survivors' stage output,
     *           compacted: survivor j (in row order) at row j. Not written
     *           for the last stage (everyone exits there)
     *   res     [n] and logits [n, K]: written at row i for each exiting row
     *   exited  [n]: 1 for a row that left at exit `stage`, else 0
     *   state   [n]: each row's patience state (policy.h) after the exits
     *           before this stage (not read at stage 0), updated in place
     *           with this stage's exit (row i stays at i; the final head
     *           leaves it alone). The stream keeps it beside the row.
     *   macs    incremented by the multiply-accumulates run
     * The exit decision is policy.h's with e->thresholds[stage]; in
     * ERT_MODE_FULL only the last stage has a head (nobody leaves earlier).
     * A row's results must not depend on the other rows of the call, so
     * the stream equals MASKED on the same engine. No allocation per call. */
    ert_status (*run_stage)(ert_engine *e, int stage, const float *in, int n, float *out,
                            ert_sample *res, float *logits, unsigned char *exited,
                            ert_patience *state, uint64_t *macs);
} backend_ops;

struct ert_engine {
    ert_model *model;
    plan plan;
    ert_engine_config cfg;
    ert_backend backend; /* never AUTO */
    const backend_ops *ops;
    void *ctx; /* the backend's */
    float thresholds[ERT_MAX_EXITS];
    char err[ERT_ERROR_LEN];
    atomic_int busy;
    char note[ERT_ERROR_LEN]; /* ert_engine_note(); the backend sets it at create */
    int exact_modes;          /* MASKED, COMPACTED and refill agree bit for bit
                                 (the backend sets it at create; the note says so) */
    float *token_rows;        /* token models: max_batch input rows for ert_infer_tokens */
};

/* Records a printf-style message on the engine and returns status. Only
 * the call that holds the engine (engine_enter) may write its message. */
ert_status engine_fail(ert_engine *e, ert_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Claims the engine for one call (ert_infer, a stream call, ...): 1 when
 * claimed, 0 when another call holds it. A refused
 * caller returns ERT_BUSY and writes nothing on the engine, its message
 * included: that belongs to the call that holds it, on another thread.
 * So a public call enters before any check that could fail with a message. */
int engine_enter(ert_engine *e);
void engine_leave(ert_engine *e);

/* The backends' tables, picked by engine.c. */
extern const backend_ops cpu_backend_ops;
#ifdef ERT_HAVE_CUDA
extern const backend_ops cuda_backend_ops;
/* 1 when the CUDA runtime sees at least one device. */
int cuda_device_count(void);
#endif

#endif /* ERT_ENGINE_CORE_H */

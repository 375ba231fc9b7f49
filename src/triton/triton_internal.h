/* triton_internal.h - what the Triton backend's files share: the model's and
 * the instance's state, logging and errors, and the execute paths.
 *
 * triton_backend.c  the TRITONBACKEND_* entry points, metrics, counters
 * triton_util.c     logging, errors, the clock, counter increments
 * triton_execute.c  requests in and responses out; modes full, masked and
 *                   compacted (one ert_infer per execute)
 * triton_refill.c   mode refill: the stream, requests in flight, the flusher
 */
#ifndef ERT_TRITON_INTERNAL_H
#define ERT_TRITON_INTERNAL_H

#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <exitrt.h>

#include "config.h"
#include "triton_api.h"

typedef struct model_state {
    char name[256];
    ert_triton_config cfg;
    ert_model *model;
    int exit_index[ERT_MAX_EXITS]; /* per cfg threshold */
    int E, K;
    size_t per; /* floats per row */
} model_state;

/* refill: a request in flight. */
typedef struct pending {
    TRITONBACKEND_Request *req;
    int n, done;
    int want[ERT_TRITON_NUM_OUTPUTS];
    ert_sample *samples; /* [n] */
    float *logits;       /* [n * K] when LOGITS is wanted */
    uint64_t exec_start, compute_start;
} pending;

typedef struct instance_state {
    TRITONBACKEND_ModelInstance *inst;
    model_state *ms;
    char name[256];
    ert_engine *engine;
    float *in;           /* [max_batch * per] the batch's input */
    ert_sample *samples; /* [max_batch] */
    float *logits;       /* [max_batch * K] */
    /* counters over the instance's life */
    uint64_t requests, bad_requests, rows, batches;
    uint64_t exit_counts[ERT_MAX_EXITS], macs_executed, macs_full;
    TRITONSERVER_Metric *m_exit[ERT_MAX_EXITS], *m_macs_exec, *m_macs_full;
    /* refill */
    ert_stream *stream;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t flusher;
    int have_sync, have_thread, stop;
    pending *pend; /* [npend] */
    int *free_slots, nfree, npend;
    long rows_in_flight;
    uint64_t executes; /* refill: bumped by every execute (the flusher watches it) */
    ert_stream_result *res;
    float *res_logits;
    int res_cap;
    uint64_t *ids;
    ert_stream_stats last; /* the stream's counters when the metrics were last updated */
} instance_state;

typedef struct member {
    TRITONBACKEND_Request *req;
    long off, n;
    int want[ERT_TRITON_NUM_OUTPUTS];
} member;

/* ---- helpers (triton_util.c) ---- */

void logf_(TRITONSERVER_LogLevel level, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define LOG_INFO(...) logf_(TRITONSERVER_LOG_INFO, __LINE__, __VA_ARGS__)
#define LOG_WARN(...) logf_(TRITONSERVER_LOG_WARN, __LINE__, __VA_ARGS__)
#define LOG_ERROR(...) logf_(TRITONSERVER_LOG_ERROR, __LINE__, __VA_ARGS__)
TRITONSERVER_Error *errf(TRITONSERVER_Error_Code code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Logs and drops an error a call returned (where nothing better can be done). */
void log_drop(TRITONSERVER_Error *e, const char *what);
/* ns of the monotonic clock (what steady_clock reads on Linux). */
uint64_t triton_now_ns(void);
/* Adds v to a counter (NULL: metrics off). */
void metric_add(TRITONSERVER_Metric *m, double v);

/* ---- requests and the batch modes (triton_execute.c) ---- */

/* Reads a request's input (gathering its buffers into dst, room for
 * max_batch rows) and which outputs it asks for. Returns its rows, or -1
 * with the reason in *fail (the caller owns it). rows_out only is filled
 * when dst is NULL (to size the batch first). */
long read_request(instance_state *is, TRITONBACKEND_Request *req, float *dst,
                  int want[ERT_TRITON_NUM_OUTPUTS], TRITONSERVER_Error **fail);

/* Creates and sends the response of req: the wanted outputs of n samples,
 * or the error fail (which stays the caller's). Returns whether a
 * successful response went out. */
int respond(instance_state *is, TRITONBACKEND_Request *req, const int *want, const ert_sample *s,
            const float *logits, long n, TRITONSERVER_Error *fail);

/* Statistics and release: the end of the backend's ownership of req. */
void finish(instance_state *is, TRITONBACKEND_Request *req, int ok, uint64_t t0, uint64_t t1,
            uint64_t t2, uint64_t t3);

/* A request that cannot run: error response, failure statistics, release. */
void reject(instance_state *is, TRITONBACKEND_Request *req, TRITONSERVER_Error *why);

void execute_batch(instance_state *is, TRITONBACKEND_Request **requests, uint32_t count);

/* ---- refill (triton_refill.c) ---- */

/* Moves finished rows to their requests (flushing first when asked), until
 * nothing more is finished; completes the requests whose last row came.
 * Called with the mutex held. */
void refill_drain(instance_state *is, int flush);

/* Flushes the stream once rows have been in flight refill_deadline_ms with
 * no execute in between (executes run partial batches past the deadline
 * themselves, through the stream's own deadline). */
void *flusher_main(void *arg);

void execute_refill(instance_state *is, TRITONBACKEND_Request **requests, uint32_t count);

#endif /* ERT_TRITON_INTERNAL_H */

/* triton_refill.c - mode refill: each request's rows through the
 * instance's ert_stream, its response once its last row finished, and the
 * flusher thread (triton_internal.h; the scheme is in triton_backend.c's
 * header comment). */
#include <errno.h>
#include <time.h>

#include "triton_internal.h"

/* ---- execute: refill --------------------------------------------------------------------- */

static void pending_free(instance_state *is, int slot)
{
    pending *p = &is->pend[slot];
    free(p->samples);
    free(p->logits);
    memset(p, 0, sizeof *p);
    is->free_slots[is->nfree++] = slot;
}

/* The last row of slot's request finished: respond, report, release. */
static void pending_complete(instance_state *is, int slot, TRITONSERVER_Error *fail)
{
    pending *p = &is->pend[slot];
    uint64_t ce = triton_now_ns();
    int ok = respond(is, p->req, p->want, p->samples, p->logits, p->n, fail);
    uint64_t ee = triton_now_ns();
    finish(is, p->req, ok, p->exec_start, p->compute_start ? p->compute_start : p->exec_start, ce,
           ee);
    pending_free(is, slot);
}

/* The stream failed: every request in flight gets an error, and a new
 * stream replaces the old one (whose queues still hold their rows). */
static void refill_reset(instance_state *is, const char *why)
{
    LOG_ERROR("exitrt: instance %s: refill stream failed: %s; failing %ld rows in flight and "
              "starting a new stream",
              is->name, why, is->rows_in_flight);
    TRITONSERVER_Error *fail =
        errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: inference failed: %s", why);
    for (int i = 0; i < is->npend; i++)
        if (is->pend[i].req)
            pending_complete(is, i, fail);
    TRITONSERVER_ErrorDelete(fail);
    is->rows_in_flight = 0;
    ert_stream_stats ss = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(is->stream, &ss);
    ert_stream_config sc = ert_stream_config_default();
    sc.batch = ss.batch;
    sc.queue = ss.queue;
    sc.deadline_ms = is->ms->cfg.refill_deadline_ms;
    /* keep the counters of the failed stream */
    for (int x = 0; x < is->ms->E; x++)
        is->exit_counts[x] += ss.exit_counts[x];
    is->macs_executed += ss.macs_executed;
    is->macs_full += ss.macs_full;
    ert_stream_free(is->stream);
    is->stream = NULL;
    ert_error err = {{0}};
    if (ert_stream_create(is->engine, &sc, &is->stream, &err) != ERT_OK)
        LOG_ERROR("exitrt: instance %s: cannot create a new refill stream: %s", is->name, err.msg);
    else {
        is->last = (ert_stream_stats)ERT_STREAM_STATS_INIT;
        (void)ert_stream_get_stats(is->stream, &is->last);
    }
}

/* Moves finished rows to their requests (flushing first when asked), until
 * nothing more is finished; completes the requests whose last row came.
 * Called with the mutex held. */
void refill_drain(instance_state *is, int flush)
{
    model_state *ms = is->ms;
    if (!is->stream)
        return;
    if (flush && ert_stream_flush(is->stream) != ERT_OK) {
        refill_reset(is, ert_stream_error(is->stream));
        return;
    }
    for (;;) {
        int got = 0;
        ert_status st = ert_stream_poll(is->stream, is->res, is->res_logits, is->res_cap, &got);
        for (int i = 0; i < got; i++) {
            uint64_t id = is->res[i].id;
            int slot = (int)(id >> 32), row = (int)(id & 0xffffffffu);
            pending *p = slot < is->npend ? &is->pend[slot] : NULL;
            if (!p || !p->req || row >= p->n) {
                LOG_ERROR("exitrt: instance %s: the stream returned unknown id %" PRIu64, is->name,
                          id);
                continue;
            }
            p->samples[row] = is->res[i].sample;
            if (p->logits)
                memcpy(p->logits + (size_t)row * (size_t)ms->K,
                       is->res_logits + (size_t)i * (size_t)ms->K, sizeof(float) * (size_t)ms->K);
            is->rows_in_flight--;
            if (++p->done == p->n)
                pending_complete(is, slot, NULL);
        }
        if (st != ERT_OK) {
            refill_reset(is, ert_stream_error(is->stream));
            return;
        }
        if (got == 0)
            break;
    }
    /* metrics: what the stream counted since the last update */
    ert_stream_stats ss = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(is->stream, &ss);
    for (int x = 0; x < ms->E; x++)
        metric_add(is->m_exit[x], (double)(ss.exit_counts[x] - is->last.exit_counts[x]));
    metric_add(is->m_macs_exec, (double)(ss.macs_executed - is->last.macs_executed));
    metric_add(is->m_macs_full, (double)(ss.macs_full - is->last.macs_full));
    is->last = ss;
}

/* Flushes the stream once rows have been in flight refill_deadline_ms with
 * no execute in between (executes run partial batches past the deadline
 * themselves, through the stream's own deadline). */
void *flusher_main(void *arg)
{
    instance_state *is = arg;
    uint64_t wait_ns = (uint64_t)(is->ms->cfg.refill_deadline_ms * 1e6);
    pthread_mutex_lock(&is->mu);
    while (!is->stop) {
        if (is->rows_in_flight <= 0) {
            pthread_cond_wait(&is->cv, &is->mu);
            continue;
        }
        uint64_t seen = is->executes;
        uint64_t t = triton_now_ns() + wait_ns;
        struct timespec ts = {.tv_sec = (time_t)(t / 1000000000ull),
                              .tv_nsec = (long)(t % 1000000000ull)};
        int rc = 0;
        while (!is->stop && rc != ETIMEDOUT && is->executes == seen)
            rc = pthread_cond_timedwait(&is->cv, &is->mu, &ts);
        if (!is->stop && is->executes == seen && is->rows_in_flight > 0)
            refill_drain(is, 1);
    }
    pthread_mutex_unlock(&is->mu);
    return NULL;
}

void execute_refill(instance_state *is, TRITONBACKEND_Request **requests, uint32_t count)
{
    model_state *ms = is->ms;
    uint64_t exec_start = triton_now_ns(), first_submit = 0;
    long rows = 0;
    pthread_mutex_lock(&is->mu);
    is->executes++;
    for (uint32_t r = 0; r < count; r++) {
        TRITONBACKEND_Request *req = requests[r];
        TRITONSERVER_Error *why = NULL;
        int want[ERT_TRITON_NUM_OUTPUTS];
        is->requests++;
        long n = read_request(is, req, is->in, want, &why);
        if (n >= 0 && !is->stream)
            why = errf(TRITONSERVER_ERROR_UNAVAILABLE, "exitrt: the refill stream is gone"), n = -1;
        if (n < 0) {
            reject(is, req, why);
            continue;
        }
        if (n == 0) { /* nothing to run: an empty response */
            uint64_t t = triton_now_ns();
            int ok = respond(is, req, want, NULL, NULL, 0, NULL);
            finish(is, req, ok, exec_start, t, t, t);
            continue;
        }
        if (is->nfree == 0) /* cannot happen (see npend); make room anyway */
            refill_drain(is, 1);
        int slot = is->free_slots[--is->nfree];
        pending *p = &is->pend[slot];
        p->req = req;
        p->n = (int)n;
        p->done = 0;
        memcpy(p->want, want, sizeof want);
        p->exec_start = exec_start;
        p->samples = malloc((size_t)n * sizeof *p->samples);
        p->logits =
            want[ERT_TRITON_LOGITS] ? malloc((size_t)n * (size_t)ms->K * sizeof(float)) : NULL;
        if (!p->samples || (want[ERT_TRITON_LOGITS] && !p->logits)) {
            pending_free(is, slot);
            reject(is, req, errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: out of memory"));
            continue;
        }
        for (long i = 0; i < n; i++)
            is->ids[i] = ((uint64_t)slot << 32) | (uint64_t)i;
        p->compute_start = triton_now_ns();
        if (!first_submit)
            first_submit = p->compute_start;
        ert_status st = ert_stream_submit(is->stream, is->in, (int)n, is->ids);
        if (st == ERT_QUEUE_FULL) { /* finish what is in flight, then retry */
            refill_drain(is, 1);
            st = is->stream ? ert_stream_submit(is->stream, is->in, (int)n, is->ids) : ERT_INTERNAL;
        }
        if (st != ERT_OK) {
            const char *m = is->stream ? ert_stream_error(is->stream) : "";
            pending_free(is, slot);
            reject(is, req,
                   errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: submit failed: %s",
                        m[0] ? m : ert_status_string(st)));
            continue;
        }
        is->rows_in_flight += n;
        rows += n;
    }
    uint64_t ce = triton_now_ns();
    refill_drain(is, 0);
    if (rows > 0)
        is->batches++;
    if (is->rows_in_flight > 0)
        pthread_cond_signal(&is->cv);
    pthread_mutex_unlock(&is->mu);
    uint64_t ee = triton_now_ns();
    if (rows > 0)
        log_drop(TRITONBACKEND_ModelInstanceReportBatchStatistics(is->inst, (uint64_t)rows,
                                                                  exec_start, first_submit, ce, ee),
                 "reporting batch statistics");
}

/* triton_execute.c - requests in, responses out, and modes full, masked
 * and compacted: the rows of one execute as one ert_infer batch
 * (triton_internal.h). */
#include "triton_internal.h"

/* ---- requests and responses ------------------------------------------------------------- */

/* Reads a request's input (gathering its buffers into dst, room for
 * max_batch rows) and which outputs it asks for. Returns its rows, or -1
 * with the reason in *fail (the caller owns it). rows_out only is filled
 * when dst is NULL (to size the batch first). */
long read_request(instance_state *is, TRITONBACKEND_Request *req, float *dst,
                  int want[ERT_TRITON_NUM_OUTPUTS], TRITONSERVER_Error **fail)
{
    const ert_triton_config *c = &is->ms->cfg;
    uint32_t count = 0;
    TRITONSERVER_Error *e;
    char why[512];
    if ((e = TRITONBACKEND_RequestInputCount(req, &count)))
        return *fail = e, -1;
    if (count != 1) {
        *fail = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: expected 1 input (%s), got %u",
                     c->input_name, count);
        return -1;
    }
    TRITONBACKEND_Input *in;
    const char *name;
    TRITONSERVER_DataType dt;
    const int64_t *shape;
    uint32_t nd, nbuf;
    uint64_t bytes;
    if ((e = TRITONBACKEND_RequestInputByIndex(req, 0, &in)) ||
        (e = TRITONBACKEND_InputProperties(in, &name, &dt, &shape, &nd, &bytes, &nbuf)))
        return *fail = e, -1;
    if (strcmp(name, c->input_name) != 0) {
        *fail = errf(TRITONSERVER_ERROR_INVALID_ARG,
                     "exitrt: unknown input '%s' (the model's "
                     "input is %s)",
                     name, c->input_name);
        return -1;
    }
    long rows = ert_triton_check_input(c, (int)dt, shape, nd, bytes, why, sizeof why);
    if (rows < 0) {
        *fail = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: %s", why);
        return -1;
    }
    uint32_t nout = 0;
    if ((e = TRITONBACKEND_RequestOutputCount(req, &nout)))
        return *fail = e, -1;
    memset(want, 0, sizeof(int) * ERT_TRITON_NUM_OUTPUTS);
    for (uint32_t i = 0; i < nout; i++) {
        const char *on;
        if ((e = TRITONBACKEND_RequestOutputName(req, i, &on)))
            return *fail = e, -1;
        int o = ert_triton_output_index(on);
        if (o < 0 || !c->has_output[o]) {
            *fail = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: unknown output '%s'", on);
            return -1;
        }
        want[o] = 1;
    }
    if (nout == 0)
        memcpy(want, c->has_output, sizeof(int) * ERT_TRITON_NUM_OUTPUTS);
    if (!dst)
        return rows;
    /* gather: the tensor may arrive in several buffers */
    uint64_t off = 0;
    for (uint32_t b = 0; b < nbuf; b++) {
        const void *buf;
        uint64_t sz;
        TRITONSERVER_MemoryType mt = TRITONSERVER_MEMORY_CPU;
        int64_t mid = 0;
        if ((e = TRITONBACKEND_InputBuffer(in, b, &buf, &sz, &mt, &mid)))
            return *fail = e, -1;
        if (mt == TRITONSERVER_MEMORY_GPU) {
            *fail = errf(TRITONSERVER_ERROR_UNSUPPORTED,
                         "exitrt: input %s is in GPU memory; "
                         "send it in CPU memory",
                         c->input_name);
            return -1;
        }
        if (sz > bytes - off) {
            *fail = errf(TRITONSERVER_ERROR_INVALID_ARG,
                         "exitrt: input %s: buffers hold more "
                         "than its %" PRIu64 " bytes",
                         c->input_name, bytes);
            return -1;
        }
        if (sz)
            memcpy((char *)dst + off, buf, (size_t)sz);
        off += sz;
    }
    if (off != bytes) {
        *fail = errf(TRITONSERVER_ERROR_INVALID_ARG,
                     "exitrt: input %s: buffers hold %" PRIu64 " of its %" PRIu64 " bytes",
                     c->input_name, off, bytes);
        return -1;
    }
    return rows;
}

/* Creates and sends the response of req: the wanted outputs of n samples,
 * or the error fail (which stays the caller's). Returns whether a
 * successful response went out. */
int respond(instance_state *is, TRITONBACKEND_Request *req, const int *want, const ert_sample *s,
            const float *logits, long n, TRITONSERVER_Error *fail)
{
    TRITONBACKEND_Response *resp = NULL;
    TRITONSERVER_Error *e = TRITONBACKEND_ResponseNew(&resp, req);
    if (e) {
        log_drop(e, "creating a response");
        return 0;
    }
    TRITONSERVER_Error *own = NULL; /* a failure while building the outputs */
    int K = is->ms->K;
    for (int o = 0; !fail && !own && o < ERT_TRITON_NUM_OUTPUTS; o++) {
        if (!want[o])
            continue;
        int64_t shape[2] = {n, o == ERT_TRITON_LOGITS ? K : 1};
        TRITONSERVER_DataType dt = o == ERT_TRITON_CLASS || o == ERT_TRITON_EXIT
                                       ? TRITONSERVER_TYPE_INT32
                                       : TRITONSERVER_TYPE_FP32;
        uint64_t bytes = (uint64_t)n * (uint64_t)shape[1] * 4u;
        TRITONBACKEND_Output *out;
        void *buf = NULL;
        TRITONSERVER_MemoryType mt = TRITONSERVER_MEMORY_CPU;
        int64_t mid = 0;
        if ((own = TRITONBACKEND_ResponseOutput(resp, &out, ert_triton_output_names[o], dt, shape,
                                                2)) ||
            (own = TRITONBACKEND_OutputBuffer(out, &buf, bytes, &mt, &mid)))
            break;
        if (mt == TRITONSERVER_MEMORY_GPU) {
            own = errf(TRITONSERVER_ERROR_UNSUPPORTED,
                       "exitrt: output %s: the server offers GPU "
                       "memory only",
                       ert_triton_output_names[o]);
            break;
        }
        if (!n)
            continue;
        if (o == ERT_TRITON_LOGITS) {
            memcpy(buf, logits, (size_t)bytes);
            continue;
        }
        for (long i = 0; i < n; i++) {
            if (o == ERT_TRITON_CLASS)
                ((int32_t *)buf)[i] = s[i].predicted;
            else if (o == ERT_TRITON_EXIT)
                ((int32_t *)buf)[i] = s[i].exit_index;
            else
                ((float *)buf)[i] = s[i].score;
        }
    }
    TRITONSERVER_Error *sent = fail ? fail : own;
    e = TRITONBACKEND_ResponseSend(resp, TRITONSERVER_RESPONSE_COMPLETE_FINAL, sent);
    if (e) {
        log_drop(e, "sending a response");
        TRITONBACKEND_ResponseDelete(resp);
    }
    if (own)
        TRITONSERVER_ErrorDelete(own);
    return !e && !sent;
}

/* Statistics and release: the end of the backend's ownership of req. */
void finish(instance_state *is, TRITONBACKEND_Request *req, int ok, uint64_t t0, uint64_t t1,
            uint64_t t2, uint64_t t3)
{
    log_drop(TRITONBACKEND_ModelInstanceReportStatistics(is->inst, req, ok, t0, t1, t2, t3),
             "reporting statistics");
    log_drop(TRITONBACKEND_RequestRelease(req, TRITONSERVER_REQUEST_RELEASE_ALL),
             "releasing a request");
}

/* A request that cannot run: error response, failure statistics, release. */
void reject(instance_state *is, TRITONBACKEND_Request *req, TRITONSERVER_Error *why)
{
    is->bad_requests++;
    respond(is, req, NULL, NULL, NULL, 0, why);
    TRITONSERVER_ErrorDelete(why);
    uint64_t t = triton_now_ns();
    finish(is, req, 0, t, t, t, t);
}

/* ---- execute: full, masked, compacted --------------------------------------------------- */


/* One ert_infer over the gathered rows of g[0 .. ng), then a response each. */
static void run_batch(instance_state *is, member *g, int ng, long rows, uint64_t exec_start)
{
    model_state *ms = is->ms;
    int any_logits = 0;
    for (int i = 0; i < ng; i++)
        any_logits |= g[i].want[ERT_TRITON_LOGITS];
    uint64_t cs = triton_now_ns();
    ert_result res = ERT_RESULT_INIT;
    res.samples = is->samples;
    res.logits = any_logits ? is->logits : NULL;
    ert_status st = rows > 0 ? ert_infer(is->engine, is->in, (int)rows, &res) : ERT_OK;
    uint64_t ce = triton_now_ns();
    TRITONSERVER_Error *fail = NULL;
    if (st != ERT_OK) {
        const char *m = ert_engine_error(is->engine);
        fail = errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: inference failed: %s",
                    m[0] ? m : ert_status_string(st));
        LOG_ERROR("exitrt: instance %s: inference of %ld rows failed: %s", is->name, rows,
                  m[0] ? m : ert_status_string(st));
    } else if (rows > 0) {
        is->batches++;
        is->rows += (uint64_t)rows;
        for (int x = 0; x < ms->E; x++) {
            is->exit_counts[x] += (uint64_t)res.exit_counts[x];
            metric_add(is->m_exit[x], res.exit_counts[x]);
        }
        is->macs_executed += res.macs_executed;
        is->macs_full += res.macs_full;
        metric_add(is->m_macs_exec, (double)res.macs_executed);
        metric_add(is->m_macs_full, (double)res.macs_full);
    }
    int *ok = calloc((size_t)ng, sizeof *ok);
    for (int i = 0; i < ng; i++) {
        int r = respond(is, g[i].req, g[i].want, is->samples + g[i].off,
                        is->logits + (size_t)g[i].off * (size_t)ms->K, g[i].n, fail);
        if (ok)
            ok[i] = r;
    }
    uint64_t ee = triton_now_ns();
    for (int i = 0; i < ng; i++)
        finish(is, g[i].req, ok ? ok[i] : !fail, exec_start, cs, ce, ee);
    free(ok);
    if (rows > 0 && !fail)
        log_drop(TRITONBACKEND_ModelInstanceReportBatchStatistics(is->inst, (uint64_t)rows,
                                                                  exec_start, cs, ce, ee),
                 "reporting batch statistics");
    if (fail)
        TRITONSERVER_ErrorDelete(fail);
}

void execute_batch(instance_state *is, TRITONBACKEND_Request **requests, uint32_t count)
{
    uint64_t exec_start = triton_now_ns();
    const long B = is->ms->cfg.max_batch;
    size_t per = is->ms->per;
    member *g = malloc((count ? count : 1) * sizeof *g);
    if (!g) {
        for (uint32_t r = 0; r < count; r++)
            reject(is, requests[r], errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: out of memory"));
        return;
    }
    int ng = 0;
    long rows = 0;
    for (uint32_t r = 0; r < count; r++) {
        TRITONBACKEND_Request *req = requests[r];
        TRITONSERVER_Error *why = NULL;
        is->requests++;
        member m = {.req = req};
        long n = read_request(is, req, NULL, m.want, &why);
        if (n >= 0 && rows + n > B) { /* does not fit: run what is gathered first */
            run_batch(is, g, ng, rows, exec_start);
            ng = 0;
            rows = 0;
            exec_start = triton_now_ns();
        }
        if (n >= 0)
            n = read_request(is, req, is->in + (size_t)rows * per, m.want, &why);
        if (n < 0) {
            reject(is, req, why);
            continue;
        }
        m.off = rows;
        m.n = n;
        g[ng++] = m;
        rows += n;
    }
    if (ng)
        run_batch(is, g, ng, rows, exec_start);
    free(g);
}

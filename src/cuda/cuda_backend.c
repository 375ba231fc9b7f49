/* cuda_backend.c - the CUDA backend: engine resources and the per-batch schedule.
 *
 * Resources (all made at create, sized for cfg.max_batch, freed at destroy):
 * the weights in one device allocation; per slot (cfg.inflight of them) a
 * non-blocking stream, a cuBLAS and a cuDNN handle bound to it with fixed
 * workspaces, the activation buffers the program needs, the transformer
 * ops' workspace (tx_ops.c), the row-index
 * buffers and pinned count words; shared pinned staging for ert_infer's
 * input and results.
 *
 * Schedule of one call: the batch is cut into min(inflight, batch)
 * contiguous sub-batches ("jobs"), job j on slot j. Stage by stage, for
 * each job in turn: learn its row count if its last exit compacted it, then
 * enqueue its stage (backbone ops, heads, exit kernel, and in COMPACTED the
 * count copy and the gather). While the host waits for job j's count, the
 * device runs what is already queued for the other jobs; with inflight = 1
 * the gather is queued before the wait, so at least the wait overlaps it.
 *
 * Host waits (ert_result.host_waits): the number of times the host blocked
 * to learn a row count, i.e. found a count event not yet complete and
 * synchronised on it. A count that is already on the host when asked for
 * costs no wait and is not counted. The wait at the end of ert_infer for the
 * results to reach host memory is inherent in a synchronous call returning
 * host results and is not counted; ert_infer_device with a caller stream
 * does not wait for results at all. So: FULL and MASKED 0; COMPACTED at most
 * one per early exit per job -- or 0 with size-bucketed graphs
 * (cfg.graph_buckets > 0, graph.c), where the device picks each stage's
 * launch size itself.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "cuda_internal.h"
#include "graph.h"
#include "kernels.h"
#include "util.h"

/* Slots per engine; each costs a cuDNN and a cuBLAS handle and its buffers. */
#define ERT_CUDA_MAX_INFLIGHT 64

int cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

/* ---- destroy ------------------------------------------------------------------------ */

static void slot_free(cuda_slot *s)
{
    if (s->stream)
        cudaStreamSynchronize(s->stream); /* nothing may still use what we free */
    if (s->blas)
        cublasDestroy(s->blas);
    if (s->dnn)
        cudnnDestroy(s->dnn);
    for (int i = 0; i < ERT_MAX_EXITS; i++)
        if (s->ev_count[i])
            cudaEventDestroy(s->ev_count[i]);
    if (s->ev_done)
        cudaEventDestroy(s->ev_done);
    cudaFree(s->blas_ws);
    cudaFree(s->dnn_ws);
    for (int i = 0; i < PROG_MAX_BUF; i++)
        cudaFree(s->buf[i]);
    cudaFree(s->orig[0]);
    cudaFree(s->orig[1]);
    cudaFree(s->src_row);
    cudaFree(s->d_count);
    cudaFree(s->done);
    cudaFree(s->pstate);
    cudaFree(s->tx_ws);
    if (s->h_count)
        cudaFreeHost(s->h_count);
    if (s->stream)
        cudaStreamDestroy(s->stream);
    memset(s, 0, sizeof *s);
}

static void cuda_destroy(void *ctx)
{
    cuda_ctx *c = ctx;
    if (!c)
        return;
    cudaSetDevice(c->device);
    graph_free(c); /* before the slots whose streams and buffers it uses */
    if (c->slots) {
        for (int i = 0; i < c->nslots; i++)
            slot_free(&c->slots[i]);
        free(c->slots);
    }
    dnn_teardown(c);
    if (c->ev_caller)
        cudaEventDestroy(c->ev_caller);
    cudaFree(c->d_weights);
    cudaFree(c->d_samples);
    cudaFree(c->d_logits);
    cudaFree(c->d_scores);
    cudaFree(c->d_classes);
    if (c->h_scores)
        cudaFreeHost(c->h_scores);
    if (c->h_classes)
        cudaFreeHost(c->h_classes);
    if (c->h_input)
        cudaFreeHost(c->h_input);
    if (c->h_samples)
        cudaFreeHost(c->h_samples);
    if (c->h_logits)
        cudaFreeHost(c->h_logits);
    program_free(&c->prog);
    (void)cudaGetLastError(); /* leave no error behind for the next user */
    free(c);
}

/* ---- create ---------------------------------------------------------------------------- */

static ert_status slot_init(ert_engine *e, cuda_ctx *c, cuda_slot *s)
{
    ert_status st = ERT_OK;
    const size_t B = (size_t)e->cfg.max_batch;
    CUDA_TRY(e, cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    for (int i = 0; i < ERT_MAX_EXITS; i++)
        CUDA_TRY(e, cudaEventCreateWithFlags(&s->ev_count[i], cudaEventDisableTiming));
    CUDA_TRY(e, cudaEventCreateWithFlags(&s->ev_done, cudaEventDisableTiming));

    CUBLAS_TRY(e, cublasCreate(&s->blas));
    CUBLAS_TRY(e, cublasSetStream(s->blas, s->stream));
    CUDA_TRY(e, cudaMalloc(&s->blas_ws, ERT_CUBLAS_WORKSPACE));
    CUBLAS_TRY(e, cublasSetWorkspace(s->blas, s->blas_ws, ERT_CUBLAS_WORKSPACE));
    /* FP32: no TF32 (cuda_ops.c, "Precision") */
    CUBLAS_TRY(
        e, cublasSetMathMode(s->blas, c->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    CUDNN_TRY(e, cudnnCreate(&s->dnn));
    CUDNN_TRY(e, cudnnSetStream(s->dnn, s->stream));

    size_t act;
    if (!size_mul(e->plan.max_act, B, &act) || !size_mul(act, sizeof(float), &act))
        return engine_fail(e, ERT_OUT_OF_MEMORY, "cuda: activation buffers overflow size_t");
    for (int i = 0; i < c->prog.nbuf; i++)
        CUDA_TRY(e, cudaMalloc((void **)&s->buf[i], act));
    CUDA_TRY(e, cudaMalloc((void **)&s->orig[0], B * sizeof(int)));
    CUDA_TRY(e, cudaMalloc((void **)&s->orig[1], B * sizeof(int)));
    CUDA_TRY(e, cudaMalloc((void **)&s->src_row, B * sizeof(int)));
    CUDA_TRY(e, cudaMalloc((void **)&s->d_count, ERT_MAX_EXITS * sizeof(int)));
    CUDA_TRY(e, cudaMalloc((void **)&s->done, B));
    CUDA_TRY(e, cudaMalloc((void **)&s->pstate, B * sizeof(ert_patience)));
    CUDA_TRY(
        e, cudaHostAlloc((void **)&s->h_count, ERT_MAX_EXITS * sizeof(int), cudaHostAllocDefault));
    if (c->tx_ws_row) {
        size_t ws;
        if (!size_mul(c->tx_ws_row, B, &ws) || !size_mul(ws, sizeof(float), &ws))
            return engine_fail(e, ERT_OUT_OF_MEMORY, "cuda: attention workspace overflows size_t");
        CUDA_TRY(e, cudaMalloc((void **)&s->tx_ws, ws));
    }
    return ERT_OK;
fail:
    return st;
}

static ert_status cuda_create(ert_engine *e, void **out)
{
    ert_status st = ERT_OK;
    const ert_model *m = e->model;
    const size_t B = (size_t)e->cfg.max_batch;
    const size_t K = (size_t)m->num_classes;
    const size_t E = (size_t)m->num_exits;
    const size_t in_size = shape_size(m->input);
    *out = NULL;

    int ndev = 0;
    cudaError_t r = cudaGetDeviceCount(&ndev);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        return engine_fail(e, ERT_NO_DEVICE, "no usable CUDA device: cudaGetDeviceCount: %s",
                           cudaGetErrorString(r));
    }
    if (ndev == 0)
        return engine_fail(e, ERT_NO_DEVICE, "no CUDA device present");
    if (e->cfg.device < 0 || e->cfg.device >= ndev)
        return engine_fail(e, ERT_NO_DEVICE, "CUDA device %d asked for; %d present", e->cfg.device,
                           ndev);

    cuda_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return engine_fail(e, ERT_OUT_OF_MEMORY, "cuda: out of memory");
    c->device = e->cfg.device;
    c->tf32 = e->cfg.precision == ERT_PRECISION_TF32;
    c->fused_attention = (e->cfg.cuda_options & ERT_CUDA_FUSED_ATTENTION) != 0;
    CUDA_TRY(e, cudaSetDevice(c->device));

    /* FULL runs no early head in ert_infer, but ert_engine_exit_outputs
       runs them all: such an engine gets the MASKED program (the same
       backbone ops, plus the heads), and only its last stage decides
       (stage_decides) */
    ert_error perr;
    ert_mode pmode = e->cfg.mode == ERT_MODE_FULL ? ERT_MODE_MASKED : e->cfg.mode;
    st = program_build(m, &e->plan, pmode, NULL, &c->prog, &perr);
    if (st != ERT_OK) {
        engine_fail(e, st, "%s", perr.msg);
        goto fail;
    }

    /* the transformer ops' workspace, one per slot for max_batch samples */
    for (int i = 0; i < c->prog.nops; i++) {
        size_t w = tx_ws_floats(&c->prog.ops[i]);
        if (w > c->tx_ws_row)
            c->tx_ws_row = w;
        if ((st = tx_check_sizes(e, &c->prog.ops[i])) != ERT_OK)
            goto fail;
    }

    CUDA_TRY(e, cudaMalloc((void **)&c->d_weights,
                           (m->weights_len ? m->weights_len : 1) * sizeof(float)));
    /* From pageable memory, cudaMemcpy may return once the data is staged,
       before it reaches the device, and it runs on the legacy default
       stream, with which the slots' non-blocking streams do not synchronise.
       The host waits for the copy itself here, so every later use, on any
       stream, comes after it. */
    if (m->weights_len) {
        CUDA_TRY(e, cudaMemcpy(c->d_weights, m->weights, m->weights_len * sizeof(float),
                               cudaMemcpyHostToDevice));
        CUDA_TRY(e, cudaStreamSynchronize(NULL)); /* the stream cudaMemcpy used */
    }

    c->nslots = e->cfg.inflight > 0 ? e->cfg.inflight : 1;
    if (c->nslots > ERT_CUDA_MAX_INFLIGHT) {
        st = engine_fail(e, ERT_INVALID_ARGUMENT, "cuda: inflight %d: at most %d batches in flight",
                         c->nslots, ERT_CUDA_MAX_INFLIGHT);
        goto fail;
    }
    c->slots = calloc((size_t)c->nslots, sizeof *c->slots);
    if (!c->slots) {
        st = engine_fail(e, ERT_OUT_OF_MEMORY, "cuda: out of memory");
        goto fail;
    }
    for (int i = 0; i < c->nslots; i++)
        if ((st = slot_init(e, c, &c->slots[i])) != ERT_OK)
            goto fail;

    if ((st = dnn_setup(e, c, c->slots[0].dnn)) != ERT_OK)
        goto fail;
    for (int i = 0; i < c->nslots; i++)
        if (c->dnn_ws_size)
            CUDA_TRY(e, cudaMalloc(&c->slots[i].dnn_ws, c->dnn_ws_size));

    char fell[ERT_ERROR_LEN];
    if ((st = dnn_try_fused(e, c, fell, sizeof fell)) != ERT_OK)
        goto fail;

    CUDA_TRY(e, cudaEventCreateWithFlags(&c->ev_caller, cudaEventDisableTiming));
    CUDA_TRY(e, cudaMalloc((void **)&c->d_samples, B * sizeof(ert_sample)));
    CUDA_TRY(e, cudaMalloc((void **)&c->d_logits, B * K * sizeof(float)));
    CUDA_TRY(
        e, cudaHostAlloc((void **)&c->h_input, B * in_size * sizeof(float), cudaHostAllocDefault));
    CUDA_TRY(e,
             cudaHostAlloc((void **)&c->h_samples, B * sizeof(ert_sample), cudaHostAllocDefault));
    CUDA_TRY(e, cudaHostAlloc((void **)&c->h_logits, B * K * sizeof(float), cudaHostAllocDefault));
    CUDA_TRY(e, cudaMalloc((void **)&c->d_scores, B * E * sizeof(float)));
    CUDA_TRY(e, cudaMalloc((void **)&c->d_classes, B * E * sizeof(int32_t)));
    CUDA_TRY(e, cudaHostAlloc((void **)&c->h_scores, B * E * sizeof(float), cudaHostAllocDefault));
    CUDA_TRY(e,
             cudaHostAlloc((void **)&c->h_classes, B * E * sizeof(int32_t), cudaHostAllocDefault));
    /* COMPACTED with graph_buckets > 0: bucketed graphs, or the wait-based
       path when they cannot be built (graph.h; e->note says which) */
    if ((st = graph_setup(e, c)) != ERT_OK)
        goto fail;
    if (fell[0]) {
        size_t len = strlen(e->note);
        snprintf(e->note + len, sizeof e->note - len, "%s%s", len ? "; " : "", fell);
    }
    *out = c;
    return ERT_OK;
fail:
    cuda_destroy(c);
    return st != ERT_OK ? st : ERT_INTERNAL;
}

/* ---- one call ------------------------------------------------------------------------------ */

typedef struct job {
    cuda_slot *s;
    int off, len; /* original positions [off, off + len) */
    int n;        /* rows still running */
    int cur;      /* which of s->orig holds the rows' positions */
    int pending;  /* exit whose count is not yet read, or -1 */
    int finished;
} job;

static ert_status job_start(ert_engine *e, cuda_ctx *c, cuda_call *k, job *j)
{
    ert_status st = ERT_OK;
    const size_t in_size = shape_size(e->model->input);
    cuda_slot *s = j->s;
    if (!k->d_input)
        CUDA_TRY(e, cudaMemcpyAsync(s->buf[c->prog.stages[0].in_buf],
                                    c->h_input + (size_t)j->off * in_size,
                                    (size_t)j->len * in_size * sizeof(float),
                                    cudaMemcpyHostToDevice, s->stream));
    if (e->cfg.mode == ERT_MODE_MASKED)
        CUDA_TRY(e, cudaMemsetAsync(s->done, 0, (size_t)j->len, s->stream));
    return ERT_OK;
fail:
    return st;
}

/* Reads the survivors' count of the job's last compaction; blocks (and
 * counts a host wait) only when it is not on the host yet. */
static ert_status job_learn(ert_engine *e, cuda_call *k, job *j)
{
    ert_status st = ERT_OK;
    if (j->pending < 0)
        return ERT_OK;
    cudaEvent_t ev = j->s->ev_count[j->pending];
    cudaError_t q = cudaEventQuery(ev);
    if (q == cudaErrorNotReady) {
        /* not an error; clear it in case the runtime keeps it as the last
           one, where the next launch check would find it */
        (void)cudaGetLastError();
        k->host_waits++;
        CUDA_TRY(e, cudaEventSynchronize(ev));
    } else if (q != cudaSuccess) {
        CUDA_TRY(e, q);
    }
    j->n = j->s->h_count[j->pending];
    j->pending = -1;
    if (j->n == 0)
        j->finished = 1;
    return ERT_OK;
fail:
    return st;
}

/* Enqueues stage si for the job's j->n rows (stage_enqueue); an early exit
 * of COMPACTED leaves its survivors' count on its way to the host. */
static ert_status job_stage(ert_engine *e, cuda_ctx *c, cuda_call *k, job *j, int si)
{
    const prog_stage *ps = &c->prog.stages[si];
    cuda_slot *s = j->s;
    const int last = si == c->prog.num_stages - 1;
    const int compact = ps->has_exit && !last && ps->gather_buf >= 0;
    stage_args a = {.si = si,
                    .n = j->n,
                    .iota_base = -1,
                    .cur = j->cur,
                    .done = e->cfg.mode == ERT_MODE_MASKED ? s->done : NULL,
                    .state = last ? NULL : s->pstate,
                    .samples = k->samples,
                    .logits = k->logits,
                    .gather_buf = compact ? ps->gather_buf : -1};
    if (si == 0) {
        const size_t in_size = shape_size(e->model->input);
        a.norm_src = k->d_input ? k->d_input + (size_t)j->off * in_size : s->buf[ps->in_buf];
        a.iota_base = j->off;
    }
    if (compact) {
        a.h_count = s->h_count + si;
        a.count_event = s->ev_count[si];
    }
    ert_status st = stage_enqueue(e, c, s, &a, &k->macs);
    if (st != ERT_OK)
        return st;
    if (compact) {
        j->cur = !j->cur;
        j->pending = si;
    } else if (last) {
        j->finished = 1;
    }
    return ERT_OK;
}

/* Copies a finished job's results into the pinned staging. */
static ert_status job_results_to_host(ert_engine *e, cuda_ctx *c, cuda_call *k, job *j)
{
    ert_status st = ERT_OK;
    const size_t K = (size_t)e->model->num_classes;
    cudaStream_t ss = j->s->stream;
    CUDA_TRY(e, cudaMemcpyAsync(c->h_samples + j->off, k->samples + j->off,
                                (size_t)j->len * sizeof(ert_sample), cudaMemcpyDeviceToHost, ss));
    if (k->logits)
        CUDA_TRY(e,
                 cudaMemcpyAsync(c->h_logits + (size_t)j->off * K, k->logits + (size_t)j->off * K,
                                 (size_t)j->len * K * sizeof(float), cudaMemcpyDeviceToHost, ss));
    return ERT_OK;
fail:
    return st;
}

/* The wait-based path: the whole batch as min(inflight, batch) interleaved
 * jobs. */
static ert_status run_batch(ert_engine *e, cuda_ctx *c, cuda_call *k, int batch, int *njobs_out)
{
    ert_status st = ERT_OK;
    job jobs[ERT_CUDA_MAX_INFLIGHT];
    int nj = c->nslots < batch ? c->nslots : batch;
    *njobs_out = nj;
    for (int i = 0; i < nj; i++) {
        job *j = &jobs[i];
        memset(j, 0, sizeof *j);
        j->s = &c->slots[i];
        cuda_job_span(batch, nj, i, &j->off, &j->len);
        j->n = j->len;
        j->pending = -1;
        if ((st = job_start(e, c, k, j)) != ERT_OK)
            return st;
    }
    for (int si = 0; si < c->prog.num_stages; si++) {
        for (int i = 0; i < nj; i++) {
            job *j = &jobs[i];
            if (j->finished)
                continue;
            if ((st = job_learn(e, k, j)) != ERT_OK)
                return st;
            if (!j->finished && (st = job_stage(e, c, k, j, si)) != ERT_OK)
                return st;
            if (j->finished && k->want_host && (st = job_results_to_host(e, c, k, j)) != ERT_OK)
                return st;
        }
    }
    return ERT_OK;
}

/* The call through the graphs or the wait-based path. */
static ert_status run_call(ert_engine *e, cuda_ctx *c, cuda_call *k, int batch, int *nj)
{
    return c->graphs ? graph_run(e, c, k, batch, nj) : run_batch(e, c, k, batch, nj);
}

static ert_status cuda_infer(ert_engine *e, const float *input, int batch, ert_result *out)
{
    ert_status st = ERT_OK;
    cuda_ctx *c = e->ctx;
    const size_t K = (size_t)e->model->num_classes;
    int nj = 0;
    CUDA_TRY(e, cudaSetDevice(c->device));

    /* pinned staging: the copies run asynchronously from it */
    memcpy(c->h_input, input, (size_t)batch * shape_size(e->model->input) * sizeof(float));
    cuda_call k = {
        .samples = c->d_samples, .logits = out->logits ? c->d_logits : NULL, .want_host = 1};
    st = run_call(e, c, &k, batch, &nj);
    /* also after a failure: nothing may still be queued on our buffers */
    cudaError_t sync = cudaSuccess;
    for (int i = 0; i < nj; i++) {
        cudaError_t r = cudaStreamSynchronize(c->slots[i].stream); /* results: not a counted wait */
        if (sync == cudaSuccess)
            sync = r;
    }
    if (st == ERT_OK && sync != cudaSuccess)
        CUDA_TRY(e, sync);
    if (st != ERT_OK) {
        (void)cudaGetLastError();
        return st;
    }
    memcpy(out->samples, c->h_samples, (size_t)batch * sizeof(ert_sample));
    if (out->logits)
        memcpy(out->logits, c->h_logits, (size_t)batch * K * sizeof(float));
    out->macs_executed = k.macs;
    out->host_waits = k.host_waits;
    if (c->graphs)
        graph_figures(c, nj, out);
    return ERT_OK;
fail:
    return st;
}

/* Our slot streams are non-blocking: nothing orders them after the caller's
 * work unless we say so. The first `used` slots wait for what is already
 * enqueued on cs, or with cs NULL on the legacy default stream (a plain
 * cudaMemcpy of the input, say). */
ert_status order_after_caller(ert_engine *e, cuda_ctx *c, cudaStream_t cs, int used)
{
    ert_status st = ERT_OK;
    CUDA_TRY(e, cudaEventRecord(c->ev_caller, cs ? cs : cudaStreamLegacy));
    for (int i = 0; i < used; i++)
        CUDA_TRY(e, cudaStreamWaitEvent(c->slots[i].stream, c->ev_caller, 0));
    return ERT_OK;
fail:
    return st;
}

static ert_status cuda_infer_device(ert_engine *e, const void *d_input, int batch,
                                    ert_device_result *out, void *stream)
{
    ert_status st = ERT_OK;
    cuda_ctx *c = e->ctx;
    cudaStream_t cs = (cudaStream_t)stream;
    int nj = 0;
    CUDA_TRY(e, cudaSetDevice(c->device));

    int used = c->nslots < batch ? c->nslots : batch;
    if ((st = order_after_caller(e, c, cs, used)) != ERT_OK)
        return st;
    cuda_call k = {.d_input = d_input, .samples = out->samples, .logits = out->logits};
    st = run_call(e, c, &k, batch, &nj);
    if (st != ERT_OK) {
        for (int i = 0; i < nj; i++)
            cudaStreamSynchronize(c->slots[i].stream);
        (void)cudaGetLastError();
        return st;
    }
    for (int i = 0; i < nj; i++) {
        cuda_slot *s = &c->slots[i];
        if (cs) {
            /* the caller's later work sees the results */
            CUDA_TRY(e, cudaEventRecord(s->ev_done, s->stream));
            CUDA_TRY(e, cudaStreamWaitEvent(cs, s->ev_done, 0));
        } else {
            /* no stream to order after: the results are ready on return (a
               plain cudaMemcpy on the legacy stream would not wait for our
               non-blocking streams). Not a counted wait. */
            CUDA_TRY(e, cudaStreamSynchronize(s->stream));
        }
    }
    out->host_waits = k.host_waits;
    return ERT_OK;
fail:
    return st;
}

/* ert_engine_exit_outputs: the whole batch on slot 0 (its stream, handles
 * and buffers, as the refill stream's stage op uses them; the engine's busy
 * flag keeps the callers apart), every stage with its heads and the outputs
 * kernel instead of a decision, nobody compacted, then one wait for the
 * copies to the host. */
static ert_status cuda_exit_outputs(ert_engine *e, const float *input, int batch, float *scores,
                                    int32_t *classes)
{
    ert_status st = ERT_OK;
    cuda_ctx *c = e->ctx;
    const program *prog = &c->prog;
    cuda_slot *s = &c->slots[0];
    const size_t E = (size_t)prog->num_stages;
    const size_t in_size = shape_size(e->model->input);
    CUDA_TRY(e, cudaSetDevice(c->device));

    memcpy(c->h_input, input, (size_t)batch * in_size * sizeof(float));
    float *x = s->buf[prog->stages[0].in_buf];
    CUDA_TRY(e, cudaMemcpyAsync(x, c->h_input, (size_t)batch * in_size * sizeof(float),
                                cudaMemcpyHostToDevice, s->stream));
    for (int si = 0; si < prog->num_stages; si++) {
        /* rows stay where they are: their positions are 0..batch-1 throughout */
        stage_args a = {.si = si,
                        .n = batch,
                        .norm_src = si == 0 ? x : NULL,
                        .iota_base = si == 0 ? 0 : -1,
                        .cur = 0,
                        .state = si == prog->num_stages - 1 ? NULL : s->pstate,
                        .samples = c->d_samples,
                        .gather_buf = prog->stages[si].gather_buf,
                        .out_scores = scores ? c->d_scores : NULL,
                        .out_classes = classes ? c->d_classes : NULL};
        if ((st = stage_enqueue(e, c, s, &a, NULL)) != ERT_OK)
            goto fail;
    }
    if (scores)
        CUDA_TRY(e, cudaMemcpyAsync(c->h_scores, c->d_scores, (size_t)batch * E * sizeof(float),
                                    cudaMemcpyDeviceToHost, s->stream));
    if (classes)
        CUDA_TRY(e, cudaMemcpyAsync(c->h_classes, c->d_classes, (size_t)batch * E * sizeof(int32_t),
                                    cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(e, cudaStreamSynchronize(s->stream));
    if (scores)
        memcpy(scores, c->h_scores, (size_t)batch * E * sizeof(float));
    if (classes)
        memcpy(classes, c->h_classes, (size_t)batch * E * sizeof(int32_t));
    return ERT_OK;
fail:
    (void)cudaStreamSynchronize(s->stream); /* nothing may still use the buffers */
    (void)cudaGetLastError();
    return st;
}

const backend_ops cuda_backend_ops = {
    .name = "cuda",
    .kind = ERT_BACKEND_CUDA,
    .create = cuda_create,
    .destroy = cuda_destroy,
    .infer = cuda_infer,
    .exit_outputs = cuda_exit_outputs,
    .infer_device = cuda_infer_device,
    .run_stage = cuda_run_stage,
};

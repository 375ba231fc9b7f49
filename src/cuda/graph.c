/* graph.c - size-bucketed CUDA graphs for COMPACTED mode: see graph.h for
 * the structure and why.
 *
 * Written against the CUDA 13.0 headers without a GPU: nothing here has run
 * yet. Creation self-checks every slot's graph on the device (two launches,
 * below) and falls back to the wait-based path when it misbehaves, so a
 * misunderstanding of conditional nodes shows as "graphs: off: self-check
 * ..." in ert_engine_note(), not as wrong results.
 */
#include "graph.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bucket_math.h"
#include "cuda_check.h"
#include "kernels.h"

typedef struct graph_slot {
    cudaGraph_t graph; /* the top-level graph; owns the bodies */
    cudaGraphExec_t exec;
    cudaGraphConditionalHandle handle[ERT_MAX_EXITS]; /* switch of stage s */
    int *d_rows;           /* device: the sub-batch's rows (graph_prep) */
    float *d_thr;          /* device [ERT_MAX_EXITS]: thresholds (graph_prep) */
    int *d_stats;          /* device [ERT_STATS_LEN]: written by the graph */
    int32_t *h_stats;      /* pinned [ERT_STATS_LEN] */
    ert_sample *d_samples; /* device [max_batch]: results at sub-batch positions */
    float *d_logits;       /* device [max_batch * K] */
} graph_slot;

struct graph_state {
    int nbuckets, step, max_rows, nstages;
    uint64_t stage_cost[ERT_MAX_EXITS]; /* MACs per row: stage s + its head */
    size_t body_nodes;                  /* nodes captured into all bodies of one slot */
    graph_slot *slots;
    int nslots;
};

/* ---- free -------------------------------------------------------------------------- */

static void slot_graph_free(cuda_slot *s, graph_slot *gs)
{
    if (s->stream)
        cudaStreamSynchronize(s->stream); /* no launch may still use the exec */
    if (gs->exec)
        cudaGraphExecDestroy(gs->exec);
    if (gs->graph)
        cudaGraphDestroy(gs->graph); /* with its bodies and handles */
    cudaFree(gs->d_rows);
    cudaFree(gs->d_thr);
    cudaFree(gs->d_stats);
    cudaFree(gs->d_samples);
    cudaFree(gs->d_logits);
    if (gs->h_stats)
        cudaFreeHost(gs->h_stats);
    memset(gs, 0, sizeof *gs);
}

void graph_free(cuda_ctx *c)
{
    graph_state *g = c->graphs;
    if (!g)
        return;
    if (g->slots) {
        for (int i = 0; i < g->nslots; i++)
            slot_graph_free(&c->slots[i], &g->slots[i]);
        free(g->slots);
    }
    free(g);
    c->graphs = NULL;
    (void)cudaGetLastError();
}

/* ---- one body -------------------------------------------------------------------------- */

/* Enqueues stage si for bucket rows R on slot i's stream, as graph.h's body
 * of switch si: stage_enqueue with every row count read on the device.
 * warm: an eager run before capture, with the switch off; the caller has set
 * the device counts to 0, so the exit kernels score, write and keep nothing. */
static ert_status body_enqueue(ert_engine *e, cuda_ctx *c, graph_state *g, int i, int si, int R,
                               int warm)
{
    cuda_slot *s = &c->slots[i];
    graph_slot *gs = &g->slots[i];
    const prog_stage *ps = &c->prog.stages[si];
    const int last = si == c->prog.num_stages - 1;
    /* every stage but the last compacts, so the positions ping-pong */
    stage_args a = {.si = si,
                    .n = R,
                    .d_n = si == 0 ? gs->d_rows : s->d_count + (si - 1),
                    .iota_base = -1,
                    .cur = si & 1,
                    .state = last ? NULL : s->pstate,
                    .samples = gs->d_samples,
                    .logits = gs->d_logits,
                    .d_threshold = gs->d_thr + si,
                    .gather_buf = last ? -1 : ps->gather_buf};
    if (si == 0) {
        /* the raw input rows are in the stage's buffer (graph_run copied
           them there); padding rows are normalised too, and ignored */
        a.norm_src = s->buf[ps->in_buf];
        a.iota_base = 0;
    }
    if (!last) {
        a.sw.on = !warm;
        a.sw.handle = gs->handle[si + 1];
        a.sw.stage = si + 1;
        a.sw.step = g->step;
        a.sw.nbuckets = g->nbuckets;
        a.sw.max_rows = g->max_rows;
        a.sw.stats = gs->d_stats;
    }
    return stage_enqueue(e, c, s, &a, NULL);
}

/* ---- capture ----------------------------------------------------------------------------- */

static const char *node_type_name(enum cudaGraphNodeType t)
{
    switch (t) {
    case cudaGraphNodeTypeHost: return "host";
    case cudaGraphNodeTypeWaitEvent: return "event wait";
    case cudaGraphNodeTypeEventRecord: return "event record";
    case cudaGraphNodeTypeExtSemaphoreSignal: return "external semaphore signal";
    case cudaGraphNodeTypeExtSemaphoreWait: return "external semaphore wait";
    case cudaGraphNodeTypeMemAlloc: return "memory allocation";
    case cudaGraphNodeTypeMemFree: return "memory free";
    default: return "unknown";
    }
}

/* Checks that graph g (recursively through child graphs) holds only the
 * node types a conditional body may hold; adds its node count to *nodes.
 * On a forbidden node writes its type into bad (and returns ERT_OK: the
 * caller decides); ERT_CUDA / ERT_OUT_OF_MEMORY when a query fails. */
static ert_status body_check(ert_engine *e, cudaGraph_t g, int depth, size_t *nodes,
                             const char **bad)
{
    ert_status st = ERT_OK;
    cudaGraphNode_t *list = NULL;
    size_t n = 0;
    CUDA_TRY(e, cudaGraphGetNodes(g, NULL, &n));
    *nodes += n;
    if (n == 0)
        return ERT_OK;
    list = malloc(n * sizeof *list);
    if (!list)
        return engine_fail(e, ERT_OUT_OF_MEMORY, "cuda graphs: out of memory");
    CUDA_TRY(e, cudaGraphGetNodes(g, list, &n));
    for (size_t k = 0; k < n && !*bad; k++) {
        enum cudaGraphNodeType t;
        CUDA_TRY(e, cudaGraphNodeGetType(list[k], &t));
        switch (t) {
        case cudaGraphNodeTypeKernel:
        case cudaGraphNodeTypeMemcpy:
        case cudaGraphNodeTypeMemset:
        case cudaGraphNodeTypeEmpty:
        case cudaGraphNodeTypeConditional: break;
        case cudaGraphNodeTypeGraph: {
            cudaGraph_t child;
            if (depth > 8) {
                *bad = "child graphs nested deeper than 8";
                break;
            }
            CUDA_TRY(e, cudaGraphChildGraphNodeGetGraph(list[k], &child));
            if ((st = body_check(e, child, depth + 1, nodes, bad)) != ERT_OK)
                goto fail;
            break;
        }
        default: *bad = node_type_name(t); break;
        }
    }
    free(list);
    return ERT_OK;
fail:
    free(list);
    return st;
}

const char *ert_cuda_test_graph_fault = NULL;

/* The test hook of graph.h: ert_cuda_test_graph_fault names the failure to
 * force. */
static int fault_is(const char *what)
{
    const char *v = ert_cuda_test_graph_fault;
    return v && strcmp(v, what) == 0;
}

static void fault_host_fn(void *arg) { (void)arg; }

/* Captures switch si's body b (rows R) of slot i into body. */
static ert_status body_capture(ert_engine *e, cuda_ctx *c, graph_state *g, int i, int si, int b,
                               cudaGraph_t body)
{
    ert_status st = ERT_OK;
    cuda_slot *s = &c->slots[i];
    const int R = ert_bucket_rows(b, g->step, g->max_rows);
    CUDA_TRY(e, cudaStreamBeginCaptureToGraph(s->stream, body, NULL, NULL, 0,
                                              cudaStreamCaptureModeThreadLocal));
    st = body_enqueue(e, c, g, i, si, R, 0);
    if (st == ERT_OK && si == 0 && b == 0 && fault_is("host-node")) {
        cudaError_t r = cudaLaunchHostFunc(s->stream, fault_host_fn, NULL);
        if (r != cudaSuccess)
            st = engine_fail(e, ERT_CUDA, "cudaLaunchHostFunc (the test hook) failed: %s",
                             cudaGetErrorString(r));
    }
    /* always end the capture, also after a failure: the stream must leave
       capture mode. The graph it returns is `body`, owned by its node. */
    cudaGraph_t got = NULL;
    cudaError_t r = cudaStreamEndCapture(s->stream, &got);
    (void)cudaGetLastError();
    if (st != ERT_OK)
        return st;
    if (r != cudaSuccess)
        return engine_fail(e, ERT_CUDA, "cudaStreamEndCapture (stage %d, bucket %d) failed: %s", si,
                           b, cudaGetErrorString(r));
    const char *bad = NULL;
    if ((st = body_check(e, body, 0, &g->body_nodes, &bad)) != ERT_OK)
        return st;
    if (bad)
        return engine_fail(e, ERT_UNSUPPORTED,
                           "stage %d, bucket %d (%d rows): a %s node was captured, which a "
                           "conditional body may not hold",
                           si, b, R, bad);
    return ERT_OK;
fail:
    return st;
}

/* Captures the root kernel into slot i's top-level graph; *tail gets its
 * node, which the first switch follows. */
static ert_status root_capture(ert_engine *e, cuda_ctx *c, graph_state *g, int i,
                               cudaGraphNode_t *tail)
{
    ert_status st = ERT_OK;
    cuda_slot *s = &c->slots[i];
    graph_slot *gs = &g->slots[i];
    ert_switch_args sw;
    memset(&sw, 0, sizeof sw);
    sw.on = 1;
    sw.handle = gs->handle[0];
    sw.stage = 0;
    sw.step = g->step;
    sw.nbuckets = g->nbuckets;
    sw.max_rows = g->max_rows;
    sw.stats = gs->d_stats;
    CUDA_TRY(e, cudaStreamBeginCaptureToGraph(s->stream, gs->graph, NULL, NULL, 0,
                                              cudaStreamCaptureModeThreadLocal));
    cudaError_t r = k_graph_root(gs->d_rows, sw, s->stream);
    const cudaGraphNode_t *deps = NULL;
    size_t ndeps = 0;
    enum cudaStreamCaptureStatus cs;
    if (r == cudaSuccess)
        r = cudaStreamGetCaptureInfo(s->stream, &cs, NULL, NULL, &deps, NULL, &ndeps);
    if (r == cudaSuccess && ndeps == 1)
        *tail = deps[0]; /* valid until the graph is destroyed */
    cudaGraph_t got = NULL;
    cudaError_t r2 = cudaStreamEndCapture(s->stream, &got);
    (void)cudaGetLastError();
    if (r != cudaSuccess)
        return engine_fail(e, ERT_CUDA, "capturing the graph's root kernel failed: %s",
                           cudaGetErrorString(r));
    if (r2 != cudaSuccess)
        return engine_fail(e, ERT_CUDA, "cudaStreamEndCapture (root) failed: %s",
                           cudaGetErrorString(r2));
    if (ndeps != 1)
        return engine_fail(e, ERT_INTERNAL, "the root capture ended on %zu nodes, not 1", ndeps);
    return ERT_OK;
fail:
    return st;
}

/* Builds and instantiates slot i's graph (graph.h's picture). */
static ert_status slot_graph_build(ert_engine *e, cuda_ctx *c, graph_state *g, int i)
{
    ert_status st = ERT_OK;
    graph_slot *gs = &g->slots[i];
    cuda_slot *s = &c->slots[i];
    const int E = c->prog.num_stages;

    CUDA_TRY(e, cudaGraphCreate(&gs->graph, 0));
    /* default "none" at every launch: a switch whose predecessor ran no
       body (nobody left) runs none either */
    for (int si = 0; si < E; si++)
        CUDA_TRY(e,
                 cudaGraphConditionalHandleCreate(&gs->handle[si], gs->graph, (unsigned)g->nbuckets,
                                                  cudaGraphCondAssignDefault));
    cudaGraphNode_t tail = NULL;
    if ((st = root_capture(e, c, g, i, &tail)) != ERT_OK)
        return st;
    for (int si = 0; si < E; si++) {
        struct cudaGraphNodeParams np;
        memset(&np, 0, sizeof np); /* reserved fields must be zero */
        np.type = cudaGraphNodeTypeConditional;
        np.conditional.handle = gs->handle[si];
        np.conditional.type = cudaGraphCondTypeSwitch;
        np.conditional.size = (unsigned)g->nbuckets;
        cudaGraphNode_t node;
        CUDA_TRY(e, cudaGraphAddNode(&node, gs->graph, &tail, NULL, 1, &np));
        cudaGraph_t *bodies = np.conditional.phGraph_out; /* owned by the node */
        for (int b = 0; b < g->nbuckets; b++)
            if ((st = body_capture(e, c, g, i, si, b, bodies[b])) != ERT_OK)
                return st;
        tail = node;
    }
    if (fault_is("instantiate"))
        return engine_fail(e, ERT_CUDA, "cudaGraphInstantiate: failure forced by the test hook");
    CUDA_TRY(e, cudaGraphInstantiate(&gs->exec, gs->graph, 0));
    CUDA_TRY(e, cudaGraphUpload(gs->exec, s->stream));
    return ERT_OK;
fail:
    return st;
}

/* ---- launch -------------------------------------------------------------------------------- */

/* Enqueues one sub-batch of `rows` rows whose raw input is already in
 * stage 0's buffer: parameters, the graph, the counters to the host. */
static ert_status graph_launch(ert_engine *e, cuda_ctx *c, int i, int rows, const float *thr)
{
    ert_status st = ERT_OK;
    cuda_slot *s = &c->slots[i];
    graph_slot *gs = &c->graphs->slots[i];
    KERNEL_TRY(e, k_graph_prep(gs->d_rows, rows, gs->d_thr, thr, c->prog.num_stages, s->stream));
    CUDA_TRY(e, cudaGraphLaunch(gs->exec, s->stream));
    CUDA_TRY(e, cudaMemcpyAsync(gs->h_stats, gs->d_stats, ERT_STATS_LEN * sizeof(int32_t),
                                cudaMemcpyDeviceToHost, s->stream));
    return ERT_OK;
fail:
    return st;
}

/* The self-check of slot i at creation, on R rows the model scores
 * finitely (ert_graph_check_rows: zeros, or for a token model id 0 with
 * every token attended) with thresholds that make every row leave at the
 * first exit (first = 1) or at none but the final head (first = 0): every
 * row must come out at that exit, and the counters must say which stages
 * ran. This is where a misread of conditional nodes (a switch set from
 * inside another switch's body, the default value, the "none" value) would
 * show. The thresholds, not the weights, decide each row's exit, so the
 * check proves the routing for any model. */
static ert_status slot_self_check(ert_engine *e, cuda_ctx *c, graph_state *g, int i, int R,
                                  int first)
{
    ert_status st = ERT_OK;
    const ert_model *m = e->model;
    const int E = c->prog.num_stages;
    cuda_slot *s = &c->slots[i];
    graph_slot *gs = &g->slots[i];
    float thr[ERT_MAX_EXITS];
    for (int x = 0; x < E; x++) {
        int entropy = m->exits[x].policy == ERT_POLICY_ENTROPY;
        /* entropy exits when score < thr, the others when score >= thr */
        thr[x] = first ? (entropy ? INFINITY : -INFINITY) : (entropy ? -INFINITY : INFINITY);
    }
    const size_t per = shape_size(m->input);
    /* c->h_input (pinned, max_batch rows) is free: no call is running */
    ert_graph_check_rows(c->h_input, R, per, ert_model_input_tokens(m));
    CUDA_TRY(e,
             cudaMemcpyAsync(s->buf[c->prog.stages[0].in_buf], c->h_input,
                             (size_t)R * per * sizeof(float), cudaMemcpyHostToDevice, s->stream));
    CUDA_TRY(e, cudaMemsetAsync(gs->d_samples, 0xff, (size_t)R * sizeof(ert_sample), s->stream));
    if ((st = graph_launch(e, c, i, R, thr)) != ERT_OK)
        return st;
    CUDA_TRY(e, cudaMemcpyAsync(c->h_samples, gs->d_samples, (size_t)R * sizeof(ert_sample),
                                cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(e, cudaStreamSynchronize(s->stream));
    const int want_exit = first ? 0 : E - 1;
    for (int r = 0; r < R; r++)
        if (c->h_samples[r].exit_index != want_exit)
            return engine_fail(e, ERT_INTERNAL,
                               "self-check (%d rows, everybody at exit %d): row %d came out at "
                               "exit %d",
                               R, want_exit, r, (int)c->h_samples[r].exit_index);
    const int32_t *k = gs->h_stats;
    for (int x = 0; x < E; x++) {
        int rows = x == 0 || !first ? R : 0;
        int bucket = rows ? ert_bucket_of(rows, g->step, g->nbuckets) : -1;
        if (k[ERT_STATS_ROWS + x] != rows || k[ERT_STATS_BUCKET + x] != bucket)
            return engine_fail(e, ERT_INTERNAL,
                               "self-check (%d rows, everybody at exit %d): stage %d counted "
                               "%d rows in bucket %d, expected %d in bucket %d",
                               R, want_exit, x, (int)k[ERT_STATS_ROWS + x],
                               (int)k[ERT_STATS_BUCKET + x], rows, bucket);
    }
    return ERT_OK;
fail:
    return st;
}

/* ---- setup --------------------------------------------------------------------------------- */

static ert_status graphs_build(ert_engine *e, cuda_ctx *c, graph_state *g)
{
    ert_status st = ERT_OK;
    const ert_model *m = e->model;
    const size_t B = (size_t)g->max_rows;
    const size_t K = (size_t)m->num_classes;
    const int E = c->prog.num_stages;

    for (int i = 0; i < g->nslots; i++) {
        graph_slot *gs = &g->slots[i];
        CUDA_TRY(e, cudaMalloc((void **)&gs->d_rows, sizeof(int)));
        CUDA_TRY(e, cudaMalloc((void **)&gs->d_thr, ERT_MAX_EXITS * sizeof(float)));
        CUDA_TRY(e, cudaMalloc((void **)&gs->d_stats, ERT_STATS_LEN * sizeof(int32_t)));
        CUDA_TRY(e, cudaMalloc((void **)&gs->d_samples, B * sizeof(ert_sample)));
        CUDA_TRY(e, cudaMalloc((void **)&gs->d_logits, B * K * sizeof(float)));
        CUDA_TRY(e, cudaHostAlloc((void **)&gs->h_stats, ERT_STATS_LEN * sizeof(int32_t),
                                  cudaHostAllocDefault));
    }

    /* Warm-up: every body once, eagerly, with every real count 0, so that
     * cuBLAS/cuDNN pick and load their kernels (and the driver loads our
     * modules) outside capture. The activations are zeroed first so the
     * library calls see defined data. */
    for (int i = 0; i < g->nslots; i++) {
        cuda_slot *s = &c->slots[i];
        graph_slot *gs = &g->slots[i];
        size_t act = e->plan.max_act * B * sizeof(float);
        for (int k = 0; k < c->prog.nbuf; k++)
            CUDA_TRY(e, cudaMemsetAsync(s->buf[k], 0, act, s->stream));
        CUDA_TRY(e, cudaMemsetAsync(s->d_count, 0, ERT_MAX_EXITS * sizeof(int), s->stream));
        KERNEL_TRY(e, k_graph_prep(gs->d_rows, 0, gs->d_thr, e->thresholds, E, s->stream));
        ert_switch_args off;
        memset(&off, 0, sizeof off);
        off.stats = gs->d_stats;
        KERNEL_TRY(e, k_graph_root(gs->d_rows, off, s->stream));
        for (int si = 0; si < E; si++)
            for (int b = 0; b < g->nbuckets; b++)
                if ((st = body_enqueue(e, c, g, i, si, ert_bucket_rows(b, g->step, g->max_rows),
                                       1)) != ERT_OK)
                    return st;
        CUDA_TRY(e, cudaStreamSynchronize(s->stream));
    }

    for (int i = 0; i < g->nslots; i++) {
        g->body_nodes = 0;
        if ((st = slot_graph_build(e, c, g, i)) != ERT_OK)
            return st;
    }
    for (int i = 0; i < g->nslots; i++) {
        if ((st = slot_self_check(e, c, g, i, g->max_rows, 0)) != ERT_OK ||
            (st = slot_self_check(e, c, g, i, g->max_rows, 1)) != ERT_OK ||
            (st = slot_self_check(e, c, g, i, 1, 1)) != ERT_OK)
            return st;
    }
    return ERT_OK;
fail:
    return st;
}

ert_status graph_setup(ert_engine *e, cuda_ctx *c)
{
    const int K = e->cfg.graph_buckets;
    const int E = c->prog.num_stages;
    c->graphs = NULL;
    if (K <= 0)
        return ERT_OK;
    if (e->cfg.mode != ERT_MODE_COMPACTED) {
        snprintf(e->note, sizeof e->note,
                 "graphs: not used: %s mode needs no row count on the host",
                 ert_mode_string(e->cfg.mode));
        return ERT_OK;
    }
    if (E < 2) {
        snprintf(e->note, sizeof e->note, "graphs: not used: the model has no early exit");
        return ERT_OK;
    }

    graph_state *g = calloc(1, sizeof *g);
    graph_slot *slots = calloc((size_t)c->nslots, sizeof *slots);
    if (!g || !slots) {
        free(g);
        free(slots);
        snprintf(e->note, sizeof e->note, "graphs: off: out of host memory");
        return ERT_OK;
    }
    g->slots = slots;
    g->nslots = c->nslots;
    g->max_rows = e->cfg.max_batch;
    g->step = ert_bucket_step(g->max_rows, K);
    g->nbuckets = ert_bucket_count(g->max_rows, g->step);
    g->nstages = E;
    for (int s = 0; s < E; s++)
        g->stage_cost[s] = e->plan.stages[s].macs + e->model->exits[s].head_macs;
    c->graphs = g;

    ert_status st = graphs_build(e, c, g);
    if (st == ERT_OK) {
        snprintf(e->note, sizeof e->note,
                 "graphs: on: %d buckets of %d rows (max_batch %d), %d switches per graph, "
                 "%zu nodes in the bodies, %d graph(s)",
                 g->nbuckets, g->step, g->max_rows, E, g->body_nodes, g->nslots);
        return ERT_OK;
    }

    /* fall back: the reason is the message the failure left */
    snprintf(e->note, sizeof e->note, "graphs: off: %.480s", e->err);
    e->err[0] = '\0';
    graph_free(c);
    /* a sticky error (the device itself failed) leaves no path to fall
       back to: then the engine cannot be created */
    for (int i = 0; i < c->nslots; i++) {
        cudaError_t r = cudaStreamSynchronize(c->slots[i].stream);
        if (r != cudaSuccess) {
            (void)cudaGetLastError();
            return engine_fail(e, ERT_CUDA, "cuda graphs: the device failed (%s) after %.400s",
                               cudaGetErrorString(r), e->note);
        }
    }
    (void)cudaGetLastError();
    return ERT_OK;
}

/* ---- calls -------------------------------------------------------------------------------- */

ert_status graph_run(ert_engine *e, cuda_ctx *c, const cuda_call *k, int batch, int *njobs)
{
    ert_status st = ERT_OK;
    graph_state *g = c->graphs;
    const size_t K = (size_t)e->model->num_classes;
    const size_t in_size = shape_size(e->model->input);
    const int nj = c->nslots < batch ? c->nslots : batch;
    /* results straight from each graph's arrays to where the call wants them */
    ert_sample *samples = k->want_host ? c->h_samples : k->samples;
    float *logits = k->logits ? (k->want_host ? c->h_logits : k->logits) : NULL;
    *njobs = nj;
    for (int j = 0; j < nj; j++) {
        cuda_slot *s = &c->slots[j];
        graph_slot *gs = &g->slots[j];
        int off, len;
        cuda_job_span(batch, nj, j, &off, &len);
        const float *src = k->d_input ? k->d_input : c->h_input;
        CUDA_TRY(e, cudaMemcpyAsync(s->buf[c->prog.stages[0].in_buf], src + (size_t)off * in_size,
                                    (size_t)len * in_size * sizeof(float), cudaMemcpyDefault,
                                    s->stream));
        if ((st = graph_launch(e, c, j, len, e->thresholds)) != ERT_OK)
            return st;
        CUDA_TRY(e, cudaMemcpyAsync(samples + off, gs->d_samples, (size_t)len * sizeof(ert_sample),
                                    cudaMemcpyDefault, s->stream));
        if (logits)
            CUDA_TRY(e, cudaMemcpyAsync(logits + (size_t)off * K, gs->d_logits,
                                        (size_t)len * K * sizeof(float), cudaMemcpyDefault,
                                        s->stream));
    }
    return ERT_OK;
fail:
    return st;
}

void graph_figures(const cuda_ctx *c, int nj, ert_result *out)
{
    const graph_state *g = c->graphs;
    uint64_t macs = 0, pad_macs = 0;
    int pad = 0;
    for (int s = 0; s < ERT_MAX_EXITS; s++)
        out->bucket[s] = -1;
    for (int j = 0; j < nj; j++) {
        const int32_t *k = g->slots[j].h_stats;
        uint64_t pm = 0;
        pad += ert_padding_rows(k, g->nstages, g->step, g->max_rows, g->stage_cost, &pm);
        pad_macs += pm;
        for (int s = 0; s < g->nstages; s++) {
            macs += (uint64_t)k[ERT_STATS_ROWS + s] * g->stage_cost[s];
            if (k[ERT_STATS_BUCKET + s] > out->bucket[s])
                out->bucket[s] = k[ERT_STATS_BUCKET + s];
        }
    }
    out->macs_executed = macs;
    out->macs_padding = pad_macs;
    out->padding_rows = pad;
    out->host_waits = 0;
}

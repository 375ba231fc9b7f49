/* triton_backend.c - exitrt as a Triton Inference Server backend
 * (libtriton_exitrt.so; docs/SERVING.md).
 *
 * Model: config.pbtxt names the exitrt model directory and the mode
 * (config.h); TRITONBACKEND_ModelInitialize loads the model once, checks the
 * configuration against it, and every instance shares it.
 *
 * Instance: one engine (KIND_CPU: the CPU backend; KIND_GPU: the CUDA
 * backend on the instance's device), sized by max_batch_size.
 *
 * Execute, modes full / masked / compacted: the rows of all the requests
 * Triton hands over in one call are gathered into one input and run as one
 * ert_infer batch (a request whose rows would overflow max_batch_size starts
 * a new batch, which Triton's dynamic batcher does not cause); every
 * request then gets its own response. A bad request gets an error response
 * and is left out of the batch.
 *
 * Execute, mode refill: the instance keeps an ert_stream. Each request's
 * rows are submitted with ids (slot << 32 | row), where slot indexes the
 * table of requests in flight; the backend keeps ownership of a request
 * after execute returns, and sends its response, reports its statistics
 * and releases it when its last row has finished. The stream only works
 * inside submit, poll and flush, so: execute submits and then polls (full
 * stage batches run at once, partial ones once their oldest row is
 * refill_deadline_ms old), and a flusher thread flushes the stream when
 * rows are still in flight refill_deadline_ms after the last execute, so
 * that no request waits for traffic that may never come. A mutex guards the
 * stream and the table (execute and the flusher).
 *
 * Counters: per instance, samples per exit and MACs executed against the
 * full network's, logged when the instance is finalized and, where the
 * server has metrics on, exported as counters (exitrt_exit_samples_total,
 * exitrt_macs_executed_total, exitrt_macs_full_total).
 */
#include <errno.h>
#include <stdarg.h>
#include <time.h>

#include "triton_internal.h"

/* ---- metrics (optional: the server may have them off) ----------------------------------- */

static TRITONSERVER_MetricFamily *g_fam_exit, *g_fam_macs_exec, *g_fam_macs_full;

static void metrics_init(void)
{
    TRITONSERVER_Error *e = TRITONSERVER_MetricFamilyNew(
        &g_fam_exit, TRITONSERVER_METRIC_KIND_COUNTER, "exitrt_exit_samples_total",
        "Samples that left the network at each exit");
    if (!e)
        e = TRITONSERVER_MetricFamilyNew(&g_fam_macs_exec, TRITONSERVER_METRIC_KIND_COUNTER,
                                         "exitrt_macs_executed_total",
                                         "Multiply-accumulates executed");
    if (!e)
        e = TRITONSERVER_MetricFamilyNew(&g_fam_macs_full, TRITONSERVER_METRIC_KIND_COUNTER,
                                         "exitrt_macs_full_total",
                                         "Multiply-accumulates the full network would have "
                                         "executed for the same samples");
    if (e) {
        LOG_INFO("exitrt: custom metrics off (%s); the exit counters are logged at shutdown",
                 TRITONSERVER_ErrorMessage(e));
        TRITONSERVER_ErrorDelete(e);
        if (g_fam_macs_exec)
            TRITONSERVER_MetricFamilyDelete(g_fam_macs_exec);
        if (g_fam_exit)
            TRITONSERVER_MetricFamilyDelete(g_fam_exit);
        g_fam_exit = g_fam_macs_exec = g_fam_macs_full = NULL;
    }
}

static void metrics_fini(void)
{
    TRITONSERVER_MetricFamily *f[3] = {g_fam_exit, g_fam_macs_exec, g_fam_macs_full};
    for (int i = 0; i < 3; i++)
        if (f[i])
            log_drop(TRITONSERVER_MetricFamilyDelete(f[i]), "deleting a metric family");
    g_fam_exit = g_fam_macs_exec = g_fam_macs_full = NULL;
}

/* A counter with labels model, instance (and exit when not NULL); NULL when
 * metrics are off or the call fails. */
static TRITONSERVER_Metric *metric_new(TRITONSERVER_MetricFamily *fam, const char *model,
                                       const char *instance, const char *exit)
{
    if (!fam)
        return NULL;
    const TRITONSERVER_Parameter *labels[3];
    TRITONSERVER_Parameter *own[3] = {
        TRITONSERVER_ParameterNew("model", TRITONSERVER_PARAMETER_STRING, model),
        TRITONSERVER_ParameterNew("instance", TRITONSERVER_PARAMETER_STRING, instance),
        exit ? TRITONSERVER_ParameterNew("exit", TRITONSERVER_PARAMETER_STRING, exit) : NULL};
    int n = exit ? 3 : 2;
    TRITONSERVER_Metric *m = NULL;
    int ok = 1;
    for (int i = 0; i < n; i++) {
        labels[i] = own[i];
        ok &= own[i] != NULL;
    }
    if (ok)
        log_drop(TRITONSERVER_MetricNew(&m, fam, labels, (uint64_t)n), "creating a metric");
    for (int i = 0; i < n; i++)
        if (own[i])
            TRITONSERVER_ParameterDelete(own[i]);
    return m;
}


/* ---- backend ---------------------------------------------------------------------------- */

TRITONSERVER_Error *TRITONBACKEND_Initialize(TRITONBACKEND_Backend *backend)
{
    const char *name = "exitrt";
    TRITONSERVER_Error *e = TRITONBACKEND_BackendName(backend, &name);
    if (e)
        return e;
    uint32_t major = 0, minor = 0;
    if ((e = TRITONBACKEND_ApiVersion(&major, &minor)))
        return e;
    if (major != ERT_TRITON_BACKEND_API_MAJOR || minor < ERT_TRITON_BACKEND_API_MINOR) {
        LOG_ERROR("exitrt: the server's backend API is %u.%u; this backend needs %d.x with x >= "
                  "%d (built for %d.%d, Triton 24.10 / 2.51 or newer)",
                  major, minor, ERT_TRITON_BACKEND_API_MAJOR, ERT_TRITON_BACKEND_API_MINOR,
                  ERT_TRITON_BACKEND_API_MAJOR, ERT_TRITON_BACKEND_API_MINOR);
        return errf(TRITONSERVER_ERROR_UNSUPPORTED,
                    "exitrt backend: server backend API %u.%u is not compatible with %d.%d", major,
                    minor, ERT_TRITON_BACKEND_API_MAJOR, ERT_TRITON_BACKEND_API_MINOR);
    }
    metrics_init();
    LOG_INFO("exitrt: backend '%s' loaded: exitrt %s, backend API %d.%d (server %u.%u), CUDA "
             "backend %s",
             name, ert_version(), ERT_TRITON_BACKEND_API_MAJOR, ERT_TRITON_BACKEND_API_MINOR, major,
             minor, ert_cuda_available() ? "available" : "not available");
    return NULL;
}

TRITONSERVER_Error *TRITONBACKEND_Finalize(TRITONBACKEND_Backend *backend)
{
    (void)backend;
    metrics_fini();
    return NULL;
}

/* ---- model -------------------------------------------------------------------------------- */

TRITONSERVER_Error *TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model *model)
{
    const char *name = "?", *folder = NULL;
    uint64_t version = 0;
    TRITONBACKEND_ArtifactType at;
    TRITONSERVER_Error *e;
    if ((e = TRITONBACKEND_ModelName(model, &name)) ||
        (e = TRITONBACKEND_ModelVersion(model, &version)) ||
        (e = TRITONBACKEND_ModelRepository(model, &at, &folder)))
        return e;
    if (at != TRITONBACKEND_ARTIFACT_FILESYSTEM || !folder)
        return errf(TRITONSERVER_ERROR_UNSUPPORTED,
                    "exitrt: model '%s': only a model repository on a file system is supported",
                    name);
    TRITONSERVER_Message *msg = NULL;
    if ((e = TRITONBACKEND_ModelConfig(model, 1, &msg)))
        return e;
    const char *json = NULL;
    size_t len = 0;
    if ((e = TRITONSERVER_MessageSerializeToJson(msg, &json, &len))) {
        TRITONSERVER_MessageDelete(msg);
        return e;
    }
    if (TRITONSERVER_LogIsEnabled(TRITONSERVER_LOG_VERBOSE))
        logf_(TRITONSERVER_LOG_VERBOSE, __LINE__, "exitrt: model '%s' configuration: %.*s", name,
              (int)(len < 1800 ? len : 1800), json);
    model_state *ms = calloc(1, sizeof *ms);
    if (!ms) {
        TRITONSERVER_MessageDelete(msg);
        return errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: model '%s': out of memory", name);
    }
    snprintf(ms->name, sizeof ms->name, "%s", name);
    char why[1024];
    int rc = ert_triton_config_parse(json, len, folder, version, &ms->cfg, why, sizeof why);
    log_drop(TRITONSERVER_MessageDelete(msg), "deleting the model configuration");
    if (rc) {
        free(ms);
        return errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: model '%s': config.pbtxt: %s", name,
                    why);
    }
    ert_error err = {{0}};
    ert_status st = ert_model_load(ms->cfg.model_path, &ms->model, &err);
    if (st != ERT_OK) {
        e = errf(TRITONSERVER_ERROR_INVALID_ARG,
                 "exitrt: model '%s': cannot load the exitrt "
                 "model (parameter model_path, relative to the version folder): %s",
                 name, err.msg[0] ? err.msg : ert_status_string(st));
        free(ms);
        return e;
    }
    if (ert_triton_config_check_model(&ms->cfg, ms->model, ms->exit_index, why, sizeof why)) {
        ert_model_free(ms->model);
        free(ms);
        return errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: model '%s': config.pbtxt: %s", name,
                    why);
    }
    ms->E = ert_model_num_exits(ms->model);
    ms->K = ert_model_num_classes(ms->model);
    ms->per = ert_model_input_size(ms->model);
    if ((e = TRITONBACKEND_ModelSetState(model, ms))) {
        ert_model_free(ms->model);
        free(ms);
        return e;
    }
    static const char *modes[] = {"full", "masked", "compacted"};
    LOG_INFO("exitrt: model '%s' version %" PRIu64 ": %s, mode %s, max_batch_size %d, %d exits, "
             "%d classes",
             name, version, ms->cfg.model_path, ms->cfg.refill ? "refill" : modes[ms->cfg.mode],
             ms->cfg.max_batch, ms->E, ms->K);
    return NULL;
}

TRITONSERVER_Error *TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model *model)
{
    void *p = NULL;
    TRITONSERVER_Error *e = TRITONBACKEND_ModelState(model, &p);
    if (e)
        return e;
    model_state *ms = p;
    if (ms) {
        ert_model_free(ms->model);
        free(ms);
    }
    return NULL;
}

/* ---- instance ---------------------------------------------------------------------------- */


static void instance_free(instance_state *is)
{
    if (!is)
        return;
    if (is->have_thread) {
        pthread_mutex_lock(&is->mu);
        is->stop = 1;
        pthread_cond_broadcast(&is->cv);
        pthread_mutex_unlock(&is->mu);
        pthread_join(is->flusher, NULL);
    }
    if (is->have_sync) {
        pthread_mutex_destroy(&is->mu);
        pthread_cond_destroy(&is->cv);
    }
    for (int i = 0; i < ERT_MAX_EXITS; i++)
        if (is->m_exit[i])
            log_drop(TRITONSERVER_MetricDelete(is->m_exit[i]), "deleting a metric");
    if (is->m_macs_exec)
        log_drop(TRITONSERVER_MetricDelete(is->m_macs_exec), "deleting a metric");
    if (is->m_macs_full)
        log_drop(TRITONSERVER_MetricDelete(is->m_macs_full), "deleting a metric");
    for (int i = 0; is->pend && i < is->npend; i++) {
        free(is->pend[i].samples);
        free(is->pend[i].logits);
    }
    free(is->pend);
    free(is->free_slots);
    free(is->res);
    free(is->res_logits);
    free(is->ids);
    ert_stream_free(is->stream);
    ert_engine_free(is->engine);
    free(is->in);
    free(is->samples);
    free(is->logits);
    free(is);
}

TRITONSERVER_Error *TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance *instance)
{
    const char *name = "?";
    TRITONSERVER_InstanceGroupKind kind;
    int32_t device = 0;
    TRITONBACKEND_Model *model;
    void *p = NULL;
    TRITONSERVER_Error *e;
    if ((e = TRITONBACKEND_ModelInstanceName(instance, &name)) ||
        (e = TRITONBACKEND_ModelInstanceKind(instance, &kind)) ||
        (e = TRITONBACKEND_ModelInstanceDeviceId(instance, &device)) ||
        (e = TRITONBACKEND_ModelInstanceModel(instance, &model)) ||
        (e = TRITONBACKEND_ModelState(model, &p)))
        return e;
    model_state *ms = p;
    const ert_triton_config *c = &ms->cfg;
    instance_state *is = calloc(1, sizeof *is);
    if (!is)
        return errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: instance %s: out of memory", name);
    is->inst = instance;
    is->ms = ms;
    snprintf(is->name, sizeof is->name, "%s", name);

    ert_engine_config ec = ert_engine_config_default();
    ec.mode = c->mode;
    ec.max_batch = c->max_batch;
    ec.threads = c->threads;
    ec.graph_buckets = 0;
    const char *kind_s = "cpu";
    if (kind == TRITONSERVER_INSTANCEGROUPKIND_GPU) {
        if (!ert_cuda_available()) {
            instance_free(is);
            return errf(TRITONSERVER_ERROR_UNAVAILABLE,
                        "exitrt: instance %s: KIND_GPU, but this exitrt build has no CUDA "
                        "backend or no usable CUDA device (use KIND_CPU)",
                        name);
        }
        ec.backend = ERT_BACKEND_CUDA;
        ec.device = device;
        kind_s = "gpu";
    } else if (kind == TRITONSERVER_INSTANCEGROUPKIND_CPU) {
        ec.backend = ERT_BACKEND_CPU;
    } else {
        ec.backend = ERT_BACKEND_AUTO; /* KIND_MODEL: the library picks */
        kind_s = "model";
    }
    ert_error err = {{0}};
    ert_status st = ert_engine_create(ms->model, &ec, &is->engine, &err);
    if (st != ERT_OK) {
        instance_free(is);
        return errf(TRITONSERVER_ERROR_UNAVAILABLE,
                    "exitrt: instance %s: cannot create the "
                    "engine: %s",
                    name, err.msg[0] ? err.msg : ert_status_string(st));
    }
    for (int t = 0; t < c->num_thresholds; t++) {
        if (ert_engine_set_threshold(is->engine, ms->exit_index[t], c->threshold_value[t]) !=
            ERT_OK) {
            e = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: instance %s: threshold %s: %s", name,
                     c->threshold_exit[t], ert_engine_error(is->engine));
            instance_free(is);
            return e;
        }
    }
    size_t B = (size_t)c->max_batch;
    is->in = malloc(B * ms->per * sizeof(float));
    is->samples = malloc(B * sizeof *is->samples);
    is->logits = malloc(B * (size_t)ms->K * sizeof(float));
    if (!is->in || !is->samples || !is->logits) {
        instance_free(is);
        return errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: instance %s: out of memory", name);
    }

    if (c->refill) {
        ert_stream_config sc = ert_stream_config_default();
        sc.batch = c->refill_batch ? c->refill_batch : c->max_batch;
        /* room for a partial batch in every stage plus a full one, and for a
         * whole request of max_batch_size rows beside what is in flight */
        int q1 = (ms->E + 1 > 4 ? ms->E + 1 : 4) * sc.batch, q2 = 2 * c->max_batch;
        sc.queue = q1 > q2 ? q1 : q2;
        sc.deadline_ms = c->refill_deadline_ms;
        if ((st = ert_stream_create(is->engine, &sc, &is->stream, &err)) != ERT_OK) {
            instance_free(is);
            return errf(TRITONSERVER_ERROR_UNAVAILABLE,
                        "exitrt: instance %s: cannot create the "
                        "refill stream: %s",
                        name, err.msg[0] ? err.msg : ert_status_string(st));
        }
        is->npend = sc.queue; /* each request in flight holds >= 1 admitted row */
        is->res_cap = sc.queue;
        is->pend = calloc((size_t)is->npend, sizeof *is->pend);
        is->free_slots = malloc((size_t)is->npend * sizeof *is->free_slots);
        is->res = malloc((size_t)is->res_cap * sizeof *is->res);
        is->res_logits = malloc((size_t)is->res_cap * (size_t)ms->K * sizeof(float));
        is->ids = malloc(B * sizeof *is->ids);
        if (!is->pend || !is->free_slots || !is->res || !is->res_logits || !is->ids) {
            instance_free(is);
            return errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: instance %s: out of memory", name);
        }
        for (int i = 0; i < is->npend; i++)
            is->free_slots[i] = is->npend - 1 - i;
        is->nfree = is->npend;
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        int r1 = pthread_mutex_init(&is->mu, NULL), r2 = pthread_cond_init(&is->cv, &ca);
        pthread_condattr_destroy(&ca);
        if (r1 || r2) {
            if (!r1)
                pthread_mutex_destroy(&is->mu);
            if (!r2)
                pthread_cond_destroy(&is->cv);
            instance_free(is);
            return errf(TRITONSERVER_ERROR_INTERNAL,
                        "exitrt: instance %s: cannot create a "
                        "mutex",
                        name);
        }
        is->have_sync = 1;
        if (pthread_create(&is->flusher, NULL, flusher_main, is) != 0) {
            instance_free(is);
            return errf(TRITONSERVER_ERROR_INTERNAL,
                        "exitrt: instance %s: cannot start the "
                        "flusher thread",
                        name);
        }
        is->have_thread = 1;
        is->last = (ert_stream_stats)ERT_STREAM_STATS_INIT;
        (void)ert_stream_get_stats(is->stream, &is->last);
    }

    for (int x = 0; x < ms->E; x++)
        is->m_exit[x] = metric_new(g_fam_exit, ms->name, name, ert_model_exit_name(ms->model, x));
    is->m_macs_exec = metric_new(g_fam_macs_exec, ms->name, name, NULL);
    is->m_macs_full = metric_new(g_fam_macs_full, ms->name, name, NULL);

    if ((e = TRITONBACKEND_ModelInstanceSetState(instance, is))) {
        instance_free(is);
        return e;
    }
    const char *note = ert_engine_note(is->engine);
    LOG_INFO(
        "exitrt: instance %s (%s, device %d): %s engine, mode %s, max_batch %d, threads %d%s%s",
        name, kind_s, (int)device, ert_backend_string(ert_engine_backend(is->engine)),
        c->refill ? "refill" : ert_mode_string(c->mode), c->max_batch, c->threads,
        note[0] ? "; " : "", note);
    return NULL;
}

/* The instance's counters as one log line. */
static void log_counters(instance_state *is)
{
    model_state *ms = is->ms;
    /* refill: the stream's counters on top of those of failed streams */
    if (is->stream) {
        ert_stream_stats ss = ERT_STREAM_STATS_INIT;
        ert_stream_get_stats(is->stream, &ss);
        for (int x = 0; x < ms->E; x++)
            is->exit_counts[x] += ss.exit_counts[x];
        is->macs_executed += ss.macs_executed;
        is->macs_full += ss.macs_full;
    }
    uint64_t total = 0;
    for (int x = 0; x < ms->E; x++)
        total += is->exit_counts[x];
    char exits[ERT_MAX_EXITS * 96] = "";
    for (int x = 0; x < ms->E; x++) {
        size_t l = strlen(exits);
        snprintf(exits + l, sizeof exits - l, "%s%s %" PRIu64 " (%.1f%%)", x ? ", " : "",
                 ert_model_exit_name(ms->model, x), is->exit_counts[x],
                 total ? 100.0 * (double)is->exit_counts[x] / (double)total : 0.0);
    }
    double share = is->macs_full ? (double)is->macs_executed / (double)is->macs_full : 0.0;
    LOG_INFO("exitrt: instance %s: %" PRIu64 " requests (%" PRIu64 " rejected), %" PRIu64
             " samples in %" PRIu64 " %s; exits: %s; MACs executed %" PRIu64 " of %" PRIu64
             " full (%.1f%%)",
             is->name, is->requests, is->bad_requests, total, is->batches,
             is->stream ? "executes" : "batches", exits, is->macs_executed, is->macs_full,
             100.0 * share);
}


TRITONSERVER_Error *TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance *instance)
{
    void *p = NULL;
    TRITONSERVER_Error *e = TRITONBACKEND_ModelInstanceState(instance, &p);
    if (e)
        return e;
    instance_state *is = p;
    if (!is)
        return NULL;
    if (is->have_thread) {
        pthread_mutex_lock(&is->mu);
        is->stop = 1;
        pthread_cond_broadcast(&is->cv);
        pthread_mutex_unlock(&is->mu);
        pthread_join(is->flusher, NULL);
        is->have_thread = 0;
    }
    if (is->stream && is->rows_in_flight > 0) {
        LOG_WARN("exitrt: instance %s: %ld rows still in flight at shutdown: flushing", is->name,
                 is->rows_in_flight);
        refill_drain(is, 1);
    }
    log_counters(is);
    instance_free(is);
    return NULL;
}

TRITONSERVER_Error *TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance *instance,
                                                       TRITONBACKEND_Request **requests,
                                                       const uint32_t request_count)
{
    void *p = NULL;
    TRITONSERVER_Error *e = TRITONBACKEND_ModelInstanceState(instance, &p);
    if (e)
        return e; /* Triton keeps the requests and fails them */
    instance_state *is = p;
    if (is->stream || is->have_thread)
        execute_refill(is, requests, request_count);
    else
        execute_batch(is, requests, request_count);
    return NULL;
}

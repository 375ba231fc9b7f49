/* backend.c - exitrt as a Triton Inference Server backend
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
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <exitrt.h>

#include "config.h"
#include "triton_api.h"

/* ---- helpers ------------------------------------------------------------------------ */

static void logf_(TRITONSERVER_LogLevel level, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logf_(TRITONSERVER_LogLevel level, int line, const char *fmt, ...)
{
    if (!TRITONSERVER_LogIsEnabled(level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    TRITONSERVER_Error *e = TRITONSERVER_LogMessage(level, __FILE__, line, msg);
    if (e)
        TRITONSERVER_ErrorDelete(e);
}
#define LOG_INFO(...) logf_(TRITONSERVER_LOG_INFO, __LINE__, __VA_ARGS__)
#define LOG_WARN(...) logf_(TRITONSERVER_LOG_WARN, __LINE__, __VA_ARGS__)
#define LOG_ERROR(...) logf_(TRITONSERVER_LOG_ERROR, __LINE__, __VA_ARGS__)

static TRITONSERVER_Error *errf(TRITONSERVER_Error_Code code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static TRITONSERVER_Error *errf(TRITONSERVER_Error_Code code, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return TRITONSERVER_ErrorNew(code, msg);
}

/* Logs and drops an error a call returned (where nothing better can be done). */
static void log_drop(TRITONSERVER_Error *e, const char *what)
{
    if (!e)
        return;
    LOG_ERROR("exitrt: %s: %s", what, TRITONSERVER_ErrorMessage(e));
    TRITONSERVER_ErrorDelete(e);
}

/* ns of the monotonic clock (what steady_clock reads on Linux). */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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

static void metric_add(TRITONSERVER_Metric *m, double v)
{
    if (m && v > 0)
        log_drop(TRITONSERVER_MetricIncrement(m, v), "incrementing a metric");
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
                  "%d (built for %d.%d, Triton 24.10 / 2.51 or newer)", major, minor,
                  ERT_TRITON_BACKEND_API_MAJOR, ERT_TRITON_BACKEND_API_MINOR,
                  ERT_TRITON_BACKEND_API_MAJOR, ERT_TRITON_BACKEND_API_MINOR);
        return errf(TRITONSERVER_ERROR_UNSUPPORTED,
                    "exitrt backend: server backend API %u.%u is not compatible with %d.%d",
                    major, minor, ERT_TRITON_BACKEND_API_MAJOR, ERT_TRITON_BACKEND_API_MINOR);
    }
    metrics_init();
    LOG_INFO("exitrt: backend '%s' loaded: exitrt %s, backend API %d.%d (server %u.%u), CUDA "
             "backend %s", name, ert_version(), ERT_TRITON_BACKEND_API_MAJOR,
             ERT_TRITON_BACKEND_API_MINOR, major, minor,
             ert_cuda_available() ? "available" : "not available");
    return NULL;
}

TRITONSERVER_Error *TRITONBACKEND_Finalize(TRITONBACKEND_Backend *backend)
{
    (void)backend;
    metrics_fini();
    return NULL;
}

/* ---- model -------------------------------------------------------------------------------- */

typedef struct model_state {
    char name[256];
    ert_triton_config cfg;
    ert_model *model;
    int exit_index[ERT_MAX_EXITS]; /* per cfg threshold */
    int E, K;
    size_t per; /* floats per row */
} model_state;

TRITONSERVER_Error *TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model *model)
{
    const char *name = "?", *folder = NULL;
    uint64_t version = 0;
    TRITONBACKEND_ArtifactType at;
    TRITONSERVER_Error *e;
    if ((e = TRITONBACKEND_ModelName(model, &name)) || (e = TRITONBACKEND_ModelVersion(model, &version)) ||
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
        e = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: model '%s': cannot load the exitrt "
                 "model (parameter model_path, relative to the version folder): %s", name,
                 err.msg[0] ? err.msg : ert_status_string(st));
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
             "%d classes", name, version, ms->cfg.model_path,
             ms->cfg.refill ? "refill" : modes[ms->cfg.mode], ms->cfg.max_batch, ms->E, ms->K);
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

static void *flusher_main(void *arg);

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
                        "backend or no usable CUDA device (use KIND_CPU)", name);
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
        return errf(TRITONSERVER_ERROR_UNAVAILABLE, "exitrt: instance %s: cannot create the "
                    "engine: %s", name, err.msg[0] ? err.msg : ert_status_string(st));
    }
    for (int t = 0; t < c->num_thresholds; t++) {
        if (ert_engine_set_threshold(is->engine, ms->exit_index[t], c->threshold_value[t]) !=
            ERT_OK) {
            e = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: instance %s: threshold %s: %s",
                     name, c->threshold_exit[t], ert_engine_error(is->engine));
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
            return errf(TRITONSERVER_ERROR_UNAVAILABLE, "exitrt: instance %s: cannot create the "
                        "refill stream: %s", name, err.msg[0] ? err.msg : ert_status_string(st));
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
            return errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: instance %s: cannot create a "
                        "mutex", name);
        }
        is->have_sync = 1;
        if (pthread_create(&is->flusher, NULL, flusher_main, is) != 0) {
            instance_free(is);
            return errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: instance %s: cannot start the "
                        "flusher thread", name);
        }
        is->have_thread = 1;
        ert_stream_get_stats(is->stream, &is->last);
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
    LOG_INFO("exitrt: instance %s (%s, device %d): %s engine, mode %s, max_batch %d, threads %d%s%s",
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
        ert_stream_stats ss;
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
             " full (%.1f%%)", is->name, is->requests, is->bad_requests, total, is->batches,
             is->stream ? "executes" : "batches", exits, is->macs_executed, is->macs_full,
             100.0 * share);
}

static void refill_drain(instance_state *is, int flush);

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

/* ---- requests and responses ------------------------------------------------------------- */

/* Reads a request's input (gathering its buffers into dst, room for
 * max_batch rows) and which outputs it asks for. Returns its rows, or -1
 * with the reason in *fail (the caller owns it). rows_out only is filled
 * when dst is NULL (to size the batch first). */
static long read_request(instance_state *is, TRITONBACKEND_Request *req, float *dst,
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
        *fail = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: unknown input '%s' (the model's "
                     "input is %s)", name, c->input_name);
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
            *fail = errf(TRITONSERVER_ERROR_UNSUPPORTED, "exitrt: input %s is in GPU memory; "
                         "send it in CPU memory", c->input_name);
            return -1;
        }
        if (sz > bytes - off) {
            *fail = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: input %s: buffers hold more "
                         "than its %" PRIu64 " bytes", c->input_name, bytes);
            return -1;
        }
        if (sz)
            memcpy((char *)dst + off, buf, (size_t)sz);
        off += sz;
    }
    if (off != bytes) {
        *fail = errf(TRITONSERVER_ERROR_INVALID_ARG, "exitrt: input %s: buffers hold %" PRIu64
                     " of its %" PRIu64 " bytes", c->input_name, off, bytes);
        return -1;
    }
    return rows;
}

/* Creates and sends the response of req: the wanted outputs of n samples,
 * or the error fail (which stays the caller's). Returns whether a
 * successful response went out. */
static int respond(instance_state *is, TRITONBACKEND_Request *req, const int *want,
                   const ert_sample *s, const float *logits, long n, TRITONSERVER_Error *fail)
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
            own = errf(TRITONSERVER_ERROR_UNSUPPORTED, "exitrt: output %s: the server offers GPU "
                       "memory only", ert_triton_output_names[o]);
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
static void finish(instance_state *is, TRITONBACKEND_Request *req, int ok, uint64_t t0,
                   uint64_t t1, uint64_t t2, uint64_t t3)
{
    log_drop(TRITONBACKEND_ModelInstanceReportStatistics(is->inst, req, ok, t0, t1, t2, t3),
             "reporting statistics");
    log_drop(TRITONBACKEND_RequestRelease(req, TRITONSERVER_REQUEST_RELEASE_ALL),
             "releasing a request");
}

/* A request that cannot run: error response, failure statistics, release. */
static void reject(instance_state *is, TRITONBACKEND_Request *req, TRITONSERVER_Error *why)
{
    is->bad_requests++;
    respond(is, req, NULL, NULL, NULL, 0, why);
    TRITONSERVER_ErrorDelete(why);
    uint64_t t = now_ns();
    finish(is, req, 0, t, t, t, t);
}

/* ---- execute: full, masked, compacted --------------------------------------------------- */

typedef struct member {
    TRITONBACKEND_Request *req;
    long off, n;
    int want[ERT_TRITON_NUM_OUTPUTS];
} member;

/* One ert_infer over the gathered rows of g[0 .. ng), then a response each. */
static void run_batch(instance_state *is, member *g, int ng, long rows, uint64_t exec_start)
{
    model_state *ms = is->ms;
    int any_logits = 0;
    for (int i = 0; i < ng; i++)
        any_logits |= g[i].want[ERT_TRITON_LOGITS];
    uint64_t cs = now_ns();
    ert_result res;
    memset(&res, 0, sizeof res);
    res.samples = is->samples;
    res.logits = any_logits ? is->logits : NULL;
    ert_status st = rows > 0 ? ert_infer(is->engine, is->in, (int)rows, &res) : ERT_OK;
    uint64_t ce = now_ns();
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
    uint64_t ee = now_ns();
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

static void execute_batch(instance_state *is, TRITONBACKEND_Request **requests, uint32_t count)
{
    uint64_t exec_start = now_ns();
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
            exec_start = now_ns();
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
    uint64_t ce = now_ns();
    int ok = respond(is, p->req, p->want, p->samples, p->logits, p->n, fail);
    uint64_t ee = now_ns();
    finish(is, p->req, ok, p->exec_start, p->compute_start ? p->compute_start : p->exec_start, ce,
           ee);
    pending_free(is, slot);
}

/* The stream failed: every request in flight gets an error, and a new
 * stream replaces the old one (whose queues still hold their rows). */
static void refill_reset(instance_state *is, const char *why)
{
    LOG_ERROR("exitrt: instance %s: refill stream failed: %s; failing %ld rows in flight and "
              "starting a new stream", is->name, why, is->rows_in_flight);
    TRITONSERVER_Error *fail = errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: inference failed: %s",
                                    why);
    for (int i = 0; i < is->npend; i++)
        if (is->pend[i].req)
            pending_complete(is, i, fail);
    TRITONSERVER_ErrorDelete(fail);
    is->rows_in_flight = 0;
    ert_stream_stats ss;
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
        LOG_ERROR("exitrt: instance %s: cannot create a new refill stream: %s", is->name,
                  err.msg);
    else
        ert_stream_get_stats(is->stream, &is->last);
}

/* Moves finished rows to their requests (flushing first when asked), until
 * nothing more is finished; completes the requests whose last row came.
 * Called with the mutex held. */
static void refill_drain(instance_state *is, int flush)
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
                LOG_ERROR("exitrt: instance %s: the stream returned unknown id %" PRIu64,
                          is->name, id);
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
    ert_stream_stats ss;
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
static void *flusher_main(void *arg)
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
        uint64_t t = now_ns() + wait_ns;
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

static void execute_refill(instance_state *is, TRITONBACKEND_Request **requests, uint32_t count)
{
    model_state *ms = is->ms;
    uint64_t exec_start = now_ns(), first_submit = 0;
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
            uint64_t t = now_ns();
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
        p->logits = want[ERT_TRITON_LOGITS] ? malloc((size_t)n * (size_t)ms->K * sizeof(float))
                                            : NULL;
        if (!p->samples || (want[ERT_TRITON_LOGITS] && !p->logits)) {
            pending_free(is, slot);
            reject(is, req, errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: out of memory"));
            continue;
        }
        for (long i = 0; i < n; i++)
            is->ids[i] = ((uint64_t)slot << 32) | (uint64_t)i;
        p->compute_start = now_ns();
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
            reject(is, req, errf(TRITONSERVER_ERROR_INTERNAL, "exitrt: submit failed: %s",
                                 m[0] ? m : ert_status_string(st)));
            continue;
        }
        is->rows_in_flight += n;
        rows += n;
    }
    uint64_t ce = now_ns();
    refill_drain(is, 0);
    if (rows > 0)
        is->batches++;
    if (is->rows_in_flight > 0)
        pthread_cond_signal(&is->cv);
    pthread_mutex_unlock(&is->mu);
    uint64_t ee = now_ns();
    if (rows > 0)
        log_drop(TRITONBACKEND_ModelInstanceReportBatchStatistics(
                     is->inst, (uint64_t)rows, exec_start, first_submit, ce, ee),
                 "reporting batch statistics");
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

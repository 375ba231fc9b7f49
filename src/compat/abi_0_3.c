/* abi_0_3.c - the entry points of exitrt 0.3, whose structs had no
 * struct_size, for programs built against its header (shared library
 * only: src/pkg/exitrt.map gives them the symbol version EXITRT_0.3, which
 * a program linked to 0.3's unversioned library binds to; a program built
 * now binds to EXITRT_0.4). Each converts the 0.3 layout to this
 * library's and calls the current function; the 0.3 struct's fields are
 * read and written as 0.3 did (nothing else is touched). */
#include <stddef.h>
#include <string.h>

#include "exitrt.h"

/* ---- the 0.3 layouts (exitrt.h at 0.3.0) -------------------------------- */

typedef struct {
    ert_backend backend;
    ert_mode mode;
    int max_batch, threads, device, inflight, graph_buckets;
} config_0_3;

typedef struct {
    ert_sample *samples;
    float *logits;
    int32_t exit_counts[ERT_MAX_EXITS];
    uint64_t macs_executed, macs_full;
    int32_t host_waits, nonfinite_samples, padding_rows;
    int32_t bucket[ERT_MAX_EXITS];
    uint64_t macs_padding;
} result_0_3;

typedef struct {
    ert_sample *samples;
    float *logits;
    int32_t host_waits;
} device_result_0_3;

typedef struct {
    int batch, queue;
    double deadline_ms;
    ert_stream_schedule schedule;
} stream_config_0_3;

typedef struct {
    int32_t num_stages, batch, queue, admitted;
    uint64_t submitted, finished, polled;
    uint64_t exit_counts[ERT_MAX_EXITS], stage_rows[ERT_MAX_EXITS], stage_runs[ERT_MAX_EXITS],
        stage_partial_runs[ERT_MAX_EXITS];
    uint64_t padding_rows, macs_executed, macs_ideal, macs_full, nonfinite_samples;
} stream_stats_0_3;

/* Exported under the 0.3 names only (the version script makes the
 * compat_* names themselves local). */
#define COMPAT(fn, name) __asm__(".symver " #fn ", " #name "@EXITRT_0.3");
#define COMPAT_API __attribute__((visibility("default")))

/* ---- conversions ---------------------------------------------------------- */

static ert_engine_config config_from(const config_0_3 *o)
{
    ert_engine_config c = ERT_ENGINE_CONFIG_INIT;
    c.backend = o->backend;
    c.mode = o->mode;
    c.max_batch = o->max_batch;
    c.threads = o->threads;
    c.device = o->device;
    c.inflight = o->inflight;
    c.graph_buckets = o->graph_buckets;
    return c;
}

/* Every field both ways, so that what the call leaves alone stays as the
 * caller had it. */
#define RESULT_COPY(to, from)                                                    \
    do {                                                                         \
        (to)->samples = (from)->samples;                                         \
        (to)->logits = (from)->logits;                                           \
        memcpy((to)->exit_counts, (from)->exit_counts, sizeof(to)->exit_counts); \
        (to)->macs_executed = (from)->macs_executed;                             \
        (to)->macs_full = (from)->macs_full;                                     \
        (to)->host_waits = (from)->host_waits;                                   \
        (to)->nonfinite_samples = (from)->nonfinite_samples;                     \
        (to)->padding_rows = (from)->padding_rows;                               \
        memcpy((to)->bucket, (from)->bucket, sizeof(to)->bucket);                \
        (to)->macs_padding = (from)->macs_padding;                               \
    } while (0)

/* ---- engine ------------------------------------------------------------------ */

COMPAT(compat_engine_config_default, ert_engine_config_default)
COMPAT_API config_0_3 compat_engine_config_default(void)
{
    ert_engine_config c = ert_engine_config_default();
    config_0_3 o = {c.backend, c.mode,     c.max_batch,    c.threads,
                    c.device,  c.inflight, c.graph_buckets};
    return o;
}

COMPAT(compat_engine_create, ert_engine_create)
COMPAT_API ert_status compat_engine_create(ert_model *m, const config_0_3 *cfg, ert_engine **out,
                                           ert_error *err)
{
    ert_engine_config c;
    if (cfg)
        c = config_from(cfg);
    return ert_engine_create(m, cfg ? &c : NULL, out, err);
}

COMPAT(compat_infer, ert_infer)
COMPAT_API ert_status compat_infer(ert_engine *e, const float *input, int batch, result_0_3 *out)
{
    ert_result r = ERT_RESULT_INIT;
    if (out)
        RESULT_COPY(&r, out);
    ert_status st = ert_infer(e, input, batch, out ? &r : NULL);
    if (out)
        RESULT_COPY(out, &r);
    return st;
}

COMPAT(compat_infer_tokens, ert_infer_tokens)
COMPAT_API ert_status compat_infer_tokens(ert_engine *e, const int32_t *ids, const int32_t *mask,
                                          int batch, result_0_3 *out)
{
    ert_result r = ERT_RESULT_INIT;
    if (out)
        RESULT_COPY(&r, out);
    ert_status st = ert_infer_tokens(e, ids, mask, batch, out ? &r : NULL);
    if (out)
        RESULT_COPY(out, &r);
    return st;
}

COMPAT(compat_infer_device, ert_infer_device)
COMPAT_API ert_status compat_infer_device(ert_engine *e, const void *d_input, int batch,
                                          device_result_0_3 *out, void *cuda_stream)
{
    ert_device_result r = ERT_DEVICE_RESULT_INIT;
    if (out) {
        r.samples = out->samples;
        r.logits = out->logits;
        r.host_waits = out->host_waits;
    }
    ert_status st = ert_infer_device(e, d_input, batch, out ? &r : NULL, cuda_stream);
    if (out)
        out->host_waits = r.host_waits;
    return st;
}

/* ---- stream ------------------------------------------------------------------ */

COMPAT(compat_stream_config_default, ert_stream_config_default)
COMPAT_API stream_config_0_3 compat_stream_config_default(void)
{
    ert_stream_config c = ert_stream_config_default();
    stream_config_0_3 o = {c.batch, c.queue, c.deadline_ms, c.schedule};
    return o;
}

COMPAT(compat_stream_create, ert_stream_create)
COMPAT_API ert_status compat_stream_create(ert_engine *e, const stream_config_0_3 *cfg,
                                           ert_stream **out, ert_error *err)
{
    ert_stream_config c = ERT_STREAM_CONFIG_INIT;
    if (cfg) {
        c.batch = cfg->batch;
        c.queue = cfg->queue;
        c.deadline_ms = cfg->deadline_ms;
        c.schedule = cfg->schedule;
    }
    return ert_stream_create(e, cfg ? &c : NULL, out, err);
}

COMPAT(compat_stream_get_stats, ert_stream_get_stats)
COMPAT_API void compat_stream_get_stats(const ert_stream *s, stream_stats_0_3 *to)
{
    if (!to)
        return;
    ert_stream_stats st = ERT_STREAM_STATS_INIT;
    const ert_stream_stats *from = &st;
    (void)ert_stream_get_stats(s, &st); /* zeros for a NULL stream, as 0.3 gave */
    to->num_stages = from->num_stages;
    to->batch = from->batch;
    to->queue = from->queue;
    to->admitted = from->admitted;
    to->submitted = from->submitted;
    to->finished = from->finished;
    to->polled = from->polled;
    memcpy(to->exit_counts, from->exit_counts, sizeof to->exit_counts);
    memcpy(to->stage_rows, from->stage_rows, sizeof to->stage_rows);
    memcpy(to->stage_runs, from->stage_runs, sizeof to->stage_runs);
    memcpy(to->stage_partial_runs, from->stage_partial_runs, sizeof to->stage_partial_runs);
    to->padding_rows = from->padding_rows;
    to->macs_executed = from->macs_executed;
    to->macs_ideal = from->macs_ideal;
    to->macs_full = from->macs_full;
    to->nonfinite_samples = from->nonfinite_samples;
}

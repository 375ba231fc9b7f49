/* engine.c - the public engine API: argument checks, backend dispatch and
 * the per-batch bookkeeping shared by every backend. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "abi.h"
#include "engine_core.h"
#include "backend_plugin.h"
#include "util.h"
#include "policy.h"

#define ERT_STR_(x) #x
#define ERT_STR(x) ERT_STR_(x)
const char *ert_version(void)
{
    return ERT_STR(ERT_VERSION_MAJOR) "." ERT_STR(ERT_VERSION_MINOR) "." ERT_STR(ERT_VERSION_PATCH);
}

/* Most row-count buckets per stage (each is a captured graph body). */
#define ENGINE_MAX_GRAPH_BUCKETS 64

ert_engine_config ert_engine_config_default(void)
{
    ert_engine_config c = {
        .struct_size = sizeof(ert_engine_config),
        .backend = ERT_BACKEND_AUTO,
        .mode = ERT_MODE_COMPACTED,
        .max_batch = 256,
        .threads = 0,
        .device = 0,
        .inflight = 1,
        .graph_buckets = 0,
        .precision = ERT_PRECISION_FP32,
        .cuda_options = 0,
    };
    return c;
}

/* Every ERT_CUDA_* bit this version knows. */
#define ENGINE_CUDA_OPTIONS ERT_CUDA_FUSED_ATTENTION

/* Largest max_batch accepted: keeps every buffer size far from overflow. */
#define ENGINE_MAX_BATCH (1 << 20)

/* The backend for b, or NULL with the status and message (err) of the
 * refusal: ERT_UNSUPPORTED when the CUDA backend cannot be loaded
 * (backend_plugin.h: not built, not installed, a CUDA library missing),
 * ERT_NO_DEVICE when it is loaded but sees no device. AUTO takes the CUDA
 * backend when it loads and sees a device, else the CPU. */
static const backend_ops *pick_backend(ert_backend b, ert_status *st, ert_error *err)
{
    if (b == ERT_BACKEND_CPU)
        return &cpu_backend_ops;
    char why[ERT_ERROR_LEN];
    const ert_cuda_plugin *p = cuda_plugin_get(why, sizeof why);
    if (p && p->device_count() > 0)
        return p->ops;
    if (b == ERT_BACKEND_AUTO)
        return &cpu_backend_ops;
    if (!p)
        *st = ert_fail(err, ERT_UNSUPPORTED, "ert_engine_create: backend cuda: %s", why);
    else
        *st = ert_fail(err, ERT_NO_DEVICE, "ert_engine_create: no CUDA device is available");
    return NULL;
}

ert_status ert_engine_create(ert_model *m, const ert_engine_config *caller, ert_engine **out,
                             ert_error *err)
{
    if (!out)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_engine_create: out is NULL");
    *out = NULL;
    if (!m || !caller)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_engine_create: %s is NULL",
                        m ? "config" : "model");
    char why[ERT_ERROR_LEN];
    ert_status sized =
        abi_check(&abi_engine_config, caller->struct_size, "ert_engine_create", why, sizeof why);
    if (sized != ERT_OK)
        return ert_fail(err, sized, "%s", why);
    ert_engine_config full = ert_engine_config_default();
    abi_read(&full, sizeof full, caller, caller->struct_size);
    const ert_engine_config *cfg = &full;
    if (m->freed)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_engine_create: the model was freed");
    if (cfg->max_batch < 1 || cfg->max_batch > ENGINE_MAX_BATCH)
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "ert_engine_create: max_batch %d out of range [1, %d]", cfg->max_batch,
                        ENGINE_MAX_BATCH);
    if ((unsigned)cfg->mode > ERT_MODE_COMPACTED)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_engine_create: unknown mode %d",
                        (int)cfg->mode);
    if ((unsigned)cfg->backend > ERT_BACKEND_CUDA)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_engine_create: unknown backend %d",
                        (int)cfg->backend);
    if (cfg->threads < 0 || cfg->threads > 4096 || cfg->inflight < 1 || cfg->inflight > 16 ||
        cfg->device < 0)
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "ert_engine_create: threads must be in [0, 4096], inflight in [1, 16], "
                        "device >= 0");
    if (cfg->graph_buckets < 0 || cfg->graph_buckets > ENGINE_MAX_GRAPH_BUCKETS)
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "ert_engine_create: graph_buckets %d out of range [0, %d]",
                        cfg->graph_buckets, ENGINE_MAX_GRAPH_BUCKETS);
    if ((unsigned)cfg->precision > ERT_PRECISION_TF32)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_engine_create: unknown precision %d",
                        (int)cfg->precision);
    if (cfg->cuda_options & ~ENGINE_CUDA_OPTIONS)
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "ert_engine_create: cuda_options 0x%x has unknown bits (known: 0x%x)",
                        cfg->cuda_options, ENGINE_CUDA_OPTIONS);
    ert_status pick = ERT_OK;
    const backend_ops *ops = pick_backend(cfg->backend, &pick, err);
    if (!ops)
        return pick;

    ert_engine *e = calloc(1, sizeof *e);
    if (!e)
        return ert_fail(err, ERT_OUT_OF_MEMORY, "ert_engine_create: out of memory");
    e->model = m;
    e->cfg = *cfg;
    e->ops = ops;
    e->backend = ops->kind;
    plan_build(m, &e->plan);
    for (int i = 0; i < m->num_exits; i++)
        e->thresholds[i] = m->exits[i].threshold;
    atomic_init(&e->busy, 0);

    if (m->input_tokens > 0) { /* ert_infer_tokens packs its rows here */
        e->token_rows = malloc(sizeof(float) * shape_size(m->input) * (size_t)cfg->max_batch);
        if (!e->token_rows) {
            free(e);
            return ert_fail(err, ERT_OUT_OF_MEMORY, "ert_engine_create: out of memory");
        }
    }
    ert_status st = ops->create(e, &e->ctx);
    if (st != ERT_OK) {
        ert_fail(err, st, "%s", e->err);
        free(e->token_rows);
        free(e);
        return st;
    }
    if (!model_acquire(m)) { /* ert_model_free ran meanwhile, from another thread */
        ops->destroy(e->ctx);
        free(e->token_rows);
        free(e);
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_engine_create: the model was freed");
    }
    *out = e;
    return ERT_OK;
}

void ert_engine_free(ert_engine *e)
{
    if (!e)
        return;
    e->ops->destroy(e->ctx);
    ert_model *m = e->model;
    free(e->token_rows);
    free(e);
    model_release(m);
}

ert_backend ert_engine_backend(const ert_engine *e) { return e ? e->backend : ERT_BACKEND_AUTO; }
ert_mode ert_engine_mode(const ert_engine *e) { return e ? e->cfg.mode : ERT_MODE_FULL; }
const char *ert_engine_error(const ert_engine *e) { return e ? e->err : "engine is NULL"; }
const char *ert_engine_note(const ert_engine *e) { return e ? e->note : ""; }

static ert_status set_threshold_entered(ert_engine *e, int i, float t)
{
    const ert_model *m = e->model;
    if (i < 0 || i >= m->num_exits - 1)
        return engine_fail(e, ERT_INVALID_ARGUMENT,
                           "exit %d has no threshold (early exits are 0..%d)", i, m->num_exits - 2);
    if (isnan(t))
        return engine_fail(e, ERT_INVALID_ARGUMENT, "exit '%s': threshold is NaN",
                           m->exits[i].name);
    if (!ert_threshold_ok(m->exits[i].policy, t))
        return engine_fail(e, ERT_INVALID_ARGUMENT,
                           "exit '%s': threshold %g out of range for policy %s (%s)",
                           m->exits[i].name, (double)t, ert_policy_string(m->exits[i].policy),
                           ert_threshold_range(m->exits[i].policy));
    e->thresholds[i] = t;
    return ERT_OK;
}

/* Every public call on an engine claims it before it checks anything: a
 * call refused with ERT_BUSY writes nothing on the engine, not even its
 * message, which belongs to the call running on another thread
 * (engine_core.h). */
ert_status ert_engine_set_threshold(ert_engine *e, int i, float t)
{
    if (!e)
        return ERT_INVALID_ARGUMENT;
    if (!engine_enter(e))
        return ERT_BUSY;
    e->err[0] = '\0';
    ert_status st = set_threshold_entered(e, i, t);
    engine_leave(e);
    return st;
}

float ert_engine_threshold(const ert_engine *e, int i)
{
    if (!e || i < 0 || i >= e->model->num_exits)
        return NAN;
    return e->thresholds[i];
}

static ert_status check_batch(ert_engine *e, const void *input, int batch, const void *out)
{
    if (!input || !out)
        return engine_fail(e, ERT_INVALID_ARGUMENT, "%s is NULL", input ? "result" : "input");
    if (batch < 1 || batch > e->cfg.max_batch)
        return engine_fail(e, ERT_INVALID_ARGUMENT, "batch %d out of range [1, %d]", batch,
                           e->cfg.max_batch);
    return ERT_OK;
}

/* ert_infer's work, on an engine the caller entered (engine_enter). */
static ert_status infer_entered(ert_engine *e, const float *input, int batch, ert_result *out)
{
    ert_status st;
    const ert_model *m = e->model;
    size_t per = shape_size(m->input);
    int nonfinite = 0;
    for (int b = 0; b < batch; b++) {
        const float *x = input + (size_t)b * per;
        for (size_t i = 0; i < per; i++)
            if (!isfinite(x[i])) {
                nonfinite++;
                break;
            }
    }

    memset(out->exit_counts, 0, sizeof out->exit_counts);
    out->macs_executed = 0;
    out->host_waits = 0;
    out->padding_rows = 0;
    out->macs_padding = 0;
    for (int i = 0; i < ERT_MAX_EXITS; i++)
        out->bucket[i] = -1;
    st = e->ops->infer(e, input, batch, out);
    if (st == ERT_OK) {
        for (int b = 0; b < batch; b++) {
            int x = out->samples[b].exit_index;
            if (x < 0 || x >= m->num_exits) {
                st = engine_fail(e, ERT_INTERNAL, "backend %s gave sample %d exit %d", e->ops->name,
                                 b, x);
                break;
            }
            out->exit_counts[x]++;
        }
        out->macs_full = (uint64_t)batch * m->macs_full;
        out->nonfinite_samples = nonfinite;
    }
    return st;
}

/* A caller's sized result (abi.h) checked, as the call `who` names it. */
static ert_status check_sized(ert_engine *e, const abi_struct *t, uint32_t size, const char *who)
{
    char why[ERT_ERROR_LEN];
    ert_status st = abi_check(t, size, who, why, sizeof why);
    if (st != ERT_OK)
        return engine_fail(e, st, "%s", why);
    return ERT_OK;
}

/* ert_infer's and ert_infer_tokens' checks, on an entered engine; *full
 * then holds the caller's result in the library's layout (abi.h). */
static ert_status check_infer(ert_engine *e, const void *input, int batch, const ert_result *out,
                              const char *who, ert_result *full)
{
    ert_status st = check_batch(e, input, batch, out);
    if (st != ERT_OK)
        return st;
    st = check_sized(e, &abi_result, out->struct_size, who);
    if (st != ERT_OK)
        return st;
    memset(full, 0, sizeof *full);
    abi_read(full, sizeof *full, out, out->struct_size);
    if (!full->samples)
        return engine_fail(e, ERT_INVALID_ARGUMENT, "result->samples is NULL");
    return ERT_OK;
}

/* The figures of *full back into the caller's result, as far as its
 * struct_size goes. */
static void result_write(ert_result *out, const ert_result *full)
{
    const uint32_t size = out->struct_size;
    memcpy(out, full, size);
    out->struct_size = size;
}

ert_status ert_infer(ert_engine *e, const float *input, int batch, ert_result *out)
{
    if (!e)
        return ERT_INVALID_ARGUMENT;
    if (!engine_enter(e))
        return ERT_BUSY;
    e->err[0] = '\0';
    ert_result full;
    ert_status st = check_infer(e, input, batch, out, "ert_infer", &full);
    if (st == ERT_OK) {
        st = infer_entered(e, input, batch, &full);
        result_write(out, &full);
    }
    engine_leave(e);
    return st;
}

static ert_status infer_tokens_entered(ert_engine *e, const int32_t *ids, const int32_t *mask,
                                       int batch, ert_result *out)
{
    if (!e->token_rows)
        return engine_fail(e, ERT_INVALID_ARGUMENT,
                           "ert_infer_tokens: the model takes images, not tokens (ert_infer)");
    ert_result full;
    ert_status st = check_infer(e, ids, batch, out, "ert_infer_tokens", &full);
    if (st != ERT_OK)
        return st;
    ert_error perr = {{0}};
    st = ert_pack_tokens(e->model, ids, mask, batch, e->token_rows, &perr);
    if (st != ERT_OK)
        return engine_fail(e, st, "ert_infer_tokens: %s", perr.msg);
    st = infer_entered(e, e->token_rows, batch, &full);
    result_write(out, &full);
    return st;
}

ert_status ert_infer_tokens(ert_engine *e, const int32_t *ids, const int32_t *mask, int batch,
                            ert_result *out)
{
    if (!e)
        return ERT_INVALID_ARGUMENT;
    if (!engine_enter(e))
        return ERT_BUSY;
    e->err[0] = '\0';
    ert_status st = infer_tokens_entered(e, ids, mask, batch, out);
    engine_leave(e);
    return st;
}

/* ert_infer_device's work, on an entered engine. */
static ert_status infer_device_entered(ert_engine *e, const void *d_input, int batch,
                                       ert_device_result *out, void *stream)
{
    ert_status st = check_batch(e, d_input, batch, out);
    if (st != ERT_OK)
        return st;
    st = check_sized(e, &abi_device_result, out->struct_size, "ert_infer_device");
    if (st != ERT_OK)
        return st;
    ert_device_result full = {0};
    abi_read(&full, sizeof full, out, out->struct_size);
    if (!full.samples)
        return engine_fail(e, ERT_INVALID_ARGUMENT, "result->samples is NULL");
    if (!e->ops->infer_device)
        return engine_fail(e, ERT_UNSUPPORTED,
                           "ert_infer_device needs the CUDA backend, "
                           "this engine runs on %s",
                           e->ops->name);
    full.host_waits = 0;
    st = e->ops->infer_device(e, d_input, batch, &full, stream);
    const uint32_t size = out->struct_size;
    memcpy(out, &full, size);
    out->struct_size = size;
    return st;
}

ert_status ert_infer_device(ert_engine *e, const void *d_input, int batch, ert_device_result *out,
                            void *stream)
{
    if (!e)
        return ERT_INVALID_ARGUMENT;
    if (!engine_enter(e))
        return ERT_BUSY;
    e->err[0] = '\0';
    ert_status st = infer_device_entered(e, d_input, batch, out, stream);
    engine_leave(e);
    return st;
}

/* ert_engine_exit_outputs' work, on an entered engine. */
static ert_status exit_outputs_entered(ert_engine *e, const float *input, int batch, float *scores,
                                       int32_t *classes)
{
    if (!scores && !classes)
        return engine_fail(e, ERT_INVALID_ARGUMENT, "scores and classes are both NULL");
    ert_status st = check_batch(e, input, batch, scores ? (const void *)scores : classes);
    if (st != ERT_OK)
        return st;
    if (!e->ops->exit_outputs)
        return engine_fail(e, ERT_UNSUPPORTED,
                           "ert_engine_exit_outputs is not supported by the "
                           "%s backend",
                           e->ops->name);
    return e->ops->exit_outputs(e, input, batch, scores, classes);
}

ert_status ert_engine_exit_outputs(ert_engine *e, const float *input, int batch, float *scores,
                                   int32_t *classes)
{
    if (!e)
        return ERT_INVALID_ARGUMENT;
    if (!engine_enter(e))
        return ERT_BUSY;
    e->err[0] = '\0';
    ert_status st = exit_outputs_entered(e, input, batch, scores, classes);
    engine_leave(e);
    return st;
}

ert_status ert_engine_scores(ert_engine *e, const float *input, int batch, float *scores)
{
    if (!e)
        return ERT_INVALID_ARGUMENT;
    if (!engine_enter(e))
        return ERT_BUSY;
    e->err[0] = '\0';
    ert_status st = scores ? exit_outputs_entered(e, input, batch, scores, NULL)
                           : engine_fail(e, ERT_INVALID_ARGUMENT, "scores is NULL");
    engine_leave(e);
    return st;
}

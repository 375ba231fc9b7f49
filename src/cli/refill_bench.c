/* refill_bench.c - see refill_bench.h. */
#include "refill_bench.h"

#include "tools.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static ert_status fail(ert_error *err, ert_status st, const char *what, const char *msg)
{
    if (err)
        snprintf(err->msg, sizeof err->msg, "refill bench: %s: %.400s", what,
                 msg && msg[0] ? msg : ert_status_string(st));
    return st;
}

ert_status refill_bench_run(ert_engine *e, const float *x, size_t n, size_t per, int batch,
                            double deadline_ms, ert_stream_schedule schedule, ert_sample *samples,
                            refill_bench_result *out, ert_error *err)
{
    if (!e || !x || !out || n == 0 || per == 0)
        return fail(err, ERT_INVALID_ARGUMENT, "arguments",
                    "engine, x and out are required, n > 0, per > 0");
    memset(out, 0, sizeof *out);
    ert_stream_config sc = ert_stream_config_default();
    sc.batch = batch;
    sc.deadline_ms = deadline_ms;
    sc.schedule = schedule;
    ert_stream *s = NULL;
    ert_error cerr = {{0}};
    ert_status st = ert_stream_create(e, &sc, &s, &cerr);
    if (st != ERT_OK)
        return fail(err, st, "create", cerr.msg);
    ert_stream_stats ss = ERT_STREAM_STATS_INIT;
    ert_stream_get_stats(s, &ss);
    ert_stream_result *res = calloc((size_t)ss.queue, sizeof *res);
    double *lat = calloc(n, sizeof *lat);
    if (!res || !lat) {
        st = fail(err, ERT_OUT_OF_MEMORY, "results", NULL);
        goto done;
    }
    size_t off = 0, got_n = 0;
    int flushed = 0;
    while (got_n < n) {
        double t0 = tools_now_s();
        int got = 0;
        st = refill_step(s, x, n, per, ss.batch, &off, &flushed, res, NULL, ss.queue, &got);
        out->seconds += tools_now_s() - t0;
        if (st != ERT_OK) {
            fail(err, st, "run", ert_stream_error(s));
            goto done;
        }
        for (int i = 0; i < got; i++) {
            if (res[i].id >= n) {
                st = fail(err, ERT_INTERNAL, "run", "unknown id");
                goto done;
            }
            if (samples)
                samples[res[i].id] = res[i].sample;
            lat[got_n++] = res[i].latency_s;
        }
        if (flushed && got == 0 && got_n < n) {
            st = fail(err, ERT_INTERNAL, "run", "samples missing after the flush");
            goto done;
        }
    }
    ert_stream_get_stats(s, &ss);
    qsort(lat, n, sizeof *lat, cmp_double);
    out->latency_p50_s = lat[(size_t)ceil(0.50 * (double)n) - 1];
    out->latency_p99_s = lat[(size_t)ceil(0.99 * (double)n) - 1];
    out->samples_per_s = out->seconds > 0 ? (double)n / out->seconds : 0.0;
    out->macs_executed = ss.macs_executed;
    out->macs_ideal = ss.macs_ideal;
    out->macs_full = ss.macs_full;
    for (int i = 0; i < ss.num_stages; i++) {
        out->stage_runs += ss.stage_runs[i];
        out->partial_runs += ss.stage_partial_runs[i];
        out->exit_counts[i] = (int64_t)ss.exit_counts[i];
    }
done:
    free(lat);
    free(res);
    ert_stream_free(s);
    return st;
}

ert_status refill_step(ert_stream *s, const float *x, size_t n, size_t per, int batch, size_t *off,
                       int *flushed, ert_stream_result *res, float *z, int cap, int *got)
{
    ert_status st = ERT_OK;
    int full = 0;
    *got = 0;
    if (*off < n) {
        int b = (int)(n - *off < (size_t)batch ? n - *off : (size_t)batch);
        st = ert_stream_submit(s, x + *off * per, b, NULL);
        if (st == ERT_OK)
            *off += (size_t)b;
        full = st == ERT_QUEUE_FULL;
    } else if (!*flushed) {
        st = ert_stream_flush(s);
        *flushed = 1;
    }
    if (st == ERT_OK || full)
        st = ert_stream_poll(s, res, z, cap, got);
    if (st == ERT_OK && full && *got == 0)
        st = ert_stream_flush(s);
    return st;
}

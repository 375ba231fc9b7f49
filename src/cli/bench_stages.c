/* bench_stages.c - what each stage costs against its share of the MACs:
 * COMPACTED with every sample sent to one exit, exit after exit, so the
 * engine runs exactly stages 0..k and heads 0..k (bench/README.md, "Stage
 * costs"). A stage whose share of the time is well above its share of the
 * MACs is where early exit loses against the ideal. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_calibrate.h"
#include "bench_run.h"
#include "tools.h"

int bench_stage_thresholds(bench_run *r, const ert_policy_kind *kinds, const float *scores)
{
    const int E = r->num_exits;
    for (int k = 0; k < E; k++) {
        double shares[ERT_MAX_EXITS] = {0};
        int32_t targets[ERT_MAX_EXITS], counts[ERT_MAX_EXITS];
        if (k < E - 1)
            shares[k] = 1.0;
        if (calib_profile(E, kinds, scores, r->n, shares, E - 1, r->stage_thr[k], targets, counts,
                          NULL) != 0)
            return -1;
    }
    return 0;
}

int bench_stage_sweep(bench_run *r, ert_backend be, int batch)
{
    const int E = r->num_exits;
    if (E < 2 || r->no_stages)
        return 0;
    const int nb = (r->rep_samples + batch - 1) / batch, spr = nb * batch;
    ert_engine_config cfg = bench_engine_config(r, be, ERT_MODE_COMPACTED, batch);
    ert_engine *e = NULL;
    ert_error err;
    ert_sample *smp = malloc(sizeof *smp * (size_t)batch);
    double *rep_s = calloc((size_t)E * (size_t)r->reps, sizeof(double));
    double *scratch = malloc(sizeof(double) * (size_t)r->reps);
    bench_stage *st = realloc(r->stages, sizeof *st * (size_t)(r->nstages + E));
    int rc = -1;
    if (st)
        r->stages = st;
    if (!smp || !rep_s || !scratch || !st) {
        fprintf(stderr, "exitrt bench: out of memory\n");
        goto done;
    }
    if (ert_engine_create(r->model, &cfg, &e, &err) != ERT_OK) {
        fprintf(stderr, "exitrt bench: stage costs, %s batch %d: %s\n", ert_backend_string(be),
                batch, err.msg);
        rc = 1; /* the sweep's own cells said it already when it is memory */
        goto done;
    }
    bench_stage *out = &r->stages[r->nstages];
    memset(out, 0, sizeof *out * (size_t)E);
    /* warm-up, then reps interleaved across the exits (as the cells are) */
    for (int rep = -1; rep < r->reps; rep++) {
        for (int k = 0; k < E; k++) {
            for (int x = 0; x < E - 1; x++)
                if (ert_engine_set_threshold(e, x, r->stage_thr[k][x]) != ERT_OK) {
                    fprintf(stderr, "exitrt bench: %s\n", ert_engine_error(e));
                    goto done;
                }
            const int n = rep >= 0 ? nb : r->warmup;
            double t0 = tools_now_s();
            for (int j = 0; j < n; j++) {
                size_t start = ((size_t)j * (size_t)batch) % (size_t)r->n;
                ert_result res = ERT_RESULT_INIT;
                res.samples = smp;
                if (ert_infer(e, r->inputs + start * r->input_size, batch, &res) != ERT_OK) {
                    fprintf(stderr, "exitrt bench: %s\n", ert_engine_error(e));
                    goto done;
                }
                if (rep == 0) {
                    out[k].macs_per_sample += (double)res.macs_executed / spr;
                    for (int x = 0; x < E; x++)
                        out[k].exit_counts[x] += res.exit_counts[x];
                }
            }
            if (rep >= 0)
                rep_s[(size_t)k * (size_t)r->reps + (size_t)rep] = tools_now_s() - t0;
        }
    }
    for (int k = 0; k < E; k++) {
        out[k].backend = be;
        out[k].batch = batch;
        out[k].exit = k;
        out[k].samples_per_rep = spr;
        out[k].us_per_sample =
            1e6 * calib_percentile(rep_s + (size_t)k * (size_t)r->reps, r->reps, 0.5, scratch) /
            spr;
    }
    r->nstages += E;
    rc = 0;
done:
    ert_engine_free(e);
    free(smp);
    free(rep_s);
    free(scratch);
    return rc;
}

/* This stage's MACs and time (the exit's prefix less the one before) as
 * shares of the last prefix's; st points at the run's first exit. */
static void stage_shares(const bench_stage *st, int k, int E, double *mac, double *time)
{
    const double m0 = k ? st[k - 1].macs_per_sample : 0.0, t0 = k ? st[k - 1].us_per_sample : 0.0;
    const double mt = st[E - 1].macs_per_sample, tt = st[E - 1].us_per_sample;
    *mac = mt > 0.0 ? (st[k].macs_per_sample - m0) / mt : 0.0;
    *time = tt > 0.0 ? (st[k].us_per_sample - t0) / tt : 0.0;
}

void bench_print_stages(const bench_run *r, FILE *out)
{
    const int E = r->num_exits;
    if (!r->nstages)
        return;
    fprintf(out, "\nstage costs: COMPACTED with every sample sent to one exit (the engine runs "
                 "the stages and heads up to it)\n");
    fprintf(out, "%-7s %5s %-16s %-22s %11s %10s %9s %9s %8s\n", "backend", "batch", "up to",
            "exits taken %", "MMAC/sample", "us/sample", "MAC share", "time share", "time/MAC");
    for (int i = 0; i + E <= r->nstages; i += E) {
        const bench_stage *st = &r->stages[i];
        for (int k = 0; k < E; k++) {
            char taken[128] = "";
            size_t len = 0;
            for (int x = 0; x < E && len < sizeof taken; x++)
                len += (size_t)snprintf(taken + len, sizeof taken - len, "%s%.1f", x ? "/" : "",
                                        100.0 * st[k].exit_counts[x] / st[k].samples_per_rep);
            double mac, time;
            stage_shares(st, k, E, &mac, &time);
            /* a stage of under 0.5% of the MACs: its ratio is noise */
            char ratio[16] = "-";
            if (mac >= 0.005)
                snprintf(ratio, sizeof ratio, "%.2f", time / mac);
            fprintf(out, "%-7s %5d %-16s %-22s %11.3f %10.2f %8.1f%% %9.1f%% %8s\n",
                    ert_backend_string(st[k].backend), st[k].batch,
                    ert_model_exit_name(r->model, k), taken, st[k].macs_per_sample / 1e6,
                    st[k].us_per_sample, 100.0 * mac, 100.0 * time, ratio);
        }
    }
    fprintf(out, "MMAC and us per sample are cumulative up to the exit; a stage's shares are "
                 "its part of the last row's; time/MAC above 1: the stage costs more than its "
                 "MACs say (\"-\" under 0.5%% of the MACs).\n");
}

int bench_stages_json(const bench_run *r, cJSON *root)
{
    const int E = r->num_exits;
    cJSON *a = cJSON_AddArrayToObject(root, "stages");
    if (!a)
        return -1;
    for (int i = 0; i + E <= r->nstages; i += E) {
        const bench_stage *st = &r->stages[i];
        for (int k = 0; k < E; k++) {
            double mac, time;
            stage_shares(st, k, E, &mac, &time);
            cJSON *o = cJSON_CreateObject();
            cJSON *c = cJSON_CreateArray();
            if (!o || !c || !cJSON_AddItemToArray(a, o)) {
                cJSON_Delete(o);
                cJSON_Delete(c);
                return -1;
            }
            cJSON_AddStringToObject(o, "backend", ert_backend_string(st[k].backend));
            cJSON_AddNumberToObject(o, "batch", st[k].batch);
            cJSON_AddStringToObject(o, "exit", ert_model_exit_name(r->model, k));
            cJSON_AddNumberToObject(o, "samples_per_rep", st[k].samples_per_rep);
            cJSON_AddNumberToObject(o, "macs_per_sample", st[k].macs_per_sample);
            cJSON_AddNumberToObject(o, "us_per_sample", st[k].us_per_sample);
            cJSON_AddNumberToObject(o, "mac_share", mac);
            cJSON_AddNumberToObject(o, "time_share", time);
            for (int x = 0; x < E; x++)
                cJSON_AddItemToArray(c, cJSON_CreateNumber(st[k].exit_counts[x]));
            cJSON_AddItemToObject(o, "exit_counts", c);
        }
    }
    return 0;
}

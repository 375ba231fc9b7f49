/* report.c - the report of `exitrt run`, as text or as one JSON object. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

static double share(uint64_t part, uint64_t whole)
{
    return whole ? (double)part / (double)whole : 0.0;
}

static double macs_ratio(const run_report *r)
{
    return r->macs_full ? (double)r->macs_executed / (double)r->macs_full : 0.0;
}

static double samples_per_s(const run_report *r)
{
    return r->seconds > 0 ? (double)r->samples / r->seconds : 0.0;
}

/* the CUDA option in effect (the CPU backend ignores it) */
static int fused_attention(const run_report *r)
{
    return r->device == ERT_BACKEND_CUDA && (r->cuda_options & ERT_CUDA_FUSED_ATTENTION);
}

void report_print_text(const run_report *r)
{
    char a[40], b[40];
    printf("model    %s\n", r->model);
    printf("data     %s (%s samples)\n", r->data, cli_commas(r->samples, a, sizeof a));
    printf("labels   %s\n", r->labels ? r->labels : "none (no accuracy)");
    printf("device   %s, mode %s, batch %d, precision %s%s\n", ert_backend_string(r->device),
           r->refill ? "refill" : ert_mode_string(r->mode), r->batch,
           ert_precision_string(r->precision), fused_attention(r) ? ", fused attention" : "");
    printf("\n");
    printf("  %-16s %-16s %9s %9s %8s %9s\n", "exit", "policy", "threshold", "taken", "share",
           "accuracy");
    for (int x = 0; x < r->num_exits; x++) {
        const exit_report *e = &r->exits[x];
        char thr[32], acc[32];
        if (isnan(e->threshold))
            snprintf(thr, sizeof thr, "-");
        else
            snprintf(thr, sizeof thr, "%.4g", (double)e->threshold);
        if (r->labels && e->taken)
            snprintf(acc, sizeof acc, "%.2f%%", 100.0 * share(e->correct, e->taken));
        else
            snprintf(acc, sizeof acc, "-");
        printf("  %-16s %-16s %9s %9s %7.2f%% %9s\n", e->name,
               x == r->num_exits - 1 ? "final" : ert_policy_string(e->policy), thr,
               cli_commas(e->taken, a, sizeof a), 100.0 * share(e->taken, r->samples), acc);
    }
    printf("\n");
    if (r->labels)
        printf("accuracy     %.2f%% (%s of %s)\n", 100.0 * share(r->correct, r->samples),
               cli_commas(r->correct, a, sizeof a), cli_commas(r->samples, b, sizeof b));
    double ratio = macs_ratio(r);
    printf("MACs         %s executed of %s full: %.3fx", cli_commas(r->macs_executed, a, sizeof a),
           cli_commas(r->macs_full, b, sizeof b), ratio);
    if (ratio <= 1.0)
        printf(", compute saved %.1f%%\n", 100.0 * (1.0 - ratio));
    else
        printf(", %.1f%% more than the full network\n", 100.0 * (ratio - 1.0));
    printf("throughput   %.1f samples/s (%.3f s in inference)\n", samples_per_s(r), r->seconds);
    if (r->refill)
        printf("latency      p50 %.3f ms, p99 %.3f ms (submit to finish)\n", 1e3 * r->latency_p50_s,
               1e3 * r->latency_p99_s);
    if (r->host_waits)
        printf("host waits   %llu\n", (unsigned long long)r->host_waits);
    if (r->note && r->note[0])
        printf("engine       %s\n", r->note);
    if (r->nonfinite_samples) {
        printf("non-finite   %s samples: rows ", cli_commas(r->nonfinite_samples, a, sizeof a));
        for (int i = 0; i < r->nonfinite_listed; i++)
            printf("%s%llu", i ? ", " : "", (unsigned long long)r->nonfinite_rows[i]);
        printf("%s\n", r->nonfinite_samples > (uint64_t)r->nonfinite_listed ? ", ..." : "");
        printf("             NaN or Inf inputs %llu, token ids outside the vocabulary %llu, "
               "non-finite logits %llu (answered at the final exit, class 0, score NaN)\n",
               (unsigned long long)r->nonfinite_inputs,
               (unsigned long long)r->invalid_token_samples,
               (unsigned long long)r->nonfinite_outputs);
    }
}

/* A float as the shortest decimal that reads back as the same float, so
 * 0.3f prints as 0.3, not 0.300000011920929. */
double cli_float_decimal(float v)
{
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            break;
    }
    return strtod(buf, NULL);
}

/* cJSON prints NaN and Inf as null; say so explicitly. */
static cJSON *num_or_null(int have, double v)
{
    return have && isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

int report_print_json(const run_report *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return -1;
    int ok = 1;
#define ADD(key, item)                                              \
    do {                                                            \
        cJSON *it_ = (item);                                        \
        if (!(ok && it_ && cJSON_AddItemToObject(o, (key), it_))) { \
            cJSON_Delete(it_);                                      \
            ok = 0;                                                 \
        }                                                           \
    } while (0)
    ADD("model", cJSON_CreateString(r->model));
    ADD("data", cJSON_CreateString(r->data));
    ADD("labels", r->labels ? cJSON_CreateString(r->labels) : cJSON_CreateNull());
    ADD("samples", cJSON_CreateNumber((double)r->samples));
    ADD("accuracy", num_or_null(r->labels != NULL, share(r->correct, r->samples)));
    ADD("correct", num_or_null(r->labels != NULL, (double)r->correct));
    cJSON *exits = cJSON_CreateArray();
    ADD("exits", exits);
    for (int x = 0; ok && x < r->num_exits; x++) {
        const exit_report *e = &r->exits[x];
        cJSON *j = cJSON_CreateObject();
        ok = j && cJSON_AddItemToArray(exits, j);
        if (!ok)
            break;
        int final = x == r->num_exits - 1;
        ok = cJSON_AddNumberToObject(j, "index", x) &&
             cJSON_AddStringToObject(j, "name", e->name) &&
             cJSON_AddStringToObject(j, "policy", final ? "final" : ert_policy_string(e->policy)) &&
             cJSON_AddItemToObject(j, "threshold",
                                   num_or_null(!final, cli_float_decimal(e->threshold))) &&
             cJSON_AddNumberToObject(j, "taken", (double)e->taken) &&
             cJSON_AddNumberToObject(j, "share", share(e->taken, r->samples)) &&
             cJSON_AddItemToObject(j, "accuracy",
                                   num_or_null(r->labels && e->taken, share(e->correct, e->taken)));
    }
    ADD("macs_executed", cJSON_CreateNumber((double)r->macs_executed));
    ADD("macs_full", cJSON_CreateNumber((double)r->macs_full));
    ADD("macs_ratio", cJSON_CreateNumber(macs_ratio(r)));
    ADD("compute_saved", cJSON_CreateNumber(1.0 - macs_ratio(r)));
    ADD("samples_per_s", cJSON_CreateNumber(samples_per_s(r)));
    ADD("seconds", cJSON_CreateNumber(r->seconds));
    ADD("mode", cJSON_CreateString(r->refill ? "refill" : ert_mode_string(r->mode)));
    if (r->refill) {
        ADD("latency_p50_ms", cJSON_CreateNumber(1e3 * r->latency_p50_s));
        ADD("latency_p99_ms", cJSON_CreateNumber(1e3 * r->latency_p99_s));
    }
    ADD("device", cJSON_CreateString(ert_backend_string(r->device)));
    ADD("precision", cJSON_CreateString(ert_precision_string(r->precision)));
    ADD("fused_attention", cJSON_CreateBool(fused_attention(r)));
    ADD("batch", cJSON_CreateNumber(r->batch));
    ADD("host_waits", cJSON_CreateNumber((double)r->host_waits));
    ADD("engine_note", cJSON_CreateString(r->note ? r->note : ""));
    ADD("nonfinite_samples", cJSON_CreateNumber((double)r->nonfinite_samples));
    ADD("nonfinite_inputs", cJSON_CreateNumber((double)r->nonfinite_inputs));
    ADD("invalid_token_samples", cJSON_CreateNumber((double)r->invalid_token_samples));
    ADD("nonfinite_outputs", cJSON_CreateNumber((double)r->nonfinite_outputs));
    cJSON *rows = cJSON_CreateArray();
    ADD("nonfinite_rows", rows);
    for (int i = 0; ok && i < r->nonfinite_listed; i++) {
        cJSON *v = cJSON_CreateNumber((double)r->nonfinite_rows[i]);
        if (!v || !cJSON_AddItemToArray(rows, v)) {
            cJSON_Delete(v);
            ok = 0;
        }
    }
#undef ADD
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!text)
        return -1;
    puts(text);
    free(text);
    return 0;
}

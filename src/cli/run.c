/* run.c - `exitrt run`: load a model and a data set, run every sample in
 * batches, and report exits, accuracy, compute and throughput. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "refill_bench.h"
#include "cli.h"
#include "data.h"
#include "outfile.h"
#include "tools.h"

static const char RUN_USAGE[] =
    "usage: exitrt run MODEL [options]\n"
    "\n"
    "Runs every sample of a data set through MODEL (a model directory or its\n"
    "model.json) and prints, per exit, the share of samples that took it and\n"
    "their accuracy, the overall accuracy, the compute executed against the\n"
    "full network's, and the throughput.\n"
    "\n"
    "options:\n"
    "  --data FILE          input samples: .npy (float32, float64 or uint8) or\n"
    "                       IDX, gzipped or not (default: the model's sample data)\n"
    "  --labels FILE        labels: IDX or .npy of integers (uint8, int32 or\n"
    "                       int64; default: the model's sample labels when --data\n"
    "                       is not given)\n"
    "  --device D           cpu, cuda or auto (default auto: CUDA when a\n"
    "                       device is present)\n"
    "  --mode M             full, masked, compacted or refill (default\n"
    "                       compacted). refill: a stream (ert_stream_*) whose\n"
    "                       stages each run full batches, exited samples'\n"
    "                       slots taken by the next in line; reports latency\n"
    "  --batch N            samples per inference call, refill: rows per\n"
    "                       stage run (default 256)\n"
    "  --deadline MS        refill: run a partial batch once the oldest queued\n"
    "                       sample waited MS ms (default: never; flush at end)\n"
    "  --schedule S         refill: deepest (default) or shallowest stage first\n"
    "  --threshold EXIT=V   override an exit's threshold; EXIT is its name or\n"
    "                       index; may be repeated. A patience exit takes an\n"
    "                       integer k >= 1: it lets a sample out once its\n"
    "                       class was the same at the last k exits\n"
    "  --threads N          CPU: BLAS threads (default: the BLAS default)\n"
    "  --inflight N         CUDA: batches in flight (default 1)\n"
    "  --graph-buckets K    CUDA, compacted: size-bucketed graphs with K row-count\n"
    "                       buckets, no host waits; 0 = off (default:\n"
    "                       $ERT_GRAPH_BUCKETS, else 0)\n"
    "  --precision P        fp32 (default: exact float32) or tf32 (CUDA: tensor\n"
    "                       cores, float32 storage)\n"
    "  --fused-attention    CUDA: attention as one fused kernel (no stored scores)\n"
    "  --limit N            run only the first N samples\n"
    "  --json               print the report as one JSON object\n"
    "  --predictions FILE   write index,exit,class,score per sample as CSV\n"
    "  --logits FILE        write the logits of the exit each sample took as a\n"
    "                       float32 .npy of shape [N, classes]\n"
    "                       (outputs are replaced only when the run succeeds:\n"
    "                       a failed run leaves an existing file as it was)\n"
    "  --allow-invalid-tokens\n"
    "                       token models: run samples holding a token id that\n"
    "                       is not an integer in [0, vocabulary) (refused by\n"
    "                       default); their embeddings are NaN, and the report\n"
    "                       counts them among the non-finite samples\n"
    "  -h, --help           this text\n"
    "\n"
    "A sample whose logits are not finite (its input held NaN or Inf, say) is\n"
    "answered at the final exit with class 0 and score NaN. The report counts\n"
    "the non-finite samples (NaN or Inf in the input, token ids outside the\n"
    "vocabulary, non-finite logits) and lists the first rows.\n";

#define MAX_THRESHOLDS 64
#define MAX_BATCH (1L << 20)

typedef struct run_opts {
    const char *model, *data, *labels, *predictions, *logits;
    ert_backend device;
    ert_mode mode;
    int refill;         /* --mode refill: through a stream */
    double deadline_ms; /* refill: < 0 never */
    ert_stream_schedule schedule;
    int refill_opts; /* --deadline or --schedule given */
    long batch, threads, inflight, limit, graph_buckets;
    int json;
    int allow_invalid_tokens;
    ert_precision precision;
    unsigned cuda_options;
    int num_thresholds;
    const char *thresholds[MAX_THRESHOLDS]; /* "EXIT=VALUE" */
} run_opts;

static int parse_args(int argc, char **argv, run_opts *o)
{
    memset(o, 0, sizeof *o);
    o->device = ERT_BACKEND_AUTO;
    o->mode = ERT_MODE_COMPACTED;
    o->batch = 256;
    o->inflight = 1;
    o->graph_buckets = -1; /* the library's default */
    o->deadline_ms = -1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int r;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(RUN_USAGE, stdout);
            return -1;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
        if (strcmp(a, "--allow-invalid-tokens") == 0) {
            o->allow_invalid_tokens = 1;
            continue;
        }
        if (strcmp(a, "--fused-attention") == 0) {
            o->cuda_options |= ERT_CUDA_FUSED_ATTENTION;
            continue;
        }
#define OPT(name) ((r = cli_opt_value(argc, argv, &i, name, &v)) != 0)
        if (OPT("--data")) {
            if (r < 0)
                return CLI_USAGE;
            o->data = v;
        } else if (OPT("--labels")) {
            if (r < 0)
                return CLI_USAGE;
            o->labels = v;
        } else if (OPT("--predictions")) {
            if (r < 0)
                return CLI_USAGE;
            o->predictions = v;
        } else if (OPT("--logits")) {
            if (r < 0)
                return CLI_USAGE;
            o->logits = v;
        } else if (OPT("--device")) {
            if (r < 0)
                return CLI_USAGE;
            if (strcmp(v, "cpu") == 0)
                o->device = ERT_BACKEND_CPU;
            else if (strcmp(v, "cuda") == 0 || strcmp(v, "gpu") == 0)
                o->device = ERT_BACKEND_CUDA;
            else if (strcmp(v, "auto") == 0)
                o->device = ERT_BACKEND_AUTO;
            else
                return cli_error(CLI_USAGE, "--device: '%s' is not cpu, cuda or auto", v);
        } else if (OPT("--mode")) {
            if (r < 0)
                return CLI_USAGE;
            if (strcmp(v, "full") == 0)
                o->mode = ERT_MODE_FULL;
            else if (strcmp(v, "masked") == 0)
                o->mode = ERT_MODE_MASKED;
            else if (strcmp(v, "compacted") == 0)
                o->mode = ERT_MODE_COMPACTED;
            else if (strcmp(v, "refill") == 0)
                o->refill = 1; /* on a COMPACTED engine: the stream ignores the mode */
            else
                return cli_error(CLI_USAGE, "--mode: '%s' is not full, masked, compacted or refill",
                                 v);
            if (strcmp(v, "refill") != 0)
                o->refill = 0;
        } else if (OPT("--deadline")) {
            if (r < 0)
                return CLI_USAGE;
            double d;
            const char *why = tools_parse_double(v, &d);
            if (why || d < 0)
                return cli_error(CLI_USAGE, "--deadline: '%s' %s", v,
                                 why ? why : "is negative (a number of ms >= 0)");
            o->deadline_ms = d;
            o->refill_opts = 1;
        } else if (OPT("--schedule")) {
            if (r < 0)
                return CLI_USAGE;
            if (strcmp(v, "deepest") == 0)
                o->schedule = ERT_SCHEDULE_DEEPEST_FIRST;
            else if (strcmp(v, "shallowest") == 0)
                o->schedule = ERT_SCHEDULE_SHALLOWEST_FIRST;
            else
                return cli_error(CLI_USAGE, "--schedule: '%s' is not deepest or shallowest", v);
            o->refill_opts = 1;
        } else if (OPT("--batch")) {
            if (r < 0)
                return CLI_USAGE;
            if (!cli_parse_long(v, 1, MAX_BATCH, &o->batch))
                return cli_error(CLI_USAGE, "--batch: '%s' is not an integer in [1, %ld]", v,
                                 MAX_BATCH);
        } else if (OPT("--threads")) {
            if (r < 0)
                return CLI_USAGE;
            if (!cli_parse_long(v, 0, 4096, &o->threads))
                return cli_error(CLI_USAGE, "--threads: '%s' is not an integer in [0, 4096]", v);
        } else if (OPT("--inflight")) {
            if (r < 0)
                return CLI_USAGE;
            if (!cli_parse_long(v, 1, 16, &o->inflight))
                return cli_error(CLI_USAGE, "--inflight: '%s' is not an integer in [1, 16]", v);
        } else if (OPT("--precision")) {
            if (r < 0)
                return CLI_USAGE;
            if (!cli_parse_precision(v, &o->precision))
                return cli_error(CLI_USAGE, "--precision: '%s' is not fp32 or tf32", v);
        } else if (OPT("--graph-buckets")) {
            if (r < 0)
                return CLI_USAGE;
            if (!cli_parse_long(v, 0, 64, &o->graph_buckets))
                return cli_error(CLI_USAGE, "--graph-buckets: '%s' is not an integer in [0, 64]",
                                 v);
        } else if (OPT("--limit")) {
            if (r < 0)
                return CLI_USAGE;
            if (!cli_parse_long(v, 1, 1L << 40, &o->limit))
                return cli_error(CLI_USAGE, "--limit: '%s' is not a positive integer", v);
        } else if (OPT("--threshold")) {
            if (r < 0)
                return CLI_USAGE;
            if (!strchr(v, '=') || v[0] == '=')
                return cli_error(CLI_USAGE, "--threshold: '%s' is not EXIT=VALUE", v);
            if (o->num_thresholds >= MAX_THRESHOLDS)
                return cli_error(CLI_USAGE, "too many --threshold options (at most %d)",
                                 MAX_THRESHOLDS);
            o->thresholds[o->num_thresholds++] = v;
        } else if (a[0] == '-' && a[1] != '\0') {
            return cli_error(CLI_USAGE, "run: unknown option '%s' (see 'exitrt run --help')", a);
        } else if (!o->model) {
            o->model = a;
        } else {
            return cli_error(CLI_USAGE, "run: unexpected argument '%s' (one MODEL only)", a);
        }
#undef OPT
    }
    if (!o->model)
        return cli_error(CLI_USAGE, "run: no MODEL given (see 'exitrt run --help')");
    if (o->refill_opts && !o->refill)
        return cli_error(CLI_USAGE, "--deadline and --schedule need --mode refill");
    return 0;
}

/* Applies the --threshold options; usage errors name the option. */
static int apply_thresholds(const run_opts *o, const ert_model *m, ert_engine *e)
{
    for (int t = 0; t < o->num_thresholds; t++) {
        const char *spec = o->thresholds[t];
        const char *eq = strchr(spec, '=');
        char name[128];
        size_t n = (size_t)(eq - spec);
        if (n >= sizeof name)
            return cli_error(CLI_USAGE, "--threshold %s: exit name too long", spec);
        memcpy(name, spec, n);
        name[n] = '\0';
        int idx = ert_model_exit_index(m, name);
        long li;
        if (idx < 0 && cli_parse_long(name, 0, ERT_MAX_EXITS - 1, &li) &&
            li < ert_model_num_exits(m))
            idx = (int)li;
        if (idx < 0) {
            char names[ERT_MAX_EXITS * 70] = "";
            for (int i = 0; i < ert_model_num_exits(m) - 1; i++) {
                if (i)
                    strcat(names, ", ");
                strncat(names, ert_model_exit_name(m, i), 64);
            }
            return cli_error(CLI_USAGE,
                             "--threshold %s: the model has no exit '%s' (early exits: %s)", spec,
                             name, names[0] ? names : "none");
        }
        float v;
        const char *why = tools_parse_float(eq + 1, &v);
        if (why)
            return cli_error(CLI_USAGE, "--threshold %s: '%s' %s", spec, eq + 1, why);
        if (ert_engine_set_threshold(e, idx, v) != ERT_OK)
            return cli_error(CLI_USAGE, "--threshold %s: %s", spec, ert_engine_error(e));
    }
    return 0;
}

/* A progress bar on stderr, only on a terminal and only once the run has
 * taken over a second (short runs stay quiet). */
typedef struct progress {
    int tty, shown;
    double start, last;
} progress;

static void progress_update(progress *p, uint64_t done, uint64_t total)
{
    if (!p->tty)
        return;
    double t = tools_now_s();
    if (t - p->start < 1.0 || (t - p->last < 0.1 && done < total))
        return;
    p->last = t;
    p->shown = 1;
    int width = 30, fill = (int)(width * done / (total ? total : 1));
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r[%s] %llu/%llu samples", bar, (unsigned long long)done,
            (unsigned long long)total);
    fflush(stderr);
}

static void progress_end(progress *p)
{
    if (p->shown)
        fputs("\r\033[K", stderr);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* --mode refill: the data set through a stream, a batch per submit (polling
 * after each; a full queue is retried after the poll), then a flush. Ids are
 * left to the stream, so a sample's id is its index, and samples[] and
 * logits[] end up in sample order as in the other modes. Fills the
 * figures of rep; the time counted is the time inside the stream calls. */
static int run_refill(const run_opts *o, ert_engine *e, const float *x, size_t n, size_t per, int K,
                      int batch, ert_sample *samples, float *logits, run_report *rep,
                      progress *prog)
{
    ert_stream_config sc = ert_stream_config_default();
    sc.batch = batch;
    sc.deadline_ms = o->deadline_ms;
    sc.schedule = o->schedule;
    ert_stream *s = NULL;
    ert_stream_result *res = NULL;
    float *z = NULL;
    double *lat = NULL;
    ert_error err = {{0}};
    ert_stream_stats ss = ERT_STREAM_STATS_INIT;
    int rc = 0, flushed = 0;
    ert_status st = ert_stream_create(e, &sc, &s, &err);
    if (st != ERT_OK)
        return cli_error(CLI_FAIL, "%s", err.msg[0] ? err.msg : ert_status_string(st));
    ert_stream_get_stats(s, &ss);
    res = calloc((size_t)ss.queue, sizeof *res);
    if (logits)
        z = calloc((size_t)ss.queue, (size_t)K * sizeof *z);
    lat = calloc(n, sizeof *lat);
    if (!res || (logits && !z) || !lat) {
        rc = cli_error(CLI_FAIL, "out of memory for the stream's results");
        goto done;
    }
    size_t off = 0, done_n = 0;
    while (done_n < n) {
        double t0 = tools_now_s();
        int got = 0;
        st = refill_step(s, x, n, per, batch, &off, &flushed, res, z, ss.queue, &got);
        rep->seconds += tools_now_s() - t0;
        if (st != ERT_OK) {
            progress_end(prog);
            rc = cli_error(CLI_FAIL, "refill failed near sample %zu: %s", off,
                           ert_stream_error(s)[0] ? ert_stream_error(s) : ert_status_string(st));
            goto done;
        }
        for (int i = 0; i < got; i++) {
            size_t id = (size_t)res[i].id;
            if (id >= n) {
                rc = cli_error(CLI_FAIL, "refill: the stream returned unknown id %zu", id);
                goto done;
            }
            samples[id] = res[i].sample;
            if (logits)
                memcpy(logits + id * (size_t)K, z + (size_t)i * K, sizeof(float) * (size_t)K);
            lat[done_n++] = res[i].latency_s;
        }
        if (flushed && got == 0 && done_n < n) {
            rc = cli_error(CLI_FAIL, "refill: %zu samples missing after the flush", n - done_n);
            goto done;
        }
        progress_update(prog, done_n, n);
    }
    progress_end(prog);
    ert_stream_get_stats(s, &ss);
    rep->refill = 1;
    rep->macs_executed = ss.macs_executed;
    rep->macs_full = ss.macs_full;
    qsort(lat, n, sizeof *lat, cmp_double);
    /* nearest rank */
    rep->latency_p50_s = lat[(size_t)ceil(0.50 * (double)n) - 1];
    rep->latency_p99_s = lat[(size_t)ceil(0.99 * (double)n) - 1];
done:
    free(lat);
    free(z);
    free(res);
    ert_stream_free(s);
    return rc;
}

/* index,exit,class,score per sample; write errors are found at the commit. */
static void write_predictions(FILE *f, const ert_sample *s, size_t n)
{
    fputs("index,exit,class,score\n", f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%zu,%d,%d,%.9g\n", i, (int)s[i].exit_index, (int)s[i].predicted,
                (double)s[i].score);
}

/* float32 .npy, version 1, C order, shape (n, k). */
static void write_logits(FILE *f, const float *v, size_t n, int k)
{
    char dict[128];
    int dl = snprintf(dict, sizeof dict,
                      "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %d), }", n, k);
    /* magic(6) + version(2) + length(2) + dict + padding + '\n' = multiple of 64 */
    size_t hlen = (size_t)dl + 1;
    hlen += (64 - (10 + hlen) % 64) % 64;
    unsigned char pre[10] = {0x93,
                             'N',
                             'U',
                             'M',
                             'P',
                             'Y',
                             1,
                             0,
                             (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    fwrite(pre, 1, sizeof pre, f);
    fwrite(dict, 1, (size_t)dl, f);
    for (size_t i = (size_t)dl + 1; i < hlen; i++)
        fputc(' ', f);
    fputc('\n', f);
    fwrite(v, sizeof(float), n * (size_t)k, f); /* little-endian hosts */
}

/* The rows of the data that run, checked before any work: every row's
 * flags (1: NaN or Inf in the input, 2: a token id outside the vocabulary)
 * into flags[n]. Token ids outside the vocabulary are refused, naming the
 * first, unless --allow-invalid-tokens. */
static int scan_rows(const run_opts *o, const ert_model *m, const char *path, const float *x,
                     size_t n, size_t per, unsigned char *flags)
{
    const int T = ert_model_input_tokens(m), V = ert_model_vocab_size(m);
    size_t invalid = 0, first = 0;
    int first_pos = -1;
    for (size_t i = 0; i < n; i++) {
        const float *row = x + i * per;
        for (size_t j = 0; j < per; j++)
            if (!isfinite(row[j])) {
                flags[i] |= 1;
                break;
            }
        int t = T > 0 ? cli_tokens_first_invalid(row, T, V) : -1;
        if (t >= 0) {
            flags[i] |= 2;
            if (invalid++ == 0) {
                first = i;
                first_pos = t;
            }
        }
    }
    if (invalid && !o->allow_invalid_tokens)
        return cli_error(CLI_FAIL,
                         "%s: sample %zu, position %d: token id %.9g is not in the model's "
                         "vocabulary (integers in [0, %d)) (%zu of the %zu samples hold such ids; "
                         "--allow-invalid-tokens runs them, reported as non-finite)",
                         path, first, first_pos, (double)x[first * per + (size_t)first_pos], V,
                         invalid, n);
    return 0;
}

/* The report's non-finite figures from the row flags and the answers
 * (a non-finite score: the logits of the exit taken were not finite). */
static void count_nonfinite(run_report *rep, unsigned char *flags, const ert_sample *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(s[i].score))
            flags[i] |= 4;
        if (!flags[i])
            continue;
        rep->nonfinite_inputs += (flags[i] & 1) != 0;
        rep->invalid_token_samples += (flags[i] & 2) != 0;
        rep->nonfinite_outputs += (flags[i] & 4) != 0;
        if (rep->nonfinite_listed < REPORT_ROWS)
            rep->nonfinite_rows[rep->nonfinite_listed++] = i;
        rep->nonfinite_samples++;
    }
}

int cmd_run(int argc, char **argv)
{
    run_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc < 0)
        return CLI_OK; /* --help */
    if (rc)
        return rc;

    ert_model *m = NULL;
    ert_engine *e = NULL;
    cli_samples smp = {0};
    ert_sample *samples = NULL;
    float *logits = NULL;
    unsigned char *flags = NULL;
    /* written to temporaries beside them, renamed at the end (outfile.h) */
    cli_out pred_out = {0}, logits_out = {0};
    cli_out *const outs[2] = {&pred_out, &logits_out};
    ert_error err = {{0}};
    ert_status st;

    if (o.predictions && (rc = cli_out_open(&pred_out, o.predictions)))
        goto done;
    if (o.logits && (rc = cli_out_open(&logits_out, o.logits)))
        goto done;
    if ((st = ert_model_load(o.model, &m, &err)) != ERT_OK) {
        rc = cli_error(CLI_FAIL, "%s", err.msg[0] ? err.msg : ert_status_string(st));
        goto done;
    }

    if ((rc = cli_load_samples(o.model, m, o.data, o.labels, 0, &smp)))
        goto done;
    const char *data_path = smp.data_path, *labels_path = smp.labels_path;
    const cli_dataset data = smp.data;
    const cli_labels labels = smp.labels;
    size_t per = ert_model_input_size(m);
    size_t n = data.count;
    if (o.limit > 0 && (size_t)o.limit < n)
        n = (size_t)o.limit;
    int K = ert_model_num_classes(m);
    if (!(flags = calloc(n ? n : 1, 1))) {
        rc = cli_error(CLI_FAIL, "out of memory for %zu samples", n);
        goto done;
    }
    if ((rc = scan_rows(&o, m, data_path, data.values, n, per, flags)))
        goto done;

    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = o.device;
    cfg.mode = o.mode;
    cfg.max_batch = (int)((size_t)o.batch < n ? (size_t)o.batch : n);
    cfg.threads = (int)o.threads;
    cfg.inflight = (int)o.inflight;
    cfg.graph_buckets = o.graph_buckets >= 0 ? (int)o.graph_buckets : tools_graph_buckets_default();
    cfg.precision = o.precision;
    cfg.cuda_options = o.cuda_options;
    if ((st = ert_engine_create(m, &cfg, &e, &err)) != ERT_OK) {
        rc = cli_error(CLI_FAIL, "%s", err.msg[0] ? err.msg : ert_status_string(st));
        goto done;
    }
    if ((rc = apply_thresholds(&o, m, e)))
        goto done;
#ifdef ERT_HAVE_CUDA
    /* after every check that can fail, so an error stays one stderr line */
    if (o.device == ERT_BACKEND_AUTO && ert_engine_backend(e) == ERT_BACKEND_CPU)
        fprintf(stderr, "exitrt: note: no usable CUDA device, running on the CPU\n");
#endif

    samples = calloc(n, sizeof *samples);
    if (o.logits)
        logits = calloc(n, (size_t)K * sizeof *logits); /* calloc checks the product */
    if (!samples || (o.logits && !logits)) {
        rc = cli_error(CLI_FAIL, "out of memory for the results of %zu samples", n);
        goto done;
    }

    run_report rep;
    memset(&rep, 0, sizeof rep);
    rep.model = o.model;
    rep.data = data_path;
    rep.labels = labels_path;
    rep.samples = n;
    rep.num_exits = ert_model_num_exits(m);
    rep.mode = ert_engine_mode(e);
    rep.device = ert_engine_backend(e);
    rep.precision = o.precision;
    rep.cuda_options = o.cuda_options;
    rep.note = ert_engine_note(e);
    rep.batch = cfg.max_batch;
    for (int x = 0; x < rep.num_exits; x++) {
        rep.exits[x].name = ert_model_exit_name(m, x);
        rep.exits[x].policy = ert_model_exit_policy(m, x);
        rep.exits[x].threshold = x == rep.num_exits - 1 ? NAN : ert_engine_threshold(e, x);
    }

    progress prog = {.tty = isatty(STDERR_FILENO), .start = tools_now_s()};
    if (o.refill && (rc = run_refill(&o, e, data.values, n, per, K, cfg.max_batch, samples, logits,
                                     &rep, &prog)))
        goto done;
    for (size_t off = 0; !o.refill && off < n; off += (size_t)cfg.max_batch) {
        int b = (int)(n - off < (size_t)cfg.max_batch ? n - off : (size_t)cfg.max_batch);
        ert_result res = ERT_RESULT_INIT;
        res.samples = samples + off;
        res.logits = logits ? logits + off * (size_t)K : NULL;
        double t0 = tools_now_s();
        st = ert_infer(e, data.values + off * per, b, &res);
        rep.seconds += tools_now_s() - t0;
        if (st != ERT_OK) {
            progress_end(&prog);
            rc = cli_error(CLI_FAIL, "inference failed at sample %zu: %s", off,
                           ert_engine_error(e)[0] ? ert_engine_error(e) : ert_status_string(st));
            goto done;
        }
        rep.macs_executed += res.macs_executed;
        rep.macs_full += res.macs_full;
        rep.host_waits += (uint64_t)res.host_waits;
        progress_update(&prog, off + (size_t)b, n);
    }
    progress_end(&prog);
    count_nonfinite(&rep, flags, samples, n);

    for (size_t i = 0; i < n; i++) {
        int x = samples[i].exit_index;
        rep.exits[x].taken++;
        if (labels_path && samples[i].predicted == labels.values[i]) {
            rep.exits[x].correct++;
            rep.correct++;
        }
    }

    if (pred_out.f)
        write_predictions(pred_out.f, samples, n);
    if (logits_out.f)
        write_logits(logits_out.f, logits, n, K);
    /* the report first: when it cannot be written, the run failed and the
       outputs stay as they were */
    if (o.json) {
        if (report_print_json(&rep) != 0) {
            rc = cli_error(CLI_FAIL, "out of memory building the JSON report");
            goto done;
        }
    } else {
        report_print_text(&rep);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        rc = cli_error(CLI_FAIL, "cannot write the report: %s", strerror(errno));
        goto done;
    }
    rc = cli_out_commit_all(outs, 2);

done:
    cli_out_abort(&pred_out); /* after a commit: nothing left to do */
    cli_out_abort(&logits_out);
    free(flags);
    free(logits);
    free(samples);
    ert_engine_free(e);
    ert_model_free(m);
    cli_samples_free(&smp);
    return rc;
}

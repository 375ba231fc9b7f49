/* calibrate.c - `exitrt calibrate`: thresholds for every exit that meet an
 * accuracy target at the least compute, chosen on one part of a labelled
 * data set and reported on the other part, which the search never saw. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "calib_search.h"
#include "cli.h"
#include "plan.h"
#include "tools.h"

static const char CAL_USAGE[] =
    "usage: exitrt calibrate MODEL [options]\n"
    "\n"
    "Chooses every early exit's threshold so that the accuracy stays within a\n"
    "target at the least compute. Scores every exit for every sample once\n"
    "(MASKED cost), splits the samples (seeded) into a calibration part and a\n"
    "held-out part, searches the thresholds jointly on the calibration part,\n"
    "and reports on the held-out part only: accuracy, the drop from the final\n"
    "exit's accuracy with an upper confidence bound, MACs against the full\n"
    "network, and each exit's share and accuracy -- beside the same figures\n"
    "for the thresholds in the model file.\n"
    "\n"
    "options:\n"
    "  --data FILE        input samples (default: the model's sample data)\n"
    "  --labels FILE      labels (default: the model's sample labels when\n"
    "                     --data is not given); required\n"
    "  --max-drop D       accuracy >= the final exit's - D points on the\n"
    "                     calibration part (default 0.5)\n"
    "  --min-accuracy A   accuracy >= A percent instead\n"
    "  --holdout F        share of the samples held out (default 0.5)\n"
    "  --seed S           seed of the split (default 0)\n"
    "  --confidence C     level of the bound on the drop (default 0.95)\n"
    "  --write DIR        write a copy of the model with these thresholds\n"
    "                     into DIR (weights copied), whole or not at all: DIR\n"
    "                     must be new, empty, or an earlier --write's copy\n"
    "                     (then replaced as a whole); on failure it is left as\n"
    "                     it was\n"
    "  --json             print the result as one JSON object\n"
    "  --device D         cpu, cuda or auto (default auto)\n"
    "  --batch N          samples per scoring call (default 256)\n"
    "  --threads N        CPU: threads (default: the libraries' default)\n"
    "  --precision P      fp32 (default) or tf32 (CUDA): score with the arithmetic\n"
    "                     the engine will run, so the thresholds fit it\n"
    "  --limit N          use only the first N samples\n"
    "  -h, --help         this text\n"
    "\n"
    "The bound: with probability >= C, the drop on new samples from the same\n"
    "distribution is at most drop_upper = U(b) - L(c), where b and c count\n"
    "the held-out samples the final exit gets right and the early-exit run\n"
    "gets wrong, and the reverse, and U and L are one-sided Clopper-Pearson\n"
    "bounds on their rates, each at level (1 + C) / 2.\n";

typedef struct calib_opts {
    const char *model, *data, *labels, *write;
    double max_drop, min_accuracy; /* points, percent; min_accuracy < 0: unused */
    double holdout, confidence;
    long seed, batch, threads, limit;
    ert_backend device;
    int json;
    ert_precision precision; /* --precision: the arithmetic the scores are made with */
} calib_opts;

/* --opt v: a number (tools.h's rule) in the range, the ends open or closed. */
static int parse_double(const char *opt, const char *v, double lo, double hi, int open_lo,
                        int open_hi, double *out)
{
    double d;
    const char *why = tools_parse_double(v, &d);
    if (why)
        return cli_error(CLI_USAGE, "%s: '%s' %s", opt, v, why);
    if (d < lo || d > hi || (open_lo && d == lo) || (open_hi && d == hi))
        return cli_error(CLI_USAGE, "%s: %s is not in %c%g, %g%c", opt, v, open_lo ? '(' : '[', lo,
                         hi, open_hi ? ')' : ']');
    *out = d;
    return 0;
}

static int parse_args(int argc, char **argv, calib_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_drop = 0.5;
    o->min_accuracy = -1.0;
    o->holdout = 0.5;
    o->confidence = 0.95;
    o->batch = 256;
    o->device = ERT_BACKEND_AUTO;
    int have_drop = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int r, bad = 0;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(CAL_USAGE, stdout);
            return -1;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = 1;
            continue;
        }
#define OPT(name) ((r = cli_opt_value(argc, argv, &i, name, &v)) != 0)
        if (OPT("--data"))
            o->data = v;
        else if (OPT("--labels"))
            o->labels = v;
        else if (OPT("--write"))
            o->write = v;
        else if (OPT("--max-drop")) {
            if (r > 0)
                bad = parse_double("--max-drop", v, 0.0, 100.0, 0, 0, &o->max_drop);
            have_drop = 1;
        } else if (OPT("--min-accuracy")) {
            if (r > 0)
                bad = parse_double("--min-accuracy", v, 0.0, 100.0, 0, 0, &o->min_accuracy);
        } else if (OPT("--holdout")) {
            if (r > 0)
                bad = parse_double("--holdout", v, 0.0, 1.0, 1, 1, &o->holdout);
        } else if (OPT("--confidence")) {
            if (r > 0)
                bad = parse_double("--confidence", v, 0.0, 1.0, 1, 1, &o->confidence);
        } else if (OPT("--seed")) {
            if (r > 0 && !cli_parse_long(v, 0, 1L << 62, &o->seed))
                bad = cli_error(CLI_USAGE, "--seed: '%s' is not an integer >= 0", v);
        } else if (OPT("--batch")) {
            if (r > 0 && !cli_parse_long(v, 1, 1L << 20, &o->batch))
                bad = cli_error(CLI_USAGE, "--batch: '%s' is not an integer in [1, %ld]", v,
                                1L << 20);
        } else if (OPT("--threads")) {
            if (r > 0 && !cli_parse_long(v, 0, 4096, &o->threads))
                bad = cli_error(CLI_USAGE, "--threads: '%s' is not an integer in [0, 4096]", v);
        } else if (OPT("--precision")) {
            if (r > 0 && !cli_parse_precision(v, &o->precision))
                bad = cli_error(CLI_USAGE, "--precision: '%s' is not fp32 or tf32", v);
        } else if (OPT("--limit")) {
            if (r > 0 && !cli_parse_long(v, 2, 1L << 30, &o->limit))
                bad = cli_error(CLI_USAGE, "--limit: '%s' is not an integer >= 2", v);
        } else if (OPT("--device")) {
            if (r > 0) {
                if (strcmp(v, "cpu") == 0)
                    o->device = ERT_BACKEND_CPU;
                else if (strcmp(v, "cuda") == 0 || strcmp(v, "gpu") == 0)
                    o->device = ERT_BACKEND_CUDA;
                else if (strcmp(v, "auto") == 0)
                    o->device = ERT_BACKEND_AUTO;
                else
                    bad = cli_error(CLI_USAGE, "--device: '%s' is not cpu, cuda or auto", v);
            }
        } else if (a[0] == '-' && a[1] != '\0') {
            return cli_error(CLI_USAGE,
                             "calibrate: unknown option '%s' (see 'exitrt calibrate --help')", a);
        } else if (!o->model) {
            o->model = a;
        } else {
            return cli_error(CLI_USAGE, "calibrate: unexpected argument '%s' (one MODEL only)", a);
        }
#undef OPT
        if (r < 0)
            return CLI_USAGE;
        if (bad)
            return bad;
    }
    if (!o->model)
        return cli_error(CLI_USAGE, "calibrate: no MODEL given (see 'exitrt calibrate --help')");
    if (have_drop && o->min_accuracy >= 0)
        return cli_error(CLI_USAGE, "--max-drop and --min-accuracy exclude each other");
    return 0;
}

/* ---- scoring ------------------------------------------------------------------------- */

/* Every exit's score and class for the first n samples. */
static int score_all(const calib_opts *o, ert_model *m, const float *x, size_t n, float *scores,
                     int32_t *classes)
{
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = o->device;
    cfg.mode = ERT_MODE_MASKED; /* the scores cost MASKED whatever the mode */
    cfg.max_batch = (int)((size_t)o->batch < n ? (size_t)o->batch : n);
    cfg.threads = (int)o->threads;
    cfg.precision = o->precision;
    ert_engine *e = NULL;
    ert_error err = {{0}};
    ert_status st = ert_engine_create(m, &cfg, &e, &err);
    if (st != ERT_OK)
        return cli_error(CLI_FAIL, "%s", err.msg[0] ? err.msg : ert_status_string(st));
    const size_t per = ert_model_input_size(m), E = (size_t)ert_model_num_exits(m);
    int rc = 0;
    for (size_t off = 0; off < n; off += (size_t)cfg.max_batch) {
        int b = (int)(n - off < (size_t)cfg.max_batch ? n - off : (size_t)cfg.max_batch);
        st = ert_engine_exit_outputs(e, x + off * per, b, scores + off * E, classes + off * E);
        if (st != ERT_OK) {
            rc = cli_error(CLI_FAIL, "scoring failed at sample %zu: %s", off,
                           ert_engine_error(e)[0] ? ert_engine_error(e) : ert_status_string(st));
            break;
        }
    }
    ert_engine_free(e);
    return rc;
}

/* ---- figures ------------------------------------------------------------------------- */

typedef struct figures {
    int64_t samples;
    calib_outcome o;
    double accuracy, accuracy_final, drop, drop_upper, macs_ratio;
} figures;

static void figures_of(const calib_problem *p, const float *thr, const int *rows, int count,
                       double macs_full, double confidence, figures *f)
{
    calib_evaluate(p, thr, rows, count, &f->o);
    f->samples = count;
    f->accuracy = (double)f->o.correct / (double)count;
    f->accuracy_final = (double)f->o.correct_final / (double)count;
    f->drop = f->accuracy_final - f->accuracy;
    f->drop_upper = calib_drop_upper(f->o.final_only, f->o.exit_only, count, confidence);
    f->macs_ratio = f->o.cost / ((double)count * macs_full);
}

static void print_text(const calib_opts *o, const ert_model *m, size_t n, int ncal, int nhold,
                       int64_t need, const float *thr, const float *file_thr, const figures *cal,
                       const figures *held, const figures *file)
{
    const int E = ert_model_num_exits(m);
    printf("model        %s, %zu samples: %d to calibrate, %d held out (seed %ld)\n", o->model, n,
           ncal, nhold, o->seed);
    if (o->min_accuracy >= 0)
        printf("target       accuracy >= %.2f%% on the calibration part\n", o->min_accuracy);
    else
        printf("target       accuracy >= the final exit's - %g points on the calibration part "
               "(%.2f%% - %g = %.2f%%)\n",
               o->max_drop, 100.0 * cal->accuracy_final, o->max_drop, 100.0 * (double)need / ncal);
    printf("calibration  accuracy %.2f%%, MACs %.3fx of full\n", 100.0 * cal->accuracy,
           cal->macs_ratio);
    printf("\nheld out: %d samples     calibrated  model.json\n", nhold);
    printf("accuracy               %10.2f%%  %9.2f%%\n", 100.0 * held->accuracy,
           100.0 * file->accuracy);
    printf("final exit alone       %10.2f%%  %9.2f%%\n", 100.0 * held->accuracy_final,
           100.0 * file->accuracy_final);
    printf("drop (points)          %11.2f  %10.2f\n", 100.0 * held->drop, 100.0 * file->drop);
    printf("drop bound (%4.1f%%)     %11.2f  %10.2f\n", 100.0 * o->confidence,
           100.0 * held->drop_upper, 100.0 * file->drop_upper);
    printf("MACs vs full           %10.3fx  %9.3fx\n", held->macs_ratio, file->macs_ratio);
    printf("\n%-10s %-15s %29s | %s\n", "", "", "calibrated", "model.json");
    printf("%-10s %-15s %9s %8s %10s | %9s %8s %10s\n", "exit", "policy", "threshold", "share",
           "accuracy", "threshold", "share", "accuracy");
    for (int e = 0; e < E; e++) {
        const figures *f[2] = {held, file};
        const float *t[2] = {thr, file_thr};
        printf("%-10s %-15s", ert_model_exit_name(m, e),
               e == E - 1 ? "(final)" : ert_policy_string(ert_model_exit_policy(m, e)));
        for (int k = 0; k < 2; k++) {
            int64_t n = f[k]->o.taken[e];
            if (e < E - 1)
                printf(" %9.4g", (double)t[k][e]);
            else
                printf(" %9s", "-");
            printf(" %7.1f%%", 100.0 * (double)n / (double)nhold);
            if (n)
                printf(" %9.1f%%", 100.0 * (double)f[k]->o.right[e] / (double)n);
            else
                printf(" %10s", "-");
            printf("%s", k == 0 ? " |" : "\n");
        }
    }
}

/* {samples, accuracy, accuracy_final, drop, [drop_upper, confidence,] macs_ratio,
 * exits: [{name, taken, share, accuracy}]}; the bound only for held-out
 * samples (on the calibration part it would not hold: the search saw them). */
static cJSON *figures_json(const ert_model *m, const figures *f, double confidence, int bound)
{
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return NULL;
    int ok = cJSON_AddNumberToObject(j, "samples", (double)f->samples) &&
             cJSON_AddNumberToObject(j, "accuracy", f->accuracy) &&
             cJSON_AddNumberToObject(j, "accuracy_final", f->accuracy_final) &&
             cJSON_AddNumberToObject(j, "drop", f->drop) &&
             cJSON_AddNumberToObject(j, "macs_ratio", f->macs_ratio);
    if (ok && bound)
        ok = cJSON_AddNumberToObject(j, "drop_upper", f->drop_upper) &&
             cJSON_AddNumberToObject(j, "confidence", confidence);
    cJSON *arr = ok ? cJSON_AddArrayToObject(j, "exits") : NULL;
    ok = arr != NULL;
    for (int e = 0; ok && e < ert_model_num_exits(m); e++) {
        cJSON *x = cJSON_CreateObject();
        ok = x && cJSON_AddItemToArray(arr, x);
        if (!ok) {
            cJSON_Delete(x);
            break;
        }
        int64_t t = f->o.taken[e];
        ok = cJSON_AddStringToObject(x, "name", ert_model_exit_name(m, e)) &&
             cJSON_AddNumberToObject(x, "taken", (double)t) &&
             cJSON_AddNumberToObject(x, "share", (double)t / (double)f->samples) &&
             cJSON_AddItemToObject(x, "accuracy",
                                   t ? cJSON_CreateNumber((double)f->o.right[e] / (double)t)
                                     : cJSON_CreateNull());
    }
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static cJSON *thresholds_json(const ert_model *m, const float *thr)
{
    cJSON *t = cJSON_CreateObject();
    for (int e = 0; t && e < ert_model_num_exits(m) - 1; e++)
        if (!cJSON_AddNumberToObject(t, ert_model_exit_name(m, e), cli_float_decimal(thr[e]))) {
            cJSON_Delete(t);
            return NULL;
        }
    return t;
}

/* Adds item under key, or deletes it; 0 once anything failed. */
static int add(int ok, cJSON *obj, const char *key, cJSON *item)
{
    if (ok && item && cJSON_AddItemToObject(obj, key, item))
        return 1;
    cJSON_Delete(item);
    return 0;
}

static int print_json(const calib_opts *o, const ert_model *m, const float *thr,
                      const float *file_thr, int met, const figures *cal, const figures *held,
                      const figures *file)
{
    cJSON *j = cJSON_CreateObject();
    int ok = j != NULL;
    ok = add(ok, j, "model", cJSON_CreateString(o->model));
    ok = add(ok, j, "thresholds", thresholds_json(m, thr));
    cJSON *target = cJSON_CreateObject();
    if (target)
        cJSON_AddNumberToObject(target, o->min_accuracy >= 0 ? "min_accuracy" : "max_drop",
                                o->min_accuracy >= 0 ? o->min_accuracy / 100.0
                                                     : o->max_drop / 100.0);
    ok = add(ok, j, "target", target);
    ok = add(ok, j, "seed", cJSON_CreateNumber((double)o->seed));
    ok = add(ok, j, "holdout", cJSON_CreateNumber(o->holdout));
    cJSON *c = figures_json(m, cal, o->confidence, 0);
    if (c)
        cJSON_AddBoolToObject(c, "target_met", met);
    ok = add(ok, j, "calibration", c);
    ok = add(ok, j, "heldout", figures_json(m, held, o->confidence, 1));
    cJSON *f = figures_json(m, file, o->confidence, 1);
    if (f)
        add(1, f, "thresholds", thresholds_json(m, file_thr));
    ok = add(ok, j, "model_json", f);
    char *s = ok ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!s)
        return cli_error(CLI_FAIL, "out of memory building the JSON report");
    puts(s);
    cJSON_free(s);
    return 0;
}

/* ---- the command --------------------------------------------------------------------- */

int cmd_calibrate(int argc, char **argv)
{
    calib_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc < 0)
        return CLI_OK; /* --help */
    if (rc)
        return rc;

    ert_model *m = NULL;
    cli_samples smp;
    float *scores = NULL;
    int32_t *classes = NULL;
    int *idx = NULL;
    ert_error err = {{0}};
    ert_status st;
    memset(&smp, 0, sizeof smp);
    if ((st = ert_model_load(o.model, &m, &err)) != ERT_OK) {
        rc = cli_error(CLI_FAIL, "%s", err.msg[0] ? err.msg : ert_status_string(st));
        goto done;
    }
    if ((rc = cli_load_samples(o.model, m, o.data, o.labels, 1, &smp)))
        goto done;
    size_t n = smp.data.count;
    if (o.limit > 0 && (size_t)o.limit < n)
        n = (size_t)o.limit;
    /* token ids outside the vocabulary: NaN embeddings, nothing to
       calibrate on (exitrt run --allow-invalid-tokens runs them) */
    const int T = ert_model_input_tokens(m);
    for (size_t i = 0; T > 0 && i < n; i++) {
        const float *row = smp.data.values + i * smp.data.sample_size;
        int t = cli_tokens_first_invalid(row, T, ert_model_vocab_size(m));
        if (t >= 0) {
            rc = cli_error(CLI_FAIL,
                           "%s: sample %zu, position %d: token id %.9g is not in the model's "
                           "vocabulary (integers in [0, %d))",
                           smp.data_path, i, t, (double)row[t], ert_model_vocab_size(m));
            goto done;
        }
    }
    const int E = ert_model_num_exits(m);
    if (E < 2) {
        rc = cli_error(CLI_USAGE, "%s: the model has no early exit to calibrate", o.model);
        goto done;
    }
    if (n > (size_t)1 << 30) {
        rc = cli_error(CLI_USAGE, "%zu samples: calibrate takes at most 2^30", n);
        goto done;
    }
    int nhold = (int)floor(o.holdout * (double)n + 0.5), ncal = (int)n - nhold;
    if (nhold < 1 || ncal < 1) {
        rc = cli_error(CLI_USAGE, "--holdout %g of %zu samples leaves a part empty", o.holdout, n);
        goto done;
    }
    scores = malloc(sizeof *scores * n * (size_t)E);
    classes = malloc(sizeof *classes * n * (size_t)E);
    idx = malloc(sizeof *idx * n);
    if (!scores || !classes || !idx) {
        rc = cli_error(CLI_FAIL, "out of memory for the scores of %zu samples", n);
        goto done;
    }
    if ((rc = score_all(&o, m, smp.data.values, n, scores, classes)))
        goto done;

    /* The problem: policies, and each exit's cost as COMPACTED runs it. */
    plan pl;
    plan_build(m, &pl);
    ert_policy_kind kinds[ERT_MAX_EXITS];
    double cost[ERT_MAX_EXITS];
    for (int e = 0; e < E; e++) {
        int32_t one[ERT_MAX_EXITS] = {0};
        one[e] = 1;
        kinds[e] = e == E - 1 ? ERT_POLICY_NONE : ert_model_exit_policy(m, e);
        cost[e] = (double)plan_ideal_macs(m, &pl, one);
    }
    const calib_problem p = {
        (int)n, E, kinds, scores, classes, smp.labels.values, cost, ert_model_num_classes(m)};
    const double macs_full = (double)ert_model_macs_full(m);

    /* Split: the first nhold of a seeded permutation are held out. */
    calib_shuffle(idx, (int)n, (uint64_t)o.seed);
    const int *held = idx, *cal = idx + nhold;
    float never[ERT_MAX_EXITS], thr[ERT_MAX_EXITS], file_thr[ERT_MAX_EXITS];
    for (int e = 0; e < E - 1; e++) {
        never[e] = calib_never(&p, e);
        file_thr[e] = ert_model_exit_threshold(m, e);
    }
    calib_outcome base;
    calib_evaluate(&p, never, cal, ncal, &base);
    int64_t need =
        o.min_accuracy >= 0
            ? (int64_t)ceil(o.min_accuracy / 100.0 * ncal - 1e-9)
            : (int64_t)ceil((double)base.correct_final - o.max_drop / 100.0 * ncal - 1e-9);
    int met = calib_search(&p, cal, ncal, need, thr);
    if (met < 0) {
        rc = cli_error(CLI_FAIL, "out of memory in the threshold search");
        goto done;
    }
    figures fc, fh, ff;
    figures_of(&p, thr, cal, ncal, macs_full, o.confidence, &fc);
    figures_of(&p, thr, held, nhold, macs_full, o.confidence, &fh);
    figures_of(&p, file_thr, held, nhold, macs_full, o.confidence, &ff);
    if (o.json)
        rc = print_json(&o, m, thr, file_thr, met, &fc, &fh, &ff);
    else
        print_text(&o, m, n, ncal, nhold, need, thr, file_thr, &fc, &fh, &ff);
    if (rc)
        goto done;
    if (!met) {
        rc = cli_error(CLI_FAIL,
                       "the target is out of reach on the calibration part: the best accuracy "
                       "found is %.2f%%, the target %.2f%%%s",
                       100.0 * fc.accuracy, 100.0 * (double)need / ncal,
                       o.write ? "; nothing written" : "");
        goto done;
    }
    if (o.write && (rc = cli_write_model(o.model, m, thr, o.write)))
        goto done;
    if (o.write && !o.json)
        printf("\nwrote %s/model.json: exitrt run %s\n", o.write, o.write);

done:
    free(idx);
    free(classes);
    free(scores);
    cli_samples_free(&smp);
    ert_model_free(m);
    return rc;
}

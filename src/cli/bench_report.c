/* bench_report.c - the bench's outputs: the table, the JSON file, the plot. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_run.h"

static const char *MODE_NAMES[3] = {"full", "masked", "compacted"};

static void shares_str(const int32_t *counts, int E, char *buf, size_t len)
{
    long total = 0;
    for (int x = 0; x < E; x++)
        total += counts[x];
    size_t o = 0;
    buf[0] = '\0';
    for (int x = 0; x < E && o < len; x++) {
        int n = snprintf(buf + o, len - o, "%s%.1f", x ? "/" : "",
                         total ? 100.0 * counts[x] / (double)total : 0.0);
        if (n < 0)
            break;
        o += (size_t)n;
    }
}

/* ---- table ----------------------------------------------------------------- */

void bench_print_table(const bench_run *r, FILE *out)
{
    const ert_model *m = r->model;
    int E = r->num_exits;
    char buf[256];
    fprintf(out, "exitrt bench: %s\n", r->model_path);
    fprintf(out, "  exits:");
    for (int x = 0; x < E; x++)
        fprintf(out, " %s (%s)%s", ert_model_exit_name(m, x),
                ert_policy_string(ert_model_exit_policy(m, x)), x + 1 < E ? "," : "\n");
    fprintf(out,
            "  full network: %.3f MMAC/sample; %d threads; %d timed reps of %d+ samples "
            "(median), %d warm-up batches per cell; %s\n",
            (double)m->macs_full / 1e6, r->threads, r->reps, r->rep_samples, r->warmup, r->date);
    fprintf(out, "  inputs: %s\n", r->input_desc);
    fprintf(out, "  commit: %s\n", r->commit ? r->commit : "unknown");
    if (r->backend_on[ERT_BACKEND_CUDA]) {
        const cuda_info *ci = &r->cuda;
        if (ci->present)
            fprintf(out,
                    "  gpu: %s (sm_%d%d, %d SMs); driver %s (CUDA %d.%d), runtime %d.%d; "
                    "cuDNN %d.%d.%d; cuBLAS %d.%d.%d\n",
                    ci->name, ci->cc_major, ci->cc_minor, ci->sms, ci->kernel_driver,
                    ci->driver / 1000, ci->driver % 1000 / 10, ci->runtime / 1000,
                    ci->runtime % 1000 / 10, ci->cudnn / 10000, ci->cudnn % 10000 / 100,
                    ci->cudnn % 100, ci->cublas[0], ci->cublas[1], ci->cublas[2]);
        fprintf(out, "  cuda: %d batch(es) in flight, graph buckets %d, precision %s%s\n",
                r->inflight, r->graph_buckets, ert_precision_string(r->precision),
                r->cuda_options & ERT_CUDA_FUSED_ATTENTION ? ", fused attention" : "");
        fprintf(out, "  cuda timing: host wall clock around ert_infer, which returns with the "
                     "results on the host (input and output copies included)\n");
    }
    if (r->random_weights)
        fprintf(out, "  random weights: throughput depends only on routing, which the profile "
                     "fixes\n");
    fprintf(out, "\n  %-12s %-16s %-24s %s\n", "profile", "target %", "thresholds",
            "achieved % (calibration / engine)");
    for (int p = 0; p < r->nprof; p++) {
        const bench_profile *pr = &r->prof[p];
        char tg[96], th[128], c1[96], c2[96];
        shares_str(pr->targets, E, tg, sizeof tg);
        size_t o = 0;
        th[0] = '\0';
        for (int x = 0; x < E - 1 && o < sizeof th; x++) {
            int n =
                snprintf(th + o, sizeof th - o, "%s%.4g", x ? ", " : "", (double)pr->thresholds[x]);
            o += n > 0 ? (size_t)n : 0;
        }
        shares_str(pr->calibrated, E, c1, sizeof c1);
        shares_str(pr->achieved, E, c2, sizeof c2);
        fprintf(out, "  %-12s %-16s %-24s %s / %s", pr->name, tg, th, c1, c2);
        int miss = 0;
        for (int x = 0; x < E; x++) {
            int d = pr->achieved[x] - pr->targets[x];
            miss = d > miss ? d : -d > miss ? -d : miss;
        }
        if (miss > 2)
            fprintf(out,
                    " (missed by up to %d samples: tied scores, or scores at the bound "
                    "of the policy's threshold range, e.g. max_prob exactly 1)",
                    miss);
        if (pr->peer_checked && pr->peer_mismatch_b1if >= 0)
            fprintf(out,
                    "; PyTorch decisions differ on %d (masked), %d (compacted), %d (batch1-if) "
                    "of %d",
                    pr->peer_mismatch_masked, pr->peer_mismatch_compacted, pr->peer_mismatch_b1if,
                    r->n);
        else if (pr->peer_checked)
            fprintf(out, "; PyTorch decisions differ on %d (masked), %d (compacted) of %d",
                    pr->peer_mismatch_masked, pr->peer_mismatch_compacted, r->n);
        if (pr->ort_mismatch >= 0)
            fprintf(out, "; ONNX Runtime's on %d", pr->ort_mismatch);
        fputc('\n', out);
    }
    if (r->peer_requested)
        fprintf(out, "  PyTorch peer: %s\n  ONNX Runtime peer: %s\n", r->peer_note,
                r->ort_note[0] ? r->ort_note : "not run");

    if (r->drift_batch > 0 && r->drift_after > 0)
        fprintf(out,
                "  drift: %s FULL at batch %d ran %.0f samples/s in its cell and %.0f at the "
                "end (%+.1f%%)%s\n",
                ert_backend_string(r->drift_backend), r->drift_batch, r->drift_before,
                r->drift_after, 100.0 * (r->drift_after / r->drift_before - 1.0),
                fabs(r->drift_after / r->drift_before - 1.0) > 0.1
                    ? ": the machine's speed moved during the run; ratios to cells timed far "
                      "apart are off by as much"
                    : "");

    int peer = r->peer_ok;
    int ort = 0, b1 = 0;
    for (int i = 0; i < r->ncells; i++) {
        ort |= r->cells[i].ort_samples_per_s > 0;
        b1 |= peer && r->cells[i].torch_b1if > 0;
    }
    fprintf(out, "\n%-7s %-12s %6s %-10s %-16s %11s %8s %8s %10s %7s %7s %5s %6s", "backend",
            "profile", "batch", "mode", "exits %", "samples/s", "p50 ms", "p99 ms", "MMAC/smp",
            "ideal", "speedup", "eff", "waits");
    if (peer)
        fprintf(out, " %11s %7s %8s", "torch s/s", "x torch", "x bestEE");
    if (b1)
        fprintf(out, " %10s %7s", "b1-if s/s", "x b1-if");
    if (ort)
        fprintf(out, " %11s %7s", "ORT s/s", "x ORT");
    fputc('\n', out);
    for (int i = 0; i < r->ncells; i++) {
        const bench_cell *c = &r->cells[i];
        shares_str(c->exit_counts, E, buf, sizeof buf);
        fprintf(
            out, "%-7s %-12s %6d %-10s %-16s %11.1f %8.3f %8.3f %10.3f %6.2fx %6.2fx %5.2f %6.2f",
            ert_backend_string(c->backend), r->prof[c->profile].name, c->batch, MODE_NAMES[c->mode],
            buf, c->samples_per_s, c->p50_ms, c->p99_ms, c->macs_per_sample / 1e6, c->ideal_speedup,
            c->speedup, c->efficiency, c->host_waits_per_batch);
        if (peer) {
            if (c->torch_samples_per_s > 0)
                fprintf(out, " %11.1f %6.2fx", c->torch_samples_per_s,
                        c->samples_per_s / c->torch_samples_per_s);
            else
                fprintf(out, " %11s %7s", "-", "-");
            if (c->mode != ERT_MODE_FULL && c->torch_best_ee > 0)
                fprintf(out, " %7.2fx", c->samples_per_s / c->torch_best_ee);
            else
                fprintf(out, " %8s", "-");
        }
        if (b1) {
            if (c->torch_b1if > 0)
                fprintf(out, " %10.1f %6.2fx", c->torch_b1if, c->samples_per_s / c->torch_b1if);
            else
                fprintf(out, " %10s %7s", "-", "-");
        }
        if (ort) {
            if (c->ort_samples_per_s > 0)
                fprintf(out, " %11.1f %6.2fx", c->ort_samples_per_s,
                        c->samples_per_s / c->ort_samples_per_s);
            else
                fprintf(out, " %11s %7s", "-", "-");
        }
        fputc('\n', out);
    }
    fprintf(out, "\nideal = full MACs / ideal early-exit MACs for the exits taken; speedup = "
                 "samples/s over FULL's (same backend, batch); eff = speedup / ideal; waits = "
                 "blocking host waits per batch");
    if (ort)
        fprintf(out, "; x ORT = exitrt / ONNX Runtime: FULL against its full network, "
                     "COMPACTED against its early-exit pipeline (one session per stage and "
                     "head, survivors gathered in NumPy)");
    if (peer)
        fprintf(out, "; x torch = exitrt / PyTorch, same mode; x bestEE = exitrt / PyTorch's "
                     "best early-exit mode (masked or compacted)");
    if (b1)
        fprintf(out, "; x b1-if = exitrt / PyTorch one sample at a time with a Python `if` "
                     "after each exit (DeeBERT's and PABEE's loop), same profile");
    fprintf(out, ".\n");
    bench_print_stages(r, out);
}

/* ---- JSON ------------------------------------------------------------------ */

static cJSON *int_array(const int32_t *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n && a; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

static cJSON *num_or_null(double v) { return v >= 0 ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

int bench_write_json(const bench_run *r, FILE *f)
{
    const ert_model *m = r->model;
    int E = r->num_exits;
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return -1;
    cJSON_AddStringToObject(root, "format", "exitrt-bench");
    cJSON_AddNumberToObject(root, "version", 1);
    cJSON_AddStringToObject(root, "date", r->date);
    cJSON_AddStringToObject(root, "commit", r->commit ? r->commit : "unknown");
    if (r->backend_on[ERT_BACKEND_CUDA] && r->cuda.present) {
        const cuda_info *ci = &r->cuda;
        char v[32];
        cJSON *g = cJSON_AddObjectToObject(root, "gpu");
        cJSON_AddStringToObject(g, "name", ci->name);
        snprintf(v, sizeof v, "sm_%d%d", ci->cc_major, ci->cc_minor);
        cJSON_AddStringToObject(g, "arch", v);
        cJSON_AddNumberToObject(g, "sms", ci->sms);
        cJSON_AddNumberToObject(g, "memory_gib", ci->mem_gib);
        cJSON_AddStringToObject(g, "driver", ci->kernel_driver);
        snprintf(v, sizeof v, "%d.%d", ci->driver / 1000, ci->driver % 1000 / 10);
        cJSON_AddStringToObject(g, "cuda_driver", v);
        snprintf(v, sizeof v, "%d.%d", ci->runtime / 1000, ci->runtime % 1000 / 10);
        cJSON_AddStringToObject(g, "cuda_runtime", v);
        snprintf(v, sizeof v, "%d.%d.%d", ci->cudnn / 10000, ci->cudnn % 10000 / 100,
                 ci->cudnn % 100);
        cJSON_AddStringToObject(g, "cudnn", v);
        snprintf(v, sizeof v, "%d.%d.%d", ci->cublas[0], ci->cublas[1], ci->cublas[2]);
        cJSON_AddStringToObject(g, "cublas", v);
    }
    cJSON_AddStringToObject(root, "model", r->model_path);
    cJSON_AddBoolToObject(root, "random_weights", r->random_weights);
    cJSON_AddStringToObject(root, "inputs", r->input_desc);
    cJSON_AddNumberToObject(root, "num_inputs", r->n);
    cJSON_AddNumberToObject(root, "threads", r->threads);
    cJSON_AddNumberToObject(root, "reps", r->reps);
    cJSON_AddNumberToObject(root, "warmup_batches", r->warmup);
    cJSON_AddNumberToObject(root, "rep_samples", r->rep_samples);
    cJSON_AddNumberToObject(root, "inflight", r->inflight);
    cJSON_AddNumberToObject(root, "graph_buckets", r->graph_buckets);
    cJSON_AddStringToObject(root, "precision", ert_precision_string(r->precision));
    cJSON_AddBoolToObject(root, "fused_attention",
                          (r->cuda_options & ERT_CUDA_FUSED_ATTENTION) != 0);
    cJSON_AddNumberToObject(root, "b1_samples", r->b1_samples);
    cJSON_AddNumberToObject(root, "peer_runs", r->peer_runs);
    cJSON_AddNumberToObject(root, "macs_full", (double)m->macs_full);
    cJSON *exits = cJSON_AddArrayToObject(root, "exits");
    for (int x = 0; x < E; x++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", ert_model_exit_name(m, x));
        cJSON_AddStringToObject(o, "policy", ert_policy_string(ert_model_exit_policy(m, x)));
        cJSON_AddItemToArray(exits, o);
    }
    cJSON *profs = cJSON_AddArrayToObject(root, "profiles");
    for (int p = 0; p < r->nprof; p++) {
        const bench_profile *pr = &r->prof[p];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", pr->name);
        cJSON *sh = cJSON_AddArrayToObject(o, "shares");
        for (int x = 0; x < pr->nshares; x++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber(pr->shares[x]));
        cJSON *th = cJSON_AddArrayToObject(o, "thresholds");
        for (int x = 0; x < E - 1; x++)
            cJSON_AddItemToArray(th, cJSON_CreateNumber(pr->thresholds[x]));
        cJSON_AddItemToObject(o, "targets", int_array(pr->targets, E));
        cJSON_AddItemToObject(o, "calibrated", int_array(pr->calibrated, E));
        cJSON_AddItemToObject(o, "achieved", int_array(pr->achieved, E));
        if (pr->peer_checked) {
            cJSON_AddNumberToObject(o, "torch_mismatch_masked", pr->peer_mismatch_masked);
            cJSON_AddNumberToObject(o, "torch_mismatch_compacted", pr->peer_mismatch_compacted);
        } else {
            cJSON_AddNullToObject(o, "torch_mismatch_masked");
            cJSON_AddNullToObject(o, "torch_mismatch_compacted");
        }
        cJSON_AddItemToObject(o, "torch_mismatch_b1if",
                              num_or_null(pr->peer_checked ? pr->peer_mismatch_b1if : -1));
        cJSON_AddItemToObject(o, "ort_mismatch", num_or_null(pr->ort_mismatch));
        cJSON_AddItemToArray(profs, o);
    }
    cJSON *peer = cJSON_AddObjectToObject(root, "peer");
    cJSON_AddBoolToObject(peer, "requested", r->peer_requested);
    cJSON_AddBoolToObject(peer, "ran", r->peer_ok);
    cJSON_AddStringToObject(peer, "note", r->peer_note);
    cJSON_AddStringToObject(peer, "ort_note", r->ort_note);
    cJSON *drift = cJSON_AddObjectToObject(root, "drift");
    cJSON_AddNumberToObject(drift, "batch", r->drift_batch);
    cJSON_AddStringToObject(drift, "backend",
                            r->drift_batch ? ert_backend_string(r->drift_backend) : "");
    cJSON_AddNumberToObject(drift, "before", r->drift_before);
    cJSON_AddNumberToObject(drift, "after", r->drift_after);
    cJSON *cells = cJSON_AddArrayToObject(root, "cells");
    for (int i = 0; i < r->ncells; i++) {
        const bench_cell *c = &r->cells[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "backend", ert_backend_string(c->backend));
        cJSON_AddStringToObject(o, "profile", r->prof[c->profile].name);
        cJSON_AddNumberToObject(o, "batch", c->batch);
        cJSON_AddStringToObject(o, "mode", MODE_NAMES[c->mode]);
        cJSON_AddNumberToObject(o, "reps", c->reps);
        cJSON_AddNumberToObject(o, "samples_per_rep", c->samples_per_rep);
        cJSON_AddNumberToObject(o, "samples_per_s", c->samples_per_s);
        cJSON_AddNumberToObject(o, "p50_ms", c->p50_ms);
        cJSON_AddNumberToObject(o, "p99_ms", c->p99_ms);
        cJSON_AddNumberToObject(o, "macs_per_sample", c->macs_per_sample);
        cJSON_AddNumberToObject(o, "padding_macs_per_sample", c->padding_macs_per_sample);
        cJSON_AddNumberToObject(o, "ideal_macs_per_sample", c->ideal_macs_per_sample);
        cJSON_AddNumberToObject(o, "ideal_speedup", c->ideal_speedup);
        cJSON_AddNumberToObject(o, "speedup", c->speedup);
        cJSON_AddNumberToObject(o, "efficiency", c->efficiency);
        cJSON_AddNumberToObject(o, "host_waits_per_batch", c->host_waits_per_batch);
        cJSON_AddItemToObject(o, "exit_counts", int_array(c->exit_counts, E));
        cJSON_AddItemToObject(o, "torch_samples_per_s", num_or_null(c->torch_samples_per_s));
        cJSON_AddItemToObject(o, "torch_best_ee_samples_per_s",
                              num_or_null(c->mode == ERT_MODE_FULL ? -1.0 : c->torch_best_ee));
        cJSON_AddItemToObject(o, "torch_b1if_samples_per_s", num_or_null(c->torch_b1if));
        cJSON_AddItemToObject(o, "ort_samples_per_s", num_or_null(c->ort_samples_per_s));
        cJSON_AddItemToArray(cells, o);
    }
    if (bench_stages_json(r, root) != 0) {
        cJSON_Delete(root);
        return -1;
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text)
        return -1;
    fputs(text, f);
    fputc('\n', f);
    cJSON_free(text);
    return 0;
}

/* ---- plot ------------------------------------------------------------------ */

/* Runs argv without a shell; 0 when it exits 0. Its stdout goes to stderr. */
static int run_quiet(char *const argv[])
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(STDERR_FILENO, STDOUT_FILENO);
        execvp(argv[0], argv);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* Writes s as a gnuplot single-quoted string ('' stands for a quote). */
static void gp_quote(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

/* One data block per (backend, profile, mode): "batch samples/s efficiency
 * torch_samples/s", blocks separated by two blank lines (gnuplot `index`). */
int bench_write_plot(const bench_run *r, const char *path, const char *shown)
{
    char dir[] = "/tmp/exitrt-plot-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "exitrt bench: --plot: cannot make a temporary folder\n");
        return -1;
    }
    char dat[64], gp[64];
    snprintf(dat, sizeof dat, "%s/bench.dat", dir);
    snprintf(gp, sizeof gp, "%s/bench.gp", dir);
    FILE *fd = fopen(dat, "w"), *fg = fopen(gp, "w");
    int rc = -1;
    if (!fd || !fg)
        goto done;

    /* which backends appear */
    int be_on[3] = {0, 0, 0};
    for (int i = 0; i < r->ncells; i++)
        be_on[r->cells[i].backend] = 1;
    int P = r->nprof, cols = P;
    fprintf(fg, "set terminal pngcairo size %d,900 font 'sans,10'\n", 420 * cols + 80);
    fprintf(fg, "set output ");
    gp_quote(fg, path);
    char title[1400];
    snprintf(title, sizeof title, "exitrt bench: %s (%d threads)%s", r->model_path, r->threads,
             r->random_weights ? " - random weights" : "");
    fprintf(fg, "\nset multiplot layout 2,%d title ", cols);
    gp_quote(fg, title);
    fputc('\n', fg);
    fprintf(fg, "set logscale x 2\nset grid\nset key top left font ',8'\n"
                "set xlabel 'batch size'\n");
    int block = 0;
    int idx[3][BENCH_MAX_PROFILES][3];
    for (int be = 0; be < 3; be++)
        for (int p = 0; p < P; p++)
            for (int m = 0; m < 3; m++) {
                idx[be][p][m] = -1;
                int any = 0;
                for (int i = 0; i < r->ncells; i++) {
                    const bench_cell *c = &r->cells[i];
                    if ((int)c->backend != be || c->profile != p || (int)c->mode != m)
                        continue;
                    fprintf(fd, "%d %.6g %.6g %.6g\n", c->batch, c->samples_per_s, c->efficiency,
                            c->torch_samples_per_s > 0 ? c->torch_samples_per_s : -1.0);
                    any = 1;
                }
                if (any) {
                    fprintf(fd, "\n\n");
                    idx[be][p][m] = block++;
                }
            }
    static const char *colors[3] = {"#555555", "#1f77b4", "#d62728"};
    for (int row = 0; row < 2; row++)
        for (int p = 0; p < P; p++) {
            snprintf(title, sizeof title, "%s: %s", r->prof[p].name,
                     row == 0 ? "throughput" : "efficiency (speedup / ideal)");
            fprintf(fg, "set title ");
            gp_quote(fg, title);
            fputc('\n', fg);
            if (row == 0)
                fprintf(fg, "set logscale y 10\nset ylabel 'samples/s'\nunset yrange\n");
            else
                fprintf(fg, "unset logscale y\nset ylabel 'efficiency'\nset yrange [0:*]\n");
            fprintf(fg, "plot ");
            int first = 1;
            for (int be = 0; be < 3; be++)
                for (int m = 0; m < 3; m++) {
                    int b = idx[be][p][m];
                    if (b < 0)
                        continue;
                    fprintf(fg,
                            "%s'%s' index %d using 1:%d with linespoints lw 2 lc rgb '%s' "
                            "dt %d title '%s %s'",
                            first ? "" : ", ", dat, b, row == 0 ? 2 : 3, colors[m],
                            be == ERT_BACKEND_CUDA ? 2 : 1, ert_backend_string((ert_backend)be),
                            MODE_NAMES[m]);
                    first = 0;
                    if (row == 0 && r->peer_ok)
                        fprintf(fg,
                                ", '%s' index %d using 1:($4 > 0 ? $4 : 1/0) with "
                                "linespoints lw 1 lc rgb '%s' dt 3 pt 6 title 'torch %s %s'",
                                dat, b, colors[m], ert_backend_string((ert_backend)be),
                                MODE_NAMES[m]);
                }
            if (first)
                fprintf(fg, "NaN notitle");
            fputc('\n', fg);
        }
    fprintf(fg, "unset multiplot\n");
    (void)be_on;
    if (fclose(fd) != 0 || fclose(fg) != 0) {
        fd = fg = NULL;
        goto done;
    }
    fd = fg = NULL;
    char *argv[] = {"gnuplot", gp, NULL};
    rc = run_quiet(argv);
    if (rc)
        fprintf(stderr, "exitrt bench: --plot: gnuplot failed (is gnuplot with the pngcairo "
                        "terminal installed?)\n");
done:
    if (fd)
        fclose(fd);
    if (fg)
        fclose(fg);
    remove(dat);
    remove(gp);
    rmdir(dir);
    if (rc == 0)
        fprintf(stderr, "exitrt bench: plot written to %s\n", shown);
    return rc;
}

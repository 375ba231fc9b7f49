/* bench.c - `exitrt bench`: the sweep.
 *
 * For one model: pick the bench inputs, calibrate each exit profile's
 * thresholds on them (src/cli/bench_calibrate.c), then for each backend and batch
 * size time FULL, MASKED and COMPACTED with every profile. Reps of the
 * modes and profiles are interleaved (rep r of every cell, then rep r+1),
 * so that a slow patch of a shared machine hits every cell alike and the
 * ratios between cells stay fair. FULL does not depend on the thresholds:
 * it is measured once per backend and batch and reported under every
 * profile.
 */
#include "bench.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_run.h"
#include "bench_calibrate.h"
#include "cli.h"
#include "data.h"
#include "ert_commit.h"
#include "outfile.h"
#include "tools.h"

/* ---- inputs ---------------------------------------------------------------- */

/* Whether model.json says its weights are random: a "random_weights": true
 * member, or a name containing "random" (the GPU-scale generators in
 * models/ write both). */
static int model_is_random(const ert_model *m)
{
    FILE *f = fopen(m->path, "rb");
    if (!f)
        return 0;
    char *buf = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) > 0 && len < (64L << 20) &&
        fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)len + 1)) &&
        fread(buf, 1, (size_t)len, f) == (size_t)len)
        buf[len] = '\0';
    else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf)
        return 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    int rnd = 0;
    if (j) {
        const cJSON *rw = cJSON_GetObjectItemCaseSensitive(j, "random_weights");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(j, "name");
        rnd = cJSON_IsTrue(rw) || (cJSON_IsString(nm) && strstr(nm->valuestring, "random"));
        cJSON_Delete(j);
    }
    return rnd;
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Deterministic token rows (FORMAT.md, "Token inputs"): sequence lengths
 * uniform in [T/8, T] (at least 1), ids uniform in [1, vocab) (0 is BERT's
 * padding id; [0, 1) when vocab is 1), padded tokens id 0 and mask 0. */
static void random_token_inputs(const ert_model *m, float *x, size_t rows)
{
    uint64_t s = 0x9E3779B97F4A7C15ull;
    int T = ert_model_input_tokens(m), V = ert_model_vocab_size(m);
    int lo = T / 8 > 1 ? T / 8 : 1;
    for (size_t i = 0; i < rows; i++) {
        float *ids = x + i * 2 * (size_t)T, *mask = ids + T;
        int len = lo + (int)(xorshift(&s) % (uint64_t)(T - lo + 1));
        for (int t = 0; t < T; t++) {
            int id = V > 1 ? 1 + (int)(xorshift(&s) % (uint64_t)(V - 1)) : 0;
            ids[t] = t < len ? (float)id : 0.0f;
            mask[t] = t < len ? 1.0f : 0.0f;
        }
    }
}

/* Deterministic inputs: normal-ish values in the network's units, mapped
 * back to raw units through the model's normalisation; token rows for a
 * token model. */
static void random_inputs(const ert_model *m, float *x, size_t rows)
{
    if (ert_model_input_tokens(m) > 0) {
        random_token_inputs(m, x, rows);
        return;
    }
    uint64_t s = 0x9E3779B97F4A7C15ull;
    size_t hw = (size_t)m->input.h * (size_t)m->input.w;
    for (size_t i = 0; i < rows * m->input.c * hw; i++) {
        double u = 0.0;
        for (int k = 0; k < 4; k++) /* Irwin-Hall: sum of 4 uniforms, var 1/3 */
            u += (double)(xorshift(&s) >> 11) * (1.0 / 9007199254740992.0);
        double z = (u - 2.0) * sqrt(3.0);
        int c = (int)((i / hw) % (size_t)m->input.c);
        x[i] = (float)((z * m->std[c] + m->mean[c]) / m->input_scale);
    }
}

static int load_inputs(bench_run *r, const char *data)
{
    const ert_model *m = r->model;
    int maxb = 0;
    for (int i = 0; i < r->nbatches; i++)
        maxb = r->batches[i] > maxb ? r->batches[i] : maxb;
    r->n = maxb;
    r->input_size = ert_model_input_size(m);
    size_t rows = (size_t)r->n + (size_t)maxb;
    r->inputs = malloc(rows * r->input_size * sizeof(float));
    if (!r->inputs) {
        fprintf(stderr, "exitrt bench: out of memory for %zu inputs\n", rows);
        return -1;
    }
    const char *path = data ? data : ert_model_sample_data(m);
    if (!path) {
        random_inputs(m, r->inputs, (size_t)r->n);
        snprintf(r->input_desc, sizeof r->input_desc,
                 ert_model_input_tokens(m) > 0
                     ? "deterministic random token ids and lengths (the model names no sample "
                       "data)"
                     : "deterministic random inputs (the model names no sample data)");
    } else {
        cli_dataset d;
        ert_error err;
        if (cli_dataset_load(path, &d, &err) != ERT_OK) {
            fprintf(stderr, "exitrt bench: %s\n", err.msg);
            return -1;
        }
        /* a token model's [N, 2, T] or [N, T] ids become rows of 2T floats */
        if (cli_dataset_fit_model(&d, path, m, &err) != ERT_OK) {
            fprintf(stderr, "exitrt bench: %s\n", err.msg);
            cli_dataset_free(&d);
            return -1;
        }
        for (size_t i = 0; i < (size_t)r->n; i++)
            memcpy(r->inputs + i * r->input_size, d.values + (i % d.count) * r->input_size,
                   r->input_size * sizeof(float));
        snprintf(r->input_desc, sizeof r->input_desc, "%s%s: first %d samples%s",
                 data ? "" : "the model's sample data ", path, r->n,
                 d.count < (size_t)r->n ? " (repeated: the file holds fewer)" : "");
        cli_dataset_free(&d);
    }
    /* rows wrap: a batch may start anywhere in [0, n) and read contiguously */
    for (size_t i = 0; i < (size_t)maxb; i++)
        memcpy(r->inputs + ((size_t)r->n + i) * r->input_size,
               r->inputs + (i % (size_t)r->n) * r->input_size, r->input_size * sizeof(float));
    return 0;
}

/* ---- calibration ----------------------------------------------------------- */

/* Every exit's score on the n inputs (one CPU engine in MASKED mode), then
 * each profile's thresholds; then the same engine runs the inputs with the
 * thresholds, to record each sample's exit as an engine decides it. */
static int calibrate(bench_run *r)
{
    ert_model *m = r->model;
    int E = r->num_exits, chunk = r->n < 256 ? r->n : 256;
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_BACKEND_CPU;
    cfg.mode = ERT_MODE_MASKED;
    cfg.max_batch = chunk;
    cfg.threads = r->threads;
    ert_engine *e = NULL;
    ert_error err;
    float *scores = malloc(sizeof *scores * (size_t)r->n * (size_t)E);
    ert_sample *smp = malloc(sizeof *smp * (size_t)chunk);
    int rc = -1;
    if (!scores || !smp) {
        fprintf(stderr, "exitrt bench: out of memory\n");
        goto done;
    }
    if (ert_engine_create(m, &cfg, &e, &err) != ERT_OK) {
        fprintf(stderr, "exitrt bench: calibration engine: %s\n", err.msg);
        goto done;
    }
    for (int b = 0; b < r->n; b += chunk) {
        int nb = r->n - b < chunk ? r->n - b : chunk;
        if (ert_engine_scores(e, r->inputs + (size_t)b * r->input_size, nb,
                              scores + (size_t)b * (size_t)E) != ERT_OK) {
            fprintf(stderr, "exitrt bench: scores: %s\n", ert_engine_error(e));
            goto done;
        }
    }
    ert_policy_kind kinds[ERT_MAX_EXITS];
    for (int x = 0; x < E; x++)
        kinds[x] = ert_model_exit_policy(m, x);
    if (bench_stage_thresholds(r, kinds, scores) != 0) {
        fprintf(stderr, "exitrt bench: calibration failed (out of memory?)\n");
        goto done;
    }
    for (int p = 0; p < r->nprof; p++) {
        bench_profile *pr = &r->prof[p];
        pr->exits = malloc(sizeof *pr->exits * (size_t)r->n);
        if (!pr->exits || calib_profile(E, kinds, scores, r->n, pr->shares, pr->nshares,
                                        pr->thresholds, pr->targets, pr->calibrated, NULL) != 0) {
            fprintf(stderr, "exitrt bench: calibration failed (out of memory?)\n");
            goto done;
        }
        for (int x = 0; x < E - 1; x++)
            if (ert_engine_set_threshold(e, x, pr->thresholds[x]) != ERT_OK) {
                fprintf(stderr, "exitrt bench: %s\n", ert_engine_error(e));
                goto done;
            }
        memset(pr->achieved, 0, sizeof pr->achieved);
        for (int b = 0; b < r->n; b += chunk) {
            int nb = r->n - b < chunk ? r->n - b : chunk;
            ert_result res = {.struct_size = sizeof(ert_result), .samples = smp};
            if (ert_infer(e, r->inputs + (size_t)b * r->input_size, nb, &res) != ERT_OK) {
                fprintf(stderr, "exitrt bench: %s\n", ert_engine_error(e));
                goto done;
            }
            for (int i = 0; i < nb; i++) {
                pr->exits[b + i] = smp[i].exit_index;
                pr->achieved[smp[i].exit_index]++;
            }
        }
    }
    rc = 0;
done:
    ert_engine_free(e);
    free(scores);
    free(smp);
    return rc;
}

/* ---- timing ----------------------------------------------------------------- */

/* A cell being measured: its engine and what its reps have gathered. */
typedef struct cell_acc {
    ert_engine *eng;
    int profile;
    double *rep_s; /* [reps] */
    double *lat_s; /* [reps * batches_per_rep] */
    int nrep, nlat;
    int32_t counts[ERT_MAX_EXITS]; /* the first rep's */
    uint64_t macs;                 /* the first rep's */
    uint64_t macs_padding;         /* the first rep's: bucket padding (CUDA graphs) */
    long waits;                    /* all reps */
} cell_acc;

static int set_profile(bench_run *r, ert_engine *e, int p)
{
    for (int x = 0; x < r->num_exits - 1; x++)
        if (ert_engine_set_threshold(e, x, r->prof[p].thresholds[x]) != ERT_OK) {
            fprintf(stderr, "exitrt bench: %s\n", ert_engine_error(e));
            return -1;
        }
    return 0;
}

/* nb batches of `batch` rows, starting where the previous batch ended
 * (cycling through the n inputs). timed: record into a. */
static int run_batches(bench_run *r, cell_acc *a, int batch, int nb, ert_sample *smp, int timed,
                       int first)
{
    double t0 = tools_now_s();
    for (int k = 0; k < nb; k++) {
        size_t start = ((size_t)k * (size_t)batch) % (size_t)r->n;
        ert_result res = {.struct_size = sizeof(ert_result), .samples = smp};
        double tb = tools_now_s();
        if (ert_infer(a->eng, r->inputs + start * r->input_size, batch, &res) != ERT_OK) {
            fprintf(stderr, "exitrt bench: %s\n", ert_engine_error(a->eng));
            return -1;
        }
        if (!timed)
            continue;
        a->lat_s[a->nlat++] = tools_now_s() - tb;
        a->waits += res.host_waits;
        if (first) {
            for (int x = 0; x < r->num_exits; x++)
                a->counts[x] += res.exit_counts[x];
            a->macs += res.macs_executed;
            a->macs_padding += res.macs_padding;
        }
    }
    if (timed)
        a->rep_s[a->nrep++] = tools_now_s() - t0;
    return 0;
}

static bench_cell *new_cell(bench_run *r)
{
    if (r->ncells == r->cap) {
        int cap = r->cap ? 2 * r->cap : 64;
        bench_cell *c = realloc(r->cells, sizeof *c * (size_t)cap);
        if (!c)
            return NULL;
        r->cells = c;
        r->cap = cap;
    }
    bench_cell *c = &r->cells[r->ncells++];
    memset(c, 0, sizeof *c);
    c->torch_samples_per_s = -1.0;
    c->torch_best_ee = -1.0;
    c->torch_b1if = -1.0;
    c->ort_samples_per_s = -1.0;
    return c;
}

static double median(const double *v, int n, double *scratch)
{
    return calib_percentile(v, n, 0.5, scratch);
}

ert_engine_config bench_engine_config(const bench_run *r, ert_backend be, ert_mode mode, int batch)
{
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = be;
    cfg.mode = mode;
    cfg.max_batch = batch;
    cfg.threads = r->threads;
    cfg.inflight = r->inflight;
    if (r->graph_buckets >= 0) /* bench_main resolves -1 to the tools' default */
        cfg.graph_buckets = r->graph_buckets;
    cfg.precision = r->precision;
    cfg.cuda_options = r->cuda_options;
    return cfg;
}

/* Times every mode and profile for one backend and batch size. With
 * full_only, times FULL alone into *full_only and adds no cell. */
static int sweep_batch(bench_run *r, ert_backend be, int batch, double *full_only)
{
    int P = r->nprof;
    int nb = (r->rep_samples + batch - 1) / batch;
    int spr = nb * batch;
    /* acc[0]: FULL; acc[1 + 2p]: MASKED, acc[2 + 2p]: COMPACTED of profile p */
    int nacc = full_only ? 1 : 1 + 2 * P;
    cell_acc *acc = calloc((size_t)nacc, sizeof *acc);
    ert_sample *smp = malloc(sizeof *smp * (size_t)batch);
    double *scratch = malloc(sizeof(double) * (size_t)(r->reps * nb + r->reps));
    ert_engine *eng[3] = {NULL, NULL, NULL};
    int rc = -1;
    if (!acc || !smp || !scratch)
        goto oom;
    for (int m = 0; m < 3; m++) {
        if (m != ERT_MODE_FULL && (!r->mode_on[m] || full_only))
            continue;
        ert_engine_config cfg = bench_engine_config(r, be, (ert_mode)m, batch);
        ert_error err;
        ert_status st = ert_engine_create(r->model, &cfg, &eng[m], &err);
        if (st != ERT_OK) {
            fprintf(stderr, "exitrt bench: %s batch %d %s: %s%s\n", ert_backend_string(be), batch,
                    ert_mode_string((ert_mode)m), err.msg,
                    st == ERT_OUT_OF_MEMORY ? " (batch size skipped)" : "");
            rc = st == ERT_OUT_OF_MEMORY ? 1 : -1;
            goto done;
        }
    }
    for (int i = 0; i < nacc; i++) {
        int m = i == 0 ? ERT_MODE_FULL : (i % 2 ? ERT_MODE_MASKED : ERT_MODE_COMPACTED);
        acc[i].eng = eng[m];
        acc[i].profile = i == 0 ? -1 : (i - 1) / 2;
        acc[i].rep_s = calloc((size_t)r->reps, sizeof(double));
        acc[i].lat_s = calloc((size_t)r->reps * (size_t)nb, sizeof(double));
        if (!acc[i].rep_s || !acc[i].lat_s)
            goto oom;
    }

    /* warm-up, then reps interleaved across cells */
    for (int rep = -1; rep < r->reps; rep++) {
        for (int i = 0; i < nacc; i++) {
            cell_acc *a = &acc[i];
            if (!a->eng)
                continue;
            if (a->profile >= 0 && set_profile(r, a->eng, a->profile))
                goto done;
            int timed = rep >= 0;
            int n = timed ? nb : r->warmup;
            if (n > 0 && run_batches(r, a, batch, n, smp, timed, rep == 0))
                goto done;
        }
    }

    double full_sps = 0.0;
    for (int i = 0; i < nacc; i++) {
        cell_acc *a = &acc[i];
        if (!a->eng)
            continue;
        double sps = (double)spr / median(a->rep_s, a->nrep, scratch);
        if (i == 0)
            full_sps = sps;
        if (full_only) {
            *full_only = sps;
            break;
        }
        /* FULL is reported under every profile */
        int p0 = i == 0 ? 0 : a->profile, p1 = i == 0 ? P : a->profile + 1;
        for (int p = p0; p < p1; p++) {
            if (i == 0 && !r->mode_on[ERT_MODE_FULL])
                break;
            bench_cell *c = new_cell(r);
            if (!c)
                goto oom;
            c->backend = be;
            c->profile = p;
            c->batch = batch;
            c->mode = ert_engine_mode(a->eng);
            c->reps = a->nrep;
            c->batches_per_rep = nb;
            c->samples_per_rep = spr;
            c->samples_per_s = sps;
            c->p50_ms = 1e3 * calib_percentile(a->lat_s, a->nlat, 0.50, scratch);
            c->p99_ms = 1e3 * calib_percentile(a->lat_s, a->nlat, 0.99, scratch);
            c->macs_per_sample = (double)a->macs / spr;
            c->padding_macs_per_sample = (double)a->macs_padding / spr;
            memcpy(c->exit_counts, a->counts, sizeof c->exit_counts);
            /* the ideal is the profile's: for FULL take the COMPACTED
               cell's counts (FULL itself exits nobody early) */
            const int32_t *cnt = a->counts;
            if (i == 0 && acc[2 + 2 * p].eng)
                cnt = acc[2 + 2 * p].counts;
            else if (i == 0 && acc[1 + 2 * p].eng)
                cnt = acc[1 + 2 * p].counts;
            c->ideal_macs_per_sample = (double)plan_ideal_macs(r->model, &r->plan, cnt) / spr;
            c->ideal_speedup = calib_ideal_speedup(r->model, &r->plan, cnt);
            c->speedup = full_sps > 0.0 ? sps / full_sps : 0.0;
            c->efficiency = calib_efficiency(c->speedup, c->ideal_speedup);
            c->host_waits_per_batch = (double)a->waits / (double)(a->nrep * nb);
        }
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "exitrt bench: out of memory\n");
done:
    if (acc)
        for (int i = 0; i < nacc; i++) {
            free(acc[i].rep_s);
            free(acc[i].lat_s);
        }
    for (int m = 0; m < 3; m++)
        ert_engine_free(eng[m]);
    free(acc);
    free(smp);
    free(scratch);
    return rc;
}

/* ---- main ------------------------------------------------------------------ */

int bench_main(int argc, char **argv)
{
    bench_run r;
    bench_opts o;
    memset(&r, 0, sizeof r);
    memset(&o, 0, sizeof o);
    r.reps = 5;
    r.warmup = 3;
    r.rep_samples = 1024;
    r.inflight = 1;
    r.graph_buckets = -1;
    r.b1_samples = -1;
    r.peer_runs = 2;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    r.threads = ncpu > 0 ? (int)ncpu : 1;

    int rc = bench_parse_args(argc, argv, &r, &o);
    if (rc)
        return rc == 3 ? 0 : rc;
    rc = bench_setup_sweep(&r, &o);
    if (rc)
        return rc;
    if (r.b1_samples < 0)
        r.b1_samples = r.rep_samples;
    r.model_path = o.model;
    if (r.graph_buckets < 0)
        r.graph_buckets = tools_graph_buckets_default();
    time_t t = time(NULL);
    strftime(r.date, sizeof r.date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    r.commit = ERT_COMMIT;
    if (r.backend_on[ERT_BACKEND_CUDA])
        cuda_info_query(0, &r.cuda);

    /* --json and --plot: temporaries now (a bad path fails before the
       sweep), renamed over the targets only when both are complete */
    cli_out json_out = {0}, plot_out = {0};
    cli_out *const outs[2] = {&json_out, &plot_out};
    rc = 1;
    if (o.json && cli_out_open(&json_out, o.json))
        goto done;
    if (o.plot && cli_out_open(&plot_out, o.plot))
        goto done;
    ert_error err;
    if (ert_model_load(o.model, &r.model, &err) != ERT_OK) {
        fprintf(stderr, "exitrt bench: %s\n", err.msg);
        goto done;
    }
    r.num_exits = ert_model_num_exits(r.model);
    plan_build(r.model, &r.plan);
    r.random_weights = model_is_random(r.model);
    if (load_inputs(&r, o.data))
        goto done;
    double t0 = tools_now_s();
    if (calibrate(&r))
        goto done;
    fprintf(stderr, "exitrt bench: calibrated %d profiles on %d inputs (%.1fs)\n", r.nprof, r.n,
            tools_now_s() - t0);

    for (int be = ERT_BACKEND_CPU; be <= ERT_BACKEND_CUDA; be++) {
        if (!r.backend_on[be])
            continue;
        for (int i = 0; i < r.nbatches; i++) {
            double tb = tools_now_s();
            int st = sweep_batch(&r, (ert_backend)be, r.batches[i], NULL);
            if (st < 0)
                goto done;
            /* the stage costs beside the cells, while the machine is the same */
            if (st == 0 && bench_stage_sweep(&r, (ert_backend)be, r.batches[i]) < 0)
                goto done;
            fprintf(stderr, "exitrt bench: %s batch %d done (%.1fs)\n",
                    ert_backend_string((ert_backend)be), r.batches[i], tools_now_s() - tb);
        }
    }
    if (r.peer_requested && bench_run_peer(&r) == 0)
        r.peer_ok = 1;
    /* Drift: FULL at the largest batch of the first backend again, after
     * everything else, against its cell. The ratios in the table compare
     * cells measured minutes apart (the peers' last); on a machine whose
     * speed moves (shared cores, a neighbour's load) this says by how much. */
    for (int i = 0; i < r.ncells; i++) {
        bench_cell *c = &r.cells[i];
        if (c->mode != ERT_MODE_FULL || c->profile != 0)
            continue;
        if (r.drift_batch == 0 || c->batch > r.drift_batch ||
            (int)c->backend < (int)r.drift_backend) {
            r.drift_batch = c->batch;
            r.drift_backend = c->backend;
            r.drift_before = c->samples_per_s;
        }
    }
    if (r.drift_batch > 0 && sweep_batch(&r, r.drift_backend, r.drift_batch, &r.drift_after) < 0)
        r.drift_after = 0.0;

    bench_print_table(&r, stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "exitrt bench: cannot write the table: %s\n", strerror(errno));
        goto done;
    }
    if (o.json && bench_write_json(&r, json_out.f)) {
        fprintf(stderr, "exitrt bench: out of memory writing %s\n", o.json);
        goto done;
    }
    if (o.plot) {
        /* gnuplot writes the temporary (in place: the target itself) */
        if (plot_out.f)
            fclose(plot_out.f);
        plot_out.f = NULL;
        if (bench_write_plot(&r, plot_out.tmp ? plot_out.tmp : o.plot, o.plot))
            goto done;
    }
    if (cli_out_commit_all(outs, 2))
        goto done;
    rc = 0;
done:
    cli_out_abort(&json_out);
    cli_out_abort(&plot_out);
    for (int p = 0; p < r.nprof; p++)
        free(r.prof[p].exits);
    free(r.cells);
    free(r.stages);
    free(r.inputs);
    ert_model_free(r.model);
    return rc;
}

/* test_graphs.c - COMPACTED through size-bucketed CUDA graphs
 * (cfg.graph_buckets > 0, src/cuda/graph.c) against the wait-based MASKED
 * path on the same device and against the CPU backend.
 *
 * Compiled into test_cpu and test_gpu like every file here. The graph tests
 * are about the CUDA backend: in test_cpu (and without a device) they skip;
 * the config and CPU checks at the end run everywhere. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/bucket_math.h"
#include "backend_test.h"
#include "model.h"
#include "plan.h"
#include "policy.h"

#ifdef ERT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#define GB_MAX 100 /* max_batch of the graph engines: not a multiple of any step below */

static void need_cuda_graphs(void) { tb_only(ERT_BACKEND_CUDA, "the CUDA backend's graphs"); }

/* got against want (tb_compare: exits, flips and logits), and where the
 * exits agree, the class too. */
static void compare(ert_engine *e, const tb_result *got, const tb_result *want, int batch,
                    const char *what)
{
    for (int i = 0; i < batch; i++) {
        const ert_sample *g = &got->samples[i], *w = &want->samples[i];
        if (g->exit_index == w->exit_index)
            cr_assert_eq(g->predicted, w->predicted, "%s: sample %d: class %d vs %d", what, i,
                         g->predicted, w->predicted);
    }
    tb_compare(e, got, want, batch, what);
}

/* The per-batch figures of a bucketed result, recomputed from its samples:
 * rows entering each stage per sub-batch (cut as the backend cuts them),
 * the bucket each must have run, the padding and its MACs. */
static void check_figures(const ert_model *m, const plan *p, const tb_result *t, int batch,
                          int max_batch, int k, int inflight)
{
    const int E = ert_model_num_exits(m);
    const int step = ert_bucket_step(max_batch, k), nb = ert_bucket_count(max_batch, step);
    uint64_t cost[ERT_MAX_EXITS];
    for (int s = 0; s < E; s++)
        cost[s] = p->stages[s].macs + m->exits[s].head_macs;
    const int nj = inflight < batch ? inflight : batch;
    int bucket[ERT_MAX_EXITS];
    for (int s = 0; s < ERT_MAX_EXITS; s++)
        bucket[s] = -1;
    int pad = 0;
    uint64_t pad_macs = 0, macs = 0;
    for (int j = 0; j < nj; j++) {
        int off = (int)((long long)batch * j / nj);
        int len = (int)((long long)batch * (j + 1) / nj) - off;
        int32_t stats[ERT_STATS_LEN];
        for (int s = 0; s < ERT_MAX_EXITS; s++) {
            int rows = 0;
            for (int i = off; i < off + len; i++)
                rows += t->samples[i].exit_index >= s;
            stats[ERT_STATS_ROWS + s] = s < E ? rows : 0;
            stats[ERT_STATS_BUCKET + s] = s < E && rows ? ert_bucket_of(rows, step, nb) : -1;
            if (stats[ERT_STATS_BUCKET + s] > bucket[s])
                bucket[s] = stats[ERT_STATS_BUCKET + s];
            if (s < E)
                macs += (uint64_t)rows * cost[s];
        }
        uint64_t pm = 0;
        pad += ert_padding_rows(stats, E, step, max_batch, cost, &pm);
        pad_macs += pm;
    }
    for (int s = 0; s < ERT_MAX_EXITS; s++)
        cr_assert_eq(t->r.bucket[s], bucket[s], "batch %d stage %d: bucket %d, expected %d", batch,
                     s, t->r.bucket[s], bucket[s]);
    cr_assert_eq(t->r.padding_rows, pad, "batch %d: %d padding rows, expected %d", batch,
                 t->r.padding_rows, pad);
    cr_assert_eq(t->r.macs_padding, pad_macs);
    cr_assert_eq(t->r.macs_executed, macs);
    cr_assert_eq(t->r.macs_executed, plan_ideal_macs(m, p, t->r.exit_counts));
    cr_assert_eq(t->r.host_waits, 0, "batch %d: %d host waits in the bucketed path", batch,
                 t->r.host_waits);
}

/* The engines the bucketed tests compare, on one model: the bucketed
 * COMPACTED engine (k buckets, inflight slots), MASKED on the device and
 * MASKED on the CPU; their results; GB_MAX rows of input. */
typedef struct gfix {
    ert_model *m;
    plan p;
    int E, K, k, inflight;
    size_t per;
    ert_engine *es[3];
    float *x; /* [GB_MAX, per] */
    tb_result r[3];
} gfix;

/* Takes m (gfix_close frees it). */
static void gfix_open(gfix *g, ert_model *m, int k, int inflight, uint64_t input_seed)
{
    memset(g, 0, sizeof *g);
    g->m = m;
    plan_build(m, &g->p);
    g->E = ert_model_num_exits(m);
    g->K = ert_model_num_classes(m);
    g->k = k;
    g->inflight = inflight;
    g->es[0] = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_COMPACTED, GB_MAX, k, inflight);
    g->es[1] = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_MASKED, GB_MAX, 0, 1);
    g->es[2] = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_MASKED, GB_MAX, 0, 1);
    cr_assert(tb_note_is(g->es[0], "graphs: on"), "the graphs did not come up: %s",
              ert_engine_note(g->es[0]));
    g->per = ert_model_input_size(m);
    g->x = fx_random_inputs(m, GB_MAX, input_seed);
    for (int i = 0; i < 3; i++)
        tb_result_init(&g->r[i], GB_MAX, g->K);
}

static void gfix_close(gfix *g)
{
    for (int i = 0; i < 3; i++) {
        tb_result_free(&g->r[i]);
        ert_engine_free(g->es[i]);
    }
    free(g->x);
    ert_model_free(g->m);
}

static void gfix_set_thresholds(gfix *g, const float *thr)
{
    for (int x = 0; x < g->E - 1; x++)
        for (int j = 0; j < 3; j++)
            cr_assert_eq(ert_engine_set_threshold(g->es[j], x, thr[x]), ERT_OK, "%s",
                         ert_engine_error(g->es[j]));
}

/* One batch through the three engines: the bucketed results against both
 * MASKED ones, and its figures. */
static void gfix_run(gfix *g, const float *in, int batch, const char *what)
{
    char w[2][96];
    snprintf(w[0], sizeof w[0], "%s vs MASKED (cuda)", what);
    snprintf(w[1], sizeof w[1], "%s vs MASKED (cpu)", what);
    for (int j = 0; j < 3; j++)
        tb_infer(g->es[j], in, batch, &g->r[j]);
    compare(g->es[1], &g->r[0], &g->r[1], batch, w[0]);
    compare(g->es[2], &g->r[0], &g->r[2], batch, w[1]);
    check_figures(g->m, &g->p, &g->r[0], batch, GB_MAX, g->k, g->inflight);
}

/* The bucketed engine (K buckets, inflight slots) against MASKED on the
 * device and MASKED on the CPU over the model's thresholds, `sets` random
 * ones and the two bounds, at batch 1, max and sizes around the steps. */
static void bucketed_sweep(mw_kind kind, uint64_t seed, int k, int inflight, int sets)
{
    need_cuda_graphs();
    gfix g;
    gfix_open(&g, fx_random_model(seed, kind), k, inflight, seed * 11 + 5);
    const int step = ert_bucket_step(GB_MAX, k);
    int batches[] = {1, step - 1, step, step + 1, 2 * step + 3, GB_MAX - 1, GB_MAX};
    mw_rng rng = mw_rng_seed(seed + 77);
    float thr[ERT_MAX_EXITS];
    long early = 0;
    for (int set = -2; set <= sets; set++) {
        if (set != 0) {  /* 0: the model's own thresholds */
            if (set < 0) /* -1: nobody leaves early; -2: everybody at the first exit */
                fx_bound_thresholds(g.m, set == -2, thr);
            else
                fx_random_thresholds(g.m, &rng, thr);
            gfix_set_thresholds(&g, thr);
        }
        for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
            int batch = batches[b];
            if (batch < 1 || batch > GB_MAX)
                continue;
            size_t off = ((size_t)(set + 2) * 7 + b * 3) % (GB_MAX - batch + 1);
            gfix_run(&g, g.x + off * g.per, batch, "bucketed");
            if (set == -2)
                for (int i = 0; i < batch; i++)
                    cr_assert_eq(g.r[0].samples[i].exit_index, 0,
                                 "everybody at the first exit: sample %d left at %d", i,
                                 g.r[0].samples[i].exit_index);
            early += batch - g.r[0].r.exit_counts[g.E - 1];
        }
    }
    cr_assert_gt(early, 0, "no sample left early: the sweep tested no compaction");
    gfix_close(&g);
}

Test(graphs, mlp) { bucketed_sweep(MW_MLP, 31, 8, 1, 6); }
Test(graphs, cnn_confidence_head) { bucketed_sweep(MW_CNN, 32, 8, 1, 6); }
Test(graphs, resnet) { bucketed_sweep(MW_RESNET, 33, 8, 1, 6); }
Test(graphs, resnet_one_bucket) { bucketed_sweep(MW_RESNET, 34, 1, 1, 3); }
Test(graphs, resnet_many_buckets) { bucketed_sweep(MW_RESNET, 35, 64, 1, 3); }
Test(graphs, resnet_inflight) { bucketed_sweep(MW_RESNET, 36, 5, 3, 3); }

/* Patience through the graphs: each row's streak sits at its position in
 * the sub-batch and must follow it through the device-side compaction and
 * past the bucket padding. The resnet's exits as entropy, patience,
 * patience; the bucketed engine against MASKED on the device and on the
 * CPU over k in {1, 2, 3} x {1, 2, 3, 4} (3 at exit 1 and 4 at exit 2 never
 * fire), entropy never and sometimes. */
static void bucketed_patience(uint64_t seed, int k, int inflight)
{
    need_cuda_graphs();
    const char *types[] = {NULL, "patience", "patience"};
    const double thr0[] = {0.0, 2.0, 2.0};
    gfix g;
    gfix_open(&g, fx_policy_model(seed, MW_RESNET, types, thr0, 3), k, inflight, seed * 13 + 1);
    g.x[5 * g.per] = NAN; /* never leaves early */
    const int step = ert_bucket_step(GB_MAX, k);
    int batches[] = {1, step + 1, GB_MAX - 1, GB_MAX};
    long patience_exits = 0;
    for (int a = 0; a < 2; a++)
        for (int k1 = 1; k1 <= 3; k1++)
            for (int k2 = 1; k2 <= 4; k2++) {
                float thr[3] = {a ? 0.5f * logf((float)g.K) : 0.0f, (float)k1, (float)k2};
                gfix_set_thresholds(&g, thr);
                for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
                    int batch = batches[b];
                    if (batch < 1 || batch > GB_MAX)
                        continue;
                    gfix_run(&g, g.x, batch, "patience: bucketed");
                    if (k1 == 3)
                        cr_assert_eq(g.r[0].r.exit_counts[1], 0);
                    if (k2 == 4)
                        cr_assert_eq(g.r[0].r.exit_counts[2], 0);
                    patience_exits += g.r[0].r.exit_counts[1] + g.r[0].r.exit_counts[2];
                }
            }
    cr_assert_gt(patience_exits, 0);
    gfix_close(&g);
}

Test(graphs, resnet_patience) { bucketed_patience(37, 8, 1); }
Test(graphs, resnet_patience_inflight) { bucketed_patience(38, 5, 3); }

#ifdef ERT_HAVE_CUDA
/* src/cuda/graph.h's test hook */
extern const char *ert_cuda_test_graph_fault;
#define SET_GRAPH_FAULT(f) (ert_cuda_test_graph_fault = (f))
#else
#define SET_GRAPH_FAULT(f) ((void)(f))
#endif

/* A forced capture or instantiation failure: the engine still comes up, on
 * the wait-based path, says why, and computes the same results. */
static void fallback(const char *fault)
{
    need_cuda_graphs();
    SET_GRAPH_FAULT(fault);
    ert_model *m = fx_random_model(41, MW_RESNET);
    const int K = ert_model_num_classes(m);
    ert_engine *g = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_COMPACTED, GB_MAX, 8, 1);
    SET_GRAPH_FAULT(NULL);
    ert_engine *w = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_MASKED, GB_MAX, 0, 1);
    cr_assert(tb_note_is(g, "graphs: off: "), "fault %s: note '%s'", fault, ert_engine_note(g));
    cr_assert_str_empty(ert_engine_error(g));

    float *x = fx_random_inputs(m, GB_MAX, 4141);
    tb_result rg, rw;
    tb_result_init(&rg, GB_MAX, K);
    tb_result_init(&rw, GB_MAX, K);
    tb_infer(g, x, 57, &rg);
    tb_infer(w, x, 57, &rw);
    compare(w, &rg, &rw, 57, "fallback vs MASKED");
    for (int s = 0; s < ERT_MAX_EXITS; s++)
        cr_assert_eq(rg.r.bucket[s], -1);
    cr_assert_eq(rg.r.padding_rows, 0);
    cr_assert_eq(rg.r.macs_padding, 0u);
    tb_result_free(&rg);
    tb_result_free(&rw);
    ert_engine_free(g);
    ert_engine_free(w);
    free(x);
    ert_model_free(m);
}

Test(graphs, fallback_on_a_host_node) { fallback("host-node"); }
Test(graphs, fallback_on_instantiate) { fallback("instantiate"); }

/* Other modes do not use graphs, and say so. */
Test(graphs, masked_ignores_buckets)
{
    need_cuda_graphs();
    ert_model *m = fx_random_model(42, MW_MLP);
    ert_engine *e = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_MASKED, 16, 8, 1);
    cr_assert(tb_note_is(e, "graphs: not used"), "note '%s'", ert_engine_note(e));
    ert_engine_free(e);
    ert_model_free(m);
}

#ifdef ERT_HAVE_CUDA
/* ert_infer_device through the graphs: the same results as ert_infer. */
Test(graphs, infer_device)
{
    need_cuda_graphs();
    ert_model *m = fx_random_model(43, MW_CNN);
    const int K = ert_model_num_classes(m), n = 77;
    ert_engine *g = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_COMPACTED, GB_MAX, 8, 2);
    cr_assert(tb_note_is(g, "graphs: on"), "%s", ert_engine_note(g));
    size_t per = ert_model_input_size(m);
    float *x = fx_random_inputs(m, n, 4343);
    tb_result want, got;
    tb_result_init(&want, n, K);
    tb_result_init(&got, n, K);
    tb_infer(g, x, n, &want);

    float *d_x = NULL, *d_logits = NULL;
    ert_sample *d_samples = NULL;
    cr_assert_eq(cudaMalloc((void **)&d_x, sizeof(float) * per * n), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&d_samples, sizeof(ert_sample) * n), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&d_logits, sizeof(float) * K * n), cudaSuccess);
    cr_assert_eq(cudaMemcpy(d_x, x, sizeof(float) * per * n, cudaMemcpyHostToDevice), cudaSuccess);
    ert_device_result dr = {
        .struct_size = sizeof(ert_device_result), .samples = d_samples, .logits = d_logits};
    ert_status st = ert_infer_device(g, d_x, n, &dr, NULL);
    cr_assert_eq(st, ERT_OK, "%s", ert_engine_error(g));
    cr_assert_eq(dr.host_waits, 0);
    cr_assert_eq(cudaMemcpy(got.samples, d_samples, sizeof(ert_sample) * n, cudaMemcpyDeviceToHost),
                 cudaSuccess);
    cr_assert_eq(cudaMemcpy(got.logits, d_logits, sizeof(float) * K * n, cudaMemcpyDeviceToHost),
                 cudaSuccess);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(got.samples[i].exit_index, want.samples[i].exit_index, "sample %d", i);
        cr_assert_eq(got.samples[i].predicted, want.samples[i].predicted, "sample %d", i);
        fx_check_logits(got.logits + (size_t)i * K, want.logits + (size_t)i * K, K,
                        "infer_device vs infer", i);
    }
    cudaFree(d_x);
    cudaFree(d_samples);
    cudaFree(d_logits);
    tb_result_free(&want);
    tb_result_free(&got);
    ert_engine_free(g);
    free(x);
    ert_model_free(m);
}
#endif

/* ---- everywhere -------------------------------------------------------------------- */

Test(graphs_config, range_checked)
{
    ert_model *m = fx_random_model(44, MW_MLP);
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_BACKEND_CPU;
    ert_engine *e = NULL;
    ert_error err = {{0}};
    cfg.graph_buckets = -1;
    cr_assert_eq(ert_engine_create(m, &cfg, &e, &err), ERT_INVALID_ARGUMENT);
    cr_assert_null(e);
    cfg.graph_buckets = 65;
    cr_assert_eq(ert_engine_create(m, &cfg, &e, &err), ERT_INVALID_ARGUMENT);
    cr_assert(strstr(err.msg, "graph_buckets") != NULL, "%s", err.msg);
    cfg.graph_buckets = 64;
    cr_assert_eq(ert_engine_create(m, &cfg, &e, &err), ERT_OK, "%s", err.msg);
    ert_engine_free(e);
    ert_model_free(m);
}

/* The library reads no environment: the default is 0 whatever
 * ERT_GRAPH_BUCKETS says (the command and the bench read it: tools.h). */
Test(graphs_config, default_ignores_the_environment)
{
    setenv("ERT_GRAPH_BUCKETS", "8", 1);
    cr_assert_eq(ert_engine_config_default().graph_buckets, 0);
    unsetenv("ERT_GRAPH_BUCKETS");
}

/* The CPU backend has no host waits to remove: graph_buckets changes
 * nothing there, and the figures say no bucket ran. */
Test(graphs_config, cpu_ignores_buckets)
{
    ert_model *m = fx_random_model(45, MW_RESNET);
    const int K = ert_model_num_classes(m), n = 37;
    ert_engine *a = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_COMPACTED, 64, 8, 1);
    ert_engine *b = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_COMPACTED, 64, 0, 1);
    /* the CPU's note speaks of its BLAS, never of graphs */
    cr_assert_null(strstr(ert_engine_note(a), "graph"), "%s", ert_engine_note(a));
    float *x = fx_random_inputs(m, n, 4545);
    tb_result ra, rb;
    tb_result_init(&ra, n, K);
    tb_result_init(&rb, n, K);
    tb_infer(a, x, n, &ra);
    tb_infer(b, x, n, &rb);
    cr_assert(memcmp(ra.samples, rb.samples, sizeof(ert_sample) * n) == 0);
    cr_assert(memcmp(ra.logits, rb.logits, sizeof(float) * K * n) == 0);
    cr_assert_eq(ra.r.padding_rows, 0);
    cr_assert_eq(ra.r.macs_padding, 0u);
    for (int s = 0; s < ERT_MAX_EXITS; s++)
        cr_assert_eq(ra.r.bucket[s], -1);
    cr_assert_eq(ra.r.macs_executed, rb.r.macs_executed);
    tb_result_free(&ra);
    tb_result_free(&rb);
    ert_engine_free(a);
    ert_engine_free(b);
    free(x);
    ert_model_free(m);
}

/* test_cuda.c - CUDA backend behaviour that the shared mode tests do not
 * reach.
 *
 * device_order: ert_infer_device with cuda_stream NULL starts after the work
 * already enqueued on the legacy default stream (exitrt.h).
 *
 * The engine's slot streams are non-blocking, so nothing orders them after
 * the caller's legacy-stream work unless the call does. The test makes the
 * input late on purpose: a host function that sleeps 200 ms, then the copy
 * of the real input, both on the legacy stream; the device buffer holds a
 * different input until then. A call that does not wait reads that one and
 * gets other predictions. Each path that can take a device input is tried:
 * wait-based COMPACTED with two sub-batches, MASKED, and the bucketed graphs.
 *
 * unfused: when cuDNN refuses the fused conv+bias+ReLU call at engine
 * creation, or at run time at a row count the creation probe did not try,
 * the conv runs as the plain convolution plus the bias/ReLU kernel, the
 * note names it, and the results still match the CPU backend
 * (tolerance.h). The refusal is forced with the backend's test hook.
 *
 * transformer: token models on the CUDA backend against the CPU backend
 * (tolerance.h: logits to 1e-4 relative, exits equal but for flips at
 * near-threshold scores), in FULL, MASKED, COMPACTED (wait-based with one
 * and two batches in flight, and the bucketed graphs) and through the
 * refill stream, on model_writer.h's random ViT-like (patch_embed, pre-LN
 * blocks, [token_pool, layer_norm, linear] exits) and BERT-like models
 * (token_embed, post-LN GELU blocks, padded rows, DeeBERT exits), with a
 * row that attends to nothing and one with an invalid id (both NaN) and
 * one with an invalid id at a padded token (no effect); with the attention
 * blocked (SGEMMs and the softmax kernel) and fused (ERT_CUDA_FUSED_ATTENTION,
 * k_attn_fused). The modes against the plain reference run on this backend
 * in test_modes.c.
 *
 * precision: TF32 (tensor cores) against FP32 on the same device, on a
 * convnet, a ResNet, an MLP and both transformer models: logits within
 * TF32's rounding (2^-10 relative on each product's inputs, so 1e-2 of the
 * logits' scale), classes and exits equal on all but a few rows near a
 * threshold; and the CPU backend refuses TF32.
 *
 * CUDA only; in test_cpu (and without a device) every test skips. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_test.h"

#ifdef ERT_HAVE_CUDA
#include <cuda_runtime_api.h>

static void CUDART_CB sleep_200ms(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static void late_input(ert_mode mode, int graph_buckets, int inflight)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend");
    ert_model *m = fx_random_model(71, MW_CNN);
    const int K = ert_model_num_classes(m), n = 64;
    const size_t per = ert_model_input_size(m);
    ert_engine *e = tb_engine_on(m, ERT_BACKEND_CUDA, mode, n, graph_buckets, inflight);

    float *x = NULL, *other = malloc(sizeof(float) * per * n);
    cr_assert_not_null(other);
    cr_assert_eq(cudaMallocHost((void **)&x, sizeof(float) * per * n), cudaSuccess);
    mw_random_input(x, per * n, 7101);
    mw_random_input(other, per * n, 7102);
    tb_result want;
    tb_result_init(&want, n, K);
    tb_infer(e, x, n, &want);

    float *d_x = NULL;
    ert_sample *d_samples = NULL;
    ert_sample *got = malloc(sizeof(ert_sample) * n);
    cr_assert_not_null(got);
    cr_assert_eq(cudaMalloc((void **)&d_x, sizeof(float) * per * n), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&d_samples, sizeof(ert_sample) * n), cudaSuccess);
    cr_assert_eq(cudaMemcpy(d_x, other, sizeof(float) * per * n, cudaMemcpyHostToDevice),
                 cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    /* the real input arrives 200 ms from now, on the legacy stream */
    cr_assert_eq(cudaLaunchHostFunc(cudaStreamLegacy, sleep_200ms, NULL), cudaSuccess);
    cr_assert_eq(
        cudaMemcpyAsync(d_x, x, sizeof(float) * per * n, cudaMemcpyHostToDevice, cudaStreamLegacy),
        cudaSuccess);
    ert_device_result dr = {.struct_size = sizeof(ert_device_result), .samples = d_samples};
    cr_assert_eq(ert_infer_device(e, d_x, n, &dr, NULL), ERT_OK, "%s", ert_engine_error(e));
    cr_assert_eq(cudaMemcpy(got, d_samples, sizeof(ert_sample) * n, cudaMemcpyDeviceToHost),
                 cudaSuccess);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(got[i].exit_index, want.samples[i].exit_index,
                     "%s (graph_buckets %d, inflight %d): sample %d: exit %d, want %d: the "
                     "call did not wait for the legacy stream",
                     ert_mode_string(mode), graph_buckets, inflight, i, got[i].exit_index,
                     want.samples[i].exit_index);
        cr_assert_eq(got[i].predicted, want.samples[i].predicted, "sample %d", i);
    }
    cudaFree(d_x);
    cudaFree(d_samples);
    cudaFreeHost(x);
    free(other);
    free(got);
    tb_result_free(&want);
    ert_engine_free(e);
    ert_model_free(m);
}

Test(device_order, compacted_null_stream) { late_input(ERT_MODE_COMPACTED, 0, 2); }
Test(device_order, masked_null_stream) { late_input(ERT_MODE_MASKED, 0, 1); }
Test(device_order, graphs_null_stream) { late_input(ERT_MODE_COMPACTED, 8, 2); }

/* src/cuda/cuda_internal.h: 1: every fused conv of the creation probe counts
 * as refused; 2: every fused call at run time at another row count. */
extern int ert_cuda_test_unfused;

static void unfused(mw_kind kind, uint64_t seed)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend");
    ert_model *m = fx_random_model(seed, kind); /* seed 73 makes no resnet: mw_random_model fails */
    const int K = ert_model_num_classes(m), n = 48;
    ert_cuda_test_unfused = 1;
    ert_engine *g = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_MASKED, n, 0, 1);
    ert_cuda_test_unfused = 0;
    cr_assert(strstr(ert_engine_note(g), "run unfused: ") != NULL,
              "the note does not name the convs that fell back: '%s'", ert_engine_note(g));
    ert_engine *c = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_MASKED, n, 0, 1);
    float *x = fx_random_inputs(m, n, 7301);
    tb_result got, want;
    tb_result_init(&got, n, K);
    tb_result_init(&want, n, K);
    tb_infer(g, x, n, &got);
    tb_infer(c, x, n, &want);
    tb_compare(c, &got, &want, n, "unfused vs CPU");
    tb_result_free(&got);
    tb_result_free(&want);
    free(x);
    ert_engine_free(g);
    ert_engine_free(c);
    ert_model_free(m);
}

Test(unfused, cnn_matches_cpu) { unfused(MW_CNN, 73); }
Test(unfused, resnet_matches_cpu) { unfused(MW_RESNET, 74); }

/* A fused call that the creation probe (max_batch and 1 row) passed but
 * cuDNN refuses at another row count, as COMPACTED's survivors and the
 * graphs' buckets give: the conv falls back to the unfused path there and
 * then, the call succeeds, the note says so, and the results match the
 * CPU. ert_cuda_test_unfused = 2 refuses those calls. */
static void unfused_at_run(mw_kind kind, uint64_t seed, int graph_buckets)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend");
    ert_model *m = fx_random_model(seed, kind);
    const int K = ert_model_num_classes(m), n = 48;
    ert_cuda_test_unfused = 2;
    ert_engine *g = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_COMPACTED, n, graph_buckets, 1);
    ert_engine *c = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_COMPACTED, n, 0, 1);
    float *x = fx_random_inputs(m, n, 7302);
    tb_result got, want;
    tb_result_init(&got, n, K);
    tb_result_init(&want, n, K);
    tb_infer(g, x, n, &got);
    ert_cuda_test_unfused = 0;
    tb_infer(c, x, n, &want);
    int mid = 0; /* the comparison proves the fallback only when some stage ran mid-sized */
    for (int s = 0; s + 1 < ert_model_num_exits(m); s++)
        mid |= want.r.exit_counts[s] > 0 && want.r.exit_counts[s] < n - 1;
    cr_assert(mid, "no early exit took part of the batch: no row count but %d and 1 ran", n);
    cr_assert(strstr(ert_engine_note(g), "fused call refused at") != NULL,
              "graph_buckets %d: the note does not name the fallback: '%s'", graph_buckets,
              ert_engine_note(g));
    tb_compare(c, &got, &want, n, "unfused at run time vs CPU");
    tb_result_free(&got);
    tb_result_free(&want);
    free(x);
    ert_engine_free(g);
    ert_engine_free(c);
    ert_model_free(m);
}

Test(unfused, refused_at_run_time) { unfused_at_run(MW_RESNET, 74, 0); }
Test(unfused, refused_while_capturing) { unfused_at_run(MW_RESNET, 74, 4); }

/* ---- transformer models ------------------------------------------------------------- */

#include "tolerance.h"

/* n input rows of m (model_writer.h's calibrated ones); for a token model
 * row 3 attends to nothing, row 5 holds an id out of range at an attended
 * token (both NaN, FORMAT.md) and row 6 one at a padded token (no effect). */
static float *tx_inputs(const ert_model *m, int n, uint64_t seed)
{
    const size_t per = ert_model_input_size(m);
    float *x = malloc(sizeof(float) * per * n);
    cr_assert_not_null(x);
    mw_model_inputs(m, x, n, seed);
    const int T = ert_model_input_tokens(m);
    if (T > 0) {
        cr_assert(n > 6 && per == 2 * (size_t)T);
        for (int t = 0; t < T; t++)
            x[3 * per + T + t] = 0.0f;
        x[5 * per] = (float)ert_model_vocab_size(m); /* token 0: attended */
        x[5 * per + T] = 1.0f;
        x[6 * per + T - 1] = -1.0f;
        x[6 * per + T + T - 1] = 0.0f;
    }
    return x;
}

static void tx_modes(mw_kind kind, uint64_t seed)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend on transformer models");
    ert_model *m = fx_random_model(seed, kind);
    const int K = ert_model_num_classes(m), n = 61, E = ert_model_num_exits(m);
    float *x = tx_inputs(m, n, seed + 1);
    ert_engine *cm = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_MASKED, 64, 0, 1);
    tb_result want;
    tb_result_init(&want, n, K);
    tb_infer(cm, x, n, &want);
    /* the comparison is worth something only when the rows spread */
    int used = 0;
    for (int e = 0; e < E; e++)
        used += want.r.exit_counts[e] > 0;
    cr_assert(used >= 2, "%s: every row takes one exit", mw_kind_name(kind));
    if (kind == MW_BERT)
        for (int i = 3; i <= 5; i += 2) {
            cr_assert_eq(want.samples[i].exit_index, E - 1, "row %d: a NaN row left early", i);
            cr_assert(isnan(want.logits[(size_t)i * K]), "row %d: logits not NaN", i);
        }

    /* fused: the attention as k_attn_fused (ERT_CUDA_FUSED_ATTENTION) */
    struct {
        ert_mode mode;
        int graph_buckets, inflight, fused;
    } runs[] = {{ERT_MODE_FULL, 0, 1, 0},      {ERT_MODE_MASKED, 0, 1, 0},
                {ERT_MODE_COMPACTED, 0, 1, 0}, {ERT_MODE_COMPACTED, 0, 2, 0},
                {ERT_MODE_COMPACTED, 8, 1, 0}, {ERT_MODE_COMPACTED, 8, 2, 0},
                {ERT_MODE_FULL, 0, 1, 1},      {ERT_MODE_MASKED, 0, 1, 1},
                {ERT_MODE_COMPACTED, 0, 2, 1}, {ERT_MODE_COMPACTED, 8, 1, 1}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        char what[128];
        snprintf(what, sizeof what, "%s %s (graph_buckets %d, inflight %d%s)", mw_kind_name(kind),
                 ert_mode_string(runs[r].mode), runs[r].graph_buckets, runs[r].inflight,
                 runs[r].fused ? ", fused attention" : "");
        ert_engine_config gc = ert_engine_config_default();
        gc.backend = ERT_BACKEND_CUDA;
        gc.mode = runs[r].mode;
        gc.max_batch = 64;
        gc.graph_buckets = runs[r].graph_buckets;
        gc.inflight = runs[r].inflight;
        gc.cuda_options = runs[r].fused ? ERT_CUDA_FUSED_ATTENTION : 0u;
        ert_engine *g = fx_engine(m, &gc);
        if (runs[r].graph_buckets)
            cr_assert(strstr(ert_engine_note(g), "graphs: on:") != NULL, "%s: %s", what,
                      ert_engine_note(g));
        ert_engine *c = tb_engine_on(m, ERT_BACKEND_CPU, runs[r].mode, 64, 0, 1);
        tb_result got, cw;
        tb_result_init(&got, n, K);
        tb_result_init(&cw, n, K);
        tb_infer(g, x, n, &got);
        tb_infer(c, x, n, &cw);
        tb_compare(c, &got, &cw, n, what);
        if (runs[r].mode != ERT_MODE_FULL) /* every early-exit mode: MASKED's exits */
            tb_compare(cm, &got, &want, n, what);
        tb_result_free(&got);
        tb_result_free(&cw);
        ert_engine_free(g);
        ert_engine_free(c);
    }
    tb_result_free(&want);
    ert_engine_free(cm);
    free(x);
    ert_model_free(m);
}

Test(transformer, vit_modes_match_cpu) { tx_modes(MW_VIT, 8101); }
Test(transformer, vit_other_seed) { tx_modes(MW_VIT, 8103); }
Test(transformer, bert_modes_match_cpu) { tx_modes(MW_BERT, 8102); }
Test(transformer, bert_other_seed) { tx_modes(MW_BERT, 8104); }

/* The refill stream on the CUDA engine: every row's exit, class and logits
 * as the CPU engine's MASKED ert_infer. */
static void tx_stream(mw_kind kind, uint64_t seed)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend's refill stream on transformer models");
    ert_model *m = fx_random_model(seed, kind);
    const int K = ert_model_num_classes(m), n = 53;
    float *x = tx_inputs(m, n, seed + 1);
    const size_t per = ert_model_input_size(m);
    ert_engine *c = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_MASKED, 64, 0, 1);
    tb_result want;
    tb_result_init(&want, n, K);
    tb_infer(c, x, n, &want);

    ert_engine *g = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_COMPACTED, 16, 0, 1);
    ert_stream_config cfg = ert_stream_config_default();
    cfg.batch = 16;
    cfg.queue = n;
    cfg.deadline_ms = -1;
    ert_stream *s = NULL;
    ert_error err = {{0}};
    cr_assert_eq(ert_stream_create(g, &cfg, &s, &err), ERT_OK, "%s", err.msg);
    for (int off = 0; off < n; off += 7) {
        int k = n - off < 7 ? n - off : 7;
        cr_assert_eq(ert_stream_submit(s, x + (size_t)off * per, k, NULL), ERT_OK, "%s",
                     ert_stream_error(s));
    }
    cr_assert_eq(ert_stream_flush(s), ERT_OK, "%s", ert_stream_error(s));
    ert_stream_result *res = calloc((size_t)n, sizeof *res);
    float *z = calloc((size_t)n * K, sizeof *z);
    cr_assert(res && z);
    int got = 0;
    cr_assert_eq(ert_stream_poll(s, res, z, n, &got), ERT_OK, "%s", ert_stream_error(s));
    cr_assert_eq(got, n, "%d of %d rows finished", got, n);
    int flips = 0;
    for (int i = 0; i < got; i++) {
        const int id = (int)res[i].id;
        cr_assert(id >= 0 && id < n);
        if (tb_flip(c, &res[i].sample, &want.samples[id], "stream", id)) {
            flips++;
            continue;
        }
        fx_check_logits(z + (size_t)i * K, want.logits + (size_t)id * K, K, "stream", id);
    }
    cr_assert(tol_flips_ok(flips, n), "stream: %d exits differ of %d", flips, n);
    free(res);
    free(z);
    ert_stream_free(s);
    ert_engine_free(g);
    tb_result_free(&want);
    ert_engine_free(c);
    free(x);
    ert_model_free(m);
}

Test(transformer, vit_stream_matches_cpu) { tx_stream(MW_VIT, 8201); }
Test(transformer, bert_stream_matches_cpu) { tx_stream(MW_BERT, 8202); }

/* ---- precision ------------------------------------------------------------------------ */

/* TF32 against FP32 on the device, MASKED (every head of every row): each
 * row's logits within 2e-2 of its largest magnitude (+ 1e-3), NaN rows NaN
 * in both, and the exit or class of at most tol_flips_ok's rows changed. */
static void tf32_vs_fp32(mw_kind kind, uint64_t seed)
{
    tb_only(ERT_BACKEND_CUDA, "TF32 on the CUDA backend");
    ert_model *m = fx_random_model(seed, kind);
    const int K = ert_model_num_classes(m), n = 61;
    float *x = tx_inputs(m, n, seed + 1);
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_BACKEND_CUDA;
    cfg.mode = ERT_MODE_MASKED;
    cfg.max_batch = 64;
    ert_engine *f = fx_engine(m, &cfg);
    cfg.precision = ERT_PRECISION_TF32;
    ert_engine *t = fx_engine(m, &cfg);
    tb_result a, b;
    tb_result_init(&a, n, K);
    tb_result_init(&b, n, K);
    tb_infer(f, x, n, &a);
    tb_infer(t, x, n, &b);
    int changed = 0;
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        const float *za = a.logits + (size_t)i * K, *zb = b.logits + (size_t)i * K;
        if (isnan(za[0])) {
            cr_assert(isnan(zb[0]), "%s row %d: NaN in FP32, %g in TF32", mw_kind_name(kind), i,
                      zb[0]);
            continue;
        }
        float scale = 0.0f;
        for (int k = 0; k < K; k++)
            scale = fabsf(za[k]) > scale ? fabsf(za[k]) : scale;
        for (int k = 0; k < K; k++) {
            const double d = fabs((double)zb[k] - za[k]) / (1e-3 + scale);
            worst = d > worst ? d : worst;
            cr_assert(d <= 2e-2, "%s row %d logit %d: TF32 %.7g, FP32 %.7g", mw_kind_name(kind), i,
                      k, zb[k], za[k]);
        }
        changed += a.samples[i].exit_index != b.samples[i].exit_index ||
                   a.samples[i].predicted != b.samples[i].predicted;
    }
    cr_assert(tol_flips_ok(changed, n), "%s: TF32 changed the exit or class of %d of %d rows",
              mw_kind_name(kind), changed, n);
    cr_log_info("%s: TF32 against FP32: worst logit difference %.2e of the row's scale, %d of "
                "%d rows changed exit or class",
                mw_kind_name(kind), worst, changed, n);
    tb_result_free(&a);
    tb_result_free(&b);
    ert_engine_free(t);
    ert_engine_free(f);
    free(x);
    ert_model_free(m);
}

Test(precision, cnn_tf32) { tf32_vs_fp32(MW_CNN, 9101); }
Test(precision, resnet_tf32) { tf32_vs_fp32(MW_RESNET, 9102); }
Test(precision, mlp_tf32) { tf32_vs_fp32(MW_MLP, 9103); }
Test(precision, vit_tf32) { tf32_vs_fp32(MW_VIT, 9104); }
Test(precision, bert_tf32) { tf32_vs_fp32(MW_BERT, 9105); }

#else

Test(device_order, cuda_only) { cr_skip_test("about the CUDA backend: not in this build"); }
Test(transformer, cuda_only) { cr_skip_test("about the CUDA backend: not in this build"); }
Test(precision, cuda_only) { cr_skip_test("about the CUDA backend: not in this build"); }

#endif

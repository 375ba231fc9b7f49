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
 * creation, the conv runs as the plain convolution plus the bias/ReLU
 * kernel, the note names it, and the results still match the CPU backend
 * (tolerance.h). The refusal is forced with the backend's test hook.
 *
 * transformer: token models on the CUDA backend against the CPU backend
 * (tolerance.h: logits to 1e-4 relative, exits equal but for flips at
 * near-threshold scores), in FULL, MASKED, COMPACTED (wait-based with one
 * and two batches in flight, and the bucketed graphs) and through the
 * refill stream. Two random models written here: a ViT-like one
 * (patch_embed with a class token and positions, three pre-LN blocks, GELU
 * and ReLU, exits [token_pool, layer_norm, linear]) and a BERT-like one
 * (token_embed with positions and a segment, layer_norm, three post-LN
 * GELU blocks, DeeBERT exits [token_pool, linear, tanh, linear], first and
 * mean pooling), with padded sequences, one all-padding row and one row
 * with an id out of range (both NaN, as FORMAT.md says). Thresholds are
 * set from the CPU engine's scores so that every exit takes some rows.
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
    ert_device_result dr = {.samples = d_samples};
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

/* src/cuda/cuda_internal.h: every fused conv counts as refused while set. */
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

/* ---- transformer models ------------------------------------------------------------- */

#include <cjson/cJSON.h>

#include "tolerance.h"

typedef enum tx_kind {
    TX_VIT,
    TX_BERT
} tx_kind;

enum {
    TX_D = 16,
    TX_F = 32,
    TX_K = 5,
    TX_T_BERT = 12,
    TX_VOCAB = 50
};

typedef struct txw {
    mw_st *st;
    mw_rng r;
    int ok;
} txw;

/* A random tensor named name (normal * scale + offset) in the weights, and
 * obj[field] = name. */
static void tensor(txw *w, cJSON *obj, const char *field, const char *name, int ndim, int64_t d0,
                   int64_t d1, int64_t d2, int64_t d3, float scale, float offset)
{
    int64_t shape[4] = {d0, d1, d2, d3};
    size_t len = 1;
    for (int i = 0; i < ndim; i++)
        len *= (size_t)shape[i];
    float *v = malloc(sizeof(float) * len);
    cr_assert_not_null(v);
    for (size_t i = 0; i < len; i++)
        v[i] = offset + scale * mw_rng_normal(&w->r);
    if (mw_st_add(w->st, name, ndim, shape, v) != 0)
        w->ok = 0;
    free(v);
    cJSON_AddStringToObject(obj, field, name);
}

static cJSON *layer_obj(const char *name, const char *type)
{
    cJSON *o = cJSON_CreateObject();
    if (name)
        cJSON_AddStringToObject(o, "name", name);
    if (type)
        cJSON_AddStringToObject(o, "type", type);
    return o;
}

static cJSON *norm_obj(txw *w, const char *name, const char *pfx, int D)
{
    char t[96];
    cJSON *o = layer_obj(name, name ? "layer_norm" : NULL);
    cJSON_AddNumberToObject(o, "normalized_shape", D);
    cJSON_AddNumberToObject(o, "eps", 1e-5);
    snprintf(t, sizeof t, "%s.weight", pfx);
    tensor(w, o, "weight", t, 1, D, 0, 0, 0, 0.2f, 1.0f);
    snprintf(t, sizeof t, "%s.bias", pfx);
    tensor(w, o, "bias", t, 1, D, 0, 0, 0, 0.1f, 0.0f);
    return o;
}

static cJSON *linear_obj(txw *w, const char *name, const char *pfx, int in, int out)
{
    char t[96];
    cJSON *o = layer_obj(name, name ? "linear" : NULL);
    cJSON_AddNumberToObject(o, "in_features", in);
    cJSON_AddNumberToObject(o, "out_features", out);
    snprintf(t, sizeof t, "%s.weight", pfx);
    tensor(w, o, "weight", t, 2, out, in, 0, 0, 1.0f / sqrtf((float)in), 0.0f);
    snprintf(t, sizeof t, "%s.bias", pfx);
    tensor(w, o, "bias", t, 1, out, 0, 0, 0, 0.1f, 0.0f);
    return o;
}

static cJSON *block_obj(txw *w, const char *name, int heads, int norm_first, const char *act)
{
    char t[96], p[64];
    cJSON *o = layer_obj(name, "encoder_block");
    cJSON_AddBoolToObject(o, "norm_first", norm_first);
    cJSON_AddStringToObject(o, "activation", act);
    cJSON *a = cJSON_CreateObject();
    cJSON_AddNumberToObject(a, "embed_dim", TX_D);
    cJSON_AddNumberToObject(a, "num_heads", heads);
    snprintf(t, sizeof t, "%s.attn.in_weight", name);
    tensor(w, a, "in_weight", t, 2, 3 * TX_D, TX_D, 0, 0, 0.5f / sqrtf(TX_D), 0.0f);
    snprintf(t, sizeof t, "%s.attn.in_bias", name);
    tensor(w, a, "in_bias", t, 1, 3 * TX_D, 0, 0, 0, 0.1f, 0.0f);
    snprintf(t, sizeof t, "%s.attn.out_weight", name);
    tensor(w, a, "out_weight", t, 2, TX_D, TX_D, 0, 0, 1.0f / sqrtf(TX_D), 0.0f);
    snprintf(t, sizeof t, "%s.attn.out_bias", name);
    tensor(w, a, "out_bias", t, 1, TX_D, 0, 0, 0, 0.1f, 0.0f);
    cJSON_AddItemToObject(o, "attention", a);
    snprintf(p, sizeof p, "%s.norm1", name);
    cJSON_AddItemToObject(o, "norm1", norm_obj(w, NULL, p, TX_D));
    snprintf(p, sizeof p, "%s.linear1", name);
    cJSON_AddItemToObject(o, "linear1", linear_obj(w, NULL, p, TX_D, TX_F));
    snprintf(p, sizeof p, "%s.linear2", name);
    cJSON_AddItemToObject(o, "linear2", linear_obj(w, NULL, p, TX_F, TX_D));
    snprintf(p, sizeof p, "%s.norm2", name);
    cJSON_AddItemToObject(o, "norm2", norm_obj(w, NULL, p, TX_D));
    return o;
}

/* An exit head: ViT [token_pool, layer_norm, linear]; BERT (DeeBERT)
 * [token_pool, linear, tanh, linear]. */
static cJSON *head_arr(txw *w, tx_kind kind, const char *pfx, const char *pool)
{
    char n[64], q[64];
    cJSON *h = cJSON_CreateArray();
    snprintf(n, sizeof n, "%s_pool", pfx);
    cJSON *tp = layer_obj(n, "token_pool");
    cJSON_AddStringToObject(tp, "mode", pool);
    cJSON_AddItemToArray(h, tp);
    if (kind == TX_VIT) {
        snprintf(n, sizeof n, "%s_ln", pfx);
        cJSON_AddItemToArray(h, norm_obj(w, n, n, TX_D));
    } else {
        snprintf(n, sizeof n, "%s_pooler", pfx);
        cJSON_AddItemToArray(h, linear_obj(w, n, n, TX_D, TX_D));
        snprintf(n, sizeof n, "%s_tanh", pfx);
        cJSON_AddItemToArray(h, layer_obj(n, "tanh"));
    }
    snprintf(q, sizeof q, "%s_fc", pfx);
    cJSON_AddItemToArray(h, linear_obj(w, q, q, TX_D, TX_K));
    return h;
}

static cJSON *exit_obj(txw *w, tx_kind kind, const char *name, const char *after, const char *pool,
                       const char *policy)
{
    cJSON *x = cJSON_CreateObject();
    cJSON_AddStringToObject(x, "name", name);
    cJSON_AddStringToObject(x, "after", after);
    cJSON_AddItemToObject(x, "head", head_arr(w, kind, name, pool));
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "type", policy);
    cJSON_AddNumberToObject(p, "threshold", 0.5);
    cJSON_AddItemToObject(x, "policy", p);
    return x;
}

/* Writes a random transformer model of this kind into dir. */
static void tx_write(const char *dir, tx_kind kind, uint64_t seed)
{
    txw w = {.st = mw_st_new(), .r = mw_rng_seed(seed), .ok = 1};
    cr_assert_not_null(w.st);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "format", "exitrt-model");
    cJSON_AddNumberToObject(root, "version", 1);
    cJSON_AddStringToObject(root, "name", kind == TX_VIT ? "tx-vit" : "tx-bert");
    cJSON_AddStringToObject(root, "weights", "model.safetensors");
    cJSON *in = cJSON_CreateObject();
    cJSON *bb = cJSON_CreateArray();
    if (kind == TX_VIT) {
        /* 3x8x8 images, 4x4 patches: 4 patches and the class token, T = 5 */
        const int sh[3] = {3, 8, 8};
        cJSON_AddItemToObject(in, "shape", cJSON_CreateIntArray(sh, 3));
        cJSON_AddItemToObject(in, "mean", cJSON_CreateNumber(0.5));
        cJSON_AddItemToObject(in, "std", cJSON_CreateNumber(0.25));
        cJSON *pe = layer_obj("patch", "patch_embed");
        cJSON_AddNumberToObject(pe, "in_channels", 3);
        cJSON_AddNumberToObject(pe, "embed_dim", TX_D);
        cJSON_AddNumberToObject(pe, "patch_size", 4);
        tensor(&w, pe, "weight", "patch.weight", 4, TX_D, 3, 4, 4, 0.15f, 0.0f);
        tensor(&w, pe, "bias", "patch.bias", 1, TX_D, 0, 0, 0, 0.1f, 0.0f);
        tensor(&w, pe, "class_token", "patch.cls", 1, TX_D, 0, 0, 0, 0.5f, 0.0f);
        tensor(&w, pe, "position", "patch.pos", 2, 5, TX_D, 0, 0, 0.3f, 0.0f);
        cJSON_AddItemToArray(bb, pe);
        cJSON_AddItemToArray(bb, block_obj(&w, "b0", 4, 1, "gelu"));
        cJSON_AddItemToArray(bb, block_obj(&w, "b1", 2, 1, "relu"));
        cJSON_AddItemToArray(bb, block_obj(&w, "b2", 4, 1, "gelu"));
    } else {
        cJSON_AddNumberToObject(in, "tokens", TX_T_BERT);
        cJSON *em = layer_obj("embed", "token_embed");
        cJSON_AddNumberToObject(em, "vocab_size", TX_VOCAB);
        cJSON_AddNumberToObject(em, "embed_dim", TX_D);
        tensor(&w, em, "weight", "embed.weight", 2, TX_VOCAB, TX_D, 0, 0, 1.0f, 0.0f);
        tensor(&w, em, "position", "embed.pos", 2, TX_T_BERT, TX_D, 0, 0, 0.3f, 0.0f);
        tensor(&w, em, "segment", "embed.segment", 1, TX_D, 0, 0, 0, 0.3f, 0.0f);
        cJSON_AddItemToArray(bb, em);
        cJSON_AddItemToArray(bb, norm_obj(&w, "embed_ln", "embed_ln", TX_D));
        cJSON_AddItemToArray(bb, block_obj(&w, "b0", 2, 0, "gelu"));
        cJSON_AddItemToArray(bb, block_obj(&w, "b1", 4, 0, "gelu"));
        cJSON_AddItemToArray(bb, block_obj(&w, "b2", 2, 0, "gelu"));
    }
    cJSON_AddItemToObject(root, "input", in);
    cJSON_AddNumberToObject(root, "num_classes", TX_K);
    cJSON_AddItemToObject(root, "backbone", bb);
    cJSON *ex = cJSON_CreateArray();
    cJSON_AddItemToArray(ex, exit_obj(&w, kind, "e0", "b0", "first", "entropy"));
    cJSON_AddItemToArray(
        ex, exit_obj(&w, kind, "e1", "b1", kind == TX_VIT ? "first" : "mean", "max_prob"));
    cJSON_AddItemToObject(root, "exits", ex);
    cJSON *fin = cJSON_CreateObject();
    cJSON_AddStringToObject(fin, "name", "final");
    cJSON_AddItemToObject(fin, "head", head_arr(&w, kind, "final", "first"));
    cJSON_AddItemToObject(root, "final", fin);

    char path[256];
    cr_assert_eq(mw_path(path, sizeof path, dir, "model.json"), 0);
    cr_assert_eq(mw_write_json(path, root), 0);
    cr_assert_eq(mw_path(path, sizeof path, dir, "model.safetensors"), 0);
    cr_assert(w.ok, "adding the tensors failed");
    cr_assert_eq(mw_st_write(w.st, path), 0);
    cJSON_Delete(root);
    mw_st_free(w.st);
}

static ert_model *tx_model(tx_kind kind, uint64_t seed)
{
    char dir[64];
    cr_assert_eq(mw_tempdir(dir, sizeof dir), 0);
    tx_write(dir, kind, seed);
    ert_model *m = NULL;
    ert_error err = {{0}};
    ert_status st = ert_model_load(dir, &m, &err);
    mw_rmtree(dir);
    cr_assert_eq(st, ERT_OK, "loading the %s model: %s", kind == TX_VIT ? "ViT" : "BERT", err.msg);
    return m;
}

/* n input rows: images uniform in [0, 1); or token rows (ids, then mask)
 * with random lengths 1..T (padding at the end, with ids that must not
 * matter), row 3 all padding and row 5 an id out of range (NaN logits). */
static float *tx_inputs(const ert_model *m, tx_kind kind, int n, uint64_t seed)
{
    const size_t per = ert_model_input_size(m);
    float *x = malloc(sizeof(float) * per * n);
    cr_assert_not_null(x);
    if (kind == TX_VIT) {
        mw_random_input(x, per * n, seed);
        return x;
    }
    const int T = TX_T_BERT;
    cr_assert_eq(per, 2 * (size_t)T);
    mw_rng r = mw_rng_seed(seed);
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * per;
        int len = 1 + (int)(mw_rng_next(&r) % T);
        for (int t = 0; t < T; t++) {
            row[t] = (float)(mw_rng_next(&r) % TX_VOCAB);
            row[T + t] = t < len ? 1.0f : 0.0f;
        }
        if (i == 3)
            for (int t = 0; t < T; t++)
                row[T + t] = 0.0f;
        if (i == 5)
            row[0] = (float)TX_VOCAB;
    }
    return x;
}

/* Thresholds for the early exits from the CPU engine's scores on x: a
 * third of the rows at each early exit would leave there on its own, the
 * threshold the midpoint between two neighbouring scores (no row near it). */
static void tx_thresholds(ert_engine *cpu, const ert_model *m, const float *x, int n, float *thr)
{
    const int E = ert_model_num_exits(m);
    float *sc = malloc(sizeof(float) * n * E), *col = malloc(sizeof(float) * n);
    cr_assert(sc && col);
    cr_assert_eq(ert_engine_scores(cpu, x, n, sc), ERT_OK, "%s", ert_engine_error(cpu));
    for (int e = 0; e + 1 < E; e++) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if (isfinite(sc[i * E + e]))
                col[k++] = sc[i * E + e];
        cr_assert(k >= 4, "exit %d: %d finite scores", e, k);
        for (int a = 1; a < k; a++) /* insertion sort: a few dozen values */
            for (int b = a; b > 0 && col[b - 1] > col[b]; b--) {
                float t = col[b];
                col[b] = col[b - 1];
                col[b - 1] = t;
            }
        /* entropy leaves below the threshold, max_prob at or above it */
        int at = ert_model_exit_policy(m, e) == ERT_POLICY_ENTROPY ? k / 3 : k - k / 3;
        thr[e] = 0.5f * (col[at - 1] + col[at]);
    }
    free(sc);
    free(col);
}

static void tx_set_thresholds(ert_engine *e, const ert_model *m, const float *thr)
{
    for (int i = 0; i + 1 < ert_model_num_exits(m); i++)
        cr_assert_eq(ert_engine_set_threshold(e, i, thr[i]), ERT_OK, "%s", ert_engine_error(e));
}

static void tx_modes(tx_kind kind, uint64_t seed)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend on transformer models");
    ert_model *m = tx_model(kind, seed);
    const int K = ert_model_num_classes(m), n = 61, E = ert_model_num_exits(m);
    float *x = tx_inputs(m, kind, n, seed + 1);
    float thr[ERT_MAX_EXITS];
    ert_engine *cm = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_MASKED, 64, 0, 1);
    tx_thresholds(cm, m, x, n, thr);
    tx_set_thresholds(cm, m, thr);
    tb_result want;
    tb_result_init(&want, n, K);
    tb_infer(cm, x, n, &want);
    /* the comparison is worth something only when the rows spread */
    int used = 0;
    for (int e = 0; e < E; e++)
        used += want.r.exit_counts[e] > 0;
    cr_assert(used >= 2, "every row takes one exit: thresholds %g %g", thr[0], thr[1]);
    if (kind == TX_BERT)
        for (int i = 3; i <= 5; i += 2) {
            cr_assert_eq(want.samples[i].exit_index, E - 1, "row %d: a NaN row left early", i);
            cr_assert(isnan(want.logits[(size_t)i * K]), "row %d: logits not NaN", i);
        }

    struct {
        ert_mode mode;
        int graph_buckets, inflight;
    } runs[] = {{ERT_MODE_FULL, 0, 1},      {ERT_MODE_MASKED, 0, 1},    {ERT_MODE_COMPACTED, 0, 1},
                {ERT_MODE_COMPACTED, 0, 2}, {ERT_MODE_COMPACTED, 8, 1}, {ERT_MODE_COMPACTED, 8, 2}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        char what[96];
        snprintf(what, sizeof what, "%s %s (graph_buckets %d, inflight %d)",
                 kind == TX_VIT ? "ViT" : "BERT", ert_mode_string(runs[r].mode),
                 runs[r].graph_buckets, runs[r].inflight);
        ert_engine *g = tb_engine_on(m, ERT_BACKEND_CUDA, runs[r].mode, 64, runs[r].graph_buckets,
                                     runs[r].inflight);
        if (runs[r].graph_buckets)
            cr_assert(strstr(ert_engine_note(g), "graphs: on:") != NULL, "%s: %s", what,
                      ert_engine_note(g));
        ert_engine *c = tb_engine_on(m, ERT_BACKEND_CPU, runs[r].mode, 64, 0, 1);
        tx_set_thresholds(g, m, thr);
        tx_set_thresholds(c, m, thr);
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

Test(transformer, vit_modes_match_cpu) { tx_modes(TX_VIT, 8101); }
Test(transformer, bert_modes_match_cpu) { tx_modes(TX_BERT, 8102); }

/* The refill stream on the CUDA engine: every row's exit, class and logits
 * as the CPU engine's MASKED ert_infer. */
static void tx_stream(tx_kind kind, uint64_t seed)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend's refill stream on transformer models");
    ert_model *m = tx_model(kind, seed);
    const int K = ert_model_num_classes(m), n = 53;
    float *x = tx_inputs(m, kind, n, seed + 1);
    const size_t per = ert_model_input_size(m);
    float thr[ERT_MAX_EXITS];
    ert_engine *c = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_MASKED, 64, 0, 1);
    tx_thresholds(c, m, x, n, thr);
    tx_set_thresholds(c, m, thr);
    tb_result want;
    tb_result_init(&want, n, K);
    tb_infer(c, x, n, &want);

    ert_engine *g = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_COMPACTED, 16, 0, 1);
    tx_set_thresholds(g, m, thr);
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

Test(transformer, vit_stream_matches_cpu) { tx_stream(TX_VIT, 8201); }
Test(transformer, bert_stream_matches_cpu) { tx_stream(TX_BERT, 8202); }

#else

Test(device_order, cuda_only) { cr_skip_test("about the CUDA backend: not in this build"); }
Test(transformer, cuda_only) { cr_skip_test("about the CUDA backend: not in this build"); }

#endif

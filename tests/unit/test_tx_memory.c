/* test_tx_memory.c - a token model with T = 65536 runs short sequences on
 * the CPU backend within a memory limit: the transformer ops' scratch
 * grows with the chunk's tokens (linear in T), never with T * T (which
 * would be 16 GiB here).
 *
 * The test writes two BERT-like models with the same weights, T = 65536
 * and T = 16, loads the long one under RLIMIT_AS (what the process maps
 * now plus 2 GiB), runs a batch of two short sequences (max_batch 2, two
 * threads) and checks the logits against the short model's engine and
 * against the float64 reference (mw_reference_infer) on the short model:
 * the padding after a sequence's last attended token changes nothing.
 *
 * Skipped under AddressSanitizer, which maps terabytes of shadow memory. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "exitrt.h"
#include "model_writer.h"
#include "tolerance.h"

#if defined(__SANITIZE_ADDRESS__)
#define TM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TM_ASAN 1
#endif
#endif
#ifndef TM_ASAN
#define TM_ASAN 0
#endif

enum {
    V = 16,
    D = 8,
    H = 2,
    F = 16,
    K = 3,
    SHORT_T = 16
};

/* The weights, the same for both models (the position table's first
 * SHORT_T rows are the long model's first rows). */
typedef struct weights {
    float emb[V * D], pos[SHORT_T * D], ln_w[D], ln_b[D];
    float iw[2][3 * D * D], ib[2][3 * D], ow[2][D * D], ob[2][D];
    float n1w[2][D], n1b[2][D], n2w[2][D], n2b[2][D];
    float l1w[2][F * D], l1b[2][F], l2w[2][D * F], l2b[2][D];
    float hw[2][K * D], hb[2][K];
} weights;

static void fill(mw_rng *r, float *x, size_t n, float mean, float std)
{
    for (size_t i = 0; i < n; i++)
        x[i] = mean + std * mw_rng_normal(r);
}

static void make_weights(weights *w)
{
    mw_rng r = mw_rng_seed(65536);
    fill(&r, w->emb, V * D, 0, 1);
    fill(&r, w->pos, SHORT_T * D, 0, 0.5f);
    fill(&r, w->ln_w, D, 1, 0.2f);
    fill(&r, w->ln_b, D, 0, 0.1f);
    for (int b = 0; b < 2; b++) {
        fill(&r, w->iw[b], 3 * D * D, 0, 0.8f);
        fill(&r, w->ib[b], 3 * D, 0, 0.1f);
        fill(&r, w->ow[b], D * D, 0, 0.35f);
        fill(&r, w->ob[b], D, 0, 0.1f);
        fill(&r, w->n1w[b], D, 1, 0.2f);
        fill(&r, w->n1b[b], D, 0, 0.1f);
        fill(&r, w->n2w[b], D, 1, 0.2f);
        fill(&r, w->n2b[b], D, 0, 0.1f);
        fill(&r, w->l1w[b], F * D, 0, 0.5f);
        fill(&r, w->l1b[b], F, 0, 0.1f);
        fill(&r, w->l2w[b], D * F, 0, 0.25f);
        fill(&r, w->l2b[b], D, 0, 0.1f);
        fill(&r, w->hw[b], K * D, 0, 1.0f);
        fill(&r, w->hb[b], K, 0, 0.1f);
    }
}

static void add(mw_st *st, const char *name, int ndim, int64_t a, int64_t b, const float *v)
{
    int64_t shape[2] = {a, b};
    cr_assert_eq(mw_st_add(st, name, ndim, shape, v), 0, "tensor %s", name);
}

/* An encoder block's JSON, tensors "b<k>.*". */
static int block_json(char *out, size_t cap, int k)
{
    return snprintf(
        out, cap,
        "{\"name\": \"block%d\", \"type\": \"encoder_block\", \"norm_first\": false, "
        "\"activation\": \"gelu\", "
        "\"attention\": {\"embed_dim\": %d, \"num_heads\": %d, \"in_weight\": \"b%d.iw\", "
        "\"in_bias\": \"b%d.ib\", \"out_weight\": \"b%d.ow\", \"out_bias\": \"b%d.ob\"}, "
        "\"norm1\": {\"normalized_shape\": %d, \"eps\": 1e-5, \"weight\": \"b%d.n1w\", "
        "\"bias\": \"b%d.n1b\"}, "
        "\"linear1\": {\"in_features\": %d, \"out_features\": %d, \"weight\": \"b%d.l1w\", "
        "\"bias\": \"b%d.l1b\"}, "
        "\"linear2\": {\"in_features\": %d, \"out_features\": %d, \"weight\": \"b%d.l2w\", "
        "\"bias\": \"b%d.l2b\"}, "
        "\"norm2\": {\"normalized_shape\": %d, \"eps\": 1e-5, \"weight\": \"b%d.n2w\", "
        "\"bias\": \"b%d.n2b\"}}",
        k, D, H, k, k, k, k, D, k, k, D, F, k, k, F, D, k, k, D, k, k);
}

/* Writes the model with T tokens into dir. */
static void write_model(const char *dir, const weights *w, int T)
{
    mw_st *st = mw_st_new();
    cr_assert_not_null(st);
    float *pos = calloc((size_t)T * D, sizeof *pos);
    cr_assert_not_null(pos);
    memcpy(pos, w->pos, sizeof w->pos); /* the rows after SHORT_T stay 0 */
    add(st, "emb", 2, V, D, w->emb);
    add(st, "pos", 2, T, D, pos);
    add(st, "ln.w", 1, D, 0, w->ln_w);
    add(st, "ln.b", 1, D, 0, w->ln_b);
    char name[32];
    for (int b = 0; b < 2; b++) {
#define ADD(f, nd, a, c)                              \
    snprintf(name, sizeof name, "b%d.%s", b + 1, #f); \
    add(st, name, nd, a, c, w->f[b])
        ADD(iw, 2, 3 * D, D);
        ADD(ib, 1, 3 * D, 0);
        ADD(ow, 2, D, D);
        ADD(ob, 1, D, 0);
        ADD(n1w, 1, D, 0);
        ADD(n1b, 1, D, 0);
        ADD(n2w, 1, D, 0);
        ADD(n2b, 1, D, 0);
        ADD(l1w, 2, F, D);
        ADD(l1b, 1, F, 0);
        ADD(l2w, 2, D, F);
        ADD(l2b, 1, D, 0);
        ADD(hw, 2, K, D);
        ADD(hb, 1, K, 0);
#undef ADD
    }
    char path[4096], b1[2048], b2[2048], json[8192];
    cr_assert_eq(mw_path(path, sizeof path, dir, "model.safetensors"), 0);
    cr_assert_eq(mw_st_write(st, path), 0);
    mw_st_free(st);
    free(pos);
    block_json(b1, sizeof b1, 1);
    block_json(b2, sizeof b2, 2);
    int n = snprintf(
        json, sizeof json,
        "{\"format\": \"exitrt-model\", \"version\": 1, \"name\": \"long\", "
        "\"weights\": \"model.safetensors\", \"input\": {\"tokens\": %d}, \"num_classes\": %d, "
        "\"backbone\": [{\"name\": \"embed\", \"type\": \"token_embed\", \"vocab_size\": %d, "
        "\"embed_dim\": %d, \"weight\": \"emb\", \"position\": \"pos\"}, "
        "{\"name\": \"ln\", \"type\": \"layer_norm\", \"normalized_shape\": %d, \"eps\": 1e-5, "
        "\"weight\": \"ln.w\", \"bias\": \"ln.b\"}, %s, %s], "
        "\"exits\": [{\"name\": \"exit1\", \"after\": \"block1\", "
        "\"policy\": {\"type\": \"max_prob\", \"threshold\": 0.6}, \"head\": ["
        "{\"name\": \"pool\", \"type\": \"token_pool\", \"mode\": \"mean\"}, "
        "{\"name\": \"fc\", \"type\": \"linear\", \"in_features\": %d, \"out_features\": %d, "
        "\"weight\": \"b1.hw\", \"bias\": \"b1.hb\"}]}], "
        "\"final\": {\"name\": \"final\", \"head\": ["
        "{\"name\": \"pool\", \"type\": \"token_pool\", \"mode\": \"first\"}, "
        "{\"name\": \"fc\", \"type\": \"linear\", \"in_features\": %d, \"out_features\": %d, "
        "\"weight\": \"b2.hw\", \"bias\": \"b2.hb\"}]}}",
        T, K, V, D, D, b1, b2, D, K, D, K);
    cr_assert(n > 0 && (size_t)n < sizeof json);
    cr_assert_eq(mw_path(path, sizeof path, dir, "model.json"), 0);
    cr_assert_eq(mw_write_text(path, json), 0);
}

/* What this process maps now, in bytes (/proc/self/statm's first field). */
static size_t mapped_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    cr_assert_not_null(f);
    unsigned long pages = 0;
    cr_assert_eq(fscanf(f, "%lu", &pages), 1);
    fclose(f);
    return (size_t)pages * 4096;
}

/* Sample 0 attends to its first 5 tokens, sample 1 to token 0 alone; ids
 * of the first SHORT_T tokens, padding (id 0, mask 0) after. */
static void short_batch(int T, int32_t *ids, int32_t *mask)
{
    memset(ids, 0, sizeof *ids * 2 * (size_t)T);
    memset(mask, 0, sizeof *mask * 2 * (size_t)T);
    for (int t = 0; t < SHORT_T; t++) {
        ids[t] = (t * 7 + 3) % V;
        ids[(size_t)T + (size_t)t] = (t * 5 + 1) % V;
    }
    for (int t = 0; t < 5; t++)
        mask[t] = 1;
    mask[T] = 1;
}

static void run(ert_model *m, int T, ert_mode mode, float *logits, ert_sample *s)
{
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_BACKEND_CPU;
    cfg.mode = mode;
    cfg.max_batch = 2;
    cfg.threads = 2;
    ert_engine *e = NULL;
    ert_error err;
    ert_status st = ert_engine_create(m, &cfg, &e, &err);
    cr_assert_eq(st, ERT_OK, "T %d: engine: %s", T, err.msg);
    int32_t *ids = malloc(sizeof *ids * 2 * (size_t)T),
            *mask = malloc(sizeof *mask * 2 * (size_t)T);
    cr_assert(ids && mask);
    short_batch(T, ids, mask);
    ert_result r = {.struct_size = sizeof(ert_result), .samples = s, .logits = logits};
    st = ert_infer_tokens(e, ids, mask, 2, &r);
    cr_assert_eq(st, ERT_OK, "T %d: infer: %s", T, ert_engine_error(e));
    free(ids);
    free(mask);
    ert_engine_free(e);
}

Test(tx_memory, long_model_short_sequences)
{
    if (TM_ASAN)
        cr_skip_test("AddressSanitizer maps more than any memory limit allows");
    char long_dir[4096], short_dir[4096];
    cr_assert_eq(mw_tempdir(long_dir, sizeof long_dir), 0);
    cr_assert_eq(mw_tempdir(short_dir, sizeof short_dir), 0);
    weights *w = malloc(sizeof *w);
    cr_assert_not_null(w);
    make_weights(w);
    const int T = 65536;
    write_model(long_dir, w, T);
    write_model(short_dir, w, SHORT_T);
    free(w);

    /* the short model's engine in every mode and the reference, before
       the limit */
    const ert_mode modes[3] = {ERT_MODE_FULL, ERT_MODE_COMPACTED, ERT_MODE_MASKED};
    ert_model *ms = NULL;
    ert_error err;
    cr_assert_eq(ert_model_load(short_dir, &ms, &err), ERT_OK, "%s", err.msg);
    float want[3][2 * K], ref[2 * K], x[2 * 2 * SHORT_T];
    ert_sample sw[3][2], sr[2];
    for (int k = 0; k < 3; k++)
        run(ms, SHORT_T, modes[k], want[k], sw[k]);
    int32_t ids[2 * SHORT_T], mask[2 * SHORT_T];
    short_batch(SHORT_T, ids, mask);
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < SHORT_T; t++) {
            x[i * 2 * SHORT_T + t] = (float)ids[i * SHORT_T + t];
            x[i * 2 * SHORT_T + SHORT_T + t] = (float)mask[i * SHORT_T + t];
        }
    cr_assert_eq(mw_reference_infer(ms, x, 2, sr, ref, NULL, NULL), 0);
    ert_model_free(ms);

    struct rlimit old, lim;
    cr_assert_eq(getrlimit(RLIMIT_AS, &old), 0);
    lim.rlim_cur = mapped_bytes() + ((size_t)2 << 30);
    if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur < lim.rlim_cur)
        lim.rlim_cur = old.rlim_cur;
    lim.rlim_max = old.rlim_max;
    cr_assert_eq(setrlimit(RLIMIT_AS, &lim), 0);

    ert_model *ml = NULL;
    cr_assert_eq(ert_model_load(long_dir, &ml, &err), ERT_OK, "%s", err.msg);
    for (int k = 0; k < 3; k++) {
        float got[2 * K];
        ert_sample s[2];
        run(ml, T, modes[k], got, s);
        for (int i = 0; i < 2 * K; i++) {
            cr_assert_eq(s[i / K].exit_index, sw[k][i / K].exit_index, "mode %d sample %d", k,
                         i / K);
            cr_assert(tol_logit_ok(got[i], want[k][i], 1.0f), "mode %d logit %d: T %d %g, T %d %g",
                      k, i, T, got[i], SHORT_T, want[k][i]);
            /* COMPACTED and MASKED take the reference's exits */
            if (k > 0 && s[i / K].exit_index == sr[i / K].exit_index)
                cr_assert(tol_logit_ok(got[i], ref[i], 1.0f), "mode %d logit %d: %g, reference %g",
                          k, i, got[i], ref[i]);
        }
    }
    ert_model_free(ml);
    cr_assert_eq(setrlimit(RLIMIT_AS, &old), 0);
    mw_rmtree(long_dir);
    mw_rmtree(short_dir);
}

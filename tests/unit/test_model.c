/* test_model.c - loading models: shapes, MACs, batch-norm folding, the
 * random test models, and malformed model files. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "model.h"
#include "model_writer.h"
#include "policy.h"

/* ---- a small hand-written model ------------------------------------------------- *
 *
 * input [2,6,6] -> conv1 (2->4, k3, p1, no bias) -> bn1 -> relu1 -> pool1
 * (max k2: [4,3,3]) -> drop -> conv2 (4->6, k[3,2], s[1,2], p[1,0], g2:
 * [6,3,1]) -> flatten [18]. Exit "early" after pool1: flatten, linear 36->3.
 * Final: linear 18->3.
 */
static const char *BASE_JSON =
    "{\"format\":\"exitrt-model\",\"version\":1,\"name\":\"small\",\"weights\":\"w.safetensors\","
    "\"input\":{\"shape\":[2,6,6],\"scale\":0.5,\"mean\":[0.1,0.2],\"std\":0.5},"
    "\"num_classes\":3,\"sample_data\":\"data/x.npy\","
    "\"backbone\":["
    "{\"name\":\"conv1\",\"type\":\"conv2d\",\"in_channels\":2,\"out_channels\":4,\"kernel_size\":3,"
    "\"padding\":1,\"weight\":\"c1.w\"},"
    "{\"name\":\"bn1\",\"type\":\"batchnorm2d\",\"num_features\":4,\"eps\":0.001,\"weight\":\"bn.g\","
    "\"bias\":\"bn.b\",\"running_mean\":\"bn.m\",\"running_var\":\"bn.v\"},"
    "{\"name\":\"relu1\",\"type\":\"relu\"},"
    "{\"name\":\"pool1\",\"type\":\"maxpool2d\",\"kernel_size\":2},"
    "{\"name\":\"drop\",\"type\":\"dropout\"},"
    "{\"name\":\"conv2\",\"type\":\"conv2d\",\"in_channels\":4,\"out_channels\":6,\"kernel_size\":[3,2],"
    "\"stride\":[1,2],\"padding\":[1,0],\"groups\":2,\"weight\":\"c2.w\",\"bias\":\"c2.b\"},"
    "{\"name\":\"flatten\",\"type\":\"flatten\"}],"
    "\"exits\":[{\"name\":\"early\",\"after\":\"pool1\",\"head\":["
    "{\"name\":\"flat\",\"type\":\"flatten\"},"
    "{\"name\":\"fc\",\"type\":\"linear\",\"in_features\":36,\"out_features\":3,\"weight\":\"e.w\","
    "\"bias\":\"e.b\"}],\"policy\":{\"type\":\"entropy\",\"threshold\":0.5}}],"
    "\"final\":{\"name\":\"final\",\"head\":["
    "{\"name\":\"fc\",\"type\":\"linear\",\"in_features\":18,\"out_features\":3,\"weight\":\"f.w\","
    "\"bias\":\"f.b\"}]}}";

typedef struct base_weights {
    float c1w[4 * 2 * 3 * 3], g[4], b[4], mean[4], var[4];
    float c2w[6 * 2 * 3 * 2], c2b[6], ew[3 * 36], eb[3], fw[3 * 18], fb[3];
    float cw[36], cb[1], xw[2 * 36], ow[18];
} base_weights;

static char dir[64];
static char json_path[128];
static char st_path[128];
static base_weights W;

static void fill(mw_rng *r, float *v, size_t n, float lo, float span)
{
    for (size_t i = 0; i < n; i++)
        v[i] = lo + span * mw_rng_uniform(r);
}

/* The weights file of the base model; f16_conv1: c1.w stored as F16. */
static void write_weights(int f16_conv1)
{
    mw_rng r = mw_rng_seed(7);
    fill(&r, W.c1w, 72, -1, 2);
    fill(&r, W.g, 4, 0.5f, 1);
    fill(&r, W.b, 4, -0.5f, 1);
    fill(&r, W.mean, 4, -0.5f, 1);
    fill(&r, W.var, 4, 0.2f, 2);
    fill(&r, W.c2w, 72, -1, 2);
    fill(&r, W.c2b, 6, -1, 2);
    fill(&r, W.ew, 108, -1, 2);
    fill(&r, W.eb, 3, -1, 2);
    fill(&r, W.fw, 54, -1, 2);
    fill(&r, W.fb, 3, -1, 2);
    fill(&r, W.cw, 36, -1, 2);
    fill(&r, W.cb, 1, -1, 2);
    fill(&r, W.xw, 72, -1, 2);
    fill(&r, W.ow, 18, -1, 2);
    mw_st *st = mw_st_new();
    cr_assert_not_null(st);
    int64_t c1[4] = {4, 2, 3, 3}, s4[1] = {4}, c2[4] = {6, 2, 3, 2}, s6[1] = {6};
    int64_t e[2] = {3, 36}, s3[1] = {3}, f[2] = {3, 18}, cw[2] = {1, 36}, s1[1] = {1},
            xw[2] = {2, 36};
    int64_t ow[2] = {1, 18};
    int rc = 0;
    if (f16_conv1) {
        uint16_t h[72] = {0};
        rc |= mw_st_add_raw(st, "c1.w", "F16", 4, c1, h, sizeof h);
    } else {
        rc |= mw_st_add(st, "c1.w", 4, c1, W.c1w);
    }
    rc |= mw_st_add(st, "bn.g", 1, s4, W.g);
    rc |= mw_st_add(st, "bn.b", 1, s4, W.b);
    rc |= mw_st_add(st, "bn.m", 1, s4, W.mean);
    rc |= mw_st_add(st, "bn.v", 1, s4, W.var);
    rc |= mw_st_add(st, "c2.w", 4, c2, W.c2w);
    rc |= mw_st_add(st, "c2.b", 1, s6, W.c2b);
    rc |= mw_st_add(st, "e.w", 2, e, W.ew);
    rc |= mw_st_add(st, "e.b", 1, s3, W.eb);
    rc |= mw_st_add(st, "f.w", 2, f, W.fw);
    rc |= mw_st_add(st, "f.b", 1, s3, W.fb);
    rc |= mw_st_add(st, "conf.w", 2, cw, W.cw); /* for mutations */
    rc |= mw_st_add(st, "conf.b", 1, s1, W.cb);
    rc |= mw_st_add(st, "x.w", 2, xw, W.xw);
    rc |= mw_st_add(st, "one.w", 2, ow, W.ow); /* a one-class final head */
    float neg[4] = {1, -2, 1, 1};
    rc |= mw_st_add(st, "neg.v", 1, s4, neg);
    rc |= mw_st_write(st, st_path);
    mw_st_free(st);
    cr_assert_eq(rc, 0);
}

static void setup(void)
{
    cr_assert_eq(mw_tempdir(dir, sizeof dir), 0);
    cr_assert_eq(mw_path(json_path, sizeof json_path, dir, "model.json"), 0);
    cr_assert_eq(mw_path(st_path, sizeof st_path, dir, "w.safetensors"), 0);
    write_weights(0);
}

static void teardown(void) { mw_rmtree(dir); }

TestSuite(model, .init = setup, .fini = teardown);
TestSuite(model_bad, .init = setup, .fini = teardown);

static ert_model *load_ok(const char *path)
{
    ert_model *m = NULL;
    ert_error err = {{0}};
    ert_status st = ert_model_load(path, &m, &err);
    cr_assert_eq(st, ERT_OK, "load failed: %s", err.msg);
    cr_assert_not_null(m);
    return m;
}

static void expect_shape(shape3 s, int c, int h, int w)
{
    cr_assert(s.c == c && s.h == h && s.w == w, "shape %dx%dx%d, want %dx%dx%d", s.c, s.h, s.w, c,
              h, w);
}

Test(model, small_shapes_and_macs)
{
    cr_assert_eq(mw_write_text(json_path, BASE_JSON), 0);
    ert_model *m = load_ok(dir);
    cr_assert_eq(ert_model_num_exits(m), 2);
    cr_assert_eq(ert_model_num_classes(m), 3);
    cr_assert_eq(ert_model_input_size(m), 72);
    int c, h, w;
    ert_model_input_shape(m, &c, &h, &w);
    cr_assert(c == 2 && h == 6 && w == 6);
    cr_assert_float_eq(m->input_scale, 0.5f, 0);
    cr_assert_float_eq(m->mean[1], 0.2f, 1e-7);
    cr_assert_float_eq(m->std[0], 0.5f, 0);
    cr_assert_float_eq(m->std[1], 0.5f, 0); /* one value, repeated */

    /* bn1 and drop are gone */
    cr_assert_eq(m->backbone.count, 5);
    const char *names[] = {"conv1", "relu1", "pool1", "conv2", "flatten"};
    for (int i = 0; i < 5; i++)
        cr_assert_str_eq(m->backbone.items[i].name, names[i]);
    expect_shape(m->backbone.items[0].out, 4, 6, 6);
    expect_shape(m->backbone.items[2].out, 4, 3, 3);
    expect_shape(m->backbone.items[3].out, 6, 3, 1);
    expect_shape(m->backbone.items[4].out, 18, 1, 1);
    const conv_params *c2 = &m->backbone.items[3].p.conv;
    cr_assert(c2->kh == 3 && c2->kw == 2 && c2->stride_h == 1 && c2->stride_w == 2 &&
              c2->pad_h == 1 && c2->pad_w == 0 && c2->groups == 2 && c2->dil_h == 1);

    /* MACs by hand: conv1 4*6*6 outputs * 2*3*3; conv2 6*3*1 outputs * (4/2)*3*2;
       exit 36*3; final 18*3 */
    uint64_t conv1 = 4 * 6 * 6 * 2 * 3 * 3, conv2 = 6 * 3 * 1 * 2 * 3 * 2;
    cr_assert_eq(m->backbone.items[0].macs, conv1);
    cr_assert_eq(m->backbone.items[3].macs, conv2);
    cr_assert_eq(m->backbone_macs, 2592 + 216);
    cr_assert_eq(m->exits[0].head_macs, 108);
    cr_assert_eq(m->exits[1].head_macs, 54);
    cr_assert_eq(ert_model_macs_full(m), 2592 + 216 + 54);

    cr_assert_eq(m->exits[0].after, 2);
    cr_assert_eq(m->exits[1].after, 4);
    cr_assert_str_eq(ert_model_exit_name(m, 0), "early");
    cr_assert_str_eq(ert_model_exit_name(m, 1), "final");
    cr_assert_null(ert_model_exit_name(m, 2));
    cr_assert_eq(ert_model_exit_index(m, "final"), 1);
    cr_assert_eq(ert_model_exit_index(m, "nope"), -1);
    cr_assert_eq(ert_model_exit_policy(m, 0), ERT_POLICY_ENTROPY);
    cr_assert_eq(ert_model_exit_policy(m, 1), ERT_POLICY_NONE);
    cr_assert_float_eq(ert_model_exit_threshold(m, 0), 0.5f, 0);
    cr_assert(isnan(ert_model_exit_threshold(m, 1)));

    char want[256];
    snprintf(want, sizeof want, "%s/data/x.npy", dir);
    cr_assert_str_eq(ert_model_sample_data(m), want);
    cr_assert_null(ert_model_sample_labels(m));

    /* weights that are not folded are copied bit for bit, into one block */
    const linear_params *fl = &m->exits[1].head.items[0].p.linear;
    cr_assert_eq(memcmp(fl->weight, W.fw, sizeof W.fw), 0);
    cr_assert_eq(memcmp(fl->bias, W.fb, sizeof W.fb), 0);
    cr_assert_eq(memcmp(c2->weight, W.c2w, sizeof W.c2w), 0);
    size_t want_floats = 72 + 4 + 72 + 6 + 108 + 3 + 54 + 3;
    cr_assert_eq(m->weights_len, want_floats);
    cr_assert(fl->weight >= m->weights && fl->weight + 54 <= m->weights + m->weights_len);
    ert_model_free(m);
}

Test(model, load_by_json_path)
{
    cr_assert_eq(mw_write_text(json_path, BASE_JSON), 0);
    ert_model *m = load_ok(json_path);
    cr_assert_eq(m->num_exits, 2);
    ert_model_free(m);
}

/* conv with groups/stride/padding/dilation, written as plain loops on the
 * unfolded PyTorch semantics, in double. x [ci,h,w]; y [co,oh,ow]. */
static void naive_conv(const float *x, int ci, int h, int w, const float *wt, const float *bias,
                       int co, int kh, int kw, int s, int p, int groups, double *y, int oh, int ow)
{
    int cig = ci / groups, cog = co / groups;
    for (int o = 0; o < co; o++)
        for (int yy = 0; yy < oh; yy++)
            for (int xx = 0; xx < ow; xx++) {
                double acc = bias ? bias[o] : 0;
                for (int i = 0; i < cig; i++)
                    for (int a = 0; a < kh; a++)
                        for (int b = 0; b < kw; b++) {
                            int iy = yy * s - p + a, ix = xx * s - p + b;
                            if (iy >= 0 && iy < h && ix >= 0 && ix < w)
                                acc += (double)wt[((o * cig + i) * kh + a) * kw + b] *
                                       x[((o / cog * cig + i) * h + iy) * w + ix];
                        }
                y[(o * oh + yy) * ow + xx] = acc;
            }
}

Test(model, batchnorm_folding_matches_conv_then_bn)
{
    cr_assert_eq(mw_write_text(json_path, BASE_JSON), 0);
    ert_model *m = load_ok(dir);
    const conv_params *cv = &m->backbone.items[0].p.conv;
    cr_assert_not_null(cv->bias); /* the conv had none: folding gives one */
    mw_rng r = mw_rng_seed(99);
    for (int trial = 0; trial < 5; trial++) {
        float x[72];
        fill(&r, x, 72, -2, 4);
        double ref[144], got[144];
        naive_conv(x, 2, 6, 6, W.c1w, NULL, 4, 3, 3, 1, 1, 1, ref, 6, 6);
        for (int o = 0; o < 4; o++)
            for (int k = 0; k < 36; k++) {
                double *v = &ref[o * 36 + k];
                *v = (*v - W.mean[o]) / sqrt((double)W.var[o] + 0.001) * W.g[o] + W.b[o];
            }
        naive_conv(x, 2, 6, 6, cv->weight, cv->bias, 4, 3, 3, 1, 1, 1, got, 6, 6);
        for (int k = 0; k < 144; k++)
            cr_assert(fabs(got[k] - ref[k]) <= 1e-5 * (1 + fabs(ref[k])),
                      "[%d] folded %g, conv+bn %g", k, got[k], ref[k]);
    }
    /* and the fold did change the weights (gamma/sqrt(var+eps) != 1 here) */
    cr_assert_neq(memcmp(cv->weight, W.c1w, sizeof W.c1w), 0);
    ert_model_free(m);
}

Test(model, free_with_engines_only_marks)
{
    cr_assert_eq(mw_write_text(json_path, BASE_JSON), 0);
    ert_model *m = load_ok(dir);
    m->engines = 1;
    ert_model_free(m);
    cr_assert_eq(m->freed, 1);
    cr_assert_eq(m->num_exits, 2); /* still alive */
    m->engines = 0;
    ert_model_free(m);
    ert_model_free(NULL);
}

Test(model, enum_strings)
{
    cr_assert_str_eq(ert_status_string(ERT_OK), "ok");
    cr_assert_str_eq(ert_status_string(ERT_FORMAT), "format error");
    cr_assert_str_eq(ert_status_string(ERT_QUEUE_FULL), "queue full");
    cr_assert_str_eq(ert_status_string((ert_status)999), "unknown status");
    cr_assert_str_eq(ert_backend_string(ERT_BACKEND_CUDA), "cuda");
    cr_assert_str_eq(ert_mode_string(ERT_MODE_COMPACTED), "compacted");
    cr_assert_str_eq(ert_policy_string(ERT_POLICY_CONFIDENCE_HEAD), "confidence_head");
    cr_assert_str_eq(ert_policy_string(ERT_POLICY_MARGIN), "margin");
    cr_assert_str_eq(ert_policy_string(ERT_POLICY_PATIENCE), "patience");
}

/* The one threshold rule of the loader and ert_engine_set_threshold. */
Test(model, threshold_rule)
{
    const ert_policy_kind unit[] = {ERT_POLICY_MAX_PROB, ERT_POLICY_MARGIN,
                                    ERT_POLICY_CONFIDENCE_HEAD};
    for (int i = 0; i < 3; i++) {
        cr_assert(ert_threshold_ok(unit[i], 0.0f) && ert_threshold_ok(unit[i], 1.0f));
        cr_assert(!ert_threshold_ok(unit[i], -0.0001f) && !ert_threshold_ok(unit[i], 1.0001f));
        cr_assert(!ert_threshold_ok(unit[i], NAN));
        cr_assert_str_eq(ert_threshold_range(unit[i]), "[0, 1]");
    }
    cr_assert(ert_threshold_ok(ERT_POLICY_ENTROPY, 0.0f));
    cr_assert(ert_threshold_ok(ERT_POLICY_ENTROPY, INFINITY)); /* as before: everyone exits */
    cr_assert(!ert_threshold_ok(ERT_POLICY_ENTROPY, -1e-9f));
    cr_assert(!ert_threshold_ok(ERT_POLICY_ENTROPY, NAN));
    cr_assert_str_eq(ert_threshold_range(ERT_POLICY_ENTROPY), ">= 0");
    const float ok[] = {1.0f, 2.0f, 15.0f, 16.0f, 17.0f, 1e9f};
    const float bad[] = {0.0f, -1.0f, 0.5f, 1.5f, 2.0000002f, 0.999999f, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        cr_assert(ert_threshold_ok(ERT_POLICY_PATIENCE, ok[i]), "%g", ok[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert(!ert_threshold_ok(ERT_POLICY_PATIENCE, bad[i]), "%g", bad[i]);
    cr_assert_str_eq(ert_threshold_range(ERT_POLICY_PATIENCE), "an integer >= 1");
    cr_assert(!ert_threshold_ok(ERT_POLICY_NONE, 0.5f), "the final head has no threshold");
}

Test(model, getters_accept_null)
{
    cr_assert_eq(ert_model_num_exits(NULL), 0);
    cr_assert_null(ert_model_exit_name(NULL, 0));
    cr_assert_eq(ert_model_exit_index(NULL, "x"), -1);
    cr_assert(isnan(ert_model_exit_threshold(NULL, 0)));
    ert_error err = {{0}};
    ert_model *m = (ert_model *)1;
    cr_assert_eq(ert_model_load(NULL, &m, &err), ERT_INVALID_ARGUMENT);
    cr_assert_null(m);
}

/* ---- the random test models ----------------------------------------------------- */

static void check_random_model(mw_kind kind, int want_exits)
{
    ert_model *m = NULL;
    ert_error err = {{0}};
    cr_assert_eq(mw_random_model(dir, 1234, kind), 0, "%s", mw_kind_name(kind));
    cr_assert_eq(ert_model_load(dir, &m, &err), ERT_OK, "%s: %s", mw_kind_name(kind), err.msg);
    cr_assert_eq(m->num_exits, want_exits);
    enum {
        N = 600
    };
    size_t insz = ert_model_input_size(m);
    float *x = malloc(N * insz * sizeof *x), *logits = malloc(N * m->num_classes * sizeof *logits);
    ert_sample *s = malloc(N * sizeof *s);
    cr_assert(x && logits && s);
    mw_random_input(x, N * insz, 555); /* not the calibration inputs */
    cr_assert_eq(mw_reference_infer(m, x, N, s, logits, NULL, NULL), 0);
    int counts[ERT_MAX_EXITS] = {0}, classes[64] = {0};
    for (int i = 0; i < N; i++) {
        cr_assert(s[i].exit_index >= 0 && s[i].exit_index < m->num_exits);
        cr_assert(s[i].predicted >= 0 && s[i].predicted < m->num_classes);
        cr_assert(isfinite(logits[i * m->num_classes]));
        counts[s[i].exit_index]++;
        classes[s[i].predicted]++;
    }
    /* calibrated for equal shares: each exit takes a real part of the batch */
    for (int e = 0; e < m->num_exits; e++)
        cr_assert(counts[e] >= N / (4 * m->num_exits), "%s: exit %d took %d of %d",
                  mw_kind_name(kind), e, counts[e], N);
    int distinct = 0;
    for (int k = 0; k < m->num_classes; k++)
        distinct += classes[k] > 0;
    cr_assert(distinct >= 2, "%s: every sample predicts one class", mw_kind_name(kind));
    free(x);
    free(logits);
    free(s);
    ert_model_free(m);
}

Test(model, random_mlp) { check_random_model(MW_MLP, 3); }
Test(model, random_cnn) { check_random_model(MW_CNN, 2); }
Test(model, random_resnet) { check_random_model(MW_RESNET, 4); }

Test(model, random_resnet_structure)
{
    cr_assert_eq(mw_random_model(dir, 5, MW_RESNET), 0);
    ert_model *m = load_ok(dir);
    /* stem, block1..3, gap, flatten: stem_bn folded away */
    cr_assert_eq(m->backbone.count, 7);
    const layer *b2 = &m->backbone.items[3];
    cr_assert_eq(b2->kind, LAYER_RESIDUAL);
    cr_assert_eq(b2->p.residual.body.count, 3);     /* conv, relu, conv */
    cr_assert_eq(b2->p.residual.shortcut.count, 1); /* 1x1 conv, bn folded */
    expect_shape(b2->out, 16, 8, 8);
    /* MACs of block2 by hand: conv1 16*8*8*8*9, conv2 16*8*8*16*9, shortcut 16*8*8*8 */
    cr_assert_eq(b2->macs, 16 * 64 * 8 * 9 + 16 * 64 * 16 * 9 + 16 * 64 * 8);
    cr_assert_eq(m->exits[0].policy, ERT_POLICY_ENTROPY);
    cr_assert_eq(m->exits[1].policy, ERT_POLICY_MAX_PROB);
    cr_assert_eq(m->exits[2].policy, ERT_POLICY_MARGIN);
    ert_model_free(m);
}

Test(model, random_model_is_deterministic)
{
    char d2[64], a[128], b[128];
    cr_assert_eq(mw_tempdir(d2, sizeof d2), 0);
    cr_assert_eq(mw_random_model(dir, 77, MW_CNN), 0);
    cr_assert_eq(mw_random_model(d2, 77, MW_CNN), 0);
    mw_path(a, sizeof a, dir, "model.safetensors");
    mw_path(b, sizeof b, d2, "model.safetensors");
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    cr_assert(fa && fb);
    int same = 1, ca, cb;
    do {
        ca = fgetc(fa);
        cb = fgetc(fb);
        same &= ca == cb;
    } while (ca != EOF && cb != EOF);
    fclose(fa);
    fclose(fb);
    mw_rmtree(d2);
    cr_assert(same);
    cr_assert_eq(mw_random_model(dir, 78, MW_CNN), 0); /* another seed, other weights */
    ert_model *m = load_ok(dir);
    cr_assert_eq(m->exits[0].policy, ERT_POLICY_CONFIDENCE_HEAD);
    cr_assert_eq(m->exits[0].confidence.count, 3);
    ert_model_free(m);
}

/* ---- malformed model files --------------------------------------------------------- */

static cJSON *J(cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }
static cJSON *I(cJSON *a, int i) { return cJSON_GetArrayItem(a, i); }
static cJSON *BB(cJSON *r, int i) { return I(J(r, "backbone"), i); }
static cJSON *EX(cJSON *r) { return I(J(r, "exits"), 0); }
/* Sets o[key], adding it when absent. */
static void put(cJSON *o, const char *key, cJSON *v)
{
    cr_assert_not_null(v);
    if (!cJSON_ReplaceItemInObjectCaseSensitive(o, key, v))
        cJSON_AddItemToObject(o, key, v);
}
static void set_num(cJSON *o, const char *key, double v) { put(o, key, cJSON_CreateNumber(v)); }
static void set_str(cJSON *o, const char *key, const char *v)
{
    put(o, key, cJSON_CreateString(v));
}

/* Writes the base model mutated by mut, then replaces the text `from` by
 * `to` (when given), loads, and checks the status and message. */
static void expect_bad(void (*mut)(cJSON *), const char *from, const char *to, ert_status want_st,
                       const char *want)
{
    cJSON *r = cJSON_Parse(BASE_JSON);
    cr_assert_not_null(r);
    if (mut)
        mut(r);
    char *text = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    cr_assert_not_null(text);
    char buf[8192];
    char *at = from ? strstr(text, from) : NULL;
    if (from)
        cr_assert_not_null(at, "'%s' not in the model text", from);
    if (at)
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    else
        snprintf(buf, sizeof buf, "%s", text);
    cJSON_free(text);
    cr_assert_eq(mw_write_text(json_path, buf), 0);
    static ert_model sentinel;
    ert_model *m = &sentinel;
    ert_error err = {{0}};
    ert_status st = ert_model_load(dir, &m, &err);
    cr_assert_eq(st, want_st, "status %s, want %s: %s", ert_status_string(st),
                 ert_status_string(want_st), err.msg);
    cr_assert_null(m);
    cr_assert(strstr(err.msg, want), "message '%s' lacks '%s'", err.msg, want);
    cr_assert(strstr(err.msg, dir), "message '%s' names no file", err.msg);
}

#define BAD(name, status, want, ...) \
    static void mut_##name(cJSON *r) \
    {                                \
        (void)r;                     \
        __VA_ARGS__;                 \
    }                                \
    Test(model_bad, name) { expect_bad(mut_##name, NULL, NULL, status, want); }

BAD(bad_format, ERT_FORMAT, "format: 'exitrt-modle' is not", set_str(r, "format", "exitrt-modle"))
BAD(bad_version, ERT_UNSUPPORTED, "version: 2 is not supported", set_num(r, "version", 2))
BAD(missing_version, ERT_FORMAT, "version: missing", cJSON_DeleteItemFromObject(r, "version"))
BAD(unknown_layer_type, ERT_UNSUPPORTED, "backbone[2].type: unknown layer type 'conv3d'",
    set_str(BB(r, 2), "type", "conv3d"))
BAD(exit_after_unknown_layer, ERT_FORMAT,
    "exits[0].after: 'nolayer' is not a top-level backbone layer",
    set_str(EX(r), "after", "nolayer"))
BAD(exit_after_last_layer, ERT_FORMAT, "exits[0].after: 'flatten' is the end of the backbone",
    set_str(EX(r), "after", "flatten"))
BAD(exit_after_leading_dropout, ERT_FORMAT,
    "exits[0].after: 'd0' has no computing layer before it (a dropout is a no-op at inference): "
    "the exit would read the input",
    cJSON_InsertItemInArray(J(r, "backbone"), 0,
                            cJSON_Parse("{\"name\":\"d0\",\"type\":\"dropout\"}"));
    set_str(EX(r), "after", "d0"))
BAD(two_exits_one_layer, ERT_FORMAT,
    "exits[1].after: 'drop' gives the same output as exits[0]'s layer (a dropout is a no-op at "
    "inference); at most one exit per layer",
    /* relu1 and pool1 differ, but pool1 and drop give the same output */
    cJSON *e2 = cJSON_Duplicate(EX(r), 1);
    set_str(e2, "name", "e2"); set_str(e2, "after", "drop");
    cJSON_AddItemToArray(J(r, "exits"), e2))
BAD(exit_before_trailing_dropout, ERT_FORMAT,
    "exits[0].after: 'flatten' is the end of the backbone (only dropout follows it, a no-op at "
    "inference); the final head reads it",
    cJSON_AddItemToArray(J(r, "backbone"), cJSON_Parse("{\"name\":\"d9\",\"type\":\"dropout\"}"));
    set_str(EX(r), "after", "flatten"))
/* bn1 is folded into conv1: conv1's own output is never computed, and an
 * exit there would silently read the batch-normalised one */
BAD(exit_between_conv_and_batchnorm, ERT_FORMAT,
    "exits[0].after: 'conv1' is followed by batchnorm2d 'bn1', which is folded into it (the conv's "
    "output without it is never computed); attach the exit after 'bn1'",
    set_str(EX(r), "after", "conv1"))
BAD(exits_out_of_order, ERT_FORMAT, "exits must be in backbone order",
    cJSON *e2 = cJSON_Duplicate(EX(r), 1);
    set_str(e2, "name", "e2"); set_str(e2, "after", "relu1");
    cJSON_AddItemToArray(J(r, "exits"), e2))
BAD(duplicate_exit_name, ERT_FORMAT, "final.name: 'early' is already the name of exits[0]",
    set_str(J(r, "final"), "name", "early"))
BAD(duplicate_layer_name, ERT_FORMAT, "backbone[3].name: 'relu1' is already used by backbone[2]",
    set_str(BB(r, 3), "name", "relu1"))
BAD(head_not_ending_in_k, ERT_FORMAT,
    "exits[0].head: ends in 36x1x1 = 36 values, expected num_classes = 3",
    cJSON_DeleteItemFromArray(J(EX(r), "head"), 1))
BAD(head_wrong_out_features, ERT_FORMAT, "expected num_classes = 3",
    cJSON *fc = I(J(EX(r), "head"), 1);
    set_num(fc, "out_features", 2); set_str(fc, "weight", "x.w");
    cJSON_DeleteItemFromObject(fc, "bias"))
BAD(conv_weight_shape_mismatch, ERT_FORMAT,
    "backbone[0].weight: tensor 'c1.w' has shape [4, 2, 3, 3], expected [4, 3, 3, 3]",
    set_num(BB(r, 0), "in_channels", 3))
BAD(missing_tensor, ERT_FORMAT, "backbone[5].bias: tensor 'nope' not found in",
    set_str(BB(r, 5), "bias", "nope"))
BAD(entropy_threshold_negative, ERT_FORMAT,
    "exits[0].policy.threshold: -0.1 is out of range (>= 0)",
    set_num(J(EX(r), "policy"), "threshold", -0.1))
BAD(max_prob_threshold_above_one, ERT_FORMAT,
    "exits[0].policy.threshold: 1.5 is out of range ([0, 1])",
    set_str(J(EX(r), "policy"), "type", "max_prob");
    set_num(J(EX(r), "policy"), "threshold", 1.5))
BAD(threshold_nan_string, ERT_FORMAT, "exits[0].policy.threshold: must be a number",
    set_str(J(EX(r), "policy"), "threshold", "NaN"))
BAD(unknown_policy, ERT_UNSUPPORTED, "exits[0].policy.type: unknown policy 'oracle'",
    set_str(J(EX(r), "policy"), "type", "oracle"))
BAD(patience_threshold_zero, ERT_FORMAT,
    "exits[0].policy.threshold: 0 is out of range (an integer >= 1)",
    set_str(J(EX(r), "policy"), "type", "patience");
    set_num(J(EX(r), "policy"), "threshold", 0))
BAD(patience_threshold_fraction, ERT_FORMAT,
    "exits[0].policy.threshold: 1.5 is out of range (an integer >= 1)",
    set_str(J(EX(r), "policy"), "type", "patience");
    set_num(J(EX(r), "policy"), "threshold", 1.5))
BAD(patience_threshold_negative, ERT_FORMAT,
    "exits[0].policy.threshold: -2 is out of range (an integer >= 1)",
    set_str(J(EX(r), "policy"), "type", "patience");
    set_num(J(EX(r), "policy"), "threshold", -2))
BAD(patience_with_confidence, ERT_FORMAT,
    "exits[0].confidence: only allowed with the confidence_head",
    set_str(J(EX(r), "policy"), "type", "patience");
    set_num(J(EX(r), "policy"), "threshold", 2); put(EX(r), "confidence", cJSON_Parse("[]")))
BAD(confidence_without_confidence_policy, ERT_FORMAT,
    "exits[0].confidence: only allowed with the confidence_head",
    put(EX(r), "confidence", cJSON_Parse("[]")))
BAD(confidence_head_without_confidence, ERT_FORMAT,
    "exits[0].confidence: required for the confidence_head policy",
    set_str(J(EX(r), "policy"), "type", "confidence_head"))
BAD(confidence_not_ending_in_one, ERT_FORMAT, "exits[0].confidence: ends in 36 values, expected 1",
    set_str(J(EX(r), "policy"), "type", "confidence_head");
    put(EX(r), "confidence", cJSON_Parse("[{\"name\":\"f\",\"type\":\"flatten\"}]")))
BAD(batchnorm_after_relu, ERT_FORMAT, "backbone[2]: batchnorm2d must directly follow a conv2d",
    /* swap bn1 and relu1 (Debian's cJSON 1.7.15 refuses inserts inside an array) */
    cJSON *bn = cJSON_Duplicate(BB(r, 1), 1);
    cJSON *relu = cJSON_Duplicate(BB(r, 2), 1); cJSON_ReplaceItemInArray(J(r, "backbone"), 1, relu);
    cJSON_ReplaceItemInArray(J(r, "backbone"), 2, bn))
BAD(batchnorm_channel_mismatch, ERT_FORMAT,
    "backbone[1].num_features: 6 does not match the preceding conv2d's out_channels 4",
    set_num(BB(r, 1), "num_features", 6))
BAD(batchnorm_negative_variance, ERT_FORMAT, "backbone[1].running_var: [1] + eps is",
    set_str(BB(r, 1), "running_var", "neg.v"))
BAD(conv_channels_vs_input, ERT_FORMAT,
    "backbone layer 'conv1': in_channels is 2, but its input has 3 channels",
    cJSON *sh = J(J(r, "input"), "shape");
    cJSON_ReplaceItemInArray(sh, 0, cJSON_CreateNumber(3));
    put(J(r, "input"), "mean", cJSON_CreateNumber(0)))
BAD(linear_in_features_vs_input, ERT_FORMAT,
    "final.head layer 'fc': in_features is 18, but its input has 36 values",
    put(BB(r, 5), "stride", cJSON_CreateNumber(1)))
BAD(groups_do_not_divide, ERT_FORMAT, "backbone[5].groups: 3 does not divide",
    set_num(BB(r, 5), "groups", 3))
BAD(pool_window_too_large, ERT_FORMAT,
    "backbone layer 'pool1': the 7x7 window does not fit the 6x6 input",
    set_num(BB(r, 3), "kernel_size", 7))
BAD(pool_padding_over_half, ERT_FORMAT, "backbone[3].padding: must be at most half the kernel size",
    set_num(BB(r, 3), "padding", 2))
BAD(fractional_kernel, ERT_FORMAT, "backbone[0].kernel_size: must be an integer",
    set_num(BB(r, 0), "kernel_size", 2.5))
BAD(string_padding, ERT_FORMAT, "backbone[0].padding: 'same' is not supported",
    set_str(BB(r, 0), "padding", "same"))
BAD(bad_pair, ERT_FORMAT, "backbone[5].kernel_size: must be an integer or two integers",
    put(BB(r, 5), "kernel_size", cJSON_Parse("[3,2,1]")))
BAD(missing_in_features, ERT_FORMAT, "final.head[0].in_features: missing",
    cJSON_DeleteItemFromObject(I(J(J(r, "final"), "head"), 0), "in_features"))
BAD(layer_not_object, ERT_FORMAT, "backbone[2]: a layer must be an object",
    cJSON_ReplaceItemInArray(J(r, "backbone"), 2, cJSON_CreateNumber(5)))
BAD(nested_residual, ERT_UNSUPPORTED, "backbone[2].body[0]: residuals do not nest",
    cJSON_ReplaceItemInArray(
        J(r, "backbone"), 2,
        cJSON_Parse(
            "{\"name\":\"res\",\"type\":\"residual\",\"body\":[{\"name\":\"inner\",\"type\":\"residual\","
            "\"body\":[{\"name\":\"r\",\"type\":\"relu\"}]}]}")))
BAD(residual_shape_mismatch, ERT_FORMAT,
    "backbone layer 'res': the body gives 4x3x3 but the shortcut 4x6x6",
    cJSON_ReplaceItemInArray(
        J(r, "backbone"), 2,
        cJSON_Parse(
            "{\"name\":\"res\",\"type\":\"residual\",\"body\":[{\"name\":\"p\",\"type\":\"maxpool2d\","
            "\"kernel_size\":2}]}")))
BAD(input_too_many_channels, ERT_FORMAT, "input.shape[0]: must be an integer in [1, 4]",
    cJSON_ReplaceItemInArray(J(J(r, "input"), "shape"), 0, cJSON_CreateNumber(5)))
BAD(input_std_zero, ERT_FORMAT, "input.std[0]: must be > 0", set_num(J(r, "input"), "std", 0))
BAD(input_mean_wrong_count, ERT_FORMAT, "input.mean: has 3 values, expected 1 or 2",
    put(J(r, "input"), "mean", cJSON_Parse("[1,2,3]")))
BAD(absolute_sample_path, ERT_FORMAT, "sample_data: '/etc/passwd' is absolute",
    set_str(r, "sample_data", "/etc/passwd"))
BAD(missing_weights_file, ERT_IO, "cannot open", set_str(r, "weights", "none.safetensors"))
BAD(empty_backbone, ERT_FORMAT, "backbone: has no computing layer",
    put(r, "backbone", cJSON_Parse("[{\"name\":\"d\",\"type\":\"dropout\"}]"));
    cJSON_DeleteItemFromObject(r, "exits"))
BAD(too_many_exits, ERT_FORMAT, "exits: 16 early exits, at most 15",
    for (int i = 0; i < 15; i++) cJSON_AddItemToArray(J(r, "exits"), cJSON_Duplicate(EX(r), 1)))
BAD(num_classes_zero, ERT_FORMAT, "num_classes: 0 is out of range", set_num(r, "num_classes", 0))
BAD(padding_mode_reflect, ERT_UNSUPPORTED, "backbone[0].padding_mode: 'reflect' not supported",
    cJSON_AddStringToObject(BB(r, 0), "padding_mode", "reflect"))
BAD(ceil_mode, ERT_UNSUPPORTED, "backbone[3].ceil_mode: true not supported",
    cJSON_AddTrueToObject(BB(r, 3), "ceil_mode"))
BAD(final_missing, ERT_FORMAT, "final: missing or not an object",
    cJSON_DeleteItemFromObject(r, "final"))
BAD(bad_activation, ERT_FORMAT, "backbone[2].activation: 'gelu' is not",
    cJSON_ReplaceItemInArray(
        J(r, "backbone"), 2,
        cJSON_Parse(
            "{\"name\":\"res\",\"type\":\"residual\",\"activation\":\"gelu\",\"body\":[{\"name\":\"r\",\"type\":\"relu\"}]}")))

/* 1e999 parses as infinity: "threshold": NaN is not JSON, but a file can
 * still carry a non-finite number this way. */
Test(model_bad, threshold_infinite)
{
    expect_bad(NULL, "\"threshold\":0.5", "\"threshold\":1e999", ERT_FORMAT,
               "exits[0].policy.threshold: must be finite");
}

Test(model_bad, truncated_json)
{
    expect_bad(NULL, "\"final\":", "\"final\":{[", ERT_FORMAT, "invalid JSON at line 1");
}

Test(model_bad, f16_weights)
{
    write_weights(1);
    expect_bad(NULL, NULL, NULL, ERT_UNSUPPORTED,
               "backbone[0].weight: tensor 'c1.w': dtype F16 not supported (float32 required)");
}

Test(model_bad, weights_offsets_beyond_file)
{
    const char *h = "{\"c1.w\":{\"dtype\":\"F32\",\"shape\":[4,2,3,3],\"data_offsets\":[0,288]}}";
    cr_assert_eq(mw_write_st_raw(st_path, strlen(h), h, NULL, 100), 0);
    expect_bad(NULL, NULL, NULL, ERT_FORMAT,
               "data_offsets [0, 288] exceed the data section (100 bytes)");
}

Test(model_bad, weights_header_beyond_file)
{
    cr_assert_eq(mw_write_st_raw(st_path, 4096, "{}", NULL, 0), 0);
    expect_bad(NULL, NULL, NULL, ERT_FORMAT, "header length 4096 exceeds the file");
}

Test(model_bad, missing_model_json)
{
    ert_model *m = NULL;
    ert_error err = {{0}};
    cr_assert_eq(ert_model_load(dir, &m, &err), ERT_IO);
    cr_assert(strstr(err.msg, "model.json: cannot open"), "%s", err.msg);
}

/* ---- where an exit reads; one-class models ------------------------------------------ */

/* Writes the base model mutated by mut and loads it. */
static ert_model *load_mutated(void (*mut)(cJSON *))
{
    cJSON *r = cJSON_Parse(BASE_JSON);
    cr_assert_not_null(r);
    mut(r);
    char *text = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    cr_assert_not_null(text);
    cr_assert_eq(mw_write_text(json_path, text), 0);
    cJSON_free(text);
    return load_ok(dir);
}

static void after_drop(cJSON *r) { set_str(EX(r), "after", "drop"); }
static void after_bn1(cJSON *r)
{
    set_str(EX(r), "after", "bn1");
    /* [4,6,6] there: pool it to the head's 36 inputs */
    cJSON_InsertItemInArray(
        J(EX(r), "head"), 0,
        cJSON_Parse("{\"name\":\"p\",\"type\":\"maxpool2d\",\"kernel_size\":2}"));
}

/* A dropout is a no-op: an exit after it reads the layer before (pool1);
 * an exit after a batchnorm2d reads the conv it is folded into. */
Test(model, exit_after_dropout_or_batchnorm)
{
    ert_model *m = load_mutated(after_drop);
    cr_assert_eq(m->exits[0].after, 2);
    cr_assert_str_eq(m->backbone.items[2].name, "pool1");
    ert_model_free(m);
    m = load_mutated(after_bn1);
    cr_assert_eq(m->exits[0].after, 0);
    cr_assert_str_eq(m->backbone.items[0].name, "conv1");
    ert_model_free(m);
}

static const char *g_policy;

static void one_class(cJSON *r)
{
    set_num(r, "num_classes", 1);
    cJSON *fc = I(J(EX(r), "head"), 1);
    set_num(fc, "out_features", 1);
    set_str(fc, "weight", "conf.w");
    set_str(fc, "bias", "conf.b");
    cJSON *ff = I(J(J(r, "final"), "head"), 0);
    set_num(ff, "out_features", 1);
    set_str(ff, "weight", "one.w");
    cJSON_DeleteItemFromObject(ff, "bias");
    set_str(J(EX(r), "policy"), "type", g_policy);
    set_num(J(EX(r), "policy"), "threshold", 0.5);
}

/* num_classes 1 (models/FORMAT.md, "One class"): the loader takes it, and
 * every policy sees a certain head (entropy 0, max_prob and margin 1):
 * an exit takes every sample at any threshold but entropy's 0, class 0. */
Test(model, one_class_exits)
{
    static const struct {
        const char *policy;
        float threshold, score;
        int exits;
    } cases[] = {
        {"entropy", 0.5f, 0.0f, 1},  {"entropy", 1e-30f, 0.0f, 1}, {"entropy", 0.0f, 1.0f, 0},
        {"max_prob", 1.0f, 1.0f, 1}, {"max_prob", 0.0f, 1.0f, 1},  {"margin", 1.0f, 1.0f, 1},
        {"margin", 0.25f, 1.0f, 1},
    };
    enum {
        N = 6
    };
    float x[N * 72];
    mw_random_input(x, N * 72, 9);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        g_policy = cases[c].policy;
        ert_model *m = load_mutated(one_class);
        cr_assert_eq(ert_model_num_classes(m), 1);
        ert_engine *e = fx_cpu_engine(m, ERT_MODE_MASKED, N);
        cr_assert_eq(ert_engine_set_threshold(e, 0, cases[c].threshold), ERT_OK);
        ert_sample s[N];
        float z[N];
        ert_result res = {.samples = s, .logits = z};
        cr_assert_eq(ert_infer(e, x, N, &res), ERT_OK, "%s", ert_engine_error(e));
        for (int i = 0; i < N; i++) {
            cr_assert_eq(s[i].exit_index, cases[c].exits ? 0 : 1, "%s %g: sample %d exit %d",
                         cases[c].policy, (double)cases[c].threshold, i, s[i].exit_index);
            cr_assert_eq(s[i].predicted, 0);
            cr_assert_eq(s[i].score, cases[c].score, "%s %g: score %g", cases[c].policy,
                         (double)cases[c].threshold, (double)s[i].score);
            cr_assert(isfinite(z[i]));
        }
        ert_engine_free(e);
        ert_model_free(m);
    }
}

/* test_model.c - loading models: shapes, MACs, batch-norm folding, the
 * random test models, and malformed model files. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixtures.h"
#include "act.h"
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
    if (want_exits > 0)
        cr_assert_eq(m->num_exits, want_exits);
    else /* a ViT-like model: one exit per block, 2 or 3 blocks */
        cr_assert(m->num_exits == 3 || m->num_exits == 4, "%d exits", m->num_exits);
    enum {
        N = 600
    };
    size_t insz = ert_model_input_size(m);
    float *x = malloc(N * insz * sizeof *x), *logits = malloc(N * m->num_classes * sizeof *logits);
    ert_sample *s = malloc(N * sizeof *s);
    cr_assert(x && logits && s);
    mw_model_inputs(m, x, N, 555); /* not the calibration inputs */
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
Test(model, random_vit) { check_random_model(MW_VIT, 0); }
Test(model, random_bert) { check_random_model(MW_BERT, 4); }

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


/* ert_model_load(dir) fails with want_st, leaves the model NULL, and says
 * want (and want2 when given) and the file. */
static void expect_load_fails(ert_status want_st, const char *want, const char *want2)
{
    static ert_model sentinel;
    ert_model *m = &sentinel;
    ert_error err = {{0}};
    ert_status st = ert_model_load(dir, &m, &err);
    cr_assert_eq(st, want_st, "status %s, want %s: %s", ert_status_string(st),
                 ert_status_string(want_st), err.msg);
    cr_assert_null(m);
    cr_assert(strstr(err.msg, want), "message '%s' lacks '%s'", err.msg, want);
    if (want2)
        cr_assert(strstr(err.msg, want2), "message '%s' lacks '%s'", err.msg, want2);
    cr_assert(strstr(err.msg, dir), "message '%s' names no file", err.msg);
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
    expect_load_fails(want_st, want, NULL);
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

/* ---- paths that leave the model directory ------------------------------------------ *
 *
 * A model directory is untrusted input: the weights file model.json names
 * must lie inside it (FORMAT.md). Each refusal comes before anything is
 * opened, so the file outside is a valid weights file: only the rule
 * refuses it. */

/* The base model with `weights` set to w, loaded from dir. */
/* Loads the base model with model.json's field key (weights, sample_data,
 * sample_labels) set to w. */
static ert_status load_with_path(const char *key, const char *w, ert_error *err)
{
    cJSON *r = cJSON_Parse(BASE_JSON);
    cr_assert_not_null(r);
    set_str(r, key, w);
    char *text = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    cr_assert_not_null(text);
    cr_assert_eq(mw_write_text(json_path, text), 0);
    cJSON_free(text);
    ert_model *m = NULL;
    ert_status st = ert_model_load(dir, &m, err);
    cr_assert_eq(st == ERT_OK, m != NULL);
    ert_model_free(m);
    return st;
}

/* A second directory beside dir holding a copy of the weights. */
static void outside_copy(char *other, size_t len, char *copy, size_t clen)
{
    cr_assert_eq(mw_tempdir(other, len), 0);
    cr_assert_eq(mw_path(copy, clen, other, "w.safetensors"), 0);
    FILE *in = fopen(st_path, "rb"), *out = fopen(copy, "wb");
    cr_assert(in && out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        cr_assert_eq(fwrite(buf, 1, n, out), n);
    fclose(in);
    cr_assert_eq(fclose(out), 0);
}

static void expect_key_refused(const char *key, const char *w, ert_status want_st, const char *want)
{
    ert_error err = {{0}};
    ert_status st = load_with_path(key, w, &err);
    cr_assert_eq(st, want_st, "%s '%s': status %s, want %s: %s", key, w, ert_status_string(st),
                 ert_status_string(want_st), err.msg);
    cr_assert(strstr(err.msg, want), "message '%s' lacks '%s'", err.msg, want);
    char field[64];
    snprintf(field, sizeof field, "model.json: %s: '", key);
    cr_assert(strstr(err.msg, field), "message '%s' names no field", err.msg);
    cr_assert(strstr(err.msg, w), "message '%s' names no path", err.msg);
}

static void expect_refused(const char *w, ert_status want_st, const char *want)
{
    expect_key_refused("weights", w, want_st, want);
}

/* The sample files are held to the rule the weights are: the commands open
 * them, so a model must not name a file outside itself there either. */
Test(model_bad, sample_paths_outside)
{
    char other[64], copy[128], link[128], rel[256];
    outside_copy(other, sizeof other, copy, sizeof copy);
    snprintf(rel, sizeof rel, "../%s/w.safetensors", strrchr(other, '/') + 1);
    cr_assert_eq(mw_path(link, sizeof link, dir, "link.npy"), 0);
    cr_assert_eq(symlink(copy, link), 0);
    const char *keys[] = {"sample_data", "sample_labels"};
    for (int k = 0; k < 2; k++) {
        expect_key_refused(keys[k], rel, ERT_FORMAT, "has a '..' component");
        expect_key_refused(keys[k], "../../../../etc/passwd", ERT_FORMAT, "has a '..' component");
        expect_key_refused(keys[k], "/etc/passwd", ERT_FORMAT, "is absolute");
        expect_key_refused(keys[k], "link.npy", ERT_FORMAT, "outside the model directory");
    }
    unlink(link);
    mw_rmtree(other);
}

Test(model_bad, weights_dotdot)
{
    char other[64], copy[128], rel[256];
    outside_copy(other, sizeof other, copy, sizeof copy);
    /* dir and other are both under the temporary directory */
    snprintf(rel, sizeof rel, "../%s/w.safetensors", strrchr(other, '/') + 1);
    expect_refused(rel, ERT_FORMAT, "has a '..' component");
    expect_refused("../../../../etc/passwd", ERT_FORMAT, "has a '..' component");
    /* a ".." that would come back inside is refused all the same */
    expect_refused("sub/../w.safetensors", ERT_FORMAT, "has a '..' component");
    expect_refused("./..", ERT_FORMAT, "has a '..' component");
    mw_rmtree(other);
}

Test(model_bad, weights_absolute)
{
    expect_refused("/etc/passwd", ERT_FORMAT, "is absolute");
    /* even when it names the model's own weights file */
    expect_refused(st_path, ERT_FORMAT, "is absolute");
}

Test(model_bad, weights_symlink_outside)
{
    char other[64], copy[128], link[128], sub[128];
    outside_copy(other, sizeof other, copy, sizeof copy);
    /* a file symlink, then a directory symlink, leading out */
    cr_assert_eq(mw_path(link, sizeof link, dir, "link.safetensors"), 0);
    cr_assert_eq(symlink(copy, link), 0);
    expect_refused("link.safetensors", ERT_FORMAT, "outside the model directory");
    cr_assert_eq(mw_path(sub, sizeof sub, dir, "sub"), 0);
    cr_assert_eq(symlink(other, sub), 0);
    expect_refused("sub/w.safetensors", ERT_FORMAT, "outside the model directory");
    /* a relative symlink climbing out */
    cr_assert_eq(mw_path(link, sizeof link, dir, "up.safetensors"), 0);
    char target[256];
    snprintf(target, sizeof target, "../%s/w.safetensors", strrchr(other, '/') + 1);
    cr_assert_eq(symlink(target, link), 0);
    expect_refused("up.safetensors", ERT_FORMAT, "outside the model directory");
    mw_rmtree(other);
}

/* Symlinks that stay inside are followed; the directory itself may be
 * reached through a symlink, or named by a path with ".." in it (the rule
 * is about the paths model.json names, not the one given to the loader). */
Test(model, weights_symlink_inside)
{
    char link[128], sub[128], target[128];
    ert_error err = {{0}};
    cr_assert_eq(mw_path(link, sizeof link, dir, "alias.safetensors"), 0);
    cr_assert_eq(symlink("w.safetensors", link), 0);
    cr_assert_eq(load_with_path("weights", "alias.safetensors", &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(mw_path(link, sizeof link, dir, "abs.safetensors"), 0);
    cr_assert_eq(symlink(st_path, link), 0); /* absolute, but inside */
    cr_assert_eq(load_with_path("weights", "abs.safetensors", &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(mw_path(sub, sizeof sub, dir, "sub"), 0);
    cr_assert_eq(mkdir(sub, 0700), 0);
    cr_assert_eq(mw_path(target, sizeof target, sub, "w.safetensors"), 0);
    cr_assert_eq(rename(st_path, target), 0);
    cr_assert_eq(load_with_path("weights", "sub/w.safetensors", &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(load_with_path("weights", "./sub/./w.safetensors", &err), ERT_OK, "%s", err.msg);

    /* the model directory through a symlink, and through ".." */
    char other[64], dlink[128], via[256];
    cr_assert_eq(mw_tempdir(other, sizeof other), 0);
    cr_assert_eq(mw_path(dlink, sizeof dlink, other, "model"), 0);
    cr_assert_eq(symlink(dir, dlink), 0);
    ert_model *m = NULL;
    cr_assert_eq(ert_model_load(dlink, &m, &err), ERT_OK, "%s", err.msg);
    ert_model_free(m);
    snprintf(via, sizeof via, "%s/../%s", dir, strrchr(dir, '/') + 1);
    cr_assert_eq(ert_model_load(via, &m, &err), ERT_OK, "%s", err.msg);
    ert_model_free(m);
    mw_rmtree(other);
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
        ert_result res = {.struct_size = sizeof(ert_result), .samples = s, .logits = z};
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

/* ---- transformer encoders (models/FORMAT.md, "Transformer encoders") ----------------- *
 *
 * A token model: input {"tokens": 6}, vocabulary 10, D = 8.
 *   embed  token_embed (position, segment)        tokens [6, 9, 1]
 *   ln     layer_norm 8
 *   attn   self_attention, 2 heads
 *   block  encoder_block post-LN gelu, 4 heads, F 16; no attention biases, norm1
 *          without weight and bias
 * Exit "early" after attn: [token_pool mean, gelu, linear 8->3]. Final: BERT's
 * pooler and a classifier, [token_pool first, linear 8->8, tanh, linear 8->3].
 */
static const char *TX_JSON =
    "{\"format\":\"exitrt-model\",\"version\":1,\"name\":\"tx\",\"weights\":\"w.safetensors\","
    "\"input\":{\"tokens\":6},\"num_classes\":3,"
    "\"backbone\":["
    "{\"name\":\"embed\",\"type\":\"token_embed\",\"vocab_size\":10,\"embed_dim\":8,"
    "\"weight\":\"te.w\",\"position\":\"te.p\",\"segment\":\"te.s\"},"
    "{\"name\":\"ln\",\"type\":\"layer_norm\",\"normalized_shape\":8,\"eps\":1e-5,"
    "\"weight\":\"ln.w\",\"bias\":\"ln.b\"},"
    "{\"name\":\"attn\",\"type\":\"self_attention\",\"embed_dim\":8,\"num_heads\":2,"
    "\"in_weight\":\"a.iw\",\"in_bias\":\"a.ib\",\"out_weight\":\"a.ow\",\"out_bias\":\"a.ob\"},"
    "{\"name\":\"block\",\"type\":\"encoder_block\",\"norm_first\":false,\"activation\":\"gelu\","
    "\"attention\":{\"embed_dim\":8,\"num_heads\":4,\"in_weight\":\"a.iw\",\"out_weight\":\"a.ow\"},"
    "\"norm1\":{\"normalized_shape\":8},"
    "\"linear1\":{\"in_features\":8,\"out_features\":16,\"weight\":\"l1.w\",\"bias\":\"l1.b\"},"
    "\"linear2\":{\"in_features\":16,\"out_features\":8,\"weight\":\"l2.w\",\"bias\":\"l2.b\"},"
    "\"norm2\":{\"normalized_shape\":8,\"eps\":1e-6,\"weight\":\"ln.w\",\"bias\":\"ln.b\"}}],"
    "\"exits\":[{\"name\":\"early\",\"after\":\"attn\",\"head\":["
    "{\"name\":\"pool\",\"type\":\"token_pool\",\"mode\":\"mean\"},"
    "{\"name\":\"act\",\"type\":\"gelu\"},"
    "{\"name\":\"fc\",\"type\":\"linear\",\"in_features\":8,\"out_features\":3,\"weight\":\"h.w\","
    "\"bias\":\"h.b\"}],\"policy\":{\"type\":\"entropy\",\"threshold\":0.5}}],"
    "\"final\":{\"name\":\"final\",\"head\":["
    "{\"name\":\"pool\",\"type\":\"token_pool\",\"mode\":\"first\"},"
    "{\"name\":\"pooler\",\"type\":\"linear\",\"in_features\":8,\"out_features\":8,"
    "\"weight\":\"p.w\",\"bias\":\"ln.b\"},"
    "{\"name\":\"tanh\",\"type\":\"tanh\"},"
    "{\"name\":\"fc\",\"type\":\"linear\",\"in_features\":8,\"out_features\":3,\"weight\":\"h.w\","
    "\"bias\":\"h.b\"}]}}";

/* An image model of patches: input [3, 8, 8], patch_embed 4x4 to D = 8 with
 * class token and position (T = 5), a pre-LN relu block (2 heads, F 16), a
 * layer_norm. Exit "early" after the block: [token_pool first, layer_norm,
 * linear 8->3]. Final: [token_pool mean, linear 8->3]. */
static const char *VIT_JSON =
    "{\"format\":\"exitrt-model\",\"version\":1,\"name\":\"vit\",\"weights\":\"w.safetensors\","
    "\"input\":{\"shape\":[3,8,8],\"scale\":1,\"mean\":0.5,\"std\":0.25},\"num_classes\":3,"
    "\"backbone\":["
    "{\"name\":\"patch\",\"type\":\"patch_embed\",\"in_channels\":3,\"embed_dim\":8,"
    "\"patch_size\":4,\"weight\":\"pe.w\",\"bias\":\"pe.b\",\"class_token\":\"pe.c\","
    "\"position\":\"pe.p\"},"
    "{\"name\":\"block\",\"type\":\"encoder_block\",\"norm_first\":true,\"activation\":\"relu\","
    "\"attention\":{\"embed_dim\":8,\"num_heads\":2,\"in_weight\":\"a.iw\",\"in_bias\":\"a.ib\","
    "\"out_weight\":\"a.ow\",\"out_bias\":\"a.ob\"},"
    "\"norm1\":{\"normalized_shape\":8,\"weight\":\"ln.w\",\"bias\":\"ln.b\"},"
    "\"linear1\":{\"in_features\":8,\"out_features\":16,\"weight\":\"l1.w\",\"bias\":\"l1.b\"},"
    "\"linear2\":{\"in_features\":16,\"out_features\":8,\"weight\":\"l2.w\",\"bias\":\"l2.b\"},"
    "\"norm2\":{\"normalized_shape\":8,\"weight\":\"ln.w\",\"bias\":\"ln.b\"}},"
    "{\"name\":\"ln\",\"type\":\"layer_norm\",\"normalized_shape\":8}],"
    "\"exits\":[{\"name\":\"early\",\"after\":\"block\",\"head\":["
    "{\"name\":\"pool\",\"type\":\"token_pool\",\"mode\":\"first\"},"
    "{\"name\":\"ln\",\"type\":\"layer_norm\",\"normalized_shape\":8,\"weight\":\"ln.w\","
    "\"bias\":\"ln.b\"},"
    "{\"name\":\"fc\",\"type\":\"linear\",\"in_features\":8,\"out_features\":3,\"weight\":\"h.w\","
    "\"bias\":\"h.b\"}],\"policy\":{\"type\":\"max_prob\",\"threshold\":0.5}}],"
    "\"final\":{\"name\":\"final\",\"head\":["
    "{\"name\":\"pool\",\"type\":\"token_pool\",\"mode\":\"mean\"},"
    "{\"name\":\"fc\",\"type\":\"linear\",\"in_features\":8,\"out_features\":3,\"weight\":\"h.w\","
    "\"bias\":\"h.b\"}]}}";

/* The weights both name (and a few of other shapes, for the refusals). */
static void write_tx_weights(void)
{
    mw_rng r = mw_rng_seed(11);
    mw_st *st = mw_st_new();
    cr_assert_not_null(st);
    static const struct {
        const char *name;
        int ndim;
        int64_t shape[4];
    } t[] = {
        {"te.w", 2, {10, 8}},
        {"te.p", 2, {6, 8}},
        {"te.s", 1, {8}},
        {"ln.w", 1, {8}},
        {"ln.b", 1, {8}},
        {"a.iw", 2, {24, 8}},
        {"a.ib", 1, {24}},
        {"a.ow", 2, {8, 8}},
        {"a.ob", 1, {8}},
        {"l1.w", 2, {16, 8}},
        {"l1.b", 1, {16}},
        {"l2.w", 2, {8, 16}},
        {"l2.b", 1, {8}},
        {"h.w", 2, {3, 8}},
        {"h.b", 1, {3}},
        {"p.w", 2, {8, 8}},
        {"pe.w", 4, {8, 3, 4, 4}},
        {"pe.b", 1, {8}},
        {"pe.c", 1, {8}},
        {"pe.p", 2, {5, 8}},
        {"pe.p4", 2, {4, 8}},
        {"v6", 1, {6}},
        {"m6x8", 2, {6, 8}},
        {"m7x8", 2, {7, 8}},
        {"pe.w42", 4, {8, 3, 4, 2}},
        {"pe.w2", 4, {8, 2, 4, 4}},
        {"c.w", 4, {8, 2, 1, 1}},
        {"a.iw4", 2, {12, 4}},
        {"a.ib4", 1, {12}},
        {"a.ow4", 2, {4, 4}},
        {"a.ob4", 1, {4}},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        size_t n = 1;
        for (int d = 0; d < t[i].ndim; d++)
            n *= (size_t)t[i].shape[d];
        float *v = malloc(sizeof(float) * n);
        cr_assert_not_null(v);
        for (size_t k = 0; k < n; k++)
            v[k] = mw_rng_normal(&r) * 0.5f;
        rc |= mw_st_add(st, t[i].name, t[i].ndim, t[i].shape, v);
        free(v);
    }
    rc |= mw_st_write(st, st_path);
    mw_st_free(st);
    cr_assert_eq(rc, 0);
}

/* base (TX_JSON or VIT_JSON) mutated by mut (NULL: as it is) into the model
 * directory, with the transformer weights. */
static void write_tx(const char *base, void (*mut)(cJSON *))
{
    write_tx_weights();
    cJSON *r = cJSON_Parse(base);
    cr_assert_not_null(r, "the base model does not parse");
    if (mut)
        mut(r);
    char *text = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    cr_assert_not_null(text);
    cr_assert_eq(mw_write_text(json_path, text), 0);
    cJSON_free(text);
}

static void expect_tokens(shape3 s, int T, int D)
{
    cr_assert(s.tokens == 1 && s.c == T && s.h == D + 1 && s.w == 1,
              "shape %dx%dx%d tokens %d, want tokens [%d, %d + 1, 1]", s.c, s.h, s.w, s.tokens, T,
              D);
}

static void expect_vector(shape3 s, int D)
{
    cr_assert(s.tokens == 0 && s.c == D && s.h == 1 && s.w == 1,
              "shape %dx%dx%d tokens %d, want a vector [%d, 1, 1]", s.c, s.h, s.w, s.tokens, D);
}

static int all_equal(const float *v, int n, float x)
{
    for (int i = 0; i < n; i++)
        if (v[i] != x)
            return 0;
    return 1;
}

Test(model, tokens_shapes_and_macs)
{
    write_tx(TX_JSON, NULL);
    ert_model *m = load_ok(dir);
    const int T = 6, D = 8, F = 16;
    cr_assert_eq(m->input_tokens, T);
    cr_assert_eq(m->vocab, 10);
    cr_assert_eq(ert_model_input_tokens(m), T);
    cr_assert_eq(ert_model_vocab_size(m), 10);
    cr_assert_eq(ert_model_input_size(m), (size_t)2 * T);
    int c, h, w;
    ert_model_input_shape(m, &c, &h, &w);
    cr_assert(c == 2 && h == T && w == 1, "input shape %dx%dx%d", c, h, w);
    cr_assert_eq(m->backbone.count, 4);
    static const layer_kind kinds[] = {LAYER_TOKEN_EMBED, LAYER_LAYER_NORM, LAYER_SELF_ATTENTION,
                                       LAYER_ENCODER_BLOCK};
    for (int i = 0; i < 4; i++) {
        const layer *l = &m->backbone.items[i];
        cr_assert_eq(l->kind, kinds[i], "backbone[%d]: kind %d", i, l->kind);
        expect_tokens(l->out, T, D);
        if (i > 0)
            expect_tokens(l->in, T, D);
    }
    cr_assert_eq(m->backbone.items[0].in.tokens, SHAPE_IDS); /* the ids, not tokens */
    cr_assert_eq(shape_size(m->backbone.items[0].in), (size_t)2 * T);
    /* MACs: token_embed and layer_norm 0; attention T*4D^2 + 2*T^2*D; the
       block its attention + 2*T*D*F */
    const uint64_t attn = (uint64_t)T * 4 * D * D + 2ull * T * T * D;
    cr_assert_eq(m->backbone.items[0].macs, 0);
    cr_assert_eq(m->backbone.items[1].macs, 0);
    cr_assert_eq(m->backbone.items[2].macs, attn);
    cr_assert_eq(m->backbone.items[3].macs, attn + 2ull * T * D * F);
    cr_assert_eq(m->backbone_macs, 2 * attn + 2ull * T * D * F);
    /* the heads: token_pool, gelu and tanh 0, the linears as ever */
    cr_assert_eq(m->num_exits, 2);
    cr_assert_eq(m->exits[0].after, 2);
    cr_assert_eq(m->exits[0].head.count, 3);
    expect_vector(m->exits[0].head.items[0].out, D);
    cr_assert_eq(m->exits[0].head.items[0].p.token_pool, TOKEN_POOL_MEAN);
    cr_assert_eq(m->exits[0].head.items[1].kind, LAYER_GELU);
    cr_assert_eq(m->exits[0].head_macs, (uint64_t)D * 3);
    cr_assert_eq(m->exits[1].head.items[0].p.token_pool, TOKEN_POOL_FIRST);
    cr_assert_eq(m->exits[1].head.items[2].kind, LAYER_TANH);
    cr_assert_eq(m->exits[1].head_macs, (uint64_t)D * D + D * 3);
    cr_assert_eq(m->macs_full, m->backbone_macs + m->exits[1].head_macs);
    cr_assert_eq(ert_model_macs_full(m), m->macs_full);

    /* parameters, and the defaults of what the file leaves out */
    const embed_params *e = &m->backbone.items[0].p.embed;
    cr_assert(e->vocab == 10 && e->dim == D && e->weight && e->pos && e->segment);
    const norm_params *n = &m->backbone.items[1].p.norm;
    cr_assert(n->dim == D && fabsf(n->eps - 1e-5f) < 1e-12f && n->weight && n->bias);
    const attention_params *a = &m->backbone.items[2].p.attn;
    cr_assert(a->dim == D && a->heads == 2 && a->in_weight && a->in_bias && a->out_weight &&
              a->out_bias);
    const encoder_params *b = &m->backbone.items[3].p.enc;
    cr_assert_eq(b->norm_first, 0);
    cr_assert_eq(b->act, ERT_ACT_GELU);
    cr_assert_eq(b->attn.heads, 4);
    cr_assert(b->attn.in_bias && all_equal(b->attn.in_bias, 3 * D, 0.0f), "missing in_bias: zeros");
    cr_assert(b->attn.out_bias && all_equal(b->attn.out_bias, D, 0.0f), "missing out_bias: zeros");
    cr_assert(b->norm1.weight && all_equal(b->norm1.weight, D, 1.0f), "norm1 weight: ones");
    cr_assert(b->norm1.bias && all_equal(b->norm1.bias, D, 0.0f), "norm1 bias: zeros");
    cr_assert(fabsf(b->norm1.eps - 1e-5f) < 1e-12f, "the default eps is 1e-5: %g", b->norm1.eps);
    cr_assert(fabsf(b->norm2.eps - 1e-6f) < 1e-13f);
    cr_assert(b->ff1.in_features == D && b->ff1.out_features == F && b->ff2.in_features == F &&
              b->ff2.out_features == D && b->ff1.bias && b->ff2.bias);
    ert_model_free(m);
}

Test(model, patches_shapes_and_macs)
{
    write_tx(VIT_JSON, NULL);
    ert_model *m = load_ok(dir);
    const int T = 5, D = 8, F = 16;
    cr_assert_eq(m->input_tokens, 0);
    cr_assert_eq(ert_model_input_tokens(m), 0);
    cr_assert_eq(ert_model_vocab_size(m), 0);
    cr_assert_eq(ert_model_input_size(m), (size_t)3 * 8 * 8);
    const layer *p = &m->backbone.items[0];
    cr_assert_eq(p->kind, LAYER_PATCH_EMBED);
    expect_tokens(p->out, T, D);
    cr_assert(p->p.patch.cls && p->p.patch.pos && p->p.patch.conv.bias);
    cr_assert(p->p.patch.conv.kh == 4 && p->p.patch.conv.kw == 4 && p->p.patch.conv.stride_h == 4 &&
              p->p.patch.conv.stride_w == 4 && p->p.patch.conv.pad_h == 0 &&
              p->p.patch.conv.pad_w == 0);
    /* as its convolution: D * 2 * 2 outputs of C * 4 * 4 */
    cr_assert_eq(p->macs, (uint64_t)D * 4 * 3 * 16);
    const layer *b = &m->backbone.items[1];
    cr_assert_eq(b->p.enc.norm_first, 1);
    cr_assert_eq(b->p.enc.act, ERT_ACT_RELU);
    cr_assert_eq(b->macs, (uint64_t)T * 4 * D * D + 2ull * T * T * D + 2ull * T * D * F);
    expect_tokens(m->backbone.items[2].out, T, D);
    expect_vector(m->exits[0].head.items[1].out, D); /* layer_norm on the pooled vector */
    cr_assert_eq(m->exits[0].head_macs, (uint64_t)D * 3);
    ert_model_free(m);
}

static void no_class_token(cJSON *r)
{
    cJSON_DeleteItemFromObject(BB(r, 0), "class_token");
    set_str(BB(r, 0), "position", "pe.p4");
}

static void no_position_rect(cJSON *r)
{
    cJSON_DeleteItemFromObject(BB(r, 0), "position");
    put(BB(r, 0), "patch_size", cJSON_Parse("[4,2]"));
    set_str(BB(r, 0), "weight", "pe.w42");
}

Test(model, patches_without_class_token_or_position)
{
    write_tx(VIT_JSON, no_class_token);
    ert_model *m = load_ok(dir);
    expect_tokens(m->backbone.items[0].out, 4, 8);
    cr_assert_null(m->backbone.items[0].p.patch.cls);
    expect_tokens(m->exits[0].head.items[0].in, 4, 8);
    ert_model_free(m);
    /* patches of 4x2 over 8x8: 2 * 4 and the class token */
    write_tx(VIT_JSON, no_position_rect);
    m = load_ok(dir);
    expect_tokens(m->backbone.items[0].out, 9, 8);
    cr_assert_null(m->backbone.items[0].p.patch.pos);
    cr_assert(m->backbone.items[0].p.patch.cls);
    cr_assert_eq(m->backbone.items[0].macs, (uint64_t)8 * 8 * 3 * 8);
    ert_model_free(m);
}

/* ---- refusals: each names the layer (or field) and the problem ---- */

/* base mutated by mut must be refused with status want_st and a message
 * holding want and also (when given) want2, and naming the file. */
static void expect_tx_bad(const char *base, void (*mut)(cJSON *), ert_status want_st,
                          const char *want, const char *want2)
{
    write_tx(base, mut);
    expect_load_fails(want_st, want, want2);
}

#define TX_BAD(name, base, status, want, want2, ...) \
    static void txmut_##name(cJSON *r)               \
    {                                                \
        (void)r;                                     \
        __VA_ARGS__;                                 \
    }                                                \
    Test(model_bad, name) { expect_tx_bad(base, txmut_##name, status, want, want2); }

static cJSON *layer_json(const char *text)
{
    cJSON *o = cJSON_Parse(text);
    cr_assert_not_null(o, "%s", text);
    return o;
}

/* layers that do not take tokens */
TX_BAD(
    linear_on_tokens, TX_JSON, ERT_FORMAT, "'lin'", "token",
    cJSON_ReplaceItemInArray(J(r, "backbone"), 1,
                             layer_json("{\"name\":\"lin\",\"type\":\"linear\",\"in_features\":8,"
                                        "\"out_features\":8,\"weight\":\"p.w\"}")))
TX_BAD(relu_on_tokens, TX_JSON, ERT_FORMAT, "'r'", "token",
       cJSON_ReplaceItemInArray(J(r, "backbone"), 1,
                                layer_json("{\"name\":\"r\",\"type\":\"relu\"}")))
TX_BAD(gelu_on_tokens, TX_JSON, ERT_FORMAT, "'g'", "token",
       cJSON_ReplaceItemInArray(J(r, "backbone"), 1,
                                layer_json("{\"name\":\"g\",\"type\":\"gelu\"}")))
TX_BAD(flatten_on_tokens, TX_JSON, ERT_FORMAT, "'flat'", "token",
       cJSON_ReplaceItemInArray(J(J(r, "final"), "head"), 0,
                                layer_json("{\"name\":\"flat\",\"type\":\"flatten\"}")))
TX_BAD(tokens_into_a_head_linear, TX_JSON, ERT_FORMAT, "'fc'", "token",
       cJSON_DeleteItemFromArray(J(EX(r), "head"), 0);
       cJSON_DeleteItemFromArray(J(EX(r), "head"), 0))
/* token layers that take nothing else */
TX_BAD(token_pool_on_a_vector, TX_JSON, ERT_FORMAT, "'pool2'", "token",
       cJSON_ReplaceItemInArray(J(EX(r), "head"), 1,
                                layer_json("{\"name\":\"pool2\",\"type\":\"token_pool\","
                                           "\"mode\":\"first\"}")))
TX_BAD(attention_on_a_vector, TX_JSON, ERT_FORMAT, "'sa'", "token",
       cJSON *sa = cJSON_Duplicate(BB(r, 2), 1);
       set_str(sa, "name", "sa"); cJSON_ReplaceItemInArray(J(EX(r), "head"), 1, sa))
TX_BAD(token_embed_not_first, TX_JSON, ERT_FORMAT, "'embed2'", "token",
       cJSON *e2 = cJSON_Duplicate(BB(r, 0), 1);
       set_str(e2, "name", "embed2"); cJSON_ReplaceItemInArray(J(r, "backbone"), 1, e2))
TX_BAD(
    token_embed_on_an_image, VIT_JSON, ERT_FORMAT, "'embed'", "token",
    cJSON_ReplaceItemInArray(J(r, "backbone"), 0,
                             layer_json("{\"name\":\"embed\",\"type\":\"token_embed\","
                                        "\"vocab_size\":10,\"embed_dim\":8,\"weight\":\"te.w\"}")))
TX_BAD(conv_on_token_ids, TX_JSON, ERT_FORMAT, "'conv'", "token",
       cJSON_ReplaceItemInArray(
           J(r, "backbone"), 0,
           layer_json("{\"name\":\"conv\",\"type\":\"conv2d\",\"in_channels\":2,"
                      "\"out_channels\":8,\"kernel_size\":1,\"weight\":\"c.w\"}")))
TX_BAD(linear_on_token_ids, TX_JSON, ERT_FORMAT, "'lin'", "token",
       cJSON_ReplaceItemInArray(J(r, "backbone"), 0,
                                layer_json("{\"name\":\"lin\",\"type\":\"flatten\"}")))
TX_BAD(patch_embed_on_token_ids, TX_JSON, ERT_FORMAT, "'patch'", "reads an image",
       cJSON_ReplaceItemInArray(J(r, "backbone"), 0,
                                layer_json("{\"name\":\"patch\",\"type\":\"patch_embed\","
                                           "\"in_channels\":2,\"embed_dim\":8,\"patch_size\":1,"
                                           "\"weight\":\"c.w\"}")))
/* sizes that do not agree */
TX_BAD(layer_norm_dim_mismatch, TX_JSON, ERT_FORMAT, "'ln'", "6",
       set_num(BB(r, 1), "normalized_shape", 6);
       cJSON_DeleteItemFromObject(BB(r, 1), "weight"); cJSON_DeleteItemFromObject(BB(r, 1), "bias"))
TX_BAD(layer_norm_weight_without_bias, TX_JSON, ERT_FORMAT, "bias", NULL,
       cJSON_DeleteItemFromObject(BB(r, 1), "bias"))
TX_BAD(heads_do_not_divide, TX_JSON, ERT_FORMAT, "num_heads", "3",
       set_num(BB(r, 2), "num_heads", 3))
TX_BAD(heads_zero, TX_JSON, ERT_FORMAT, "num_heads", NULL, set_num(BB(r, 2), "num_heads", 0))
TX_BAD(block_heads_do_not_divide, TX_JSON, ERT_FORMAT, "num_heads", "5",
       set_num(J(BB(r, 3), "attention"), "num_heads", 5))
TX_BAD(attention_dim_vs_input, TX_JSON, ERT_FORMAT, "'attn'", "embed_dim is 4",
       set_num(BB(r, 2), "embed_dim", 4);
       set_str(BB(r, 2), "in_weight", "a.iw4"); set_str(BB(r, 2), "in_bias", "a.ib4");
       set_str(BB(r, 2), "out_weight", "a.ow4"); set_str(BB(r, 2), "out_bias", "a.ob4"))
TX_BAD(block_linear1_in_features, TX_JSON, ERT_FORMAT, "linear1", NULL,
       set_num(J(BB(r, 3), "linear1"), "in_features", 6))
TX_BAD(block_linear2_out_features, TX_JSON, ERT_FORMAT, "linear2", NULL,
       set_num(J(BB(r, 3), "linear2"), "out_features", 6))
TX_BAD(block_bad_activation, TX_JSON, ERT_FORMAT, "activation", "tanh",
       set_str(BB(r, 3), "activation", "tanh"))
TX_BAD(block_missing_norm2, TX_JSON, ERT_FORMAT, "norm2", NULL,
       cJSON_DeleteItemFromObject(BB(r, 3), "norm2"))
TX_BAD(token_pool_bad_mode, TX_JSON, ERT_FORMAT, "mode", "max",
       set_str(I(J(EX(r), "head"), 0), "mode", "max"))
TX_BAD(patch_in_channels_vs_input, VIT_JSON, ERT_FORMAT, "'patch'", NULL,
       set_num(BB(r, 0), "in_channels", 2);
       set_str(BB(r, 0), "weight", "pe.w2"))
/* tensors of the wrong shape */
TX_BAD(embed_weight_shape, TX_JSON, ERT_FORMAT, "weight", NULL, set_str(BB(r, 0), "weight", "m6x8"))
TX_BAD(embed_position_shape, TX_JSON, ERT_FORMAT, "position", NULL,
       set_str(BB(r, 0), "position", "m7x8"))
TX_BAD(embed_segment_shape, TX_JSON, ERT_FORMAT, "segment", NULL,
       set_str(BB(r, 0), "segment", "v6"))
TX_BAD(attention_in_weight_shape, TX_JSON, ERT_FORMAT, "in_weight", NULL,
       set_str(BB(r, 2), "in_weight", "a.ow"))
TX_BAD(attention_out_bias_shape, TX_JSON, ERT_FORMAT, "out_bias", NULL,
       set_str(BB(r, 2), "out_bias", "a.ib"))
TX_BAD(block_linear1_weight_shape, TX_JSON, ERT_FORMAT, "linear1", "weight",
       set_str(J(BB(r, 3), "linear1"), "weight", "l2.w"))
TX_BAD(layer_norm_weight_shape, TX_JSON, ERT_FORMAT, "weight", NULL,
       set_str(BB(r, 1), "weight", "v6"))
TX_BAD(patch_position_shape, VIT_JSON, ERT_FORMAT, "position", NULL,
       set_str(BB(r, 0), "position", "pe.p4"))
TX_BAD(patch_class_token_shape, VIT_JSON, ERT_FORMAT, "class_token", NULL,
       set_str(BB(r, 0), "class_token", "v6"))
TX_BAD(patch_weight_shape, VIT_JSON, ERT_FORMAT, "weight", NULL, set_num(BB(r, 0), "patch_size", 2))
/* the token input */
TX_BAD(tokens_with_shape, TX_JSON, ERT_FORMAT, "input", "shape",
       put(J(r, "input"), "shape", cJSON_Parse("[2,6,1]")))
TX_BAD(tokens_with_scale, TX_JSON, ERT_FORMAT, "input", "scale", set_num(J(r, "input"), "scale", 1))
TX_BAD(tokens_with_mean, TX_JSON, ERT_FORMAT, "input", "mean", set_num(J(r, "input"), "mean", 0))
TX_BAD(tokens_with_std, TX_JSON, ERT_FORMAT, "input", "std", set_num(J(r, "input"), "std", 1))
TX_BAD(tokens_zero, TX_JSON, ERT_FORMAT, "input.tokens", NULL, set_num(J(r, "input"), "tokens", 0))
TX_BAD(tokens_too_many, TX_JSON, ERT_FORMAT, "input.tokens", NULL,
       set_num(J(r, "input"), "tokens", 65537))
TX_BAD(tokens_fractional, TX_JSON, ERT_FORMAT, "input.tokens", NULL,
       set_num(J(r, "input"), "tokens", 2.5))
TX_BAD(vocab_zero, TX_JSON, ERT_FORMAT, "vocab_size", NULL, set_num(BB(r, 0), "vocab_size", 0))
TX_BAD(vocab_too_large, TX_JSON, ERT_FORMAT, "vocab_size", NULL,
       set_num(BB(r, 0), "vocab_size", 16777217))

/* ---- the token API: ert_pack_tokens, ert_infer_tokens ---- */

Test(model, pack_tokens)
{
    write_tx(TX_JSON, NULL);
    ert_model *m = load_ok(dir);
    const int T = 6, n = 3;
    int32_t ids[18], mask[18];
    for (int i = 0; i < n * T; i++) {
        ids[i] = (i * 7) % 10;
        mask[i] = i % 5 == 4 ? 0 : i % 3 == 1 ? 7 : 1; /* any nonzero value attends */
    }
    float rows[36];
    ert_error err = {{0}};
    cr_assert_eq(ert_pack_tokens(m, ids, mask, n, rows, &err), ERT_OK, "%s", err.msg);
    for (int b = 0; b < n; b++)
        for (int t = 0; t < T; t++) {
            cr_assert_eq(rows[b * 2 * T + t], (float)ids[b * T + t]);
            cr_assert_eq(rows[b * 2 * T + T + t] != 0.0f, mask[b * T + t] != 0,
                         "row %d token %d: mask %g for %d", b, t, rows[b * 2 * T + T + t],
                         mask[b * T + t]);
        }
    /* no mask: every token attended */
    cr_assert_eq(ert_pack_tokens(m, ids, NULL, n, rows, &err), ERT_OK, "%s", err.msg);
    for (int b = 0; b < n; b++)
        for (int t = 0; t < T; t++)
            cr_assert_neq(rows[b * 2 * T + T + t], 0.0f);
    cr_assert_eq(ert_pack_tokens(m, ids, mask, 0, rows, &err), ERT_OK, "n = 0: %s", err.msg);

    /* refusals */
    memset(&err, 0, sizeof err);
    cr_assert_eq(ert_pack_tokens(m, ids, mask, -1, rows, &err), ERT_INVALID_ARGUMENT);
    cr_assert_neq(err.msg[0], '\0');
    cr_assert_eq(ert_pack_tokens(m, NULL, mask, n, rows, &err), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_pack_tokens(m, ids, mask, n, NULL, &err), ERT_INVALID_ARGUMENT);
    cr_assert_eq(ert_pack_tokens(NULL, ids, mask, n, rows, &err), ERT_INVALID_ARGUMENT);
    ids[8] = 10; /* == vocab_size */
    memset(&err, 0, sizeof err);
    cr_assert_eq(ert_pack_tokens(m, ids, mask, n, rows, &err), ERT_INVALID_ARGUMENT);
    cr_assert(strstr(err.msg, "10"), "the message names the id: '%s'", err.msg);
    ids[8] = -1;
    cr_assert_eq(ert_pack_tokens(m, ids, mask, n, rows, NULL), ERT_INVALID_ARGUMENT);
    /* an invalid id at a padded token is still refused */
    mask[8] = 0;
    cr_assert_eq(ert_pack_tokens(m, ids, mask, n, rows, NULL), ERT_INVALID_ARGUMENT);
    ert_model_free(m);

    /* an image model */
    write_tx(VIT_JSON, NULL);
    m = load_ok(dir);
    ids[8] = 1;
    memset(&err, 0, sizeof err);
    cr_assert_eq(ert_pack_tokens(m, ids, NULL, 1, rows, &err), ERT_INVALID_ARGUMENT);
    cr_assert_neq(err.msg[0], '\0');
    ert_model_free(m);
}

/* ert_infer_tokens gives what ert_infer gives on the packed rows, bit for
 * bit on the CPU, in every mode. */
Test(model, infer_tokens_equals_infer)
{
    ert_model *m = fx_random_model(41, MW_BERT);
    const int T = ert_model_input_tokens(m), V = ert_model_vocab_size(m), n = 23;
    const int K = ert_model_num_classes(m);
    cr_assert(T >= 8 && T <= 17 && V >= 40, "T %d V %d", T, V);
    float *x = fx_random_inputs(m, n, 4242), *rows = malloc(sizeof(float) * n * 2 * T);
    int32_t *ids = malloc(sizeof(int32_t) * n * T), *mask = malloc(sizeof(int32_t) * n * T);
    cr_assert(rows && ids && mask);
    for (int b = 0; b < n; b++)
        for (int t = 0; t < T; t++) {
            ids[b * T + t] = (int32_t)x[b * 2 * T + t];
            mask[b * T + t] = x[b * 2 * T + T + t] != 0.0f ? (b % 2 ? 1 : 3) : 0;
        }
    ert_error err = {{0}};
    cr_assert_eq(ert_pack_tokens(m, ids, mask, n, rows, &err), ERT_OK, "%s", err.msg);
    ert_sample s1[23], s2[23];
    float *z1 = malloc(sizeof(float) * n * K), *z2 = malloc(sizeof(float) * n * K);
    cr_assert(z1 && z2);
    for (int mode = ERT_MODE_FULL; mode <= ERT_MODE_COMPACTED; mode++) {
        ert_engine *e = fx_cpu_engine(m, (ert_mode)mode, n);
        ert_result r1 = {.struct_size = sizeof(ert_result), .samples = s1, .logits = z1},
                   r2 = {.struct_size = sizeof(ert_result), .samples = s2, .logits = z2};
        cr_assert_eq(ert_infer(e, rows, n, &r1), ERT_OK, "%s", ert_engine_error(e));
        cr_assert_eq(ert_infer_tokens(e, ids, mask, n, &r2), ERT_OK, "%s", ert_engine_error(e));
        cr_assert(memcmp(s1, s2, sizeof s1) == 0, "%s: the samples differ",
                  ert_mode_string((ert_mode)mode));
        cr_assert(memcmp(z1, z2, sizeof(float) * n * K) == 0, "%s: the logits differ",
                  ert_mode_string((ert_mode)mode));
        cr_assert_eq(r1.macs_executed, r2.macs_executed);
        /* and the rows as fx_random_inputs made them (mask 1) */
        cr_assert_eq(ert_infer(e, x, n, &r1), ERT_OK);
        cr_assert(memcmp(s1, s2, sizeof s1) == 0);
        /* no mask: all attended, as rows with every mask value 1 */
        for (int b = 0; b < n; b++)
            for (int t = 0; t < T; t++)
                rows[b * 2 * T + T + t] = 1.0f;
        cr_assert_eq(ert_infer(e, rows, n, &r1), ERT_OK);
        cr_assert_eq(ert_infer_tokens(e, ids, NULL, n, &r2), ERT_OK, "%s", ert_engine_error(e));
        cr_assert(memcmp(z1, z2, sizeof(float) * n * K) == 0);
        cr_assert_eq(ert_pack_tokens(m, ids, mask, n, rows, &err), ERT_OK);

        /* an id out of range: refused, the message says which */
        ids[5] = V;
        cr_assert_eq(ert_infer_tokens(e, ids, mask, n, &r2), ERT_INVALID_ARGUMENT);
        cr_assert_neq(ert_engine_error(e)[0], '\0');
        ids[5] = -3;
        cr_assert_eq(ert_infer_tokens(e, ids, mask, n, &r2), ERT_INVALID_ARGUMENT);
        ids[5] = 0;
        cr_assert_eq(ert_infer_tokens(e, NULL, mask, n, &r2), ERT_INVALID_ARGUMENT);
        cr_assert_eq(ert_infer_tokens(e, ids, mask, n + 1, &r2), ERT_INVALID_ARGUMENT,
                     "batch beyond max_batch");
        ids[5] = (int32_t)x[5];
        ert_engine_free(e);
    }
    free(x);
    free(rows);
    free(ids);
    free(mask);
    free(z1);
    free(z2);
    ert_model_free(m);

    /* an image model's engine */
    m = fx_random_model(42, MW_MLP);
    ert_engine *e = fx_cpu_engine(m, ERT_MODE_MASKED, 4);
    int32_t one[64] = {0};
    ert_result r = {.struct_size = sizeof(ert_result), .samples = s1, .logits = NULL};
    cr_assert_eq(ert_infer_tokens(e, one, NULL, 1, &r), ERT_INVALID_ARGUMENT);
    cr_assert_neq(ert_engine_error(e)[0], '\0');
    ert_engine_free(e);
    ert_model_free(m);
}

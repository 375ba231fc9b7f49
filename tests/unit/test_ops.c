/* test_ops.c - every CPU op against a naive nested-loop reference in double
 * precision, on random inputs; plus run_layers against the ops chained by
 * hand, and NaN/Inf behaviour. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_ops.h"
#include "cpu/layers.h"
#include "exact.h"
#include "model_writer.h"

/* ---- helpers ---------------------------------------------------------------- */

/* The test's random stream (tests/common's mw_rng), seeded by each test
 * that draws from it: Criterion runs every test in a process of its own. */
static mw_rng rng;

static void rng_seed(uint64_t s) { rng = mw_rng_seed(s); }

static float rnd(void) { return mw_rng_uniform(&rng) * 2.0f - 1.0f; } /* uniform in [-1, 1) */

static float *rnd_array(size_t n)
{
    float *a = malloc(sizeof(float) * (n ? n : 1));
    cr_assert_not_null(a);
    for (size_t i = 0; i < n; i++)
        a[i] = rnd();
    return a;
}

/* The three activation buffers and the column scratch of ws, at its
 * act_cap and col_cap. */
static void ws_alloc(ops_ws *ws)
{
    for (int i = 0; i < 3; i++) {
        ws->buf[i] = malloc(sizeof(float) * ws->act_cap);
        cr_assert_not_null(ws->buf[i]);
    }
    ws->col = malloc(sizeof(float) * ws->col_cap);
    cr_assert_not_null(ws->col);
}

static void ws_free(ops_ws *ws)
{
    for (int i = 0; i < 3; i++)
        free(ws->buf[i]);
    free(ws->col);
}

/* got vs ref with rel 1e-5 and an absolute floor scaled by the sum of the
 * absolute terms (what float32 accumulation error is proportional to). */
static void check_close(const float *got, const double *ref, const double *absum, size_t n,
                        const char *what)
{
    for (size_t i = 0; i < n; i++) {
        cr_assert(isfinite(got[i]), "%s[%zu] is not finite: %g", what, i, got[i]);
        double tol = 1e-5 * fabs(ref[i]) + 1e-6 * (absum ? absum[i] : fabs(ref[i])) + 1e-7;
        cr_assert(fabs(got[i] - ref[i]) <= tol, "%s[%zu]: got %.9g, want %.9g (tol %.3g)", what, i,
                  got[i], ref[i], tol);
    }
}


/* ---- naive conv ------------------------------------------------------------- */

typedef struct conv_case {
    int cin, cout, h, w, kh, kw, sh, sw, ph, pw, dh, dw, groups;
} conv_case;

static conv_params make_conv(const conv_case *k, const float *wt, const float *b)
{
    conv_params p = {.in_ch = k->cin,
                     .out_ch = k->cout,
                     .kh = k->kh,
                     .kw = k->kw,
                     .stride_h = k->sh,
                     .stride_w = k->sw,
                     .pad_h = k->ph,
                     .pad_w = k->pw,
                     .dil_h = k->dh,
                     .dil_w = k->dw,
                     .groups = k->groups,
                     .weight = wt,
                     .bias = b};
    return p;
}

static int out_dim(int in, int k, int s, int p, int d)
{
    return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

/* in [n,cin,h,w], w [cout,cin/g,kh,kw] -> ref/absum [n,cout,ho,wo] */
static void naive_conv(const conv_case *k, const float *in, const float *wt, const float *b, int n,
                       int relu, double *ref, double *absum)
{
    int ho = out_dim(k->h, k->kh, k->sh, k->ph, k->dh);
    int wo = out_dim(k->w, k->kw, k->sw, k->pw, k->dw);
    int cin_g = k->cin / k->groups, cout_g = k->cout / k->groups;
    for (int s = 0; s < n; s++)
        for (int co = 0; co < k->cout; co++) {
            int g = co / cout_g;
            for (int oh = 0; oh < ho; oh++)
                for (int ow = 0; ow < wo; ow++) {
                    double acc = b ? b[co] : 0.0, ab = b ? fabs(b[co]) : 0.0;
                    for (int ci = 0; ci < cin_g; ci++)
                        for (int i = 0; i < k->kh; i++)
                            for (int j = 0; j < k->kw; j++) {
                                int ih = oh * k->sh - k->ph + i * k->dh;
                                int iw = ow * k->sw - k->pw + j * k->dw;
                                if (ih < 0 || ih >= k->h || iw < 0 || iw >= k->w)
                                    continue;
                                double x =
                                    in[(((size_t)s * k->cin + g * cin_g + ci) * k->h + ih) * k->w +
                                       iw];
                                double wv = wt[(((size_t)co * cin_g + ci) * k->kh + i) * k->kw + j];
                                acc += x * wv;
                                ab += fabs(x * wv);
                            }
                    size_t o = (((size_t)s * k->cout + co) * ho + oh) * wo + ow;
                    ref[o] = relu && acc < 0 ? 0.0 : acc;
                    absum[o] = ab;
                }
        }
}

/* Runs one conv case through op_conv2d in every way: relu 0/1, per-sample
 * and batched im2col (in chunks of rows: as many as the GEMM width wants,
 * or as the scratch holds), with and without bias, batch sizes 1 and 7, and
 * with a column buffer too small for batching (falls back to per sample). */
static void run_conv_case(const conv_case *k)
{
    int ho = out_dim(k->h, k->kh, k->sh, k->ph, k->dh);
    int wo = out_dim(k->w, k->kw, k->sw, k->pw, k->dw);
    cr_assert(ho > 0 && wo > 0);
    size_t wlen = (size_t)k->cout * (k->cin / k->groups) * k->kh * k->kw;
    float *wt = rnd_array(wlen), *b = rnd_array(k->cout);
    const int ns[] = {1, 7};
    for (int ni = 0; ni < 2; ni++) {
        int n = ns[ni];
        size_t in_len = (size_t)n * k->cin * k->h * k->w, out_len = (size_t)n * k->cout * ho * wo;
        float *in = rnd_array(in_len), *in_copy = malloc(sizeof(float) * in_len);
        memcpy(in_copy, in, sizeof(float) * in_len);
        float *out = malloc(sizeof(float) * out_len);
        double *ref = malloc(sizeof(double) * out_len), *ab = malloc(sizeof(double) * out_len);
        for (int with_bias = 0; with_bias < 2; with_bias++)
            for (int relu = 0; relu < 2; relu++) {
                const float *bb = with_bias ? b : NULL;
                conv_params p = make_conv(k, wt, bb);
                naive_conv(k, in, wt, bb, n, relu, ref, ab);
                size_t per_sample =
                    conv_col_floats(&p, (shape3){k->cin, k->h, k->w, SHAPE_PLAIN}, 1);
                size_t per_row = per_sample + (size_t)(k->cout / k->groups) * ho * wo;
                /* per sample; batched with room for all rows; room for less
                 * than one batched row (falls back); room for two rows
                 * (chunks of 2 and a remainder of 1 at n = 7) */
                size_t caps[4] = {
                    per_sample ? per_sample : 1,
                    per_row * conv_chunk_rows(&p, (shape3){k->cin, k->h, k->w, SHAPE_PLAIN}),
                    per_sample + 1, per_row * 2 + 5};
                for (int mode = 0; mode < 4; mode++) {
                    float *col = malloc(sizeof(float) * (caps[mode] + 1));
                    for (size_t i = 0; i < out_len; i++)
                        out[i] = NAN; /* every output must be written */
                    op_conv2d(&p, (shape3){k->cin, k->h, k->w, SHAPE_PLAIN}, in, n, out, relu, col,
                              caps[mode], mode != 0);
                    check_close(out, ref, ab, out_len, "conv");
                    free(col);
                }
            }
        cr_assert(memcmp(in, in_copy, sizeof(float) * in_len) == 0, "conv wrote its input");
        free(in);
        free(in_copy);
        free(out);
        free(ref);
        free(ab);
    }
    free(wt);
    free(b);
}

Test(ops, conv2d_cases)
{
    rng_seed(1);
    const conv_case cases[] = {
        /* cin cout h  w  kh kw sh sw ph pw dh dw g */
        {3, 8, 9, 11, 3, 3, 1, 1, 1, 1, 1, 1, 1},   /* the common 3x3 same conv */
        {1, 16, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, 1}, /* Fashion-MNIST's first layer */
        {4, 6, 10, 7, 2, 3, 2, 1, 0, 1, 1, 1, 2},   /* non-square, grouped, mixed strides */
        {6, 6, 12, 12, 3, 3, 2, 2, 2, 2, 2, 2, 6},  /* depthwise, dilated, strided */
        {2, 3, 7, 9, 5, 1, 1, 3, 2, 0, 1, 1, 1},    /* 5x1 kernel, stride 3 along w */
        {3, 4, 8, 9, 3, 2, 3, 2, 0, 0, 1, 3, 1},    /* dilation along w only */
        {3, 4, 9, 10, 3, 3, 2, 3, 1, 2, 1, 1, 1},   /* stride 3, pad 2: ragged left edge */
        {2, 4, 11, 13, 4, 5, 3, 2, 3, 1, 2, 2, 2},  /* all of it at once */
        {8, 4, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1},    /* pointwise: no im2col */
        {8, 4, 5, 6, 1, 1, 1, 1, 0, 0, 1, 1, 2},    /* pointwise grouped */
        {3, 5, 8, 8, 1, 1, 2, 2, 0, 0, 1, 1, 1},    /* 1x1 stride 2: im2col path */
        {2, 3, 4, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1},    /* 1x1 padded: im2col path */
        {2, 2, 3, 3, 2, 2, 1, 1, 3, 3, 1, 1, 1},    /* padding wider than the kernel */
        {3, 2, 6, 5, 6, 5, 1, 1, 0, 0, 1, 1, 1},    /* kernel = input: 1x1 output */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_conv_case(&cases[i]);
}

Test(ops, conv2d_col_floats)
{
    conv_case k = {4, 6, 10, 7, 2, 3, 2, 1, 0, 1, 1, 1, 2};
    conv_params p = make_conv(&k, NULL, NULL);
    int ho = out_dim(10, 2, 2, 0, 1), wo = out_dim(7, 3, 1, 1, 1);
    cr_assert_eq(conv_col_floats(&p, (shape3){4, 10, 7, SHAPE_PLAIN}, 3),
                 (size_t)2 * 2 * 3 * ho * wo * 3);
    conv_case q = {8, 4, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1};
    p = make_conv(&q, NULL, NULL);
    cr_assert_eq(conv_col_floats(&p, (shape3){8, 5, 5, SHAPE_PLAIN}, 3), 0);
}

Test(ops, conv2d_nonfinite_input)
{
    /* one Inf input pixel: the outputs whose window holds it are not finite,
     * every other output is finite and right */
    rng_seed(2);
    conv_case k = {2, 3, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1};
    float *wt = rnd_array(3 * 2 * 9), *b = rnd_array(3), *in = rnd_array(2 * 36);
    float out[3 * 36], col[2 * 9 * 36 + 3 * 36];
    in[0 * 36 + 2 * 6 + 3] = INFINITY; /* channel 0, (2, 3) */
    conv_params p = make_conv(&k, wt, b);
    op_conv2d(&p, (shape3){2, 6, 6, SHAPE_PLAIN}, in, 1, out, 0, col, sizeof col / sizeof col[0],
              1);
    for (int co = 0; co < 3; co++)
        for (int oh = 0; oh < 6; oh++)
            for (int ow = 0; ow < 6; ow++) {
                int hit = abs(oh - 2) <= 1 && abs(ow - 3) <= 1;
                float v = out[(co * 6 + oh) * 6 + ow];
                cr_assert(hit ? !isfinite(v) : isfinite(v), "co %d (%d,%d) = %g", co, oh, ow, v);
            }
    free(wt);
    free(b);
    free(in);
}

/* ---- linear ----------------------------------------------------------------- */

Test(ops, linear)
{
    rng_seed(3);
    const int shapes[][2] = {{1, 1}, {13, 7}, {64, 10}, {300, 33}};
    const int ns[] = {1, 7, 64};
    for (size_t si = 0; si < 4; si++)
        for (int ni = 0; ni < 3; ni++)
            for (int with_bias = 0; with_bias < 2; with_bias++)
                for (int relu = 0; relu < 2; relu++) {
                    int fin = shapes[si][0], fout = shapes[si][1], n = ns[ni];
                    float *wt = rnd_array((size_t)fin * fout), *b = rnd_array(fout);
                    float *in = rnd_array((size_t)n * fin), *out = malloc(sizeof(float) * n * fout);
                    double *ref = malloc(sizeof(double) * n * fout);
                    double *ab = malloc(sizeof(double) * n * fout);
                    for (int r = 0; r < n; r++)
                        for (int o = 0; o < fout; o++) {
                            double acc = with_bias ? b[o] : 0.0, a = with_bias ? fabs(b[o]) : 0.0;
                            for (int i = 0; i < fin; i++) {
                                acc += (double)in[r * fin + i] * wt[o * fin + i];
                                a += fabs((double)in[r * fin + i] * wt[o * fin + i]);
                            }
                            ref[r * fout + o] = relu && acc < 0 ? 0.0 : acc;
                            ab[r * fout + o] = a;
                        }
                    linear_params p = {.in_features = fin,
                                       .out_features = fout,
                                       .weight = wt,
                                       .bias = with_bias ? b : NULL};
                    for (int i = 0; i < n * fout; i++)
                        out[i] = NAN;
                    int t = (relu + with_bias) % 2 ? GEMM_ROWS_MIN : GEMM_ROWS_MAX;
                    float *tile = malloc(sizeof(float) * t * (fin + fout));
                    op_linear(&p, in, n, out, relu, t, tile);
                    free(tile);
                    check_close(out, ref, ab, (size_t)n * fout, "linear");
                    free(wt);
                    free(b);
                    free(in);
                    free(out);
                    free(ref);
                    free(ab);
                }
}

/* ---- pools ------------------------------------------------------------------ */

typedef struct pool_case {
    int c, h, w, kh, kw, sh, sw, ph, pw;
} pool_case;

/* Reference through an explicitly padded copy: pad value -inf (max) or 0
 * (avg, whose divisor is then always the full kh*kw window, as PyTorch's
 * count_include_pad=True in floor mode). */
static void naive_pool(const pool_case *k, const float *in, int n, int is_max, double *ref)
{
    int H = k->h + 2 * k->ph, W = k->w + 2 * k->pw;
    int ho = (H - k->kh) / k->sh + 1, wo = (W - k->kw) / k->sw + 1;
    double *pad = malloc(sizeof(double) * H * W);
    for (int pl = 0; pl < n * k->c; pl++) {
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int iy = y - k->ph, ix = x - k->pw;
                int inside = iy >= 0 && iy < k->h && ix >= 0 && ix < k->w;
                pad[y * W + x] =
                    inside ? in[((size_t)pl * k->h + iy) * k->w + ix] : (is_max ? -INFINITY : 0.0);
            }
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++) {
                double acc = is_max ? -INFINITY : 0.0;
                for (int i = 0; i < k->kh; i++)
                    for (int j = 0; j < k->kw; j++) {
                        double v = pad[(oy * k->sh + i) * W + ox * k->sw + j];
                        acc = is_max ? (v > acc ? v : acc) : acc + v;
                    }
                ref[((size_t)pl * ho + oy) * wo + ox] = is_max ? acc : acc / (k->kh * k->kw);
            }
    }
    free(pad);
}

Test(ops, pools)
{
    rng_seed(4);
    const pool_case cases[] = {
        /* c h  w  kh kw sh sw ph pw */
        {3, 8, 8, 2, 2, 2, 2, 0, 0}, {2, 9, 7, 3, 3, 2, 2, 1, 1}, /* odd sizes, padded */
        {4, 5, 6, 3, 3, 1, 1, 1, 1},                              /* overlapping, stride 1 */
        {2, 7, 9, 3, 2, 2, 1, 1, 0},                              /* non-square */
        {1, 6, 6, 2, 2, 1, 1, 1, 1},                              /* pad 1 with k 2 */
        {3, 4, 4, 4, 4, 4, 4, 0, 0},                              /* one window */
    };
    const int ns[] = {1, 7};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++)
        for (int ni = 0; ni < 2; ni++) {
            const pool_case *k = &cases[ci];
            int n = ns[ni];
            int ho = (k->h + 2 * k->ph - k->kh) / k->sh + 1;
            int wo = (k->w + 2 * k->pw - k->kw) / k->sw + 1;
            size_t in_len = (size_t)n * k->c * k->h * k->w, out_len = (size_t)n * k->c * ho * wo;
            float *in = rnd_array(in_len), *out = malloc(sizeof(float) * out_len);
            double *ref = malloc(sizeof(double) * out_len);
            pool_params p = {k->kh, k->kw, k->sh, k->sw, k->ph, k->pw};
            shape3 s = {k->c, k->h, k->w, SHAPE_PLAIN};
            naive_pool(k, in, n, 1, ref);
            op_maxpool2d(&p, s, in, n, out);
            check_close(out, ref, NULL, out_len, "maxpool");
            naive_pool(k, in, n, 0, ref);
            op_avgpool2d(&p, s, in, n, out);
            /* sums of up to kh*kw values in [-1,1): floor by the window */
            for (size_t i = 0; i < out_len; i++) {
                cr_assert(isfinite(out[i]));
                cr_assert(fabs(out[i] - ref[i]) <= 1e-5 * fabs(ref[i]) + 1e-6,
                          "avgpool[%zu] %g vs %g", i, out[i], ref[i]);
            }
            free(in);
            free(out);
            free(ref);
        }
}

Test(ops, pools_count_padding_in_divisor)
{
    /* all-ones 2x2 input, k 3, pad 1, stride 1: each window holds 4 ones,
     * so avgpool gives 4/9 everywhere (not 1); maxpool gives 1 */
    float in[4] = {1, 1, 1, 1}, out[4];
    pool_params p = {3, 3, 1, 1, 1, 1};
    op_avgpool2d(&p, (shape3){1, 2, 2, SHAPE_PLAIN}, in, 1, out);
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(out[i], 4.0f / 9.0f, 1e-7);
    float neg[4] = {-5, -6, -7, -8};
    op_maxpool2d(&p, (shape3){1, 2, 2, SHAPE_PLAIN}, neg, 1, out);
    for (int i = 0; i < 4; i++) /* -inf padding never wins, not 0 */
        cr_assert_eq(out[i], -5.0f);
}

Test(ops, maxpool_propagates_nan)
{
    float in[16], out[4];
    for (int i = 0; i < 16; i++)
        in[i] = (float)i;
    in[5] = NAN; /* window (0,0) */
    pool_params p = {2, 2, 2, 2, 0, 0};
    op_maxpool2d(&p, (shape3){1, 4, 4, SHAPE_PLAIN}, in, 1, out);
    cr_assert(isnan(out[0]));
    cr_assert_eq(out[1], 7.0f);
    cr_assert_eq(out[2], 13.0f);
    cr_assert_eq(out[3], 15.0f);
}

Test(ops, global_avgpool)
{
    rng_seed(5);
    const int ns[] = {1, 7};
    for (int ni = 0; ni < 2; ni++) {
        int n = ns[ni], c = 5, h = 7, w = 3;
        float *in = rnd_array((size_t)n * c * h * w), out[7 * 5];
        double ref[7 * 5], ab[7 * 5];
        for (int pl = 0; pl < n * c; pl++) {
            double s = 0, a = 0;
            for (int q = 0; q < h * w; q++) {
                s += in[pl * h * w + q];
                a += fabs(in[pl * h * w + q]);
            }
            ref[pl] = s / (h * w);
            ab[pl] = a / (h * w);
        }
        op_global_avgpool((shape3){c, h, w, SHAPE_PLAIN}, in, n, out);
        check_close(out, ref, ab, (size_t)n * c, "global_avgpool");
        free(in);
    }
}

/* ---- elementwise -------------------------------------------------------------- */

Test(ops, elementwise)
{
    rng_seed(6);
    size_t len = 7 * 50;
    float *a = rnd_array(len), *b = rnd_array(len), *out = malloc(sizeof(float) * len);
    double *ref = malloc(sizeof(double) * len);

    op_relu(a, out, len);
    for (size_t i = 0; i < len; i++)
        ref[i] = a[i] > 0 ? a[i] : 0.0;
    check_close(out, ref, NULL, len, "relu");

    op_sigmoid(a, out, len);
    for (size_t i = 0; i < len; i++)
        ref[i] = 1.0 / (1.0 + exp(-(double)a[i]));
    check_close(out, ref, NULL, len, "sigmoid");

    for (int relu = 0; relu < 2; relu++) {
        op_add(a, b, out, len, relu);
        for (size_t i = 0; i < len; i++) {
            double v = (double)a[i] + b[i];
            ref[i] = relu && v < 0 ? 0.0 : v;
        }
        check_close(out, ref, NULL, len, "add");
    }
    /* in place */
    memcpy(out, a, sizeof(float) * len);
    op_add(out, b, out, len, 1);
    for (size_t i = 0; i < len; i++) {
        double v = (double)a[i] + b[i];
        ref[i] = v < 0 ? 0.0 : v;
    }
    check_close(out, ref, NULL, len, "add in place");
    memcpy(out, a, sizeof(float) * len);
    op_relu(out, out, len);
    for (size_t i = 0; i < len; i++)
        cr_assert_eq(out[i], a[i] > 0 ? a[i] : 0.0f);

    free(a);
    free(b);
    free(out);
    free(ref);
}

Test(ops, elementwise_nonfinite)
{
    float x[6] = {NAN, INFINITY, -INFINITY, 1000.0f, -1000.0f, 0.0f}, out[6];
    op_relu(x, out, 6);
    cr_assert(isnan(out[0]), "relu(NaN) stays NaN, as torch.relu");
    cr_assert(isinf(out[1]) && out[1] > 0);
    cr_assert_eq(out[2], 0.0f);
    cr_assert_eq(out[4], 0.0f);
    op_sigmoid(x, out, 6);
    cr_assert(isnan(out[0]));
    cr_assert_eq(out[1], 1.0f);
    cr_assert_eq(out[2], 0.0f);
    cr_assert_eq(out[3], 1.0f); /* no overflow to NaN at large |x| */
    cr_assert_eq(out[4], 0.0f);
    cr_assert_eq(out[5], 0.5f);
    float y[6] = {1, 1, 1, 1, 1, 1};
    op_add(x, y, out, 6, 1);
    cr_assert(isnan(out[0]));
    cr_assert(isinf(out[1]));
    cr_assert_eq(out[2], 0.0f);
}

Test(ops, normalize)
{
    rng_seed(7);
    const int ns[] = {1, 7};
    float mean[3] = {0.25f, -0.5f, 0.1f}, std[3] = {0.5f, 2.0f, 0.3f};
    for (int ni = 0; ni < 2; ni++) {
        int n = ns[ni];
        shape3 s = {3, 4, 5, SHAPE_PLAIN};
        size_t len = (size_t)n * 60;
        float *in = rnd_array(len), *out = malloc(sizeof(float) * len);
        double *ref = malloc(sizeof(double) * len);
        for (size_t i = 0; i < len; i++) {
            int c = (int)(i / 20) % 3;
            ref[i] = ((double)in[i] * (1.0 / 255.0) - mean[c]) / std[c];
        }
        op_normalize(s, in, n, out, 1.0f / 255.0f, mean, std);
        check_close(out, ref, NULL, len, "normalize");
        op_normalize(s, in, n, in, 1.0f / 255.0f, mean, std); /* in place */
        check_close(in, ref, NULL, len, "normalize in place");
        free(in);
        free(out);
        free(ref);
    }
}

/* ---- run_layers ------------------------------------------------------------- */

/* Layer builders that set the shapes as model_finalize would. */
static layer L_conv(shape3 in, int cout, int k, int stride, int pad, int groups, float **w)
{
    layer l = {.kind = LAYER_CONV2D, .in = in};
    conv_case cc = {in.c, cout, in.h, in.w, k, k, stride, stride, pad, pad, 1, 1, groups};
    float *wt = rnd_array((size_t)cout * (in.c / groups) * k * k);
    float *b = rnd_array(cout);
    w[0] = wt;
    w[1] = b;
    l.p.conv = make_conv(&cc, wt, b);
    l.out = (shape3){cout, out_dim(in.h, k, stride, pad, 1), out_dim(in.w, k, stride, pad, 1),
                     SHAPE_PLAIN};
    return l;
}

static layer L_simple(layer_kind kind, shape3 in)
{
    layer l = {.kind = kind, .in = in, .out = in};
    if (kind == LAYER_GLOBAL_AVGPOOL)
        l.out = (shape3){in.c, 1, 1, SHAPE_PLAIN};
    if (kind == LAYER_FLATTEN)
        l.out = (shape3){in.c * in.h * in.w, 1, 1, SHAPE_PLAIN};
    return l;
}

static layer L_pool(layer_kind kind, shape3 in, int k, int s, int p)
{
    layer l = {.kind = kind, .in = in};
    l.p.pool = (pool_params){k, k, s, s, p, p};
    l.out = (shape3){in.c, (in.h + 2 * p - k) / s + 1, (in.w + 2 * p - k) / s + 1, SHAPE_PLAIN};
    return l;
}

static layer L_linear(shape3 in, int fout, float **w)
{
    layer l = {.kind = LAYER_LINEAR, .in = in, .out = {fout, 1, 1, SHAPE_PLAIN}};
    int fin = (int)shape_size(in);
    w[0] = rnd_array((size_t)fin * fout);
    w[1] = rnd_array(fout);
    l.p.linear = (linear_params){fin, fout, w[0], w[1]};
    return l;
}

/* Applies one (non-residual) layer with the ops into a fresh array. */
static float *apply(const layer *l, const float *x, int n)
{
    size_t len = shape_size(l->out) * n;
    float *y = malloc(sizeof(float) * len);
    switch (l->kind) {
    case LAYER_CONV2D: {
        size_t cap = conv_col_floats(&l->p.conv, l->in, 1) + 1;
        float *col = malloc(sizeof(float) * cap);
        op_conv2d(&l->p.conv, l->in, x, n, y, 0, col, cap, 0);
        free(col);
        break;
    }
    case LAYER_LINEAR: {
        const linear_params *lp = &l->p.linear;
        float *tile = malloc(sizeof(float) * 32 * (lp->in_features + lp->out_features));
        op_linear(lp, x, n, y, 0, 32, tile);
        free(tile);
        break;
    }
    case LAYER_RELU: op_relu(x, y, len); break;
    case LAYER_SIGMOID: op_sigmoid(x, y, len); break;
    case LAYER_MAXPOOL2D: op_maxpool2d(&l->p.pool, l->in, x, n, y); break;
    case LAYER_AVGPOOL2D: op_avgpool2d(&l->p.pool, l->in, x, n, y); break;
    case LAYER_GLOBAL_AVGPOOL: op_global_avgpool(l->in, x, n, y); break;
    case LAYER_FLATTEN: memcpy(y, x, sizeof(float) * len); break;
    default: cr_assert_fail("apply: kind %d", l->kind);
    }
    return y;
}

/* The list, one op at a time, every intermediate in its own array. */
static float *apply_list(const layer_list *ll, const float *x, int n, size_t in_len)
{
    float *cur = malloc(sizeof(float) * in_len);
    memcpy(cur, x, sizeof(float) * in_len);
    for (int i = 0; i < ll->count; i++) {
        const layer *l = &ll->items[i];
        float *y;
        if (l->kind == LAYER_RESIDUAL) {
            size_t len = shape_size(l->out) * n;
            float *b = apply_list(&l->p.residual.body, cur, n, shape_size(l->in) * n);
            float *s = apply_list(&l->p.residual.shortcut, cur, n, shape_size(l->in) * n);
            y = malloc(sizeof(float) * len);
            op_add(b, s, y, len, l->p.residual.relu_after);
            free(b);
            free(s);
        } else {
            y = apply(l, cur, n);
        }
        free(cur);
        cur = y;
    }
    return cur;
}

Test(ops, run_layers_residual_pipeline)
{
    rng_seed(8);
    float *w[16][2];
    int nw = 0;
    shape3 s0 = {3, 12, 12, SHAPE_PLAIN};
    /* residual 1: body conv3x3 s2 + relu + conv3x3, shortcut conv1x1 s2 */
    layer body1[3], sc1[1], body2[2];
    layer top[10];
    int t = 0;
    top[t] = L_conv(s0, 8, 3, 1, 1, 1, w[nw++]);
    top[t + 1] = L_simple(LAYER_RELU, top[t].out);
    t += 2;
    top[t] = L_pool(LAYER_MAXPOOL2D, top[t - 1].out, 3, 2, 1);
    t++;
    shape3 r_in = top[t - 1].out;
    body1[0] = L_conv(r_in, 12, 3, 2, 1, 1, w[nw++]);
    body1[1] = L_simple(LAYER_RELU, body1[0].out);
    body1[2] = L_conv(body1[1].out, 12, 3, 1, 1, 1, w[nw++]);
    sc1[0] = L_conv(r_in, 12, 1, 2, 0, 1, w[nw++]);
    layer res1 = {.kind = LAYER_RESIDUAL, .in = r_in, .out = body1[2].out};
    res1.p.residual = (residual_params){{body1, 3}, {sc1, 1}, 1};
    top[t++] = res1;
    /* residual 2: identity shortcut, no ReLU after, grouped + 1x1 body */
    shape3 r2 = res1.out;
    body2[0] = L_conv(r2, 12, 3, 1, 1, 3, w[nw++]);
    body2[1] = L_conv(body2[0].out, 12, 1, 1, 0, 1, w[nw++]);
    layer res2 = {.kind = LAYER_RESIDUAL, .in = r2, .out = r2};
    res2.p.residual = (residual_params){{body2, 2}, {NULL, 0}, 0};
    top[t++] = res2;
    top[t] = L_pool(LAYER_AVGPOOL2D, r2, 2, 1, 1);
    t++;
    top[t] = L_simple(LAYER_GLOBAL_AVGPOOL, top[t - 1].out);
    t++;
    top[t] = L_simple(LAYER_FLATTEN, top[t - 1].out);
    t++;
    top[t] = L_linear(top[t - 1].out, 10, w[nw++]);
    t++;
    top[t] = L_simple(LAYER_SIGMOID, top[t - 1].out);
    t++;
    layer_list list = {top, t};

    const int ns[] = {1, 7};
    for (int ni = 0; ni < 2; ni++)
        for (int batched = 0; batched < 2; batched++) {
            int n = ns[ni];
            size_t in_len = shape_size(s0) * n;
            float *in = rnd_array(in_len), *keep = malloc(sizeof(float) * in_len);
            memcpy(keep, in, sizeof(float) * in_len);
            size_t act = layers_max_act(&list);
            cr_assert_geq(act, (size_t)8 * 12 * 12, "layers_max_act %zu", act);
            ops_ws ws = {.act_cap = act * n,
                         .col_cap = (3 * 9 * 144 + act) * n,
                         .tile_rows = 16,
                         .conv_batched = batched};
            ws_alloc(&ws);
            for (int i = 0; i < 3; i++)
                for (size_t j = 0; j < ws.act_cap; j++)
                    ws.buf[i][j] = NAN; /* stale data must never leak in */
            const float *y = run_layers(&list, in, n, &ws);
            float *ref = apply_list(&list, in, n, in_len);
            cr_assert(memcmp(in, keep, sizeof(float) * in_len) == 0, "run_layers wrote its input");
            cr_assert(y == ws.buf[0] || y == ws.buf[1] || y == ws.buf[2]);
            for (int i = 0; i < n * 10; i++) {
                cr_assert(isfinite(y[i]));
                cr_assert(fabsf(y[i] - ref[i]) <= 1e-5f * fabsf(ref[i]) + 1e-6f,
                          "n %d row %d: %g vs %g", n, i / 10, y[i], ref[i]);
            }
            free(ref);
            ws_free(&ws);
            free(in);
            free(keep);
        }
    for (int i = 0; i < nw; i++) {
        free(w[i][0]);
        free(w[i][1]);
    }
}

Test(ops, run_layers_reshape_only_and_empty)
{
    float in[12] = {0}, b0[12], b1[12], b2[12];
    ops_ws ws = {.buf = {b0, b1, b2}, .act_cap = 12, .col = NULL, .col_cap = 0, .tile_rows = 16};
    layer fl = L_simple(LAYER_FLATTEN, (shape3){3, 2, 2, SHAPE_PLAIN});
    layer_list one = {&fl, 1}, none = {NULL, 0};
    cr_assert_eq(run_layers(&one, in, 1, &ws), in);
    cr_assert_eq(run_layers(&none, in, 1, &ws), in);
    /* a leading relu must not write the read-only input */
    float x[4] = {-1, 2, -3, 4};
    layer r = L_simple(LAYER_RELU, (shape3){4, 1, 1, SHAPE_PLAIN});
    layer_list rl = {&r, 1};
    const float *y = run_layers(&rl, x, 1, &ws);
    cr_assert_neq(y, x);
    cr_assert_eq(x[0], -1.0f);
    cr_assert_eq(y[0], 0.0f);
    cr_assert_eq(y[3], 4.0f);
}

Test(ops, run_layers_residual_first_on_readonly_input)
{
    /* a stage that starts with a residual block reads its input from a
     * buffer outside the scratch: the body and the shortcut must both see
     * it intact, and it must stay intact */
    rng_seed(9);
    float *w[4][2];
    shape3 s = {4, 6, 6, SHAPE_PLAIN};
    layer b1[3], b2[1], sc2[1], top[2];
    b1[0] = L_conv(s, 4, 3, 1, 1, 1, w[0]);
    b1[1] = L_simple(LAYER_RELU, b1[0].out);
    b1[2] = L_conv(s, 4, 3, 1, 1, 2, w[1]);
    top[0] = (layer){.kind = LAYER_RESIDUAL, .in = s, .out = s};
    top[0].p.residual = (residual_params){{b1, 3}, {NULL, 0}, 1};
    b2[0] = L_conv(s, 6, 3, 2, 1, 1, w[2]);
    sc2[0] = L_conv(s, 6, 1, 2, 0, 1, w[3]);
    top[1] = (layer){.kind = LAYER_RESIDUAL, .in = s, .out = b2[0].out};
    top[1].p.residual = (residual_params){{b2, 1}, {sc2, 1}, 0};
    for (int first = 0; first < 2; first++) {
        layer_list list = {top + first, 2 - first};
        int n = 7;
        size_t in_len = shape_size(s) * n;
        float *in = rnd_array(in_len), *keep = malloc(sizeof(float) * in_len);
        memcpy(keep, in, sizeof(float) * in_len);
        ops_ws ws = {.act_cap = 144 * n,
                     .col_cap = (4 * 9 * 36 + 144) * n,
                     .conv_batched = 1,
                     .tile_rows = 16};
        ws_alloc(&ws);
        const float *y = run_layers(&list, in, n, &ws);
        float *ref = apply_list(&list, in, n, in_len);
        cr_assert(memcmp(in, keep, sizeof(float) * in_len) == 0, "run_layers wrote its input");
        size_t out_len = shape_size(list.items[list.count - 1].out) * n;
        for (size_t i = 0; i < out_len; i++)
            cr_assert(fabsf(y[i] - ref[i]) <= 1e-5f * fabsf(ref[i]) + 1e-5f, "[%zu] %g vs %g", i,
                      y[i], ref[i]);
        free(ref);
        ws_free(&ws);
        free(in);
        free(keep);
    }
    for (int i = 0; i < 4; i++) {
        free(w[i][0]);
        free(w[i][1]);
    }
}

/* A row's outputs must not depend on the batch around it: run the last n of
 * 40 rows for every n and compare bit for bit with the run over all 40.
 * MASKED and COMPACTED run the same rows in batches of different sizes, so
 * this is what lets them agree exactly. Layers sized like the bundled
 * models', where OpenBLAS changes kernels with the GEMM's shape. */
Test(ops, batch_invariant)
{
    if (!exact_blas())
        cr_skip_test("this BLAS rounds a row by its place in a GEMM call (e.g. OpenBLAS's "
                     "Haswell kernels): batch invariance cannot hold here");
    rng_seed(10);
    float *w[6][2];
    const int N = 70; /* more than the largest tile */
    layer ls[6];
    ls[0] = L_conv((shape3){16, 14, 14, SHAPE_PLAIN}, 32, 3, 1, 1, 1, w[0]); /* chunked GEMMs */
    ls[1] = L_conv((shape3){1, 28, 28, SHAPE_PLAIN}, 16, 3, 1, 1, 1, w[1]);  /* per sample */
    ls[2] = L_conv((shape3){64, 7, 7, SHAPE_PLAIN}, 64, 3, 1, 1, 2, w[2]);   /* chunked, groups */
    ls[3] = L_linear((shape3){784, 1, 1, SHAPE_PLAIN}, 1024, w[3]);
    ls[4] = L_linear((shape3){64, 1, 1, SHAPE_PLAIN}, 10, w[4]);
    ls[5] = L_linear((shape3){1024, 1, 1, SHAPE_PLAIN}, 1, w[5]);
    for (int li = 0; li < 6; li++) {
        const layer *l = &ls[li];
        size_t in_row = shape_size(l->in), out_row = shape_size(l->out);
        float *x = rnd_array(in_row * N);
        float *all = malloc(sizeof(float) * out_row * N),
              *part = malloc(sizeof(float) * out_row * N);
        size_t cap = 0;
        if (l->kind == LAYER_CONV2D)
            cap = conv_chunk_rows(&l->p.conv, l->in) * conv_chunk_row_floats(&l->p.conv, l->in);
        if (cap < GEMM_ROWS_MAX * (in_row + out_row))
            cap = GEMM_ROWS_MAX * (in_row + out_row);
        float *col = malloc(sizeof(float) * cap);
        for (int t = GEMM_ROWS_MIN; t <= GEMM_ROWS_MAX; t *= 2)
            for (int n = N; n >= 1; n--) {
                float *dst = n == N ? all : part;
                const float *src = x + (size_t)(N - n) * in_row;
                if (l->kind == LAYER_CONV2D)
                    op_conv2d(&l->p.conv, l->in, src, n, dst, 0, col, cap, 1);
                else
                    op_linear(&l->p.linear, src, n, dst, 0, t, col);
                if (n < N)
                    cr_assert(memcmp(part, all + (size_t)(N - n) * out_row,
                                     sizeof(float) * out_row * n) == 0,
                              "layer %d, tile %d: rows differ when run in a batch of %d", li, t, n);
            }
        free(x);
        free(all);
        free(part);
        free(col);
        free(w[li][0]);
        free(w[li][1]);
    }
}

Test(ops, linear_tile_rows)
{
    cr_assert_eq(linear_tile_rows(1), GEMM_ROWS_MIN);
    cr_assert_eq(linear_tile_rows(32), 16);
    cr_assert_eq(linear_tile_rows(64), 32);
    cr_assert_eq(linear_tile_rows(100), 32);
    cr_assert_eq(linear_tile_rows(128), 64);
    cr_assert_eq(linear_tile_rows(1 << 20), GEMM_ROWS_MAX);
}

/* The probe must agree with what the ops do: when it says invariant, a row
 * gives the same bits at the first and the last slot of a tile. */
Test(ops, blas_probe_consistent)
{
    if (!exact_blas())
        cr_skip_test("BLAS not batch-invariant here; nothing to check");
    rng_seed(11);
    float *w[2];
    layer l = L_linear((shape3){300, 1, 1, SHAPE_PLAIN}, 50, w);
    const int t = GEMM_ROWS_MIN;
    float *x = rnd_array(300 * t), *y0 = malloc(sizeof(float) * 50 * t),
          *y1 = malloc(sizeof(float) * 50 * t), *x1 = malloc(sizeof(float) * 300 * t);
    float *tile = malloc(sizeof(float) * t * 350);
    memcpy(x1, x + 300, sizeof(float) * 300 * (t - 1));
    memcpy(x1 + 300 * (t - 1), x, sizeof(float) * 300);
    op_linear(&l.p.linear, x, t, y0, 0, t, tile);
    op_linear(&l.p.linear, x1, t, y1, 0, t, tile);
    cr_assert(memcmp(y0, y1 + 50 * (t - 1), sizeof(float) * 50) == 0);
    free(x), free(x1), free(y0), free(y1), free(tile), free(w[0]), free(w[1]);
}

/* test_tx_ops.c - every transformer op of src/cpu/tx_ops.h against the plain
 * double reference of tests/common (mw_reference_layer: loops written from
 * models/FORMAT.md, "Transformer encoders"), on random shapes: masks with
 * padding anywhere, an all-padded sequence, invalid token ids, T = 1,
 * H = 1 and H = D, pre- and post-LN blocks with ReLU and GELU, both
 * token_pool modes, patch_embed with and without class token and position.
 * Within tolerance.h's rule (tol_logit_ok, each token's features a row);
 * NaN where the reference has NaN, and only there. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "act.h"
#include "cpu/cpu_ops.h"
#include "cpu/tx_ops.h"
#include "cpu/vmath.h"
#include "exact.h"
#include "model_writer.h"
#include "tolerance.h"

/* ---- helpers ---------------------------------------------------------------- */

/* Criterion runs every test in a process of its own: each seeds this. */
/* Every buffer a test takes is tracked and freed when the test ends
 * (the suite's fini), whether or not the test freed it itself: the
 * sanitizer build reports leaks. */
#define MAX_TRACKED 65536
static void *tracked[MAX_TRACKED];
static int ntracked;

static void *tmalloc(size_t bytes)
{
    void *p = malloc(bytes);
    cr_assert_not_null(p);
    cr_assert_lt(ntracked, MAX_TRACKED);
    tracked[ntracked++] = p;
    return p;
}

static void tfree(void *p)
{
    for (int i = 0; p && i < ntracked; i++)
        if (tracked[i] == p)
            tracked[i] = NULL;
    free(p);
}

static void release_all(void)
{
    for (int i = 0; i < ntracked; i++)
        free(tracked[i]);
    ntracked = 0;
}

TestSuite(tx_ops, .fini = release_all);

static mw_rng rng;

static void rng_seed(uint64_t s) { rng = mw_rng_seed(s); }

static int rnd_int(int n) { return (int)(mw_rng_next(&rng) % (uint64_t)n); }

/* n floats mean + std * N(0, 1) (tracked: freed when the test ends). */
static float *rnd_normal(size_t n, float mean, float std)
{
    float *a = tmalloc(sizeof(float) * (n ? n : 1));
    cr_assert_not_null(a);
    for (size_t i = 0; i < n; i++)
        a[i] = mean + std * mw_rng_normal(&rng);
    return a;
}

static float *filled(size_t n, float v)
{
    float *a = tmalloc(sizeof(float) * (n ? n : 1));
    cr_assert_not_null(a);
    for (size_t i = 0; i < n; i++)
        a[i] = v;
    return a;
}

static shape3 tok_shape(int T, int D) { return (shape3){T, D + 1, 1, 1}; }

/* A layer_norm of D; affine 0: weight 1 and bias 0 (what the loader gives a
 * layer_norm without them). */
static norm_params make_norm(int D, int affine)
{
    return (norm_params){.dim = D,
                         .eps = affine ? 1e-5f : 1e-6f,
                         .weight = affine ? rnd_normal((size_t)D, 1.0f, 0.3f) : filled(D, 1.0f),
                         .bias = affine ? rnd_normal((size_t)D, 0.0f, 0.2f) : filled(D, 0.0f)};
}

static attention_params make_attn(int D, int H)
{
    float g = 1.5f / sqrtf((float)D);
    return (attention_params){.dim = D,
                              .heads = H,
                              .in_weight = rnd_normal((size_t)3 * D * D, 0.0f, g),
                              .in_bias = rnd_normal((size_t)3 * D, 0.0f, 0.2f),
                              .out_weight = rnd_normal((size_t)D * D, 0.0f, g),
                              .out_bias = rnd_normal((size_t)D, 0.0f, 0.2f)};
}

static linear_params make_linear(int in, int out)
{
    return (linear_params){.in_features = in,
                           .out_features = out,
                           .weight = rnd_normal((size_t)in * out, 0.0f, 1.4f / sqrtf((float)in)),
                           .bias = rnd_normal((size_t)out, 0.0f, 0.2f)};
}

static encoder_params make_enc(int D, int H, int F, int norm_first, int act)
{
    return (encoder_params){.norm_first = norm_first,
                            .act = act,
                            .attn = make_attn(D, H),
                            .norm1 = make_norm(D, 1),
                            .norm2 = make_norm(D, 1),
                            .ff1 = make_linear(D, F),
                            .ff2 = make_linear(F, D)};
}

static layer make_layer(layer_kind k, shape3 in, shape3 out)
{
    layer l;
    memset(&l, 0, sizeof l);
    l.kind = k;
    snprintf(l.name, sizeof l.name, "l");
    l.in = in;
    l.out = out;
    return l;
}

/* n samples of T tokens, D features N(0, 1) each, and a mask. Sample 0
 * attends to every token; the others pad a random subset (anywhere, not
 * only at the end) keeping at least one token; sample all_padded (when in
 * [0, n)) pads every token. */
static float *token_rows(int n, int T, int D, int all_padded)
{
    float *x = rnd_normal((size_t)n * T * (D + 1), 0.0f, 1.0f);
    for (int b = 0; b < n; b++) {
        float *row = x + (size_t)b * T * (D + 1);
        int kept = 0;
        for (int t = 0; t < T; t++) {
            int on = b == 0 || rnd_int(3) != 0;
            row[(size_t)t * (D + 1) + D] = on ? 1.0f : 0.0f;
            kept += on;
        }
        if (!kept)
            row[(size_t)rnd_int(T) * (D + 1) + D] = 1.0f;
        if (b == all_padded)
            for (int t = 0; t < T; t++)
                row[(size_t)t * (D + 1) + D] = 0.0f;
    }
    return x;
}

/* The reference on sample x (in floats of shape in), as floats. */
static double *reference(const layer *l, const float *x)
{
    size_t n = shape_size(l->in);
    double *xd = tmalloc(sizeof(double) * (n ? n : 1));
    cr_assert_not_null(xd);
    for (size_t i = 0; i < n; i++)
        xd[i] = x[i];
    double *y = mw_reference_layer(l, xd);
    cr_assert_not_null(y, "the reference does not know layer kind %d", (int)l->kind);
    tfree(xd);
    return y;
}

/* got [n, rows * cols] against the reference of every sample, row by row
 * (cols values: a token's features and mask, or a vector): tolerance.h's
 * logit rule with the row's largest finite |want| as its scale; NaN and
 * infinities exactly. Returns the NaN values seen. */
static long check_rows(const layer *l, const float *in, int n, const float *got, int rows, int cols,
                       const char *what)
{
    long nans = 0;
    size_t isz = shape_size(l->in), osz = shape_size(l->out);
    cr_assert_eq(osz, (size_t)rows * cols, "%s: output shape", what);
    for (int b = 0; b < n; b++) {
        double *want = reference(l, in + (size_t)b * isz);
        for (int r = 0; r < rows; r++) {
            const double *w = want + (size_t)r * cols;
            const float *g = got + (size_t)b * osz + (size_t)r * cols;
            float scale = 0.0f;
            for (int c = 0; c < cols; c++)
                if (isfinite(w[c]))
                    scale = fmaxf(scale, fabsf((float)w[c]));
            for (int c = 0; c < cols; c++) {
                float wf = (float)w[c];
                if (!isfinite(wf) || !isfinite(g[c])) {
                    cr_assert((isnan(wf) && isnan(g[c])) || wf == g[c],
                              "%s: sample %d row %d col %d: got %g, want %g", what, b, r, c, g[c],
                              wf);
                    nans += isnan(wf);
                    continue;
                }
                cr_assert(tol_logit_ok(g[c], wf, scale),
                          "%s: sample %d row %d col %d: got %.9g, want %.9g", what, b, r, c, g[c],
                          wf);
            }
        }
        tfree(want);
    }
    return nans;
}

/* Every token's mask value in out equals in's (both [n, T, D + 1]). */
static void check_mask_copied(const float *in, const float *out, int n, int T, int D,
                              const char *what)
{
    for (int b = 0; b < n; b++)
        for (int t = 0; t < T; t++) {
            size_t at = ((size_t)b * T + t) * (D + 1) + D;
            cr_assert(in[at] == out[at], "%s: sample %d token %d: mask %g, input's %g", what, b, t,
                      out[at], in[at]);
        }
}

/* D and H: H among 1, 2, D and the divisors between. */
static void pick_dh(int *D, int *H)
{
    static const int dims[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32};
    *D = dims[rnd_int(10)];
    int h;
    do
        h = 1 + rnd_int(*D);
    while (*D % h);
    int c = rnd_int(4);
    *H = c == 0 ? 1 : c == 1 ? *D : h;
}

/* ---- layer_norm, gelu, tanh ---------------------------------------------------- */

Test(tx_ops, layer_norm_tokens)
{
    rng_seed(1);
    for (int it = 0; it < 40; it++) {
        int T = 1 + rnd_int(17), D = 1 + rnd_int(40), n = 1 + rnd_int(5);
        layer l = make_layer(LAYER_LAYER_NORM, tok_shape(T, D), tok_shape(T, D));
        l.p.norm = make_norm(D, it % 2);
        float *x = token_rows(n, T, D, n > 2 ? 2 : -1);
        size_t len = (size_t)n * T * (D + 1);
        float *y = filled(len, -777.0f), *inplace = tmalloc(sizeof(float) * len);
        cr_assert_not_null(inplace);
        memcpy(inplace, x, sizeof(float) * len);
        op_layer_norm(&l.p.norm, l.in, x, n, y);
        check_rows(&l, x, n, y, T, D + 1, "layer_norm (tokens)");
        check_mask_copied(x, y, n, T, D, "layer_norm");
        op_layer_norm(&l.p.norm, l.in, inplace, n, inplace); /* in == out */
        cr_assert(memcmp(inplace, y, sizeof(float) * len) == 0, "layer_norm in place differs");
        tfree(x);
        tfree(y);
        tfree(inplace);
    }
}

Test(tx_ops, layer_norm_vector)
{
    rng_seed(2);
    for (int it = 0; it < 30; it++) {
        int D = 1 + rnd_int(64), n = 1 + rnd_int(6);
        shape3 s = {D, 1, 1, 0};
        layer l = make_layer(LAYER_LAYER_NORM, s, s);
        l.p.norm = make_norm(D, it % 3 != 0);
        /* values around a large offset: the variance must be taken about
           the mean, not as E[x^2] - E[x]^2 */
        float *x = rnd_normal((size_t)n * D, it % 2 ? 100.0f : 0.0f, 1.0f);
        float *y = filled((size_t)n * D, -777.0f);
        op_layer_norm(&l.p.norm, s, x, n, y);
        check_rows(&l, x, n, y, 1, D, "layer_norm (vector)");
        tfree(x);
        tfree(y);
    }
}

Test(tx_ops, layer_norm_constant_row)
{
    /* a constant row: var 0, so (x - mean) / sqrt(eps) = 0, the output is
       the bias */
    rng_seed(3);
    const int D = 8;
    shape3 s = {D, 1, 1, 0};
    norm_params p = make_norm(D, 1);
    float x[8], y[8];
    for (int d = 0; d < D; d++)
        x[d] = 3.25f;
    op_layer_norm(&p, s, x, 1, y);
    for (int d = 0; d < D; d++)
        cr_assert(fabsf(y[d] - p.bias[d]) <= 1e-6f, "d %d: %g, bias %g", d, y[d], p.bias[d]);
}

static void check_elementwise(layer_kind k, void (*op)(const float *, float *, size_t))
{
    rng_seed(4 + (uint64_t)k);
    const size_t n = 4099;
    float *x = rnd_normal(n, 0.0f, 3.0f), *y = filled(n, -777.0f);
    x[5] = 0.0f;
    x[6] = -0.0f;
    x[7] = 40.0f;
    x[8] = -40.0f;
    x[9] = NAN;
    x[10] = 1e-30f;
    shape3 s = {(int)n, 1, 1, 0};
    layer l = make_layer(k, s, s);
    op(x, y, n);
    cr_assert_eq(check_rows(&l, x, 1, y, 1, (int)n, k == LAYER_GELU ? "gelu" : "tanh"), 1);
    op(x, x, n); /* in place */
    for (size_t i = 0; i < n; i++)
        cr_assert(memcmp(&x[i], &y[i], sizeof(float)) == 0 || (isnan(x[i]) && isnan(y[i])),
                  "in place differs at %zu", i);
    tfree(x);
    tfree(y);
}

Test(tx_ops, gelu) { check_elementwise(LAYER_GELU, op_gelu); }
Test(tx_ops, tanh) { check_elementwise(LAYER_TANH, op_tanh); }

Test(tx_ops, gelu_is_exact_not_tanh_approximation)
{
    /* at x = -2 the two differ by 4.7e-4 (exact -0.0455003, tanh form
       -0.0454023) */
    float x = -2.0f, y;
    op_gelu(&x, &y, 1);
    cr_assert(fabsf(y - (-0.04550026f)) < 2e-6f, "gelu(-2) = %.9g", y);
    x = 1.0f;
    op_gelu(&x, &y, 1);
    cr_assert(fabsf(y - 0.8413447f) < 2e-6f, "gelu(1) = %.9g", y);
}

/* Ulps of y's magnitude in float (the smallest normal's below it). */
static double ulp_of(double y)
{
    float f = (float)fabs(y);
    if (f < FLT_MIN)
        f = FLT_MIN;
    return (double)(nextafterf(f, INFINITY) - f);
}

/* vmath.h's stated bounds, against double exp and erf on every 2^-10 step
 * of [-100, 100] plus points next to the branches: exp within 2 ulp, erf
 * within 3 ulp (or 2^-26 absolute), the GELU within 8 ulp (or 2^-30
 * absolute) of the exact x (1 + erf(x / sqrt 2)) / 2 in double. For
 * contrast, the float formula with erff loses all relative accuracy for x
 * below -5 (1 + erff cancels); erfc's form here does not. */
Test(tx_ops, vmath_bounds)
{
    double we = 0, wr = 0, wg = 0;
    float ae = 0, ar = 0, ag = 0;
    for (int k = -102400; k <= 102400; k++) {
        for (int nb = -1; nb <= 1; nb++) {
            float x = (float)k / 1024.0f;
            x = nb < 0 ? nextafterf(x, -INFINITY) : nb > 0 ? nextafterf(x, INFINITY) : x;
            double xd = x, e = exp(xd), r = erf(xd), g = 0.5 * xd * erfc(-xd / sqrt(2.0));
            if (x >= -87.33f && e < FLT_MAX) { /* below: 0, by design */
                double u = fabs((double)ert_v_exp(x) - e) / ulp_of(e);
                if (u > we)
                    we = u, ae = x;
            }
            double dr = fabs((double)ert_v_erf(x) - r), ur = dr <= 0x1p-26 ? 0 : dr / ulp_of(r);
            if (ur > wr)
                wr = ur, ar = x;
            double dg = fabs((double)ert_v_gelu(x) - g), ug = dg <= 0x1p-30 ? 0 : dg / ulp_of(g);
            if (ug > wg)
                wg = ug, ag = x;
        }
    }
    cr_assert_leq(we, 2.0, "exp: %.2f ulp at %.9g", we, ae);
    cr_assert_leq(wr, 3.0, "erf: %.2f ulp at %.9g", wr, ar);
    cr_assert_leq(wg, 8.0, "gelu: %.2f ulp at %.9g", wg, ag);
    /* op_gelu, as the ops run it (on x86-64 GCC builds, the AVX-512 or
       AVX2 build of the loop, with FMA), within the same bound */
    const size_t N = 204801;
    float *xs = tmalloc(sizeof(float) * N), *ys = tmalloc(sizeof(float) * N);
    for (size_t i = 0; i < N; i++)
        xs[i] = ((float)i - 102400.0f) / 1024.0f;
    op_gelu(xs, ys, N);
    for (size_t i = 0; i < N; i++) {
        double xd = xs[i], g = 0.5 * xd * erfc(-xd / sqrt(2.0)), dg = fabs((double)ys[i] - g);
        cr_assert(dg <= 0x1p-30 || dg <= 8.0 * ulp_of(g), "op_gelu(%.9g) = %.9g, exact %.9g", xs[i],
                  ys[i], g);
    }
    /* the limits, and NaN */
    cr_assert_eq(ert_v_exp(-INFINITY), 0.0f);
    cr_assert(isinf(ert_v_exp(INFINITY)) && isnan(ert_v_exp(NAN)));
    cr_assert(ert_v_erf(INFINITY) == 1.0f && ert_v_erf(-INFINITY) == -1.0f);
    cr_assert(isnan(ert_v_erf(NAN)) && isnan(ert_v_gelu(NAN)));
    cr_assert(isinf(ert_v_gelu(INFINITY)) && ert_v_gelu(-INFINITY) == 0.0f);
    cr_assert_eq(ert_v_gelu(0.0f), 0.0f);
    /* within a few ulp of glibc's erff too, where erf is not tiny */
    for (int k = -4000; k <= 4000; k++) {
        float x = (float)k / 1000.0f, want = erff(x);
        cr_assert_leq(fabsf(ert_v_erf(x) - want), 4.0f * (float)ulp_of(want) + 0x1p-26f,
                      "erf(%g): %.9g, erff %.9g", x, ert_v_erf(x), want);
    }
}

/* ---- token_embed ---------------------------------------------------------------- */

Test(tx_ops, token_embed)
{
    rng_seed(5);
    for (int it = 0; it < 24; it++) {
        int T = 1 + rnd_int(20), D = 1 + rnd_int(33), V = 1 + rnd_int(50), n = 1 + rnd_int(6);
        layer l = make_layer(LAYER_TOKEN_EMBED, (shape3){2, T, 1, 0}, tok_shape(T, D));
        l.p.embed = (embed_params){.vocab = V,
                                   .dim = D,
                                   .weight = rnd_normal((size_t)V * D, 0.0f, 1.0f),
                                   .pos = it % 2 ? rnd_normal((size_t)T * D, 0.0f, 0.5f) : NULL,
                                   .segment = it % 3 ? rnd_normal((size_t)D, 0.0f, 0.3f) : NULL};
        float *x = tmalloc(sizeof(float) * (size_t)n * 2 * T);
        float *y = filled((size_t)n * T * (D + 1), -777.0f);
        cr_assert_not_null(x);
        /* ids: valid, and now and then one that is not an integer in
           [0, V); mask values: 1, 0, and other nonzero values (attended) */
        static const float bad[] = {-1.0f, 0.5f, NAN, INFINITY, -INFINITY, 1e30f, 16777217.0f};
        int bads = 0;
        for (int b = 0; b < n; b++)
            for (int t = 0; t < T; t++) {
                float *row = x + (size_t)b * 2 * T;
                int c = rnd_int(10);
                row[t] = c == 0 ? bad[rnd_int(7)] : c == 1 ? (float)V : (float)rnd_int(V);
                bads += c <= 1;
                int m = rnd_int(6);
                row[T + t] = m == 0 ? 0.0f : m == 1 ? 2.5f : m == 2 ? -1.0f : 1.0f;
            }
        op_token_embed(&l.p.embed, T, x, n, y);
        long nans = check_rows(&l, x, n, y, T, D + 1, "token_embed");
        cr_assert_eq(nans, (long)bads * D, "token_embed: %ld NaN features, %d invalid ids x %d",
                     nans, bads, D);
        for (int b = 0; b < n; b++)
            for (int t = 0; t < T; t++) {
                float m = y[((size_t)b * T + t) * (D + 1) + D];
                cr_assert(m == (x[(size_t)b * 2 * T + T + t] != 0.0f ? 1.0f : 0.0f),
                          "token_embed: sample %d token %d: mask %g for input %g", b, t, m,
                          x[(size_t)b * 2 * T + T + t]);
            }
        tfree(x);
        tfree(y);
    }
}

Test(tx_ops, token_embed_ids_exact_to_2_24)
{
    /* a vocabulary of 2^24 ids would need 2^24 * D floats; the largest id
       that is still exact, with D = 1 */
    const int V = 1 << 24;
    float *w = tmalloc(sizeof(float) * (size_t)V);
    cr_assert_not_null(w);
    for (int i = 0; i < V; i += 4096)
        w[i] = (float)i;
    w[V - 1] = -5.0f;
    embed_params p = {.vocab = V, .dim = 1, .weight = w};
    float in[4] = {(float)(V - 1), 4096.0f, 1.0f, 1.0f}, out[4];
    op_token_embed(&p, 2, in, 1, out);
    cr_assert_eq(out[0], -5.0f);
    cr_assert_eq(out[2], 4096.0f);
    in[0] = (float)V; /* out of range */
    op_token_embed(&p, 2, in, 1, out);
    cr_assert(isnan(out[0]));
    tfree(w);
}

/* ---- patch_embed ---------------------------------------------------------------- */

Test(tx_ops, patch_embed)
{
    rng_seed(6);
    for (int it = 0; it < 24; it++) {
        int C = 1 + rnd_int(4), ph = 1 + rnd_int(4), pw = it % 3 ? ph : 1 + rnd_int(4);
        int gh = 1 + rnd_int(4), gw = 1 + rnd_int(4), D = 1 + rnd_int(24), n = 1 + rnd_int(4);
        int cls = it % 2, pos = (it / 2) % 2;
        int H = gh * ph + (it % 4 == 3 ? ph - 1 : 0), W = gw * pw; /* a remainder row is dropped */
        int T = gh * gw + cls;
        shape3 in = {C, H, W, 0};
        layer l = make_layer(LAYER_PATCH_EMBED, in, tok_shape(T, D));
        l.p.patch =
            (patch_params){.conv = {.in_ch = C,
                                    .out_ch = D,
                                    .kh = ph,
                                    .kw = pw,
                                    .stride_h = ph,
                                    .stride_w = pw,
                                    .dil_h = 1,
                                    .dil_w = 1,
                                    .groups = 1,
                                    .weight = rnd_normal((size_t)D * C * ph * pw, 0.0f, 0.5f),
                                    .bias = rnd_normal((size_t)D, 0.0f, 0.2f)},
                           .cls = cls ? rnd_normal((size_t)D, 0.0f, 1.0f) : NULL,
                           .pos = pos ? rnd_normal((size_t)T * D, 0.0f, 1.0f) : NULL};
        float *x = rnd_normal((size_t)n * shape_size(in), 0.0f, 1.0f);
        float *y = filled((size_t)n * T * (D + 1), -777.0f);
        float *scratch = filled(2 * patch_scratch_floats(&l.p.patch, in) + 1, -777.0f);
        op_patch_embed(&l.p.patch, in, l.out, x, n, y, scratch, 2);
        char what[96];
        snprintf(what, sizeof what, "patch_embed C %d %dx%d patch %dx%d D %d cls %d pos %d", C, H,
                 W, ph, pw, D, cls, pos);
        cr_assert_eq(check_rows(&l, x, n, y, T, D + 1, what), 0);
        for (int b = 0; b < n; b++)
            for (int t = 0; t < T; t++)
                cr_assert_eq(y[((size_t)b * T + t) * (D + 1) + D], 1.0f, "%s: mask", what);
        tfree(x);
        tfree(y);
        tfree(scratch);
    }
}

/* ---- token_pool ----------------------------------------------------------------- */

Test(tx_ops, token_pool)
{
    rng_seed(7);
    for (int it = 0; it < 30; it++) {
        int T = 1 + rnd_int(17), D = 1 + rnd_int(32), n = 2 + rnd_int(5);
        token_pool_mode mode = it % 2 ? TOKEN_POOL_MEAN : TOKEN_POOL_FIRST;
        layer l = make_layer(LAYER_TOKEN_POOL, tok_shape(T, D), (shape3){D, 1, 1, 0});
        l.p.token_pool = mode;
        float *x = token_rows(n, T, D, 1);
        float *y = filled((size_t)n * D, -777.0f);
        op_token_pool(mode, l.in, x, n, y);
        long nans = check_rows(&l, x, n, y, 1, D, mode ? "token_pool mean" : "token_pool first");
        /* mean: the all-padded sample 1 pools to NaN; first: token 0 as it
           is, padded or not */
        cr_assert_eq(nans, mode == TOKEN_POOL_MEAN ? D : 0);
        if (mode == TOKEN_POOL_FIRST)
            for (int b = 0; b < n; b++)
                cr_assert(
                    memcmp(y + (size_t)b * D, x + (size_t)b * T * (D + 1), sizeof(float) * D) == 0,
                    "token_pool first: sample %d is not token 0", b);
        tfree(x);
        tfree(y);
    }
}

/* ---- self_attention ------------------------------------------------------------- */

/* The GEMM tiles the ops are run with: one call per chunk, a small tile
 * (so most calls go through the padded last tile), the engine's. */
static const int TILES[3] = {0, 3, TX_TILE_ROWS};

/* in [n, T, D+1] through op_self_attention and the reference; the scratch
 * is filled with garbage first and must suffice (tx_scratch_floats). */
static long run_attention(const layer *l, const float *x, int n, int tile, const char *what)
{
    int T = shape_tokens(l->in), D = shape_dim(l->in);
    size_t len = (size_t)n * T * (D + 1);
    float *y = filled(len, -777.0f), *scratch = filled(tx_scratch_floats(l, 2) + 1, NAN);
    op_self_attention(&l->p.attn, l->in, x, n, y, scratch, tile, 2);
    long nans = check_rows(l, x, n, y, T, D + 1, what);
    check_mask_copied(x, y, n, T, D, what);
    tfree(y);
    tfree(scratch);
    return nans;
}

Test(tx_ops, self_attention)
{
    rng_seed(8);
    for (int it = 0; it < 40; it++) {
        int D, H;
        pick_dh(&D, &H);
        int T = it < 4 ? 1 : 1 + rnd_int(17), n = 1 + rnd_int(5);
        layer l = make_layer(LAYER_SELF_ATTENTION, tok_shape(T, D), tok_shape(T, D));
        l.p.attn = make_attn(D, H);
        cr_assert_gt(tx_scratch_floats(&l, 2), 0);
        float *x = token_rows(n, T, D, -1);
        char what[80];
        int tile = TILES[it % 3];
        snprintf(what, sizeof what, "self_attention T %d D %d H %d n %d tile %d", T, D, H, n, tile);
        long want = T == 300 ? 128L * D : 0;
        cr_assert_eq(run_attention(&l, x, n, tile, what), want, "%s: NaN without a reason", what);
        tfree(x);
    }
}

Test(tx_ops, self_attention_padding_and_nan)
{
    rng_seed(9);
    const int T = 9, D = 8, H = 2, n = 4;
    layer l = make_layer(LAYER_SELF_ATTENTION, tok_shape(T, D), tok_shape(T, D));
    l.p.attn = make_attn(D, H);
    float *x = token_rows(n, T, D, 1); /* sample 1: every token padded */
    /* sample 2: a NaN feature in an attended token spreads to every query */
    x[(size_t)2 * T * (D + 1) + 0 * (D + 1) + 3] = NAN;
    x[(size_t)2 * T * (D + 1) + 0 * (D + 1) + D] = 1.0f;
    /* sample 3: a padded token's features do not matter */
    float *x2 = tmalloc(sizeof(float) * (size_t)n * T * (D + 1));
    cr_assert_not_null(x2);
    memcpy(x2, x, sizeof(float) * (size_t)n * T * (D + 1));
    float *s3 = x + (size_t)3 * T * (D + 1), *s3b = x2 + (size_t)3 * T * (D + 1);
    s3[0 * (D + 1) + D] = 1.0f;
    s3[4 * (D + 1) + D] = 0.0f;
    s3b[0 * (D + 1) + D] = 1.0f;
    s3b[4 * (D + 1) + D] = 0.0f;
    for (int d = 0; d < D; d++)
        s3b[4 * (D + 1) + d] += 5.0f;
    long nans = run_attention(&l, x, n, 3, "self_attention with padding");
    cr_assert_eq(nans, (long)2 * T * D, "all-padded and NaN samples: %ld NaN features", nans);

    size_t len = (size_t)n * T * (D + 1);
    float *y = tmalloc(sizeof(float) * len), *y2 = tmalloc(sizeof(float) * len);
    float *scratch = tmalloc(sizeof(float) * (tx_scratch_floats(&l, 2) + 1));
    cr_assert(y && y2 && scratch);
    op_self_attention(&l.p.attn, l.in, x, n, y, scratch, 3, 2);
    op_self_attention(&l.p.attn, l.in, x2, n, y2, scratch, 3, 2);
    for (int t = 0; t < T; t++) {
        if (t == 4)
            continue; /* the padded token's own output changes with its query */
        const float *a = y + (size_t)3 * T * (D + 1) + (size_t)t * (D + 1);
        const float *b = y2 + (size_t)3 * T * (D + 1) + (size_t)t * (D + 1);
        cr_assert(memcmp(a, b, sizeof(float) * D) == 0,
                  "token %d: a padded key's features changed the output", t);
    }
    /* the samples are independent: sample 0 alone equals sample 0 in the
       batch, bit for bit where the BLAS rounds a row alike in every slot of
       a call of one shape (the tile fixes the shape) */
    float *one = tmalloc(sizeof(float) * (size_t)T * (D + 1));
    cr_assert_not_null(one);
    op_self_attention(&l.p.attn, l.in, x, 1, one, scratch, 3, 2);
    if (exact_blas())
        cr_assert(memcmp(one, y, sizeof(float) * (size_t)T * (D + 1)) == 0);
    else
        for (int k = 0; k < T * (D + 1); k++)
            cr_assert(tol_logit_ok(one[k], y[k], 1.0f), "token value %d: %g alone, %g in the batch",
                      k, one[k], y[k]);
    tfree(x);
    tfree(x2);
    tfree(y);
    tfree(y2);
    tfree(one);
    tfree(scratch);
}

/* Sequences longer than attention's blocks of queries and keys (64 and 128
 * in tx_ops.c): several blocks each, a whole block of padded keys (which
 * the online softmax skips), padding after the last attended token, a
 * sample attending to one token only, and to its last token only. */
Test(tx_ops, self_attention_long)
{
    rng_seed(15);
    const int Ts[3] = {65, 150, 300};
    for (int it = 0; it < 6; it++) {
        const int T = Ts[it % 3], D = it < 3 ? 8 : 12, H = it < 3 ? 2 : 3, n = 4;
        layer l = make_layer(LAYER_SELF_ATTENTION, tok_shape(T, D), tok_shape(T, D));
        l.p.attn = make_attn(D, H);
        float *x = token_rows(n, T, D, -1);
        for (int t = 0; t < T; t++) {
            float *m1 = x + (size_t)1 * T * (D + 1) + (size_t)t * (D + 1) + D;
            float *m2 = x + (size_t)2 * T * (D + 1) + (size_t)t * (D + 1) + D;
            float *m3 = x + (size_t)3 * T * (D + 1) + (size_t)t * (D + 1) + D;
            if (t >= 128 && t < 256) { /* sample 1: keys 128..255 padded, */
                *m1 = 0.0f;
                if (T == 300) /* NaN there (an invalid id): only their own outputs NaN */
                    for (int e = 0; e < D; e++)
                        m1[e - D] = NAN;
            }
            if (t > T - 10) /* and the tail */
                *m1 = 0.0f;
            *m2 = t == 40 ? 1.0f : 0.0f;    /* sample 2: one token */
            *m3 = t == T - 1 ? 1.0f : 0.0f; /* sample 3: the last one */
        }
        char what[80];
        int tile = TILES[it % 3];
        snprintf(what, sizeof what, "long self_attention T %d D %d H %d tile %d", T, D, H, tile);
        long want = T == 300 ? 128L * D : 0;
        cr_assert_eq(run_attention(&l, x, n, tile, what), want, "%s: NaN without a reason", what);
        tfree(x);
    }
}

/* ---- encoder_block -------------------------------------------------------------- */

static void encoder_cases(int norm_first, int act, uint64_t seed)
{
    rng_seed(seed);
    for (int it = 0; it < 24; it++) {
        int D, H;
        pick_dh(&D, &H);
        int T = it < 3 ? 1 : 1 + rnd_int(17), F = 1 + rnd_int(3 * D + 4), n = 1 + rnd_int(5);
        layer l = make_layer(LAYER_ENCODER_BLOCK, tok_shape(T, D), tok_shape(T, D));
        l.p.enc = make_enc(D, H, F, norm_first, act);
        size_t len = (size_t)n * T * (D + 1);
        int padded = n > 1 ? n - 1 : -1;
        float *x = token_rows(n, T, D, padded);
        float *y = filled(len, -777.0f), *scratch = filled(tx_scratch_floats(&l, 2) + 1, NAN);
        int tile = TILES[it % 3];
        op_encoder_block(&l.p.enc, l.in, x, n, y, scratch, tile, 2);
        char what[128];
        snprintf(what, sizeof what, "encoder_block %s %s T %d D %d H %d F %d n %d tile %d",
                 norm_first ? "pre-LN" : "post-LN", act == ERT_ACT_GELU ? "gelu" : "relu", T, D, H,
                 F, n, tile);
        long nans = check_rows(&l, x, n, y, T, D + 1, what);
        /* the all-padded sample attends to nothing: NaN throughout */
        cr_assert_eq(nans, padded >= 0 ? (long)T * D : 0, "%s: %ld NaN features", what, nans);
        check_mask_copied(x, y, n, T, D, what);
        tfree(x);
        tfree(y);
        tfree(scratch);
    }
}

Test(tx_ops, encoder_pre_ln_gelu) { encoder_cases(1, ERT_ACT_GELU, 10); }
Test(tx_ops, encoder_pre_ln_relu) { encoder_cases(1, ERT_ACT_RELU, 11); }
Test(tx_ops, encoder_post_ln_gelu) { encoder_cases(0, ERT_ACT_GELU, 12); }
Test(tx_ops, encoder_post_ln_relu) { encoder_cases(0, ERT_ACT_RELU, 13); }

Test(tx_ops, scratch_sizes)
{
    /* other layers need none; the token layers' needs grow with T and D,
       linearly in T (fused attention keeps no T x T scores) */
    layer l = make_layer(LAYER_LINEAR, (shape3){4, 1, 1, 0}, (shape3){4, 1, 1, 0});
    cr_assert_eq(tx_scratch_floats(&l, 2), 0);
    rng_seed(14);
    layer a = make_layer(LAYER_SELF_ATTENTION, tok_shape(4, 8), tok_shape(4, 8));
    a.p.attn = make_attn(8, 2);
    layer b = a;
    b.in = b.out = tok_shape(TX_CHUNK_TOKENS * 2, 8);
    cr_assert_gt(tx_scratch_floats(&b, 2), tx_scratch_floats(&a, 2));
    layer c = a;
    c.in = c.out = tok_shape(65536, 8);
    size_t sb = tx_scratch_floats(&b, 2), sc = tx_scratch_floats(&c, 2);
    cr_assert_leq(sc, sb * 9, "T %d: %zu floats, T %d: %zu", 65536, sc, TX_CHUNK_TOKENS * 2, sb);
    cr_assert_lt(sc, (size_t)65536 * 1024, "T 65536, D 8: %zu scratch floats", sc);
    /* a bigger team needs more (each thread's attention block), not much */
    cr_assert_gt(tx_scratch_floats(&a, 4), tx_scratch_floats(&a, 2));
}

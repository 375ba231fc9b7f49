/* cpu_ops.c - the CPU layer ops (cpu_ops.h): im2col + OpenBLAS SGEMM for
 * convolution and linear layers, plain loops for the rest. run_layers
 * (layers.c) chains them with the transformer ops (tx_ops.c). */
#include "cpu/cpu_ops.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ==== convolution ============================================================ */

/* The GEMM width (output pixels x rows) the batched conv aims at. */
#define CONV_GEMM_COLS 512

static int conv_is_pointwise(const conv_params *p)
{
    return p->kh == 1 && p->kw == 1 && p->stride_h == 1 && p->stride_w == 1 && p->pad_h == 0 &&
           p->pad_w == 0;
}

size_t conv_col_floats(const conv_params *p, shape3 in_s, int n)
{
    if (conv_is_pointwise(p))
        return 0;
    int ho = conv_out_dim(in_s.h, p->kh, p->stride_h, p->pad_h, p->dil_h);
    int wo = conv_out_dim(in_s.w, p->kw, p->stride_w, p->pad_w, p->dil_w);
    return (size_t)(p->in_ch / p->groups) * p->kh * p->kw * (size_t)ho * wo * (size_t)n;
}

int conv_chunk_rows(const conv_params *p, shape3 in_s)
{
    if (conv_is_pointwise(p))
        return 1;
    int ho = conv_out_dim(in_s.h, p->kh, p->stride_h, p->pad_h, p->dil_h);
    int wo = conv_out_dim(in_s.w, p->kw, p->stride_w, p->pad_w, p->dil_w);
    size_t hw = (size_t)ho * wo;
    size_t nb = (CONV_GEMM_COLS + hw - 1) / hw;
    return nb < CONV_CHUNK_MAX ? (int)nb : CONV_CHUNK_MAX;
}

size_t conv_chunk_row_floats(const conv_params *p, shape3 in_s)
{
    int ho = conv_out_dim(in_s.h, p->kh, p->stride_h, p->pad_h, p->dil_h);
    int wo = conv_out_dim(in_s.w, p->kw, p->stride_w, p->pad_w, p->dil_w);
    return conv_col_floats(p, in_s, 1) + (size_t)(p->out_ch / p->groups) * ho * wo;
}

/* im2col of one sample, one group.
 *   x    [cin_g, H, W]: the group's input channels of one sample
 *   col  rows (c*kh + i)*kw + j, each of length ld; this sample's columns
 *        start at col (column oh*Wo + ow), so several samples can sit side
 *        by side in one matrix of row length ld. */
static void im2col(const conv_params *p, int cin_g, int h, int w, int ho, int wo, const float *x,
                   float *col, size_t ld)
{
    const int sh = p->stride_h, sw = p->stride_w;
    for (int c = 0; c < cin_g; c++) {
        const float *xc = x + (size_t)c * h * w;
        for (int i = 0; i < p->kh; i++) {
            for (int j = 0; j < p->kw; j++) {
                float *row = col + (size_t)((c * p->kh + i) * p->kw + j) * ld;
                int dx = j * p->dil_w - p->pad_w; /* iw = ow*sw + dx */
                /* the ow range whose iw lies inside [0, w) */
                int lo = dx >= 0 ? 0 : (-dx + sw - 1) / sw;
                int hi = (w - 1 - dx) < 0 ? 0 : (w - 1 - dx) / sw + 1;
                if (hi > wo)
                    hi = wo;
                if (lo > hi)
                    lo = hi;
                for (int oh = 0; oh < ho; oh++) {
                    float *r = row + (size_t)oh * wo;
                    int ih = oh * sh - p->pad_h + i * p->dil_h;
                    if (ih < 0 || ih >= h) {
                        memset(r, 0, sizeof(float) * wo);
                        continue;
                    }
                    const float *xr = xc + (size_t)ih * w + dx;
                    for (int ow = 0; ow < lo; ow++)
                        r[ow] = 0.0f;
                    if (sw == 1) {
                        if (hi > lo)
                            memcpy(r + lo, xr + lo, sizeof(float) * (hi - lo));
                    } else {
                        for (int ow = lo; ow < hi; ow++)
                            r[ow] = xr[(size_t)ow * sw];
                    }
                    for (int ow = hi; ow < wo; ow++)
                        r[ow] = 0.0f;
                }
            }
        }
    }
}

/* out[co, :] += bias[co] (already in place by the GEMM's beta) then ReLU. */
static void fill_bias(float *out, const float *bias, int cout, size_t hw)
{
    for (int co = 0; co < cout; co++) {
        float b = bias ? bias[co] : 0.0f;
        float *o = out + (size_t)co * hw;
        for (size_t q = 0; q < hw; q++)
            o[q] = b;
    }
}

void op_conv2d(const conv_params *p, shape3 in_s, const float *in, int n, float *out, int relu,
               float *col, size_t col_cap, int batched)
{
    const int g = p->groups, cin_g = p->in_ch / g, cout_g = p->out_ch / g;
    const int ho = conv_out_dim(in_s.h, p->kh, p->stride_h, p->pad_h, p->dil_h);
    const int wo = conv_out_dim(in_s.w, p->kw, p->stride_w, p->pad_w, p->dil_w);
    const size_t hw_in = (size_t)in_s.h * in_s.w, hw = (size_t)ho * wo;
    const size_t in_row = (size_t)p->in_ch * hw_in, out_row = (size_t)p->out_ch * hw;
    const int kdim = cin_g * p->kh * p->kw;  /* GEMM inner dimension */
    const size_t wg = (size_t)cout_g * kdim; /* weights per group */

    if (conv_is_pointwise(p)) {
        /* out_s,g [cout_g, HW] = W_g [cout_g, cin_g] * x_s,g [cin_g, HW] */
        for (int s = 0; s < n; s++) {
            float *o = out + s * out_row;
            fill_bias(o, p->bias, p->out_ch, hw);
            for (int gi = 0; gi < g; gi++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout_g, (int)hw, cin_g, 1.0f,
                            p->weight + gi * wg, kdim, in + s * in_row + gi * cin_g * hw_in,
                            (int)hw_in, 1.0f, o + (size_t)gi * cout_g * hw, (int)hw);
        }
        if (relu)
            op_relu(out, out, (size_t)n * out_row);
        return;
    }

    /* Rows per batched GEMM: enough for about CONV_GEMM_COLS columns, and
     * what the scratch holds. Measured (single and two OpenBLAS threads,
     * 1..256 rows, Fashion-MNIST-sized layers): batching every row into one
     * GEMM is slower than one GEMM per sample once the column matrix leaves
     * the cache (up to 2x at 256 rows); it only pays where a sample has few
     * output pixels (7x7), so rows are batched just up to a GEMM width the
     * BLAS kernels run well on. */
    /* The chunk size depends on the layer alone, never on n or on where the
     * rows came from: the last chunk is padded with zero columns. A GEMM's
     * rounding depends on its shape (OpenBLAS picks kernels and blockings by
     * size), but not on where a column sits inside a call of a given shape
     * (measured), so a row's result is the same whatever batch it is in.
     * That is what makes MASKED and COMPACTED agree bit for bit. */
    int nb = conv_chunk_rows(p, in_s);
    if (batched && nb > 1 && (size_t)nb * conv_chunk_row_floats(p, in_s) <= col_cap) {
        /* Per chunk of nb rows and per group: tmp [cout_g, nb*HW] = W_g *
         * col [kdim, nb*HW], then scattered to NCHW with the bias and ReLU
         * (a pass the per-sample path spends on the bias anyway). */
        const size_t ld = hw * nb;
        float *tmp = col + (size_t)kdim * ld;
        for (int s0 = 0; s0 < n; s0 += nb) {
            int m = n - s0 < nb ? n - s0 : nb;
            const float *x0 = in + s0 * in_row;
            float *o0 = out + s0 * out_row;
            for (int gi = 0; gi < g; gi++) {
                for (int s = 0; s < m; s++)
                    im2col(p, cin_g, in_s.h, in_s.w, ho, wo, x0 + s * in_row + gi * cin_g * hw_in,
                           col + s * hw, ld);
                for (int k = 0; m < nb && k < kdim; k++) /* padding columns */
                    memset(col + (size_t)k * ld + (size_t)m * hw, 0, sizeof(float) * (nb - m) * hw);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout_g, (int)ld, kdim, 1.0f,
                            p->weight + gi * wg, kdim, col, (int)ld, 0.0f, tmp, (int)ld);
                for (int co = 0; co < cout_g; co++) {
                    int oc = gi * cout_g + co;
                    float b = p->bias ? p->bias[oc] : 0.0f;
                    for (int s = 0; s < m; s++) {
                        const float *t = tmp + (size_t)co * ld + s * hw;
                        float *o = o0 + s * out_row + (size_t)oc * hw;
                        if (relu) {
                            for (size_t q = 0; q < hw; q++) {
                                float v = t[q] + b;
                                o[q] = v < 0.0f ? 0.0f : v; /* NaN stays NaN, as op_relu */
                            }
                        } else {
                            for (size_t q = 0; q < hw; q++)
                                o[q] = t[q] + b;
                        }
                    }
                }
            }
        }
        return;
    }

    /* Per sample: col [kdim, HW] per group, GEMM straight into the output. */
    for (int s = 0; s < n; s++) {
        float *o = out + s * out_row;
        fill_bias(o, p->bias, p->out_ch, hw);
        for (int gi = 0; gi < g; gi++) {
            im2col(p, cin_g, in_s.h, in_s.w, ho, wo, in + s * in_row + gi * cin_g * hw_in, col, hw);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout_g, (int)hw, kdim, 1.0f,
                        p->weight + gi * wg, kdim, col, (int)hw, 1.0f, o + (size_t)gi * cout_g * hw,
                        (int)hw);
        }
    }
    if (relu)
        op_relu(out, out, (size_t)n * out_row);
}

/* ==== linear ================================================================== */

/* One GEMM of exactly t rows: out [t, fout] = bias + in W^T. */
static void linear_tile(const linear_params *p, const float *in, float *out, int t)
{
    /* (not I/O: cblas.h pulls in complex.h, which defines I) */
    const int fin = p->in_features, fout = p->out_features;
    for (int s = 0; s < t; s++) {
        float *o = out + (size_t)s * fout;
        if (p->bias)
            memcpy(o, p->bias, sizeof(float) * fout);
        else
            memset(o, 0, sizeof(float) * fout);
    }
    /* W stored [fout, fin] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, fout, fin, 1.0f, in, fin, p->weight,
                fin, 1.0f, out, fout);
}

int ops_blas_batch_invariant(void)
{
    /* Shapes like a hidden layer and a classifier head, tiles of 16 and 64
     * rows: one row placed first and last among different neighbours. */
    static const int shapes[2][3] = {{256, 96, GEMM_ROWS_MAX}, {64, 10, GEMM_ROWS_MIN}};
    int ok = 1;
    for (int si = 0; si < 2 && ok; si++) {
        const int K = shapes[si][0], N = shapes[si][1], T = shapes[si][2];
        float *a = malloc(sizeof(float) * (size_t)T * K),
              *w = malloc(sizeof(float) * (size_t)N * K);
        float *c0 = malloc(sizeof(float) * (size_t)T * N),
              *c1 = malloc(sizeof(float) * (size_t)T * N);
        if (!a || !w || !c0 || !c1) {
            ok = 0; /* cannot tell: claim nothing */
        } else {
            uint32_t x = 12345u + (uint32_t)si;
            for (int i = 0; i < N * K; i++)
                w[i] = (float)((x = x * 1664525u + 1013904223u) >> 8) * 0x1p-24f - 0.5f;
            for (int i = 0; i < T * K; i++)
                a[i] = (float)((x = x * 1664525u + 1013904223u) >> 8) * 0x1p-24f - 0.5f;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, a, K, w, K, 0.0f,
                        c0, N);
            /* move row 0 to the last slot, shift the others up */
            float *b = malloc(sizeof(float) * (size_t)T * K);
            if (!b) {
                ok = 0;
            } else {
                memcpy(b, a + K, sizeof(float) * (size_t)(T - 1) * K);
                memcpy(b + (size_t)(T - 1) * K, a, sizeof(float) * K);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, b, K, w, K,
                            0.0f, c1, N);
                ok = memcmp(c0, c1 + (size_t)(T - 1) * N, sizeof(float) * N) == 0 &&
                     memcmp(c0 + N, c1, sizeof(float) * (size_t)(T - 1) * N) == 0;
                free(b);
            }
        }
        free(a);
        free(w);
        free(c0);
        free(c1);
    }
    return ok;
}

int linear_tile_rows(int max_batch)
{
    int t = GEMM_ROWS_MIN;
    while (t < GEMM_ROWS_MAX && 4 * t <= max_batch)
        t *= 2;
    return t;
}

void op_linear(const linear_params *p, const float *in, int n, float *out, int relu, int t,
               float *tile)
{
    /* Tiles of exactly t rows, the last one padded through `tile`: a row's
     * result then does not depend on n (see op_conv2d). */
    const size_t fin = (size_t)p->in_features, fout = (size_t)p->out_features;
    int full = n / t * t;
    for (int s0 = 0; s0 < full; s0 += t)
        linear_tile(p, in + s0 * fin, out + s0 * fout, t);
    if (full < n) {
        int m = n - full;
        float *tin = tile, *tout = tile + t * fin;
        memcpy(tin, in + full * fin, sizeof(float) * m * fin);
        memset(tin + m * fin, 0, sizeof(float) * (t - m) * fin);
        linear_tile(p, tin, tout, t);
        memcpy(out + full * fout, tout, sizeof(float) * m * fout);
    }
    if (relu)
        op_relu(out, out, (size_t)n * fout);
}

/* ==== pooling ================================================================= */

void op_maxpool2d(const pool_params *p, shape3 in_s, const float *in, int n, float *out)
{
    const int h = in_s.h, w = in_s.w;
    const int ho = conv_out_dim(h, p->kh, p->stride_h, p->pad_h, 1);
    const int wo = conv_out_dim(w, p->kw, p->stride_w, p->pad_w, 1);
    const size_t planes = (size_t)n * in_s.c;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *x = in + pl * h * w;
        float *o = out + pl * ho * wo;
        for (int oh = 0; oh < ho; oh++) {
            int h0 = oh * p->stride_h - p->pad_h, h1 = h0 + p->kh;
            if (h0 < 0)
                h0 = 0;
            if (h1 > h)
                h1 = h;
            for (int ow = 0; ow < wo; ow++) {
                int w0 = ow * p->stride_w - p->pad_w, w1 = w0 + p->kw;
                if (w0 < 0)
                    w0 = 0;
                if (w1 > w)
                    w1 = w;
                float m = -INFINITY;
                int nan = 0;
                for (int ih = h0; ih < h1; ih++)
                    for (int iw = w0; iw < w1; iw++) {
                        float v = x[(size_t)ih * w + iw];
                        nan |= v != v;
                        m = v > m ? v : m;
                    }
                /* PyTorch's max propagates NaN */
                o[(size_t)oh * wo + ow] = nan ? NAN : m;
            }
        }
    }
}

void op_avgpool2d(const pool_params *p, shape3 in_s, const float *in, int n, float *out)
{
    const int h = in_s.h, w = in_s.w;
    const int ho = conv_out_dim(h, p->kh, p->stride_h, p->pad_h, 1);
    const int wo = conv_out_dim(w, p->kw, p->stride_w, p->pad_w, 1);
    const size_t planes = (size_t)n * in_s.c;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *x = in + pl * h * w;
        float *o = out + pl * ho * wo;
        for (int oh = 0; oh < ho; oh++) {
            int h0 = oh * p->stride_h - p->pad_h, h1 = h0 + p->kh;
            if (h1 > h + p->pad_h)
                h1 = h + p->pad_h;
            int dh = h1 - h0; /* the window within the padded input */
            if (h0 < 0)
                h0 = 0;
            if (h1 > h)
                h1 = h;
            for (int ow = 0; ow < wo; ow++) {
                int w0 = ow * p->stride_w - p->pad_w, w1 = w0 + p->kw;
                if (w1 > w + p->pad_w)
                    w1 = w + p->pad_w;
                int dw = w1 - w0;
                if (w0 < 0)
                    w0 = 0;
                if (w1 > w)
                    w1 = w;
                float s = 0.0f;
                for (int ih = h0; ih < h1; ih++)
                    for (int iw = w0; iw < w1; iw++)
                        s += x[(size_t)ih * w + iw];
                o[(size_t)oh * wo + ow] = s / (float)(dh * dw);
            }
        }
    }
}

void op_global_avgpool(shape3 in_s, const float *in, int n, float *out)
{
    const size_t hw = (size_t)in_s.h * in_s.w, planes = (size_t)n * in_s.c;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *x = in + pl * hw;
        float s = 0.0f;
        for (size_t q = 0; q < hw; q++)
            s += x[q];
        out[pl] = s / (float)hw;
    }
}

/* ==== elementwise ============================================================= */

void op_relu(const float *in, float *out, size_t len)
{
    /* written so that NaN stays NaN, as torch.relu */
    for (size_t i = 0; i < len; i++)
        out[i] = in[i] < 0.0f ? 0.0f : in[i];
}

void op_sigmoid(const float *in, float *out, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out[i] = 1.0f / (1.0f + expf(-in[i]));
}

void op_add(const float *a, const float *b, float *out, size_t len, int relu)
{
    if (relu) {
        for (size_t i = 0; i < len; i++) {
            float v = a[i] + b[i];
            out[i] = v < 0.0f ? 0.0f : v;
        }
    } else {
        for (size_t i = 0; i < len; i++)
            out[i] = a[i] + b[i];
    }
}

void op_normalize(shape3 s, const float *in, int n, float *out, float scale, const float *mean,
                  const float *std)
{
    const size_t hw = (size_t)s.h * s.w;
    for (int r = 0; r < n; r++)
        for (int c = 0; c < s.c; c++) {
            size_t off = ((size_t)r * s.c + c) * hw;
            float m = mean[c], inv = 1.0f / std[c];
            for (size_t q = 0; q < hw; q++)
                out[off + q] = (in[off + q] * scale - m) * inv;
        }
}

/* tx_math.h - the per-value and per-row math of the transformer kernels
 * (kernels/transformer.cu) and of the activations (kernels/elementwise.cu),
 * written once so the host test (tests/unit/test_kernels_host.c) checks it
 * against plain loops. The kernels split a row over a warp; the row
 * functions here are the same formulas in one thread, the order the host
 * test replays.
 *
 * Semantics: models/FORMAT.md, "Transformer encoders"; the CPU reference is
 * src/cpu/tx_ops.h.
 */
#ifndef ERT_TX_MATH_H
#define ERT_TX_MATH_H

#include <math.h>

#include "act.h"
#include "policy.h" /* ERT_HD */

/* Exact GELU, as torch.nn.functional.gelu (approximate='none'):
 * x * 0.5 * (1 + erf(x / sqrt 2)). */
static inline ERT_HD float ert_gelu(float x)
{
    return x * 0.5f * (1.0f + erff(x * 0.70710678118654752440f));
}

/* act.h's activation of one value. ReLU keeps NaN (as torch.relu). */
static inline ERT_HD float ert_act_apply(float v, int act)
{
    switch (act) {
    case ERT_ACT_RELU: return v < 0.0f ? 0.0f : v;
    case ERT_ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case ERT_ACT_GELU: return ert_gelu(v);
    case ERT_ACT_TANH: return tanhf(v);
    default: return v;
    }
}

/* The embedding row of a token id stored as a float: the id when it is an
 * integer in [0, vocab), else -1 (NaN, infinities, fractions, negatives). */
static inline ERT_HD int ert_token_row(float v, int vocab)
{
    if (!(v >= 0.0f) || !(v < (float)vocab))
        return -1;
    int id = (int)v;
    return (float)id == v ? id : -1;
}

/* A mask value as the token layers store it: 1 attended, 0 padding. */
static inline ERT_HD float ert_mask_value(float v) { return v != 0.0f ? 1.0f : 0.0f; }

/* ---- layer norm ------------------------------------------------------------------- */

/* 1 / sqrt(var + eps), var the biased variance (as PyTorch). */
static inline ERT_HD float ert_ln_rstd(float var, float eps) { return 1.0f / sqrtf(var + eps); }

static inline ERT_HD float ert_ln_apply(float x, float mean, float rstd, float w, float b)
{
    return (x - mean) * rstd * w + b;
}

/* y = layer_norm(x + add) over D values; add (or NULL) is added to each
 * value first (a bias the caller did not add yet). Two passes: the mean,
 * then the mean of squared deviations. y may equal x. */
static inline ERT_HD void ert_ln_row(const float *x, const float *add, float *y, int D, float eps,
                                     const float *w, const float *b)
{
    float sum = 0.0f;
    for (int j = 0; j < D; j++)
        sum += add ? x[j] + add[j] : x[j];
    const float mean = sum / (float)D;
    float sq = 0.0f;
    for (int j = 0; j < D; j++) {
        float d = (add ? x[j] + add[j] : x[j]) - mean;
        sq += d * d;
    }
    const float rstd = ert_ln_rstd(sq / (float)D, eps);
    for (int j = 0; j < D; j++)
        y[j] = ert_ln_apply(add ? x[j] + add[j] : x[j], mean, rstd, w[j], b[j]);
}

/* ---- masked softmax ------------------------------------------------------------------ */

/* An attention score with its key's mask: padded keys get -inf. */
static inline ERT_HD float ert_key_score(float s, float key_mask)
{
    return key_mask != 0.0f ? s : -INFINITY;
}

/* Softmax of one row of T scores in place; key j's mask value is
 * mask[j * mstride]. Every key padded: every output NaN (as PyTorch's
 * key_padding_mask). A NaN score makes the whole row NaN. */
static inline ERT_HD void ert_masked_softmax_row(float *s, const float *mask, int mstride, int T)
{
    float mx = -INFINITY;
    for (int j = 0; j < T; j++) {
        s[j] = ert_key_score(s[j], mask[(long)j * mstride]);
        mx = s[j] > mx ? s[j] : mx;
    }
    if (mx == -INFINITY) {
        for (int j = 0; j < T; j++)
            s[j] = NAN;
        return;
    }
    float sum = 0.0f;
    for (int j = 0; j < T; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    for (int j = 0; j < T; j++)
        s[j] = s[j] / sum;
}

#endif /* ERT_TX_MATH_H */

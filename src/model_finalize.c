/* model_finalize.c - shapes, MACs and graph checks of a parsed model.
 *
 * Shapes follow PyTorch (floor mode); MACs are counted as src/plan.h
 * defines them. Messages name the list and the layer by name, since
 * batchnorm2d and dropout layers are gone by now and JSON indices no longer
 * match.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "act.h"
#include "model_parse.h"
#include "util.h"
#include "policy.h"

/* Floats per sample of any one activation; far beyond any model we run. */
#define MAX_ACT_FLOATS ((uint64_t)1 << 30)

static int u64_mul(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

static const char *model_file(const ert_model *m) { return m->path[0] ? m->path : "model"; }

/* Output extent of a window op: floor((n + 2p - eff) / s) + 1, or 0 when the
 * window does not fit. */
static int64_t window_out(int64_t n, int64_t pad, int64_t eff, int64_t stride)
{
    int64_t num = n + 2 * pad - eff;
    return num < 0 ? 0 : num / stride + 1;
}

static ert_status finalize_list(const ert_model *m, layer_list *l, const char *where, int nested,
                                shape3 in, shape3 *out, uint64_t *macs, ert_error *err);

#define LFAIL(...) ert_fail(err, ERT_FORMAT, __VA_ARGS__)

/* The layer's output shape (checked) and MACs. */
static ert_status set_output(const ert_model *m, layer *l, const char *where, shape3 o,
                             uint64_t macs, ert_error *err)
{
    if (o.c < 1 || o.h < 1 || o.w < 1 || shape_size(o) > MAX_ACT_FLOATS)
        return LFAIL("%s: %s layer '%s': output %dx%dx%d is empty or too large", model_file(m),
                     where, l->name, o.c, o.h, o.w);
    l->out = o;
    l->macs = macs;
    return ERT_OK;
}

/* a * b * c, 0 on overflow (a MAC count is never 0 for a valid layer). */
static uint64_t mul3(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t r;
    return u64_mul(a, b, &r) && u64_mul(r, c, &r) ? r : 0;
}

static int is_tx_kind(layer_kind k)
{
    return k == LAYER_PATCH_EMBED || k == LAYER_TOKEN_EMBED || k == LAYER_LAYER_NORM ||
           k == LAYER_GELU || k == LAYER_TANH || k == LAYER_SELF_ATTENTION ||
           k == LAYER_ENCODER_BLOCK || k == LAYER_TOKEN_POOL;
}

static ert_status check_norm(const ert_model *m, const layer *l, const char *where,
                             const char *what, const norm_params *p, int dim, ert_error *err)
{
    if (p->dim != dim)
        return LFAIL("%s: %s layer '%s': %snormalized_shape is %d, but the features are %d",
                     model_file(m), where, l->name, what, p->dim, dim);
    if (!p->weight || !p->bias || !(p->eps >= 0))
        return LFAIL("%s: %s layer '%s': %slayer_norm parameters out of range", model_file(m),
                     where, l->name, what);
    return ERT_OK;
}

static ert_status check_attention(const ert_model *m, const layer *l, const char *where,
                                  const char *what, const attention_params *p, int dim,
                                  ert_error *err)
{
    if (p->dim != dim)
        return LFAIL("%s: %s layer '%s': %sembed_dim is %d, but the tokens have %d features",
                     model_file(m), where, l->name, what, p->dim, dim);
    if (p->heads < 1 || p->dim % p->heads || !p->in_weight || !p->in_bias || !p->out_weight ||
        !p->out_bias)
        return LFAIL("%s: %s layer '%s': %sself_attention parameters out of range", model_file(m),
                     where, l->name, what);
    return ERT_OK;
}

/* Self-attention MACs per sample: T * 4D^2 + 2 * T^2 * D (FORMAT.md). */
static uint64_t attention_macs(uint64_t T, uint64_t D)
{
    uint64_t a = mul3(T, 4 * D, D), b = mul3(2 * T, T, D);
    return a && b && a <= UINT64_MAX - b ? a + b : 0;
}

/* The transformer layers (FORMAT.md, "Transformer encoders"). */
static ert_status finalize_tx_layer(const ert_model *m, layer *l, const char *where, int nested,
                                    ert_error *err)
{
    const char *f = model_file(m);
    shape3 in = l->in, o = in;
    uint64_t macs = 0;
    ert_status st;
    const char *kind = layer_kind_name(l->kind);
    if (nested)
        return LFAIL("%s: %s layer '%s': %s inside a residual is not supported", f, where, l->name,
                     kind);
    int T = shape_tokens(in), D = shape_dim(in);
    int reads_tokens = l->kind == LAYER_SELF_ATTENTION || l->kind == LAYER_ENCODER_BLOCK ||
                       l->kind == LAYER_TOKEN_POOL;
    if (reads_tokens && in.tokens != SHAPE_TOKENS)
        return LFAIL("%s: %s layer '%s': %s reads a token activation, but its input is %s", f,
                     where, l->name, kind,
                     in.tokens == SHAPE_IDS ? "the token input (a token_embed reads it)"
                                            : "not one");
    if ((l->kind == LAYER_GELU || l->kind == LAYER_TANH) && in.tokens != SHAPE_PLAIN)
        return LFAIL("%s: %s layer '%s': %s cannot read %s", f, where, l->name, kind,
                     in.tokens == SHAPE_IDS ? "the token input" : "a token activation");
    switch (l->kind) {
    case LAYER_PATCH_EMBED: {
        const patch_params *p = &l->p.patch;
        const conv_params *c = &p->conv;
        if (in.tokens != SHAPE_PLAIN)
            return LFAIL("%s: %s layer '%s': patch_embed reads an image [C, H, W]", f, where,
                         l->name);
        if (c->in_ch != in.c)
            return LFAIL("%s: %s layer '%s': in_channels is %d, but its input has %d channels", f,
                         where, l->name, c->in_ch, in.c);
        if (!c->weight || !c->bias || c->kh < 1 || c->kw < 1 || c->kh > in.h || c->kw > in.w)
            return LFAIL("%s: %s layer '%s': the %dx%d patch does not fit the %dx%d input", f,
                         where, l->name, c->kh, c->kw, in.h, in.w);
        int64_t patches = (int64_t)(in.h / c->kh) * (in.w / c->kw), t = patches + (p->cls != NULL);
        if (t > 65536)
            return LFAIL("%s: %s layer '%s': %lld tokens, more than 65536", f, where, l->name,
                         (long long)t);
        if (p->pos && p->pos_len != t)
            return LFAIL("%s: %s layer '%s': position has %d rows, but there are %lld tokens", f,
                         where, l->name, p->pos_len, (long long)t);
        o = (shape3){(int)t, c->out_ch + 1, 1, SHAPE_TOKENS};
        macs = mul3((uint64_t)patches * (uint64_t)c->out_ch, (uint64_t)c->in_ch,
                    (uint64_t)c->kh * (uint64_t)c->kw);
        if (!macs)
            return LFAIL("%s: %s layer '%s': MAC count overflows", f, where, l->name);
        break;
    }
    case LAYER_TOKEN_EMBED: {
        const embed_params *p = &l->p.embed;
        if (in.tokens != SHAPE_IDS)
            return LFAIL("%s: %s layer '%s': token_embed reads the token input (input.tokens), "
                         "as the first backbone layer",
                         f, where, l->name);
        T = in.h;
        if (!p->weight || p->vocab < 1 || p->dim < 1)
            return LFAIL("%s: %s layer '%s': token_embed parameters out of range", f, where,
                         l->name);
        if (p->pos && p->pos_len != T)
            return LFAIL("%s: %s layer '%s': position has %d rows, but there are %d tokens", f,
                         where, l->name, p->pos_len, T);
        o = (shape3){T, p->dim + 1, 1, SHAPE_TOKENS};
        break;
    }
    case LAYER_LAYER_NORM:
        if (in.tokens == SHAPE_IDS)
            return LFAIL("%s: %s layer '%s': layer_norm cannot read the token input", f, where,
                         l->name);
        st = check_norm(m, l, where, "", &l->p.norm,
                        in.tokens == SHAPE_TOKENS ? D : (int)shape_size(in), err);
        if (st != ERT_OK)
            return st;
        break;
    case LAYER_GELU:
    case LAYER_TANH: break;
    case LAYER_SELF_ATTENTION:
        if ((st = check_attention(m, l, where, "", &l->p.attn, D, err)) != ERT_OK)
            return st;
        macs = attention_macs((uint64_t)T, (uint64_t)D);
        break;
    case LAYER_ENCODER_BLOCK: {
        const encoder_params *p = &l->p.enc;
        if ((st = check_attention(m, l, where, "attention.", &p->attn, D, err)) ||
            (st = check_norm(m, l, where, "norm1.", &p->norm1, D, err)) ||
            (st = check_norm(m, l, where, "norm2.", &p->norm2, D, err)))
            return st;
        if (p->ff1.in_features != D || p->ff2.out_features != D ||
            p->ff2.in_features != p->ff1.out_features || !p->ff1.weight || !p->ff2.weight ||
            !p->ff1.bias || !p->ff2.bias)
            return LFAIL("%s: %s layer '%s': linear1 must map the %d features to F and linear2 F "
                         "back to %d (got %d -> %d, %d -> %d)",
                         f, where, l->name, D, D, p->ff1.in_features, p->ff1.out_features,
                         p->ff2.in_features, p->ff2.out_features);
        if (p->act != ERT_ACT_RELU && p->act != ERT_ACT_GELU)
            return LFAIL("%s: %s layer '%s': activation out of range", f, where, l->name);
        uint64_t a = attention_macs((uint64_t)T, (uint64_t)D);
        uint64_t b = mul3(2 * (uint64_t)T, (uint64_t)D, (uint64_t)p->ff1.out_features);
        if (!a || !b || a > UINT64_MAX - b)
            return LFAIL("%s: %s layer '%s': MAC count overflows", f, where, l->name);
        macs = a + b;
        break;
    }
    case LAYER_TOKEN_POOL: o = (shape3){D, 1, 1, SHAPE_PLAIN}; break;
    case LAYER_CONV2D:
    case LAYER_BATCHNORM2D:
    case LAYER_RELU:
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D:
    case LAYER_GLOBAL_AVGPOOL:
    case LAYER_FLATTEN:
    case LAYER_LINEAR:
    case LAYER_RESIDUAL:
    case LAYER_DROPOUT:
    case LAYER_SIGMOID:
    case LAYER_KIND_COUNT:
        return ert_fail(err, ERT_INTERNAL, "%s: %s layer '%s': %s is not a transformer layer", f,
                        where, l->name, kind);
    }
    if (l->kind == LAYER_SELF_ATTENTION && !macs)
        return LFAIL("%s: %s layer '%s': MAC count overflows", f, where, l->name);
    return set_output(m, l, where, o, macs, err);
}

static ert_status finalize_layer(const ert_model *m, layer *l, const char *where, int nested,
                                 ert_error *err)
{
    const char *f = model_file(m);
    shape3 in = l->in, o = in;
    uint64_t macs = 0;
    if ((unsigned)l->kind >= LAYER_KIND_COUNT)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "%s: %s layer '%s': unknown layer kind %d", f,
                        where, l->name, (int)l->kind);
    if (is_tx_kind(l->kind))
        return finalize_tx_layer(m, l, where, nested, err);
    if (in.tokens != SHAPE_PLAIN)
        return LFAIL("%s: %s layer '%s': %s cannot read %s%s", f, where, l->name,
                     layer_kind_name(l->kind),
                     in.tokens == SHAPE_IDS ? "the token input (a token_embed reads it)"
                                            : "a token activation",
                     in.tokens == SHAPE_TOKENS && l->kind == LAYER_LINEAR
                         ? " (pool the tokens first: token_pool)"
                         : "");
    switch (l->kind) {
    case LAYER_CONV2D: {
        const conv_params *c = &l->p.conv;
        if (c->in_ch < 1 || c->out_ch < 1 || c->groups < 1 || c->kh < 1 || c->kw < 1 ||
            c->stride_h < 1 || c->stride_w < 1 || c->pad_h < 0 || c->pad_w < 0 || c->dil_h < 1 ||
            c->dil_w < 1)
            return LFAIL("%s: %s layer '%s': conv2d parameters out of range", f, where, l->name);
        if (c->in_ch % c->groups || c->out_ch % c->groups)
            return LFAIL(
                "%s: %s layer '%s': groups %d does not divide in_channels %d and out_channels %d",
                f, where, l->name, c->groups, c->in_ch, c->out_ch);
        if (c->in_ch != in.c)
            return LFAIL("%s: %s layer '%s': in_channels is %d, but its input has %d channels", f,
                         where, l->name, c->in_ch, in.c);
        if (!c->weight || !c->bias)
            return LFAIL("%s: %s layer '%s': conv2d without weight or bias", f, where, l->name);
        int64_t oh = window_out(in.h, c->pad_h, (int64_t)c->dil_h * (c->kh - 1) + 1, c->stride_h);
        int64_t ow = window_out(in.w, c->pad_w, (int64_t)c->dil_w * (c->kw - 1) + 1, c->stride_w);
        if (oh < 1 || ow < 1)
            return LFAIL(
                "%s: %s layer '%s': the kernel does not fit the %dx%d input (output would be empty)",
                f, where, l->name, in.h, in.w);
        o = (shape3){c->out_ch, (int)oh, (int)ow, SHAPE_PLAIN};
        uint64_t a;
        if (!u64_mul((uint64_t)c->out_ch * (uint64_t)oh, (uint64_t)ow, &a) ||
            !u64_mul(a, (uint64_t)(c->in_ch / c->groups), &a) ||
            !u64_mul(a, (uint64_t)c->kh * (uint64_t)c->kw, &macs))
            return LFAIL("%s: %s layer '%s': MAC count overflows", f, where, l->name);
        break;
    }
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D: {
        const pool_params *p = &l->p.pool;
        if (p->kh < 1 || p->kw < 1 || p->stride_h < 1 || p->stride_w < 1 || p->pad_h < 0 ||
            p->pad_w < 0 || p->pad_h > p->kh / 2 || p->pad_w > p->kw / 2)
            return LFAIL("%s: %s layer '%s': pooling parameters out of range", f, where, l->name);
        int64_t oh = window_out(in.h, p->pad_h, p->kh, p->stride_h);
        int64_t ow = window_out(in.w, p->pad_w, p->kw, p->stride_w);
        if (oh < 1 || ow < 1)
            return LFAIL("%s: %s layer '%s': the %dx%d window does not fit the %dx%d input", f,
                         where, l->name, p->kh, p->kw, in.h, in.w);
        o = (shape3){in.c, (int)oh, (int)ow, SHAPE_PLAIN};
        break;
    }
    case LAYER_GLOBAL_AVGPOOL: o = (shape3){in.c, 1, 1, SHAPE_PLAIN}; break;
    case LAYER_FLATTEN: o = (shape3){(int)shape_size(in), 1, 1, SHAPE_PLAIN}; break;
    case LAYER_RELU:
    case LAYER_SIGMOID: break;
    case LAYER_LINEAR: {
        const linear_params *p = &l->p.linear;
        if (p->in_features < 1 || p->out_features < 1 || !p->weight)
            return LFAIL("%s: %s layer '%s': linear parameters out of range", f, where, l->name);
        if ((size_t)p->in_features != shape_size(in))
            return LFAIL(
                "%s: %s layer '%s': in_features is %d, but its input has %zu values (%dx%dx%d)", f,
                where, l->name, p->in_features, shape_size(in), in.c, in.h, in.w);
        o = (shape3){p->out_features, 1, 1, SHAPE_PLAIN};
        macs = (uint64_t)p->in_features * (uint64_t)p->out_features;
        break;
    }
    case LAYER_RESIDUAL: {
        if (nested)
            return LFAIL("%s: %s layer '%s': residuals do not nest", f, where, l->name);
        residual_params *r = &l->p.residual;
        char sub[256];
        shape3 ob = {0, 0, 0, SHAPE_PLAIN}, os = {0, 0, 0, SHAPE_PLAIN};
        uint64_t mb = 0, ms = 0;
        if (r->body.count < 1)
            return LFAIL("%s: %s layer '%s': empty residual body", f, where, l->name);
        snprintf(sub, sizeof sub, "%s layer '%s' body", where, l->name);
        ert_status st = finalize_list(m, &r->body, sub, 1, in, &ob, &mb, err);
        if (st != ERT_OK)
            return st;
        snprintf(sub, sizeof sub, "%s layer '%s' shortcut", where, l->name);
        if ((st = finalize_list(m, &r->shortcut, sub, 1, in, &os, &ms, err)) != ERT_OK)
            return st;
        if (ob.c != os.c || ob.h != os.h || ob.w != os.w)
            return LFAIL("%s: %s layer '%s': the body gives %dx%dx%d but the shortcut %dx%dx%d", f,
                         where, l->name, ob.c, ob.h, ob.w, os.c, os.h, os.w);
        o = ob;
        macs = mb + ms;
        break;
    }
    case LAYER_BATCHNORM2D:
    case LAYER_DROPOUT:
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "%s: %s layer '%s': %s must be removed before finalize", f, where, l->name,
                        l->kind == LAYER_DROPOUT ? "dropout" : "batchnorm2d");
    case LAYER_PATCH_EMBED:
    case LAYER_TOKEN_EMBED:
    case LAYER_LAYER_NORM:
    case LAYER_GELU:
    case LAYER_TANH:
    case LAYER_SELF_ATTENTION:
    case LAYER_ENCODER_BLOCK:
    case LAYER_TOKEN_POOL: /* finalize_tx_layer, above */
    case LAYER_KIND_COUNT: /* refused above */
        return ert_fail(err, ERT_INTERNAL, "%s: %s layer '%s': kind %d reached the wrong rule", f,
                        where, l->name, (int)l->kind);
    }
    return set_output(m, l, where, o, macs, err);
}

static ert_status finalize_list(const ert_model *m, layer_list *l, const char *where, int nested,
                                shape3 in, shape3 *out, uint64_t *macs, ert_error *err)
{
    uint64_t total = 0;
    for (int i = 0; i < l->count; i++) {
        l->items[i].in = in;
        ert_status st = finalize_layer(m, &l->items[i], where, nested, err);
        if (st != ERT_OK)
            return st;
        in = l->items[i].out;
        if (total > UINT64_MAX - l->items[i].macs)
            return LFAIL("%s: %s: MAC count overflows", model_file(m), where);
        total += l->items[i].macs;
    }
    *out = in;
    *macs = total;
    return ERT_OK;
}

ert_status model_finalize(ert_model *m, ert_error *err)
{
    if (!m)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "model_finalize: NULL model");
    const char *f = model_file(m);
    shape3 in = m->input;
    m->vocab = 0;
    if (in.tokens == SHAPE_IDS && m->backbone.count > 0 &&
        m->backbone.items[0].kind == LAYER_TOKEN_EMBED)
        m->vocab = m->backbone.items[0].p.embed.vocab;
    if (in.c < 1 || in.h < 1 || in.w < 1 || in.c > 4 || shape_size(in) > MAX_ACT_FLOATS)
        return LFAIL("%s: input.shape: %dx%dx%d out of range", f, in.c, in.h, in.w);
    if (m->num_classes < 1)
        return LFAIL("%s: num_classes: must be >= 1", f);
    if (m->backbone.count < 1)
        return LFAIL("%s: backbone: has no computing layer", f);
    if (m->num_exits < 1 || m->num_exits > ERT_MAX_EXITS)
        return LFAIL("%s: exits: %d exits, must be 1 to %d with the final head", f, m->num_exits,
                     ERT_MAX_EXITS);
    shape3 bout;
    ert_status st =
        finalize_list(m, &m->backbone, "backbone", 0, in, &bout, &m->backbone_macs, err);
    if (st != ERT_OK)
        return st;

    int last = m->backbone.count - 1;
    uint64_t all = m->backbone_macs; /* backbone + every head: what MASKED runs */
    for (int e = 0; e < m->num_exits; e++) {
        exit_def *x = &m->exits[e];
        int final = e == m->num_exits - 1;
        char where[160];
        if (final) {
            if (x->after != last || x->policy != ERT_POLICY_NONE)
                return LFAIL("%s: final: must follow the last backbone layer with no policy", f);
            snprintf(where, sizeof where, "final.head");
        } else {
            if (x->after < 0 || x->after >= last)
                return LFAIL("%s: exits[%d].after: must name a backbone layer before the last one",
                             f, e);
            if (e > 0 && x->after <= m->exits[e - 1].after)
                return LFAIL(
                    "%s: exits[%d].after: exits must follow distinct layers in backbone order", f,
                    e);
            if (x->policy == ERT_POLICY_NONE || !isfinite(x->threshold) ||
                !ert_threshold_ok(x->policy, x->threshold))
                return LFAIL("%s: exits[%d].policy: missing policy or threshold out of range", f,
                             e);
            snprintf(where, sizeof where, "exits[%d].head", e);
        }
        shape3 hin = m->backbone.items[x->after].out, hout = {0, 0, 0, SHAPE_PLAIN},
               cout = {0, 0, 0, SHAPE_PLAIN};
        uint64_t hm = 0, cm = 0;
        if ((st = finalize_list(m, &x->head, where, 0, hin, &hout, &hm, err)) != ERT_OK)
            return st;
        if (hout.tokens != SHAPE_PLAIN)
            return LFAIL("%s: %s: ends in a token activation; pool the tokens (token_pool)", f,
                         where);
        if (shape_size(hout) != (size_t)m->num_classes)
            return LFAIL("%s: %s: ends in %dx%dx%d = %zu values, expected num_classes = %d", f,
                         where, hout.c, hout.h, hout.w, shape_size(hout), m->num_classes);
        if (x->policy == ERT_POLICY_CONFIDENCE_HEAD) {
            snprintf(where, sizeof where, "exits[%d].confidence", e);
            if (x->confidence.count < 1)
                return LFAIL("%s: %s: required for the confidence_head policy", f, where);
            if ((st = finalize_list(m, &x->confidence, where, 0, hin, &cout, &cm, err)) != ERT_OK)
                return st;
            if (shape_size(cout) != 1)
                return LFAIL("%s: %s: ends in %zu values, expected 1", f, where, shape_size(cout));
        } else if (x->confidence.count) {
            return LFAIL("%s: exits[%d].confidence: only for the confidence_head policy", f, e);
        }
        if (hm > MODEL_MAX_MACS || cm > MODEL_MAX_MACS - hm)
            return LFAIL("%s: exits[%d]: the head takes more than %llu MACs per sample", f, e,
                         (unsigned long long)MODEL_MAX_MACS);
        x->head_macs = hm + cm;
        all = all > UINT64_MAX - x->head_macs ? UINT64_MAX : all + x->head_macs;
    }
    /* Bounded so that any batch's MAC count (x max_batch <= 2^20) fits 64 bits. */
    if (all > MODEL_MAX_MACS)
        return LFAIL(
            "%s: the backbone and heads take %llu MACs per sample, more than the limit of %llu", f,
            (unsigned long long)all, (unsigned long long)MODEL_MAX_MACS);
    m->macs_full = m->backbone_macs + m->exits[m->num_exits - 1].head_macs;
    return ERT_OK;
}

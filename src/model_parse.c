/* model_parse.c - layer lists of model.json: the CNN layers, batch-norm
 * folding, residuals, and the dispatch to every layer's parser (the
 * transformer layers' are in model_parse_tx.c; the field and tensor
 * readers below both in model_fields.c).
 *
 * Implements the "Layers" section of models/FORMAT.md. Shapes and MACs are
 * model_finalize's business (model_finalize.c); this file checks each
 * layer's own fields and the shapes of the tensors it names.
 */
#include "model_parse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"


/* ---- layers ---------------------------------------------------------------- */

static const char *const kind_names[LAYER_KIND_COUNT] = {
    [LAYER_CONV2D] = "conv2d",
    [LAYER_BATCHNORM2D] = "batchnorm2d",
    [LAYER_RELU] = "relu",
    [LAYER_MAXPOOL2D] = "maxpool2d",
    [LAYER_AVGPOOL2D] = "avgpool2d",
    [LAYER_GLOBAL_AVGPOOL] = "global_avgpool",
    [LAYER_FLATTEN] = "flatten",
    [LAYER_LINEAR] = "linear",
    [LAYER_RESIDUAL] = "residual",
    [LAYER_DROPOUT] = "dropout",
    [LAYER_SIGMOID] = "sigmoid",
    [LAYER_PATCH_EMBED] = "patch_embed",
    [LAYER_TOKEN_EMBED] = "token_embed",
    [LAYER_LAYER_NORM] = "layer_norm",
    [LAYER_GELU] = "gelu",
    [LAYER_TANH] = "tanh",
    [LAYER_SELF_ATTENTION] = "self_attention",
    [LAYER_ENCODER_BLOCK] = "encoder_block",
    [LAYER_TOKEN_POOL] = "token_pool",
};

const char *layer_kind_name(layer_kind k)
{
    return k >= 0 && k < LAYER_KIND_COUNT && kind_names[k] ? kind_names[k] : "?";
}

static ert_status parse_conv(parse_ctx *c, const cJSON *o, const char *f, conv_params *cv)
{
    long long in, out, g;
    ert_status st;
    const char *mode;
    if ((st = json_get_int(c, o, f, "in_channels", 0, 0, 1, MAX_COUNT, &in)) ||
        (st = json_get_int(c, o, f, "out_channels", 0, 0, 1, MAX_COUNT, &out)) ||
        (st = get_pair(c, o, f, "kernel_size", 0, 0, 1, MAX_DIM, &cv->kh, &cv->kw)) ||
        (st = get_pair(c, o, f, "stride", 1, 1, 1, MAX_DIM, &cv->stride_h, &cv->stride_w)) ||
        (st = get_pair(c, o, f, "padding", 1, 0, 0, MAX_DIM, &cv->pad_h, &cv->pad_w)) ||
        (st = get_pair(c, o, f, "dilation", 1, 1, 1, MAX_DIM, &cv->dil_h, &cv->dil_w)) ||
        (st = json_get_int(c, o, f, "groups", 1, 1, 1, MAX_COUNT, &g)) ||
        (st = json_get_string(c, o, f, "padding_mode", 0, &mode)))
        return st;
    if (mode && strcmp(mode, "zeros") != 0)
        return ert_fail(c->err, ERT_UNSUPPORTED,
                        "%s: %s.padding_mode: '%.32s' not supported (zeros only)", c->file, f,
                        mode);
    if (in % g || out % g)
        return ert_fail(
            c->err, ERT_FORMAT,
            "%s: %s.groups: %lld does not divide in_channels %lld and out_channels %lld", c->file,
            f, g, in, out);
    cv->in_ch = (int)in;
    cv->out_ch = (int)out;
    cv->groups = (int)g;
    const int64_t ws[4] = {out, in / g, cv->kh, cv->kw}, bs[1] = {out};
    const st_tensor *w, *b;
    if ((st = find_tensor(c, o, f, "weight", 1, 4, ws, &w)) ||
        (st = find_tensor(c, o, f, "bias", 0, 1, bs, &b)))
        return st;
    cv->weight = take(c, w->count, w);
    cv->bias = take(c, (size_t)out, b); /* zeros when absent: folding may fill it */
    return ERT_OK;
}

/* Reads a batchnorm2d and, in the filling pass, folds it into conv:
 *   s = gamma / sqrt(var + eps);  w' = w * s (per out channel);
 *   b' = (b - mean) * s + beta. */
static ert_status parse_bn_fold(parse_ctx *c, const cJSON *o, const char *f, conv_params *cv)
{
    long long n;
    double eps;
    ert_status st;
    if ((st = json_get_int(c, o, f, "num_features", 0, 0, 1, MAX_COUNT, &n)) ||
        (st = json_get_number(c, o, f, "eps", 1, 1e-5, &eps)))
        return st;
    if (n != cv->out_ch)
        return ert_fail(
            c->err, ERT_FORMAT,
            "%s: %s.num_features: %lld does not match the preceding conv2d's out_channels %d",
            c->file, f, n, cv->out_ch);
    if (eps < 0)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.eps: must be >= 0", c->file, f);
    const int64_t s1[1] = {n};
    const st_tensor *g, *b, *mean, *var;
    if ((st = find_tensor(c, o, f, "weight", 0, 1, s1, &g)) ||
        (st = find_tensor(c, o, f, "bias", 0, 1, s1, &b)) ||
        (st = find_tensor(c, o, f, "running_mean", 1, 1, s1, &mean)) ||
        (st = find_tensor(c, o, f, "running_var", 1, 1, s1, &var)))
        return st;
    size_t per = (size_t)(cv->in_ch / cv->groups) * (size_t)cv->kh * (size_t)cv->kw;
    for (size_t o2 = 0; o2 < (size_t)n; o2++) {
        double v = (double)tensor_at(var, o2) + eps;
        if (!(v > 0.0) || !isfinite(v))
            return ert_fail(c->err, ERT_FORMAT,
                            "%s: %s.running_var: [%zu] + eps is %g, must be > 0", c->file, f, o2,
                            v);
        if (!c->block)
            continue;
        double s = (g ? (double)tensor_at(g, o2) : 1.0) / sqrt(v);
        float *w = (float *)cv->weight + o2 * per; /* ours: inside c->block */
        for (size_t i = 0; i < per; i++)
            w[i] = (float)((double)w[i] * s);
        float *bias = (float *)cv->bias;
        bias[o2] = (float)(((double)bias[o2] - (double)tensor_at(mean, o2)) * s +
                           (b ? (double)tensor_at(b, o2) : 0.0));
    }
    return ERT_OK;
}

static ert_status parse_pool(parse_ctx *c, const cJSON *o, const char *f, pool_params *pp)
{
    ert_status st;
    if ((st = get_pair(c, o, f, "kernel_size", 0, 0, 1, MAX_DIM, &pp->kh, &pp->kw)))
        return st;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "stride");
    if (!s || cJSON_IsNull(s) || (cJSON_IsArray(s) && cJSON_GetArraySize(s) == 0)) {
        pp->stride_h = pp->kh; /* PyTorch: stride defaults to the kernel */
        pp->stride_w = pp->kw;
    } else if ((st = get_pair(c, o, f, "stride", 0, 0, 1, MAX_DIM, &pp->stride_h, &pp->stride_w))) {
        return st;
    }
    if ((st = get_pair(c, o, f, "padding", 1, 0, 0, MAX_DIM, &pp->pad_h, &pp->pad_w)))
        return st;
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "ceil_mode");
    if (cJSON_IsTrue(x))
        return ert_fail(c->err, ERT_UNSUPPORTED,
                        "%s: %s.ceil_mode: true not supported (floor mode only)", c->file, f);
    x = cJSON_GetObjectItemCaseSensitive(o, "count_include_pad");
    if (cJSON_IsFalse(x))
        return ert_fail(c->err, ERT_UNSUPPORTED,
                        "%s: %s.count_include_pad: false not supported (padding counts)", c->file,
                        f);
    int dh, dw;
    if ((st = get_pair(c, o, f, "dilation", 1, 1, 1, MAX_DIM, &dh, &dw)))
        return st;
    if (dh != 1 || dw != 1)
        return ert_fail(c->err, ERT_UNSUPPORTED, "%s: %s.dilation: %dx%d not supported (1 only)",
                        c->file, f, dh, dw);
    /* PyTorch's rule; it also keeps every window partly inside the input. */
    if (pp->pad_h > pp->kh / 2 || pp->pad_w > pp->kw / 2)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.padding: must be at most half the kernel size",
                        c->file, f);
    return ERT_OK;
}

static ert_status parse_residual(parse_ctx *c, const cJSON *o, const char *f, residual_params *rp)
{
    char p[512];
    const char *act;
    ert_status st;
    if ((st = json_get_string(c, o, f, "activation", 0, &act)))
        return st;
    if (!act || strcmp(act, "relu") == 0)
        rp->relu_after = 1;
    else if (strcmp(act, "none") == 0)
        rp->relu_after = 0;
    else
        return ert_fail(c->err, ERT_FORMAT,
                        "%s: %s.activation: '%.32s' is not \"relu\" or \"none\"", c->file, f, act);
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(o, "body");
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(o, "shortcut");
    if (!cJSON_IsArray(body))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.body: missing or not an array", c->file, f);
    if (sc && !cJSON_IsNull(sc) && !cJSON_IsArray(sc))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.shortcut: not an array", c->file, f);
    if ((st = parse_layer_list(c, body, fpath(p, sizeof p, f, "body"), 1, &rp->body, NULL)))
        return st;
    if (rp->body.count == 0)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.body: has no computing layer", c->file, f);
    if (cJSON_IsArray(sc))
        st = parse_layer_list(c, sc, fpath(p, sizeof p, f, "shortcut"), 1, &rp->shortcut, NULL);
    return st;
}

void layer_list_free(layer_list *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->count; i++) {
        if (l->items[i].kind == LAYER_RESIDUAL) {
            layer_list_free(&l->items[i].p.residual.body);
            layer_list_free(&l->items[i].p.residual.shortcut);
        }
    }
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

ert_status parse_layer_list(parse_ctx *c, const cJSON *arr, const char *field, int nested,
                            layer_list *out, name_map *map)
{
    out->items = NULL;
    out->count = 0;
    if (map)
        memset(map, 0, sizeof *map);
    if (!cJSON_IsArray(arr))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: missing or not an array", c->file, field);
    int n = cJSON_GetArraySize(arr);
    if (n > MODEL_MAX_LAYERS)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: %d layers, more than the limit of %d", c->file,
                        field, n, MODEL_MAX_LAYERS);
    char(*names)[ERT_NAME_LEN] = calloc((size_t)n + 1, sizeof *names);
    layer_kind *kinds = calloc((size_t)n + 1, sizeof *kinds);
    int *index = calloc((size_t)n + 1, sizeof *index);
    out->items = calloc((size_t)n + 1, sizeof *out->items);
    ert_status st = ERT_OK;
    if (!names || !kinds || !index || !out->items) {
        st = ert_fail(c->err, ERT_OUT_OF_MEMORY, "%s: out of memory", c->file);
        goto fail;
    }
    layer_kind prev = LAYER_KIND_COUNT;
    for (int i = 0; i < n; i++) {
        const cJSON *o = cJSON_GetArrayItem(arr, i);
        char f[256];
        snprintf(f, sizeof f, "%s[%d]", field, i);
        if (!cJSON_IsObject(o)) {
            st = ert_fail(c->err, ERT_FORMAT, "%s: %s: a layer must be an object", c->file, f);
            goto fail;
        }
        const char *name, *type;
        if ((st = json_get_string(c, o, f, "name", 1, &name)) ||
            (st = json_get_string(c, o, f, "type", 1, &type)))
            goto fail;
        size_t nl = strlen(name);
        if (nl == 0 || nl >= ERT_NAME_LEN) {
            st = ert_fail(c->err, ERT_FORMAT, "%s: %s.name: must be 1 to %d characters", c->file, f,
                          ERT_NAME_LEN - 1);
            goto fail;
        }
        for (int j = 0; j < i; j++) {
            if (strcmp(names[j], name) == 0) {
                st = ert_fail(c->err, ERT_FORMAT, "%s: %s.name: '%s' is already used by %s[%d]",
                              c->file, f, name, field, j);
                goto fail;
            }
        }
        memcpy(names[i], name, nl + 1);
        int kind = -1;
        for (int k = 0; k < LAYER_KIND_COUNT; k++)
            if (strcmp(type, kind_names[k]) == 0)
                kind = k;
        if (kind < 0) {
            st = ert_fail(c->err, ERT_UNSUPPORTED, "%s: %s.type: unknown layer type '%.32s'",
                          c->file, f, type);
            goto fail;
        }
        kinds[i] = (layer_kind)kind;
        if (kind == LAYER_RESIDUAL && nested) {
            st = ert_fail(c->err, ERT_UNSUPPORTED, "%s: %s: residuals do not nest", c->file, f);
            goto fail;
        }
        if (kind == LAYER_BATCHNORM2D) {
            if (prev != LAYER_CONV2D) {
                st = ert_fail(c->err, ERT_FORMAT,
                              "%s: %s: batchnorm2d must directly follow a conv2d in the same list",
                              c->file, f);
                goto fail;
            }
            if ((st = parse_bn_fold(c, o, f, &out->items[out->count - 1].p.conv)))
                goto fail;
            index[i] = out->count - 1;
            prev = (layer_kind)kind;
            continue;
        }
        prev = (layer_kind)kind;
        if (kind == LAYER_DROPOUT) {
            index[i] = out->count - 1;
            continue;
        }
        layer *l = &out->items[out->count++];
        l->kind = (layer_kind)kind;
        memcpy(l->name, name, nl + 1);
        index[i] = out->count - 1;
        switch ((layer_kind)kind) {
        case LAYER_CONV2D: st = parse_conv(c, o, f, &l->p.conv); break;
        case LAYER_MAXPOOL2D:
        case LAYER_AVGPOOL2D: st = parse_pool(c, o, f, &l->p.pool); break;
        case LAYER_LINEAR: st = parse_linear(c, o, f, &l->p.linear); break;
        case LAYER_RESIDUAL: st = parse_residual(c, o, f, &l->p.residual); break;
        case LAYER_PATCH_EMBED: st = parse_patch_embed(c, o, f, &l->p.patch); break;
        case LAYER_TOKEN_EMBED: st = parse_token_embed(c, o, f, &l->p.embed); break;
        case LAYER_LAYER_NORM: st = parse_layer_norm(c, o, f, &l->p.norm); break;
        case LAYER_SELF_ATTENTION: st = parse_attention(c, o, f, &l->p.attn); break;
        case LAYER_ENCODER_BLOCK: st = parse_encoder_block(c, o, f, &l->p.enc); break;
        case LAYER_TOKEN_POOL: st = parse_token_pool(c, o, f, &l->p.token_pool); break;
        case LAYER_RELU:
        case LAYER_SIGMOID:
        case LAYER_GELU:
        case LAYER_TANH:
        case LAYER_GLOBAL_AVGPOOL:
        case LAYER_FLATTEN: break; /* no fields */
        case LAYER_BATCHNORM2D:    /* folded into its conv2d above */
        case LAYER_DROPOUT:        /* dropped above */
        case LAYER_KIND_COUNT: /* kind < LAYER_KIND_COUNT here: looked up above */ break;
        }
        if (st != ERT_OK)
            goto fail;
    }
    if (map) {
        map->names = names;
        map->kinds = kinds;
        map->index = index;
        map->count = n;
    } else {
        free(names);
        free(kinds);
        free(index);
    }
    return ERT_OK;
fail:
    free(names);
    free(kinds);
    free(index);
    layer_list_free(out);
    return st;
}

void name_map_free(name_map *map)
{
    free(map->names);
    free(map->kinds);
    free(map->index);
    memset(map, 0, sizeof *map);
}

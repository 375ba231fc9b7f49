/* model_parse_tx.c - the transformer layers of model.json (models/FORMAT.md,
 * "Transformer encoders"): their fields and the shapes of their tensors.
 *
 * As in model_parse.c, what depends on the layer's input (T, whether it
 * reads tokens) is model_finalize's business; a position table's row count
 * is kept (pos_len) for it to check against T.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "act.h"
#include "model_parse.h"
#include "util.h"

#define MAX_VOCAB (1LL << 24) /* ids are exact in float32 up to 2^24 */

/* n floats of value v from the block (as take with no tensor). */
static const float *take_fill(parse_ctx *c, size_t n, const st_tensor *t, float v)
{
    float *dst = take(c, n, t);
    if (dst && !t)
        for (size_t i = 0; i < n; i++)
            dst[i] = v;
    return dst;
}

/* An optional [P, dim] position table: P is the tensor's own (1..65536);
 * finalize checks it against the token count. */
static ert_status find_position(parse_ctx *c, const cJSON *o, const char *f, int dim,
                                const float **pos, int *pos_len)
{
    *pos = NULL;
    *pos_len = 0;
    const char *name;
    ert_status st = json_get_string(c, o, f, "position", 0, &name);
    if (st != ERT_OK || !name)
        return st;
    const st_tensor *peek = st_find(c->st, name);
    int64_t rows = peek && peek->ndim == 2 ? peek->shape[0] : 1;
    if (rows < 1 || rows > MAX_DIM) {
        char p[512];
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: tensor '%s' has %lld rows, expected 1 to %lld",
                        c->file, fpath(p, sizeof p, f, "position"), name, (long long)rows, MAX_DIM);
    }
    const int64_t shape[2] = {rows, dim};
    const st_tensor *t;
    if ((st = find_tensor(c, o, f, "position", 1, 2, shape, &t)))
        return st;
    *pos = take(c, t->count, t);
    *pos_len = (int)rows;
    return ERT_OK;
}

ert_status parse_patch_embed(parse_ctx *c, const cJSON *o, const char *f, patch_params *p)
{
    long long in, dim;
    ert_status st;
    conv_params *cv = &p->conv;
    if ((st = json_get_int(c, o, f, "in_channels", 0, 0, 1, MAX_COUNT, &in)) ||
        (st = json_get_int(c, o, f, "embed_dim", 0, 0, 1, MAX_COUNT, &dim)) ||
        (st = get_pair(c, o, f, "patch_size", 0, 0, 1, MAX_DIM, &cv->kh, &cv->kw)))
        return st;
    cv->in_ch = (int)in;
    cv->out_ch = (int)dim;
    cv->stride_h = cv->kh;
    cv->stride_w = cv->kw;
    cv->pad_h = cv->pad_w = 0;
    cv->dil_h = cv->dil_w = 1;
    cv->groups = 1;
    const int64_t ws[4] = {dim, in, cv->kh, cv->kw}, ds[1] = {dim};
    const st_tensor *w, *b, *cls;
    if ((st = find_tensor(c, o, f, "weight", 1, 4, ws, &w)) ||
        (st = find_tensor(c, o, f, "bias", 0, 1, ds, &b)) ||
        (st = find_tensor(c, o, f, "class_token", 0, 1, ds, &cls)))
        return st;
    cv->weight = take(c, w->count, w);
    cv->bias = take(c, (size_t)dim, b);
    p->cls = cls ? take(c, cls->count, cls) : NULL;
    return find_position(c, o, f, (int)dim, &p->pos, &p->pos_len);
}

ert_status parse_token_embed(parse_ctx *c, const cJSON *o, const char *f, embed_params *p)
{
    long long vocab, dim;
    ert_status st;
    if ((st = json_get_int(c, o, f, "vocab_size", 0, 0, 1, MAX_VOCAB, &vocab)) ||
        (st = json_get_int(c, o, f, "embed_dim", 0, 0, 1, MAX_COUNT, &dim)))
        return st;
    p->vocab = (int)vocab;
    p->dim = (int)dim;
    const int64_t ws[2] = {vocab, dim}, ds[1] = {dim};
    const st_tensor *w, *seg;
    if ((st = find_tensor(c, o, f, "weight", 1, 2, ws, &w)) ||
        (st = find_tensor(c, o, f, "segment", 0, 1, ds, &seg)))
        return st;
    p->weight = take(c, w->count, w);
    p->segment = seg ? take(c, seg->count, seg) : NULL;
    return find_position(c, o, f, (int)dim, &p->pos, &p->pos_len);
}

ert_status parse_layer_norm(parse_ctx *c, const cJSON *o, const char *f, norm_params *p)
{
    char path[512];
    long long dim;
    double eps;
    ert_status st;
    const cJSON *ns = cJSON_GetObjectItemCaseSensitive(o, "normalized_shape");
    if (cJSON_IsArray(ns)) {
        /* PyTorch writes normalized_shape as a tuple: one dimension only. */
        if (cJSON_GetArraySize(ns) != 1)
            return ert_fail(c->err, ERT_UNSUPPORTED,
                            "%s: %s: one dimension only (the features of each token)", c->file,
                            fpath(path, sizeof path, f, "normalized_shape"));
        const cJSON *x = cJSON_GetArrayItem(ns, 0);
        if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 1 ||
            x->valuedouble > (double)MAX_COUNT)
            return ert_fail(c->err, ERT_FORMAT, "%s: %s[0]: must be an integer in [1, %lld]",
                            c->file, fpath(path, sizeof path, f, "normalized_shape"), MAX_COUNT);
        dim = (long long)x->valuedouble;
    } else if ((st = json_get_int(c, o, f, "normalized_shape", 0, 0, 1, MAX_COUNT, &dim))) {
        return st;
    }
    if ((st = json_get_number(c, o, f, "eps", 1, 1e-5, &eps)))
        return st;
    if (!(eps >= 0) || eps > FLT_MAX)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: must be a float32 number >= 0", c->file,
                        fpath(path, sizeof path, f, "eps"));
    const int64_t ds[1] = {dim};
    const st_tensor *w, *b;
    if ((st = find_tensor(c, o, f, "weight", 0, 1, ds, &w)) ||
        (st = find_tensor(c, o, f, "bias", 0, 1, ds, &b)))
        return st;
    if (!w != !b)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: weight and bias come together (or neither)",
                        c->file, f);
    p->dim = (int)dim;
    p->eps = (float)eps;
    p->weight = take_fill(c, (size_t)dim, w, 1.0f);
    p->bias = take_fill(c, (size_t)dim, b, 0.0f);
    return ERT_OK;
}

ert_status parse_attention(parse_ctx *c, const cJSON *o, const char *f, attention_params *p)
{
    char path[512];
    long long dim, heads;
    ert_status st;
    if ((st = json_get_int(c, o, f, "embed_dim", 0, 0, 1, MAX_COUNT, &dim)) ||
        (st = json_get_int(c, o, f, "num_heads", 0, 0, 1, MAX_COUNT, &heads)))
        return st;
    if (dim % heads)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: %lld heads do not divide embed_dim %lld",
                        c->file, fpath(path, sizeof path, f, "num_heads"), heads, dim);
    p->dim = (int)dim;
    p->heads = (int)heads;
    const int64_t iw[2] = {3 * dim, dim}, ib[1] = {3 * dim}, ow[2] = {dim, dim}, ob[1] = {dim};
    const st_tensor *w1, *b1, *w2, *b2;
    if ((st = find_tensor(c, o, f, "in_weight", 1, 2, iw, &w1)) ||
        (st = find_tensor(c, o, f, "in_bias", 0, 1, ib, &b1)) ||
        (st = find_tensor(c, o, f, "out_weight", 1, 2, ow, &w2)) ||
        (st = find_tensor(c, o, f, "out_bias", 0, 1, ob, &b2)))
        return st;
    p->in_weight = take(c, w1->count, w1);
    p->in_bias = take(c, (size_t)(3 * dim), b1);
    p->out_weight = take(c, w2->count, w2);
    p->out_bias = take(c, (size_t)dim, b2);
    return ERT_OK;
}

/* obj[key] must be an object; its path into sub. */
static ert_status sub_object(parse_ctx *c, const cJSON *o, const char *f, const char *key,
                             char *sub, size_t len, const cJSON **out)
{
    *out = cJSON_GetObjectItemCaseSensitive(o, key);
    fpath(sub, len, f, key);
    if (!cJSON_IsObject(*out))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: missing or not an object", c->file, sub);
    return ERT_OK;
}

ert_status parse_encoder_block(parse_ctx *c, const cJSON *o, const char *f, encoder_params *p)
{
    char sub[512];
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "norm_first");
    if (x && !cJSON_IsBool(x))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: must be true or false", c->file,
                        fpath(sub, sizeof sub, f, "norm_first"));
    p->norm_first = cJSON_IsTrue(x);
    const char *act;
    ert_status st = json_get_string(c, o, f, "activation", 0, &act);
    if (st != ERT_OK)
        return st;
    if (!act || strcmp(act, "relu") == 0)
        p->act = ERT_ACT_RELU;
    else if (strcmp(act, "gelu") == 0)
        p->act = ERT_ACT_GELU;
    else
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: '%.32s' is not \"relu\" or \"gelu\"", c->file,
                        fpath(sub, sizeof sub, f, "activation"), act);
    const cJSON *a, *n1, *l1, *l2, *n2;
    if ((st = sub_object(c, o, f, "attention", sub, sizeof sub, &a)) ||
        (st = parse_attention(c, a, sub, &p->attn)) ||
        (st = sub_object(c, o, f, "norm1", sub, sizeof sub, &n1)) ||
        (st = parse_layer_norm(c, n1, sub, &p->norm1)) ||
        (st = sub_object(c, o, f, "linear1", sub, sizeof sub, &l1)) ||
        (st = parse_linear(c, l1, sub, &p->ff1)) ||
        (st = sub_object(c, o, f, "linear2", sub, sizeof sub, &l2)) ||
        (st = parse_linear(c, l2, sub, &p->ff2)) ||
        (st = sub_object(c, o, f, "norm2", sub, sizeof sub, &n2)) ||
        (st = parse_layer_norm(c, n2, sub, &p->norm2)))
        return st;
    /* The feed-forward biases are always there after loading (zeros when
       the file has none; both passes decide from the file). */
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(l1, "bias")))
        p->ff1.bias = take(c, (size_t)p->ff1.out_features, NULL);
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(l2, "bias")))
        p->ff2.bias = take(c, (size_t)p->ff2.out_features, NULL);
    return ERT_OK;
}

ert_status parse_token_pool(parse_ctx *c, const cJSON *o, const char *f, token_pool_mode *mode)
{
    char path[512];
    const char *m;
    ert_status st = json_get_string(c, o, f, "mode", 0, &m);
    if (st != ERT_OK)
        return st;
    if (!m || strcmp(m, "first") == 0)
        *mode = TOKEN_POOL_FIRST;
    else if (strcmp(m, "mean") == 0)
        *mode = TOKEN_POOL_MEAN;
    else
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: '%.32s' is not \"first\" or \"mean\"", c->file,
                        fpath(path, sizeof path, f, "mode"), m);
    return ERT_OK;
}

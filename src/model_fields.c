/* model_fields.c - reading model.json's fields and the tensors they name
 * (the messages name the field's path), and the fields of a linear layer,
 * which an encoder_block's linear1/linear2 hold too. Used by model.c,
 * model_parse.c and model_parse_tx.c. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model_parse.h"
#include "util.h"

/* ---- field readers ------------------------------------------------------- */

/* "<field>.<key>" into buf. */
const char *fpath(char *buf, size_t len, const char *field, const char *key)
{
    if (field[0])
        snprintf(buf, len, "%s.%s", field, key);
    else
        snprintf(buf, len, "%s", key);
    return buf;
}

static int json_integral(const cJSON *j, long long *out)
{
    if (!cJSON_IsNumber(j))
        return 0;
    double d = j->valuedouble;
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || d != floor(d))
        return 0;
    *out = (long long)d;
    return 1;
}

ert_status json_get_int(parse_ctx *c, const cJSON *obj, const char *field, const char *key,
                        int has_def, long long def, long long lo, long long hi, long long *out)
{
    char p[512];
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!j || cJSON_IsNull(j)) {
        if (!has_def)
            return ert_fail(c->err, ERT_FORMAT, "%s: %s: missing", c->file,
                            fpath(p, sizeof p, field, key));
        *out = def;
        return ERT_OK;
    }
    long long v;
    if (!json_integral(j, &v))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: must be an integer", c->file,
                        fpath(p, sizeof p, field, key));
    if (v < lo || v > hi)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: %lld is out of range [%lld, %lld]", c->file,
                        fpath(p, sizeof p, field, key), v, lo, hi);
    *out = v;
    return ERT_OK;
}

ert_status json_get_number(parse_ctx *c, const cJSON *obj, const char *field, const char *key,
                           int has_def, double def, double *out)
{
    char p[512];
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!j || cJSON_IsNull(j)) {
        if (!has_def)
            return ert_fail(c->err, ERT_FORMAT, "%s: %s: missing", c->file,
                            fpath(p, sizeof p, field, key));
        *out = def;
        return ERT_OK;
    }
    if (!cJSON_IsNumber(j))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: must be a number", c->file,
                        fpath(p, sizeof p, field, key));
    if (!isfinite(j->valuedouble))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: must be finite", c->file,
                        fpath(p, sizeof p, field, key));
    *out = j->valuedouble;
    return ERT_OK;
}

ert_status json_get_string(parse_ctx *c, const cJSON *obj, const char *field, const char *key,
                           int required, const char **out)
{
    char p[512];
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!j || (!required && cJSON_IsNull(j))) {
        if (required)
            return ert_fail(c->err, ERT_FORMAT, "%s: %s: missing", c->file,
                            fpath(p, sizeof p, field, key));
        return ERT_OK;
    }
    if (!cJSON_IsString(j))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: must be a string", c->file,
                        fpath(p, sizeof p, field, key));
    *out = j->valuestring;
    return ERT_OK;
}

/* An int or an [h, w] pair. */
ert_status get_pair(parse_ctx *c, const cJSON *obj, const char *field, const char *key, int has_def,
                    int def, long long lo, long long hi, int *h, int *w)
{
    char p[512];
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (cJSON_IsArray(j)) {
        long long v[2];
        if (cJSON_GetArraySize(j) != 2 || !json_integral(cJSON_GetArrayItem(j, 0), &v[0]) ||
            !json_integral(cJSON_GetArrayItem(j, 1), &v[1]))
            return ert_fail(c->err, ERT_FORMAT, "%s: %s: must be an integer or two integers [h, w]",
                            c->file, fpath(p, sizeof p, field, key));
        for (int i = 0; i < 2; i++)
            if (v[i] < lo || v[i] > hi)
                return ert_fail(c->err, ERT_FORMAT, "%s: %s[%d]: %lld is out of range [%lld, %lld]",
                                c->file, fpath(p, sizeof p, field, key), i, v[i], lo, hi);
        *h = (int)v[0];
        *w = (int)v[1];
        return ERT_OK;
    }
    if (cJSON_IsString(j))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: '%.32s' is not supported (write integers)",
                        c->file, fpath(p, sizeof p, field, key), j->valuestring);
    long long v;
    ert_status st = json_get_int(c, obj, field, key, has_def, def, lo, hi, &v);
    if (st == ERT_OK)
        *h = *w = (int)v;
    return st;
}

/* ---- tensors --------------------------------------------------------------- */

static int fmt_shape(char *buf, size_t len, int ndim, const int64_t *shape)
{
    int n = snprintf(buf, len, "[");
    for (int i = 0; i < ndim && n > 0 && (size_t)n < len; i++)
        n += snprintf(buf + n, len - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n > 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, "]");
    return n;
}

/* Looks up the tensor obj[key] names and checks dtype and shape. *t is
 * NULL when the key is absent and optional. */
ert_status find_tensor(parse_ctx *c, const cJSON *obj, const char *field, const char *key,
                       int required, int ndim, const int64_t *shape, const st_tensor **t)
{
    char p[512], want[128], got[128];
    const char *name;
    *t = NULL;
    ert_status st = json_get_string(c, obj, field, key, required, &name);
    if (st != ERT_OK || !name)
        return st;
    fpath(p, sizeof p, field, key);
    const st_tensor *x = st_find(c->st, name);
    if (!x)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: tensor '%s' not found in %s", c->file, p, name,
                        c->st->path);
    if (x->dtype != ST_F32)
        return ert_fail(c->err, ERT_UNSUPPORTED,
                        "%s: %s: tensor '%s': dtype %s not supported (float32 required)", c->file,
                        p, name, x->dtype_name);
    int same = x->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = x->shape[i] == shape[i];
    if (!same) {
        fmt_shape(want, sizeof want, ndim, shape);
        fmt_shape(got, sizeof got, x->ndim, x->shape);
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: tensor '%s' has shape %s, expected %s",
                        c->file, p, name, got, want);
    }
    *t = x;
    return ERT_OK;
}

float tensor_at(const st_tensor *t, size_t i)
{
    float v;
    memcpy(&v, (const char *)t->data + i * sizeof v, sizeof v); /* the mapping may be unaligned */
    return v;
}

/* Takes n floats from the block (counting pass: just counts). Copies t's
 * data there when t is not NULL, else zeroes them. */
float *take(parse_ctx *c, size_t n, const st_tensor *t)
{
    float *dst = c->block ? c->block + c->used : NULL;
    /* Saturates instead of wrapping: a tensor named by many layers is copied
     * for each, and model.c checks the total against MODEL_MAX_WEIGHT_FLOATS
     * after the counting pass. */
    c->used = n > SIZE_MAX - c->used ? SIZE_MAX : c->used + n;
    if (dst) {
        if (t)
            memcpy(dst, t->data, n * sizeof *dst);
        else
            memset(dst, 0, n * sizeof *dst);
    }
    return dst;
}

/* ---- linear -------------------------------------------------------------- */

ert_status parse_linear(parse_ctx *c, const cJSON *o, const char *f, linear_params *lp)
{
    long long in = 0, out = 0;
    ert_status st;
    if ((st = json_get_int(c, o, f, "in_features", 0, 0, 1, MAX_COUNT, &in)) ||
        (st = json_get_int(c, o, f, "out_features", 0, 0, 1, MAX_COUNT, &out)))
        return st;
    lp->in_features = (int)in;
    lp->out_features = (int)out;
    const int64_t ws[2] = {out, in}, bs[1] = {out};
    const st_tensor *w, *b;
    if ((st = find_tensor(c, o, f, "weight", 1, 2, ws, &w)) ||
        (st = find_tensor(c, o, f, "bias", 0, 1, bs, &b)))
        return st;
    lp->weight = take(c, w->count, w);
    lp->bias = b ? take(c, b->count, b) : NULL;
    return ERT_OK;
}

/* model_writer.c - writing model directories for tests (model_writer.h). */
#include "model_writer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "model.h"
#include "policy.h"

/* ---- files and directories -------------------------------------------------- */

int mw_tempdir(char *out, size_t len)
{
    char tmpl[] = "/tmp/exitrt-test-XXXXXX";
    if (len < sizeof tmpl || !mkdtemp(tmpl))
        return -1;
    memcpy(out, tmpl, sizeof tmpl);
    return 0;
}

int mw_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char p[4096];
        struct stat sb;
        if (mw_path(p, sizeof p, dir, e->d_name) || lstat(p, &sb) != 0) {
            rc = -1;
            continue;
        }
        if (S_ISDIR(sb.st_mode))
            rc |= mw_rmtree(p);
        else if (unlink(p) != 0)
            rc = -1;
    }
    closedir(d);
    return rmdir(dir) == 0 ? rc : -1;
}

int mw_path(char *out, size_t len, const char *dir, const char *name)
{
    int n = snprintf(out, len, "%s/%s", dir, name);
    return n >= 0 && (size_t)n < len ? 0 : -1;
}

int mw_write_file(const char *path, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    int ok = n == 0 || fwrite(bytes, 1, n, f) == n;
    ok &= fclose(f) == 0;
    return ok ? 0 : -1;
}

int mw_write_text(const char *path, const char *text)
{
    return mw_write_file(path, text, strlen(text));
}

int mw_write_json(const char *path, const cJSON *json)
{
    char *s = cJSON_Print(json);
    if (!s)
        return -1;
    int rc = mw_write_text(path, s);
    cJSON_free(s);
    return rc;
}

/* ---- safetensors ------------------------------------------------------------- */

struct mw_st {
    cJSON *header;
    unsigned char *data;
    size_t len, cap;
};

mw_st *mw_st_new(void)
{
    mw_st *st = calloc(1, sizeof *st);
    if (st && !(st->header = cJSON_CreateObject())) {
        free(st);
        return NULL;
    }
    return st;
}

void mw_st_free(mw_st *st)
{
    if (!st)
        return;
    cJSON_Delete(st->header);
    free(st->data);
    free(st);
}

int mw_st_add_raw(mw_st *st, const char *name, const char *dtype, int ndim, const int64_t *shape,
                  const void *data, size_t nbytes)
{
    if (st->len + nbytes > st->cap) {
        size_t cap = st->cap ? st->cap : 4096;
        while (cap < st->len + nbytes)
            cap *= 2;
        unsigned char *p = realloc(st->data, cap);
        if (!p)
            return -1;
        st->data = p;
        st->cap = cap;
    }
    if (nbytes)
        memcpy(st->data + st->len, data, nbytes);
    cJSON *t = cJSON_CreateObject(), *sh = cJSON_CreateArray(), *off = cJSON_CreateArray();
    if (!t || !sh || !off) {
        cJSON_Delete(t);
        cJSON_Delete(sh);
        cJSON_Delete(off);
        return -1;
    }
    cJSON_AddStringToObject(t, "dtype", dtype);
    for (int i = 0; i < ndim; i++)
        cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)shape[i]));
    cJSON_AddItemToObject(t, "shape", sh);
    cJSON_AddItemToArray(off, cJSON_CreateNumber((double)st->len));
    cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(st->len + nbytes)));
    cJSON_AddItemToObject(t, "data_offsets", off);
    cJSON_AddItemToObject(st->header, name, t);
    st->len += nbytes;
    return 0;
}

int mw_st_add(mw_st *st, const char *name, int ndim, const int64_t *shape, const float *data)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return mw_st_add_raw(st, name, "F32", ndim, shape, data, n * sizeof(float));
}

int mw_st_add_metadata(mw_st *st, const char *key, const char *value)
{
    cJSON *md = cJSON_GetObjectItemCaseSensitive(st->header, "__metadata__");
    if (!md) {
        md = cJSON_CreateObject();
        if (!md)
            return -1;
        cJSON_AddItemToObject(st->header, "__metadata__", md);
    }
    return cJSON_AddStringToObject(md, key, value) ? 0 : -1;
}

int mw_write_st_raw(const char *path, uint64_t header_len, const char *header, const void *data,
                    size_t data_len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    unsigned char n[8];
    for (int i = 0; i < 8; i++)
        n[i] = (unsigned char)(header_len >> (8 * i));
    int ok = fwrite(n, 1, 8, f) == 8;
    size_t hl = strlen(header);
    ok &= hl == 0 || fwrite(header, 1, hl, f) == hl;
    for (size_t i = 0; ok && i < data_len; i++)
        ok &= fputc(data ? ((const unsigned char *)data)[i] : 0, f) != EOF;
    ok &= fclose(f) == 0;
    return ok ? 0 : -1;
}

int mw_st_write(const mw_st *st, const char *path)
{
    char *h = cJSON_PrintUnformatted(st->header);
    if (!h)
        return -1;
    /* pad the header with spaces to a multiple of 8, as the reference writer does */
    size_t hl = strlen(h), padded = (hl + 7) / 8 * 8;
    char *hp = malloc(padded + 1);
    int rc = -1;
    if (hp) {
        memcpy(hp, h, hl);
        memset(hp + hl, ' ', padded - hl);
        hp[padded] = '\0';
        rc = mw_write_st_raw(path, padded, hp, st->data, st->len);
    }
    free(hp);
    cJSON_free(h);
    return rc;
}

/* ---- random numbers -------------------------------------------------------------- */

mw_rng mw_rng_seed(uint64_t seed) { return (mw_rng){seed ^ 0x9E3779B97F4A7C15ull}; }

uint64_t mw_rng_next(mw_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float mw_rng_uniform(mw_rng *r) { return (float)(mw_rng_next(r) >> 40) * (1.0f / 16777216.0f); }

float mw_rng_normal(mw_rng *r)
{
    double u1 = ((double)(mw_rng_next(r) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(mw_rng_next(r) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void mw_random_input(float *x, size_t n, uint64_t seed)
{
    mw_rng r = mw_rng_seed(seed);
    for (size_t i = 0; i < n; i++)
        x[i] = mw_rng_uniform(&r);
}

/* ---- the reference ------------------------------------------------------------------ */

static double *run_list(const layer_list *l, const double *x, shape3 in);

/* One layer on one sample; returns a new array of l->out's size. */
static double *run_layer(const layer *l, const double *x)
{
    shape3 i = l->in, o = l->out;
    double *y = calloc(shape_size(o) ? shape_size(o) : 1, sizeof *y);
    if (!y)
        return NULL;
    switch (l->kind) {
    case LAYER_CONV2D: {
        const conv_params *c = &l->p.conv;
        int cig = c->in_ch / c->groups, cog = c->out_ch / c->groups;
        for (int oc = 0; oc < o.c; oc++) {
            int g = oc / cog;
            for (int oy = 0; oy < o.h; oy++)
                for (int ox = 0; ox < o.w; ox++) {
                    double s = c->bias ? c->bias[oc] : 0.0;
                    for (int ic = 0; ic < cig; ic++)
                        for (int ky = 0; ky < c->kh; ky++)
                            for (int kx = 0; kx < c->kw; kx++) {
                                int iy = oy * c->stride_h - c->pad_h + ky * c->dil_h;
                                int ix = ox * c->stride_w - c->pad_w + kx * c->dil_w;
                                if (iy < 0 || iy >= i.h || ix < 0 || ix >= i.w)
                                    continue;
                                s += (double)
                                         c->weight[((size_t)(oc * cig + ic) * c->kh + ky) * c->kw +
                                                   kx] *
                                     x[((size_t)(g * cig + ic) * i.h + iy) * i.w + ix];
                            }
                    y[((size_t)oc * o.h + oy) * o.w + ox] = s;
                }
        }
        break;
    }
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D: {
        const pool_params *p = &l->p.pool;
        int is_max = l->kind == LAYER_MAXPOOL2D;
        for (int ch = 0; ch < o.c; ch++)
            for (int oy = 0; oy < o.h; oy++)
                for (int ox = 0; ox < o.w; ox++) {
                    double s = is_max ? -INFINITY : 0.0;
                    for (int ky = 0; ky < p->kh; ky++)
                        for (int kx = 0; kx < p->kw; kx++) {
                            int iy = oy * p->stride_h - p->pad_h + ky;
                            int ix = ox * p->stride_w - p->pad_w + kx;
                            if (iy < 0 || iy >= i.h || ix < 0 || ix >= i.w)
                                continue;
                            double v = x[((size_t)ch * i.h + iy) * i.w + ix];
                            s = is_max ? (v > s ? v : s) : s + v;
                        }
                    /* floor mode, padding <= kernel/2: every window lies inside
                       the padded input, so the divisor is the kernel area */
                    y[((size_t)ch * o.h + oy) * o.w + ox] = is_max ? s : s / (p->kh * p->kw);
                }
        break;
    }
    case LAYER_GLOBAL_AVGPOOL:
        for (int ch = 0; ch < i.c; ch++) {
            double s = 0;
            for (int k = 0; k < i.h * i.w; k++)
                s += x[(size_t)ch * i.h * i.w + k];
            y[ch] = s / (i.h * i.w);
        }
        break;
    case LAYER_FLATTEN: memcpy(y, x, shape_size(i) * sizeof *y); break;
    case LAYER_RELU:
        for (size_t k = 0; k < shape_size(i); k++)
            y[k] = x[k] > 0 ? x[k] : 0;
        break;
    case LAYER_SIGMOID:
        for (size_t k = 0; k < shape_size(i); k++)
            y[k] = 1.0 / (1.0 + exp(-x[k]));
        break;
    case LAYER_LINEAR: {
        const linear_params *p = &l->p.linear;
        for (int r = 0; r < p->out_features; r++) {
            double s = p->bias ? p->bias[r] : 0.0;
            for (int k = 0; k < p->in_features; k++)
                s += (double)p->weight[(size_t)r * p->in_features + k] * x[k];
            y[r] = s;
        }
        break;
    }
    case LAYER_RESIDUAL: {
        const residual_params *r = &l->p.residual;
        double *b = run_list(&r->body, x, i), *s = run_list(&r->shortcut, x, i);
        if (!b || !s) {
            free(b);
            free(s);
            free(y);
            return NULL;
        }
        for (size_t k = 0; k < shape_size(o); k++) {
            double v = b[k] + s[k];
            y[k] = r->relu_after && v < 0 ? 0 : v;
        }
        free(b);
        free(s);
        break;
    }
    default: free(y); return NULL;
    }
    return y;
}

/* The list on one sample; returns a new array (a copy of x when empty). */
static double *run_list(const layer_list *l, const double *x, shape3 in)
{
    double *cur = malloc(shape_size(in) * sizeof *cur);
    if (!cur)
        return NULL;
    memcpy(cur, x, shape_size(in) * sizeof *cur);
    for (int k = 0; k < l->count && cur; k++) {
        double *next = run_layer(&l->items[k], cur);
        free(cur);
        cur = next;
    }
    return cur;
}

/* The streak rule of models/FORMAT.md in plain loops, kept apart from
 * policy.h's packed state on purpose: a second reading of the rule. */
void mw_walk_exits(const ert_model *m, const float *thr, const float *z, const float *conf,
                   ert_sample *out, float *scores, int32_t *classes)
{
    const int K = m->num_classes, E = m->num_exits;
    int taken = -1, streak = 0, last_class = -1;
    float taken_score = 0.0f;
    for (int e = 0; e < E; e++) {
        const float *ze = z + (size_t)e * K;
        int finite = 1;
        for (int k = 0; k < K; k++)
            if (!isfinite(ze[k]))
                finite = 0;
        /* argmax: the first of the largest, NaN never chosen (as torch.argmax
           on finite rows; ert_argmax's rule for the others) */
        int cls = 0;
        for (int k = 1; k < K; k++)
            if (ze[k] > ze[cls] || (isnan(ze[cls]) && !isnan(ze[k])))
                cls = k;
        if (!finite)
            streak = 0; /* broken: the next finite exit starts again at 1 */
        else if (streak > 0 && cls == last_class)
            streak++;
        else
            streak = 1;
        last_class = cls;
        const exit_def *xd = &m->exits[e];
        int final = e == E - 1;
        float s;
        int fires;
        if (!final && xd->policy == ERT_POLICY_PATIENCE) {
            s = finite ? (float)streak : NAN;
            fires = finite && (float)streak >= (thr ? thr[e] : xd->threshold);
        } else {
            s = ert_policy_score(final ? ERT_POLICY_NONE : (int)xd->policy, ze, K,
                                 conf ? conf[e] : 0.0f);
            fires = ert_policy_exits(final ? ERT_POLICY_NONE : (int)xd->policy, s,
                                     final ? NAN
                                     : thr ? thr[e]
                                           : xd->threshold);
        }
        if (scores)
            scores[e] = s;
        if (classes)
            classes[e] = cls;
        if (taken < 0 && fires) {
            taken = e;
            taken_score = s;
        }
    }
    out->exit_index = taken;
    out->predicted = ert_argmax(z + (size_t)taken * K, K);
    out->score = taken_score;
}

int mw_reference_infer(const ert_model *m, const float *input, int batch, ert_sample *samples,
                       float *logits, float *all_logits, float *scores)
{
    int K = m->num_classes, E = m->num_exits;
    size_t insz = shape_size(m->input), plane = (size_t)m->input.h * m->input.w;
    float *z = malloc((size_t)E * K * sizeof *z);
    float conf[ERT_MAX_EXITS] = {0}, sc[ERT_MAX_EXITS];
    double *x = malloc(insz * sizeof *x);
    int rc = z && x ? 0 : -1;
    for (int b = 0; b < batch && rc == 0; b++) {
        for (size_t k = 0; k < insz; k++) {
            int ch = (int)(k / plane);
            x[k] =
                ((double)input[(size_t)b * insz + k] * m->input_scale - m->mean[ch]) / m->std[ch];
        }
        /* the backbone layer by layer, keeping the outputs exits read */
        double *cur = malloc(insz * sizeof *cur);
        if (!cur) {
            rc = -1;
            break;
        }
        memcpy(cur, x, insz * sizeof *cur);
        for (int li = 0, e = 0; li < m->backbone.count && cur; li++) {
            double *next = run_layer(&m->backbone.items[li], cur);
            free(cur);
            cur = next;
            for (; cur && e < E && m->exits[e].after == li; e++) {
                const exit_def *xd = &m->exits[e];
                shape3 hin = m->backbone.items[li].out;
                double *h = run_list(&xd->head, cur, hin);
                double *cf = xd->confidence.count ? run_list(&xd->confidence, cur, hin) : NULL;
                if (!h || (xd->confidence.count && !cf)) {
                    free(h);
                    free(cf);
                    rc = -1;
                    break;
                }
                for (int k = 0; k < K; k++)
                    z[(size_t)e * K + k] = (float)h[k];
                conf[e] = cf ? (float)cf[0] : 0.0f;
                if (all_logits)
                    memcpy(all_logits + ((size_t)e * batch + b) * K, z + (size_t)e * K,
                           K * sizeof *z);
                free(h);
                free(cf);
            }
        }
        if (!cur)
            rc = -1;
        free(cur);
        if (rc != 0)
            break;
        mw_walk_exits(m, NULL, z, conf, &samples[b], sc, NULL);
        if (scores)
            for (int e = 0; e < E; e++)
                scores[(size_t)e * batch + b] = sc[e];
        if (logits)
            memcpy(logits + (size_t)b * K, z + (size_t)samples[b].exit_index * K, K * sizeof *z);
    }
    free(z);
    free(x);
    return rc;
}

/* ---- random models ------------------------------------------------------------------ */

typedef struct bld {
    mw_st *st;
    mw_rng rng;
    int err;
} bld;

static cJSON *add_layer(cJSON *list, const char *name, const char *type)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "type", type);
    cJSON_AddItemToArray(list, o);
    return o;
}

/* A tensor "<prefix>.<layer>.<key>" with values mean + std * N(0,1), or
 * uniform in [lo, lo + span) when span > 0; its name into o[key]. */
static void add_tensor(bld *b, cJSON *o, const char *key, const char *prefix, int ndim,
                       const int64_t *shape, float mean, float std, float span)
{
    char name[256];
    snprintf(name, sizeof name, "%s.%s.%s", prefix, cJSON_GetObjectItem(o, "name")->valuestring,
             key);
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    float *v = malloc(n * sizeof *v);
    if (!v) {
        b->err = 1;
        return;
    }
    for (size_t i = 0; i < n; i++)
        v[i] =
            span > 0 ? mean + span * mw_rng_uniform(&b->rng) : mean + std * mw_rng_normal(&b->rng);
    if (mw_st_add(b->st, name, ndim, shape, v))
        b->err = 1;
    free(v);
    cJSON_AddStringToObject(o, key, name);
}

/* A pair field: one int when h == w, else [h, w] (both forms get tested). */
static void add_pair(cJSON *o, const char *key, int h, int w)
{
    if (h == w) {
        cJSON_AddNumberToObject(o, key, h);
    } else {
        int v[2] = {h, w};
        cJSON_AddItemToObject(o, key, cJSON_CreateIntArray(v, 2));
    }
}

static void conv(bld *b, cJSON *list, const char *prefix, const char *name, int in, int out, int kh,
                 int kw, int sh, int sw, int ph, int pw, int dil, int groups, int bias)
{
    cJSON *o = add_layer(list, name, "conv2d");
    cJSON_AddNumberToObject(o, "in_channels", in);
    cJSON_AddNumberToObject(o, "out_channels", out);
    add_pair(o, "kernel_size", kh, kw);
    add_pair(o, "stride", sh, sw);
    add_pair(o, "padding", ph, pw);
    if (dil != 1)
        cJSON_AddNumberToObject(o, "dilation", dil);
    if (groups != 1)
        cJSON_AddNumberToObject(o, "groups", groups);
    int64_t ws[4] = {out, in / groups, kh, kw}, bs[1] = {out};
    float fan_in = (float)(in / groups * kh * kw);
    add_tensor(b, o, "weight", prefix, 4, ws, 0.0f, sqrtf(2.0f / fan_in), 0);
    if (bias)
        add_tensor(b, o, "bias", prefix, 1, bs, 0.0f, 0.1f, 0);
}

static void bn(bld *b, cJSON *list, const char *prefix, const char *name, int ch)
{
    cJSON *o = add_layer(list, name, "batchnorm2d");
    cJSON_AddNumberToObject(o, "num_features", ch);
    cJSON_AddNumberToObject(o, "eps", 1e-5);
    int64_t s[1] = {ch};
    add_tensor(b, o, "weight", prefix, 1, s, 0.7f, 0, 0.6f);
    add_tensor(b, o, "bias", prefix, 1, s, 0.0f, 0.1f, 0);
    add_tensor(b, o, "running_mean", prefix, 1, s, 0.0f, 0.2f, 0);
    add_tensor(b, o, "running_var", prefix, 1, s, 0.5f, 0, 1.0f);
}

static void linear(bld *b, cJSON *list, const char *prefix, const char *name, int in, int out,
                   float gain)
{
    cJSON *o = add_layer(list, name, "linear");
    cJSON_AddNumberToObject(o, "in_features", in);
    cJSON_AddNumberToObject(o, "out_features", out);
    int64_t ws[2] = {out, in}, bs[1] = {out};
    add_tensor(b, o, "weight", prefix, 2, ws, 0.0f, gain / sqrtf((float)in), 0);
    add_tensor(b, o, "bias", prefix, 1, bs, 0.0f, 0.1f, 0);
}

static void pool(cJSON *list, const char *name, const char *type, int k, int s, int p)
{
    cJSON *o = add_layer(list, name, type);
    cJSON_AddNumberToObject(o, "kernel_size", k);
    if (s != k)
        cJSON_AddNumberToObject(o, "stride", s);
    if (p)
        cJSON_AddNumberToObject(o, "padding", p);
}

static cJSON *add_exit(cJSON *exits, const char *name, const char *after, const char *policy,
                       double threshold)
{
    cJSON *e = cJSON_CreateObject(), *p = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "name", name);
    cJSON_AddStringToObject(e, "after", after);
    cJSON_AddStringToObject(p, "type", policy);
    cJSON_AddNumberToObject(p, "threshold", threshold);
    cJSON_AddItemToObject(e, "policy", p);
    cJSON_AddItemToArray(exits, e);
    return e;
}

static cJSON *model_root(int c, int h, int w, int K, cJSON **backbone, cJSON **exits, cJSON **final)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "format", "exitrt-model");
    cJSON_AddNumberToObject(r, "version", 1);
    cJSON_AddStringToObject(r, "name", "random");
    cJSON_AddStringToObject(r, "weights", "model.safetensors");
    cJSON *in = cJSON_AddObjectToObject(r, "input");
    int shape[3] = {c, h, w};
    cJSON_AddItemToObject(in, "shape", cJSON_CreateIntArray(shape, 3));
    cJSON_AddNumberToObject(in, "scale", 1.0);
    cJSON_AddNumberToObject(in, "mean", 0.5);
    cJSON_AddNumberToObject(in, "std", 0.29);
    cJSON_AddNumberToObject(r, "num_classes", K);
    *backbone = cJSON_AddArrayToObject(r, "backbone");
    *exits = cJSON_AddArrayToObject(r, "exits");
    *final = cJSON_AddObjectToObject(r, "final");
    cJSON_AddStringToObject(*final, "name", "final");
    return r;
}

static cJSON *build_mlp(bld *b)
{
    cJSON *bb, *ex, *fin;
    cJSON *r = model_root(1, 8, 8, 5, &bb, &ex, &fin);
    add_layer(bb, "flatten", "flatten");
    linear(b, bb, "backbone", "fc1", 64, 48, sqrtf(2.0f));
    add_layer(bb, "relu1", "relu");
    add_layer(bb, "drop1", "dropout");
    linear(b, bb, "backbone", "fc2", 48, 32, sqrtf(2.0f));
    add_layer(bb, "relu2", "relu");
    linear(b, bb, "backbone", "fc3", 32, 32, sqrtf(2.0f));
    add_layer(bb, "relu3", "relu");
    cJSON *e = add_exit(ex, "exit1", "drop1", "entropy", 1.0);
    linear(b, cJSON_AddArrayToObject(e, "head"), "exit1", "fc", 48, 5, 2.0f);
    e = add_exit(ex, "exit2", "relu2", "max_prob", 0.5);
    cJSON *h = cJSON_AddArrayToObject(e, "head");
    linear(b, h, "exit2", "fc1", 32, 16, sqrtf(2.0f));
    add_layer(h, "relu", "relu");
    linear(b, h, "exit2", "fc2", 16, 5, 2.0f);
    linear(b, cJSON_AddArrayToObject(fin, "head"), "final", "fc", 32, 5, 2.0f);
    return r;
}

static cJSON *build_cnn(bld *b)
{
    cJSON *bb, *ex, *fin;
    cJSON *r = model_root(3, 12, 12, 6, &bb, &ex, &fin);
    const char *B = "backbone";
    conv(b, bb, B, "conv1", 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 0); /* no bias: folding adds one */
    bn(b, bb, B, "bn1", 8);
    add_layer(bb, "relu1", "relu");
    conv(b, bb, B, "conv2", 8, 8, 3, 3, 1, 1, 2, 2, 2, 2, 1); /* dilated, grouped */
    bn(b, bb, B, "bn2", 8);
    add_layer(bb, "relu2", "relu");
    pool(bb, "pool1", "maxpool2d", 2, 2, 0);                   /* 8x6x6 */
    conv(b, bb, B, "conv3", 8, 12, 3, 1, 1, 1, 1, 0, 1, 1, 1); /* 12x6x6 */
    add_layer(bb, "relu3", "relu");
    pool(bb, "pool2", "avgpool2d", 3, 2, 1);                    /* 12x3x3 */
    conv(b, bb, B, "conv4", 12, 16, 3, 3, 2, 1, 1, 1, 1, 4, 1); /* 16x2x3 */
    add_layer(bb, "relu4", "relu");
    cJSON *e = add_exit(ex, "exit1", "pool1", "confidence_head", 0.5);
    cJSON *h = cJSON_AddArrayToObject(e, "head");
    conv(b, h, "exit1", "conv", 8, 4, 1, 1, 1, 1, 0, 0, 1, 1, 1);
    add_layer(h, "relu", "relu");
    add_layer(h, "flatten", "flatten");
    linear(b, h, "exit1", "fc", 144, 6, 2.0f);
    cJSON *cf = cJSON_AddArrayToObject(e, "confidence");
    add_layer(cf, "gap", "global_avgpool");
    linear(b, cf, "exit1.confidence", "fc", 8, 1, 2.0f);
    add_layer(cf, "sigmoid", "sigmoid");
    h = cJSON_AddArrayToObject(fin, "head");
    add_layer(h, "flatten", "flatten");
    linear(b, h, "final", "fc", 96, 6, 2.0f);
    return r;
}

/* A basic block: conv-bn-relu-conv-bn plus identity or a 1x1 conv+bn. */
static void block(bld *b, cJSON *bb, const char *name, int in, int out, int stride)
{
    char p[64];
    cJSON *o = add_layer(bb, name, "residual");
    cJSON *body = cJSON_AddArrayToObject(o, "body");
    snprintf(p, sizeof p, "backbone.%s.body", name);
    conv(b, body, p, "conv1", in, out, 3, 3, stride, stride, 1, 1, 1, 1, 0);
    bn(b, body, p, "bn1", out);
    add_layer(body, "relu", "relu");
    conv(b, body, p, "conv2", out, out, 3, 3, 1, 1, 1, 1, 1, 1, 0);
    bn(b, body, p, "bn2", out);
    if (in != out || stride != 1) {
        cJSON *sc = cJSON_AddArrayToObject(o, "shortcut");
        snprintf(p, sizeof p, "backbone.%s.shortcut", name);
        conv(b, sc, p, "conv", in, out, 1, 1, stride, stride, 0, 0, 1, 1, 0);
        bn(b, sc, p, "bn", out);
    }
    cJSON_AddStringToObject(o, "activation", "relu");
}

static void gap_head(bld *b, cJSON *e, const char *prefix, int ch, int K)
{
    cJSON *h = cJSON_AddArrayToObject(e, "head");
    add_layer(h, "gap", "global_avgpool");
    add_layer(h, "flatten", "flatten");
    linear(b, h, prefix, "fc", ch, K, 3.0f);
}

static cJSON *build_resnet(bld *b)
{
    cJSON *bb, *ex, *fin;
    cJSON *r = model_root(3, 16, 16, 10, &bb, &ex, &fin);
    conv(b, bb, "backbone", "stem", 3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 0);
    bn(b, bb, "backbone", "stem_bn", 8);
    add_layer(bb, "stem_relu", "relu");
    block(b, bb, "block1", 8, 8, 1);
    block(b, bb, "block2", 8, 16, 2);
    block(b, bb, "block3", 16, 16, 1);
    add_layer(bb, "gap", "global_avgpool");
    add_layer(bb, "flatten", "flatten");
    gap_head(b, add_exit(ex, "exit1", "block1", "entropy", 1.5), "exit1", 8, 10);
    gap_head(b, add_exit(ex, "exit2", "block2", "max_prob", 0.5), "exit2", 16, 10);
    gap_head(b, add_exit(ex, "exit3", "block3", "margin", 0.3), "exit3", 16, 10);
    linear(b, cJSON_AddArrayToObject(fin, "head"), "final", "fc", 16, 10, 3.0f);
    return r;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Sets every early exit's threshold so that about equal shares of n random
 * inputs leave at each exit and at the final head. Writes them into root. */
static int calibrate(const char *dir, cJSON *root)
{
    enum {
        N = 384
    };
    ert_model *m = NULL;
    if (ert_model_load(dir, &m, NULL) != ERT_OK)
        return -1;
    int E = m->num_exits, rc = -1;
    size_t insz = shape_size(m->input);
    float *x = malloc(N * insz * sizeof *x), *scores = malloc((size_t)E * N * sizeof *scores);
    float *sorted = malloc(N * sizeof *sorted);
    ert_sample *s = malloc(N * sizeof *s);
    unsigned char *alive = malloc(N);
    if (!x || !scores || !sorted || !s || !alive)
        goto done;
    mw_random_input(x, N * insz, 0xCA11B4A7Eull);
    if (mw_reference_infer(m, x, N, s, NULL, NULL, scores))
        goto done;
    memset(alive, 1, N);
    cJSON *exits = cJSON_GetObjectItem(root, "exits");
    for (int e = 0; e < E - 1; e++) {
        int n = 0;
        for (int i = 0; i < N; i++)
            if (alive[i])
                sorted[n++] = scores[(size_t)e * N + i];
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_float);
        int k = n / (E - e); /* samples to leave here */
        int entropy = m->exits[e].policy == ERT_POLICY_ENTROPY;
        /* entropy leaves below the threshold, the others at or above it */
        int lo = entropy ? k - 1 : n - k - 1;
        if (n < 2 || k < 1 || lo < 0 || lo + 1 >= n)
            goto done;
        float t = (float)(0.5 * ((double)sorted[lo] + sorted[lo + 1]));
        cJSON *p = cJSON_GetObjectItem(cJSON_GetArrayItem(exits, e), "policy");
        cJSON_SetNumberValue(cJSON_GetObjectItem(p, "threshold"), (double)t);
        for (int i = 0; i < N; i++)
            if (alive[i] && ert_policy_exits(m->exits[e].policy, scores[(size_t)e * N + i], t))
                alive[i] = 0;
    }
    rc = 0;
done:
    free(x);
    free(scores);
    free(sorted);
    free(s);
    free(alive);
    ert_model_free(m);
    return rc;
}

int mw_set_policy(const char *dir, int exit, const char *type, double threshold)
{
    char path[4096];
    if (mw_path(path, sizeof path, dir, "model.json"))
        return -1;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    char *text = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)n + 1)) && fread(text, 1, (size_t)n, f) == (size_t)n)
        text[n] = '\0';
    else
        n = -1;
    fclose(f);
    cJSON *root = n >= 0 ? cJSON_Parse(text) : NULL;
    free(text);
    cJSON *e = root ? cJSON_GetArrayItem(cJSON_GetObjectItem(root, "exits"), exit) : NULL;
    cJSON *p = cJSON_CreateObject();
    int rc = -1;
    if (e && p && cJSON_AddStringToObject(p, "type", type) &&
        cJSON_AddNumberToObject(p, "threshold", threshold) &&
        cJSON_ReplaceItemInObject(e, "policy", p)) {
        p = NULL; /* owned by the tree now */
        if (strcmp(type, "confidence_head") != 0)
            cJSON_DeleteItemFromObject(e, "confidence");
        rc = mw_write_json(path, root);
    }
    cJSON_Delete(p);
    cJSON_Delete(root);
    return rc;
}

const char *mw_kind_name(mw_kind kind)
{
    static const char *const names[] = {"mlp", "cnn", "resnet"};
    return kind >= 0 && kind < MW_KIND_COUNT ? names[kind] : "unknown";
}

int mw_random_model(const char *dir, uint64_t seed, mw_kind kind)
{
    if (kind < 0 || kind >= MW_KIND_COUNT)
        return -1;
    bld b = {.st = mw_st_new(), .rng = mw_rng_seed(seed * 3 + (uint64_t)kind)};
    if (!b.st)
        return -1;
    cJSON *root = kind == MW_MLP   ? build_mlp(&b)
                  : kind == MW_CNN ? build_cnn(&b)
                                   : build_resnet(&b);
    char jp[4096], wp[4096];
    int rc = -1;
    if (root && !b.err && !mw_path(jp, sizeof jp, dir, "model.json") &&
        !mw_path(wp, sizeof wp, dir, "model.safetensors") && !mw_st_write(b.st, wp) &&
        !mw_write_json(jp, root) && !calibrate(dir, root) && !mw_write_json(jp, root))
        rc = 0;
    cJSON_Delete(root);
    mw_st_free(b.st);
    return rc;
}

/* model_writer.c - writing model directories for tests (model_writer.h). */
#include "model_writer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "act.h"
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

void mw_random_tokens(float *rows, int n, int T, int vocab, uint64_t seed)
{
    mw_rng r = mw_rng_seed(seed);
    for (int i = 0; i < n; i++) {
        float *row = rows + (size_t)i * 2 * T;
        int len = i % 4 == 0 ? T : 1 + (int)(mw_rng_next(&r) % (uint64_t)T);
        for (int t = 0; t < T; t++) {
            row[t] = t < len ? (float)(mw_rng_next(&r) % (uint64_t)vocab) : 0.0f;
            row[T + t] = t < len ? 1.0f : 0.0f;
        }
    }
}

void mw_model_inputs(const ert_model *m, float *x, int n, uint64_t seed)
{
    if (m->input_tokens > 0)
        mw_random_tokens(x, n, m->input_tokens, m->vocab, seed);
    else
        mw_random_input(x, (size_t)n * shape_size(m->input), seed);
}

/* ---- the reference ------------------------------------------------------------------ */

static double *run_list(const layer_list *l, const double *x, shape3 in);

/* ---- the transformer layers (models/FORMAT.md, "Transformer encoders") ---- */

/* Layer norm of n values at x (stride 1) into y, in double. */
static void ref_norm(const norm_params *p, const double *x, double *y, int n)
{
    double mean = 0, var = 0;
    for (int d = 0; d < n; d++)
        mean += x[d];
    mean /= n;
    for (int d = 0; d < n; d++)
        var += (x[d] - mean) * (x[d] - mean);
    var /= n; /* biased, as PyTorch */
    double inv = 1.0 / sqrt(var + (double)p->eps);
    for (int d = 0; d < n; d++) {
        double w = p->weight ? p->weight[d] : 1.0, b = p->bias ? p->bias[d] : 0.0;
        y[d] = (x[d] - mean) * inv * w + b;
    }
}

/* Every token's norm, the mask column copied (T tokens of D + 1). */
static void ref_norm_tokens(const norm_params *p, int T, int D, const double *x, double *y)
{
    for (int t = 0; t < T; t++) {
        ref_norm(p, x + (size_t)t * (D + 1), y + (size_t)t * (D + 1), D);
        y[(size_t)t * (D + 1) + D] = x[(size_t)t * (D + 1) + D];
    }
}

/* y[t] = W x[t] + b for every token (W [out, in]); y has out + 1 per token,
 * its last column the mask. */
static void ref_linear_tokens(const linear_params *p, int T, const double *x, double *y)
{
    int I = p->in_features, O = p->out_features;
    for (int t = 0; t < T; t++) {
        const double *xt = x + (size_t)t * (I + 1);
        double *yt = y + (size_t)t * (O + 1);
        for (int o = 0; o < O; o++) {
            double s = p->bias ? p->bias[o] : 0.0;
            for (int k = 0; k < I; k++)
                s += (double)p->weight[(size_t)o * I + k] * xt[k];
            yt[o] = s;
        }
        yt[O] = xt[I];
    }
}

static double ref_gelu(double v) { return 0.5 * v * (1.0 + erf(v / sqrt(2.0))); }

/* Multi-head self-attention of T tokens of D (+ mask) into y (same
 * layout), nn.MultiheadAttention with q = k = v = x and the mask as
 * key_padding_mask; no residual. */
static int ref_attention(const attention_params *p, int T, const double *x, double *y)
{
    const int D = p->dim, H = p->heads, dh = D / H;
    double *qkv = malloc((size_t)T * 3 * D * sizeof *qkv);
    double *cat = malloc((size_t)T * D * sizeof *cat);
    double *w = malloc((size_t)T * sizeof *w);
    if (!qkv || !cat || !w) {
        free(qkv);
        free(cat);
        free(w);
        return -1;
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < 3 * D; r++) {
            double s = p->in_bias ? p->in_bias[r] : 0.0;
            for (int k = 0; k < D; k++)
                s += (double)p->in_weight[(size_t)r * D + k] * x[(size_t)t * (D + 1) + k];
            qkv[(size_t)t * 3 * D + r] = s;
        }
    for (int h = 0; h < H; h++)
        for (int i = 0; i < T; i++) {
            const double *q = qkv + (size_t)i * 3 * D + h * dh;
            double mx = -INFINITY;
            int any = 0;
            for (int j = 0; j < T; j++) {
                if (x[(size_t)j * (D + 1) + D] == 0) /* a padded key: -inf, no weight */
                    continue;
                const double *k = qkv + (size_t)j * 3 * D + D + h * dh;
                double s = 0;
                for (int c = 0; c < dh; c++)
                    s += q[c] * k[c];
                w[j] = s / sqrt((double)dh);
                if (w[j] > mx)
                    mx = w[j]; /* a NaN score still spreads through exp below */
                any = 1;
            }
            double sum = 0;
            for (int j = 0; j < T; j++)
                if (x[(size_t)j * (D + 1) + D] != 0)
                    sum += (w[j] = exp(w[j] - mx));
            for (int c = 0; c < dh; c++) {
                double acc = 0;
                for (int j = 0; j < T; j++)
                    if (x[(size_t)j * (D + 1) + D] != 0)
                        acc += w[j] / sum * qkv[(size_t)j * 3 * D + 2 * D + h * dh + c];
                /* no attended key: softmax over nothing, NaN (as PyTorch) */
                cat[(size_t)i * D + h * dh + c] = any ? acc : NAN;
            }
        }
    for (int t = 0; t < T; t++) {
        for (int o = 0; o < D; o++) {
            double s = p->out_bias ? p->out_bias[o] : 0.0;
            for (int k = 0; k < D; k++)
                s += (double)p->out_weight[(size_t)o * D + k] * cat[(size_t)t * D + k];
            y[(size_t)t * (D + 1) + o] = s;
        }
        y[(size_t)t * (D + 1) + D] = x[(size_t)t * (D + 1) + D];
    }
    free(qkv);
    free(cat);
    free(w);
    return 0;
}

/* One nn.TransformerEncoderLayer (FORMAT.md's encoder_block) into y. */
static int ref_encoder(const encoder_params *p, int T, const double *x, double *y)
{
    const int D = p->attn.dim, F = p->ff1.out_features;
    const size_t n = (size_t)T * (D + 1);
    double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    double *h = malloc((size_t)T * (F + 1) * sizeof *h);
    int rc = a && b && h ? 0 : -1;
    if (rc == 0 && p->norm_first) {
        /* x = x + attn(norm1(x)); x = x + ff(norm2(x)) */
        ref_norm_tokens(&p->norm1, T, D, x, a);
        rc = ref_attention(&p->attn, T, a, b);
        for (size_t k = 0; rc == 0 && k < n; k++)
            y[k] = (k % (D + 1) == (size_t)D) ? x[k] : x[k] + b[k];
        if (rc == 0)
            ref_norm_tokens(&p->norm2, T, D, y, a);
    } else if (rc == 0) {
        /* x = norm1(x + attn(x)); x = norm2(x + ff(x)) */
        rc = ref_attention(&p->attn, T, x, b);
        for (size_t k = 0; rc == 0 && k < n; k++)
            a[k] = (k % (D + 1) == (size_t)D) ? x[k] : x[k] + b[k];
        if (rc == 0) {
            ref_norm_tokens(&p->norm1, T, D, a, y);
            memcpy(a, y, n * sizeof *a);
        }
    }
    if (rc == 0) {
        /* a: the feed-forward's input; y: the residual stream */
        ref_linear_tokens(&p->ff1, T, a, h);
        for (int t = 0; t < T; t++)
            for (int f = 0; f < F; f++) {
                double *v = &h[(size_t)t * (F + 1) + f];
                *v = p->act == ERT_ACT_GELU ? ref_gelu(*v) : (*v > 0 ? *v : 0);
            }
        ref_linear_tokens(&p->ff2, T, h, b);
        for (size_t k = 0; k < n; k++)
            if (k % (D + 1) != (size_t)D)
                y[k] += b[k];
        if (!p->norm_first) {
            memcpy(a, y, n * sizeof *a);
            ref_norm_tokens(&p->norm2, T, D, a, y);
        }
    }
    free(a);
    free(b);
    free(h);
    return rc;
}

/* The transformer layers; 1 when l is none of them, -1 on failure. */
static int run_tx_layer(const layer *l, const double *x, double *y)
{
    shape3 i = l->in, o = l->out;
    switch (l->kind) {
    case LAYER_PATCH_EMBED: {
        const patch_params *p = &l->p.patch;
        const conv_params *c = &p->conv;
        const int D = c->out_ch, gh = i.h / c->kh, gw = i.w / c->kw, first = p->cls ? 1 : 0;
        const int T = shape_tokens(o);
        if (T != gh * gw + first || shape_dim(o) != D)
            return -1;
        for (int t = 0; t < T; t++) {
            double *yt = y + (size_t)t * (D + 1);
            for (int d = 0; d < D; d++) {
                double s;
                if (t < first) {
                    s = p->cls[d];
                } else {
                    int py = (t - first) / gw, px = (t - first) % gw; /* row-major patches */
                    s = c->bias ? c->bias[d] : 0.0;
                    for (int ch = 0; ch < c->in_ch; ch++)
                        for (int ky = 0; ky < c->kh; ky++)
                            for (int kx = 0; kx < c->kw; kx++)
                                s +=
                                    (double)c->weight[(((size_t)d * c->in_ch + ch) * c->kh + ky) *
                                                          c->kw +
                                                      kx] *
                                    x[((size_t)ch * i.h + py * c->kh + ky) * i.w + px * c->kw + kx];
                }
                if (p->pos)
                    s += p->pos[(size_t)t * D + d];
                yt[d] = s;
            }
            yt[D] = 1.0;
        }
        return 0;
    }
    case LAYER_TOKEN_EMBED: {
        const embed_params *p = &l->p.embed;
        const int T = shape_tokens(o), D = p->dim;
        for (int t = 0; t < T; t++) {
            double id = x[t], *yt = y + (size_t)t * (D + 1);
            int ok = id >= 0 && id < p->vocab && id == floor(id);
            for (int d = 0; d < D; d++) {
                if (!ok) {
                    yt[d] = NAN;
                    continue;
                }
                double s = p->weight[(size_t)id * D + d];
                if (p->pos)
                    s += p->pos[(size_t)t * D + d];
                if (p->segment)
                    s += p->segment[d];
                yt[d] = s;
            }
            yt[D] = x[T + t] != 0 ? 1.0 : 0.0;
        }
        return 0;
    }
    case LAYER_LAYER_NORM:
        if (i.tokens)
            ref_norm_tokens(&l->p.norm, shape_tokens(i), shape_dim(i), x, y);
        else
            ref_norm(&l->p.norm, x, y, (int)shape_size(i));
        return 0;
    case LAYER_GELU:
        for (size_t k = 0; k < shape_size(i); k++)
            y[k] = ref_gelu(x[k]);
        return 0;
    case LAYER_TANH:
        for (size_t k = 0; k < shape_size(i); k++)
            y[k] = tanh(x[k]);
        return 0;
    case LAYER_SELF_ATTENTION:
    case LAYER_ENCODER_BLOCK: {
        const int T = shape_tokens(i), D = shape_dim(i);
        int r = l->kind == LAYER_SELF_ATTENTION ? ref_attention(&l->p.attn, T, x, y)
                                                : ref_encoder(&l->p.enc, T, x, y);
        /* the CPU backend's rule (FORMAT.md leaves it open): the padding
           after the last attended token is not computed and comes out as
           zeros (all padded: computed whole) */
        int last = -1;
        for (int t = 0; t < T; t++)
            if (x[(size_t)t * (D + 1) + D] != 0)
                last = t;
        for (int t = last + 1; last >= 0 && t < T; t++)
            for (int d = 0; d < D; d++)
                y[(size_t)t * (D + 1) + d] = 0;
        return r;
    }
    case LAYER_TOKEN_POOL: {
        const int T = shape_tokens(i), D = shape_dim(i);
        if (l->p.token_pool == TOKEN_POOL_FIRST) {
            for (int d = 0; d < D; d++)
                y[d] = x[d];
            return 0;
        }
        int n = 0;
        for (int d = 0; d < D; d++)
            y[d] = 0;
        for (int t = 0; t < T; t++) {
            if (x[(size_t)t * (D + 1) + D] == 0)
                continue;
            n++;
            for (int d = 0; d < D; d++)
                y[d] += x[(size_t)t * (D + 1) + d];
        }
        for (int d = 0; d < D; d++)
            y[d] = n ? y[d] / n : NAN;
        return 0;
    }
    default: return 1;
    }
}

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
    default: {
        int rc = run_tx_layer(l, x, y);
        if (rc != 0) {
            free(y);
            return NULL;
        }
        break;
    }
    }
    return y;
}

double *mw_reference_layer(const struct layer *l, const double *x) { return run_layer(l, x); }

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
            x[k] = m->input_tokens > 0 /* token rows are not normalised */
                       ? (double)input[(size_t)b * insz + k]
                       : ((double)input[(size_t)b * insz + k] * m->input_scale - m->mean[ch]) /
                             m->std[ch];
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

/* A tensor named name with values mean + std * N(0,1), or uniform in
 * [mean, mean + span) when span > 0; its name into o[key]. */
static void add_tensor_as(bld *b, cJSON *o, const char *key, const char *name, int ndim,
                          const int64_t *shape, float mean, float std, float span)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    float *v = malloc((n ? n : 1) * sizeof *v);
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

/* A tensor "<prefix>.<layer>.<key>" (add_tensor_as). */
static void add_tensor(bld *b, cJSON *o, const char *key, const char *prefix, int ndim,
                       const int64_t *shape, float mean, float std, float span)
{
    char name[256];
    snprintf(name, sizeof name, "%s.%s.%s", prefix, cJSON_GetObjectItem(o, "name")->valuestring,
             key);
    add_tensor_as(b, o, key, name, ndim, shape, mean, std, span);
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

/* ---- random transformer encoders ------------------------------------------------ */

/* base + "." + key into out (a tensor name under a layer or a sub-object). */
static const char *tname(char *out, size_t len, const char *base, const char *key)
{
    snprintf(out, len, "%s.%s", base, key);
    return out;
}

/* A layer_norm's fields into o; tensors "<base>.weight" and ".bias" when
 * affine. */
static void fill_norm(bld *b, cJSON *o, const char *base, int D, int affine)
{
    char n[256];
    int64_t s[1] = {D};
    cJSON_AddNumberToObject(o, "normalized_shape", D);
    cJSON_AddNumberToObject(o, "eps", 1e-5);
    if (affine) {
        add_tensor_as(b, o, "weight", tname(n, sizeof n, base, "weight"), 1, s, 0.7f, 0, 0.6f);
        add_tensor_as(b, o, "bias", tname(n, sizeof n, base, "bias"), 1, s, 0.0f, 0.1f, 0);
    }
}

/* A linear's fields (no name, no type) into o. */
static void fill_linear(bld *b, cJSON *o, const char *base, int in, int out, float gain)
{
    char n[256];
    int64_t ws[2] = {out, in}, bs[1] = {out};
    cJSON_AddNumberToObject(o, "in_features", in);
    cJSON_AddNumberToObject(o, "out_features", out);
    add_tensor_as(b, o, "weight", tname(n, sizeof n, base, "weight"), 2, ws, 0.0f,
                  gain / sqrtf((float)in), 0);
    add_tensor_as(b, o, "bias", tname(n, sizeof n, base, "bias"), 1, bs, 0.0f, 0.1f, 0);
}

/* A self_attention's fields into o; biases when bias. The q and k rows get
 * a gain of 2 so that the attention is not near uniform. */
static void fill_attention(bld *b, cJSON *o, const char *base, int D, int H, int bias)
{
    char n[256];
    int64_t iw[2] = {3 * D, D}, ib[1] = {3 * D}, ow[2] = {D, D}, ob[1] = {D};
    cJSON_AddNumberToObject(o, "embed_dim", D);
    cJSON_AddNumberToObject(o, "num_heads", H);
    add_tensor_as(b, o, "in_weight", tname(n, sizeof n, base, "in_weight"), 2, iw, 0.0f,
                  1.5f / sqrtf((float)D), 0);
    if (bias)
        add_tensor_as(b, o, "in_bias", tname(n, sizeof n, base, "in_bias"), 1, ib, 0.0f, 0.1f, 0);
    add_tensor_as(b, o, "out_weight", tname(n, sizeof n, base, "out_weight"), 2, ow, 0.0f,
                  1.0f / sqrtf((float)D), 0);
    if (bias)
        add_tensor_as(b, o, "out_bias", tname(n, sizeof n, base, "out_bias"), 1, ob, 0.0f, 0.1f, 0);
}

static void layer_norm(bld *b, cJSON *list, const char *prefix, const char *name, int D, int affine)
{
    char base[256];
    snprintf(base, sizeof base, "%s.%s", prefix, name);
    fill_norm(b, add_layer(list, name, "layer_norm"), base, D, affine);
}

static void self_attention(bld *b, cJSON *list, const char *prefix, const char *name, int D, int H,
                           int bias)
{
    char base[256];
    snprintf(base, sizeof base, "%s.%s", prefix, name);
    fill_attention(b, add_layer(list, name, "self_attention"), base, D, H, bias);
}

static void token_pool(cJSON *list, const char *name, const char *mode)
{
    cJSON_AddStringToObject(add_layer(list, name, "token_pool"), "mode", mode);
}

/* One encoder_block: D features, H heads, F hidden; pre-LN when norm_first. */
static void encoder(bld *b, cJSON *list, const char *prefix, const char *name, int D, int H, int F,
                    int norm_first, int gelu, int attn_bias)
{
    char base[256], sub[300];
    snprintf(base, sizeof base, "%s.%s", prefix, name);
    cJSON *o = add_layer(list, name, "encoder_block");
    cJSON_AddBoolToObject(o, "norm_first", norm_first);
    cJSON_AddStringToObject(o, "activation", gelu ? "gelu" : "relu");
    fill_attention(b, cJSON_AddObjectToObject(o, "attention"), tname(sub, sizeof sub, base, "attn"),
                   D, H, attn_bias);
    fill_norm(b, cJSON_AddObjectToObject(o, "norm1"), tname(sub, sizeof sub, base, "norm1"), D, 1);
    fill_linear(b, cJSON_AddObjectToObject(o, "linear1"), tname(sub, sizeof sub, base, "linear1"),
                D, F, sqrtf(2.0f));
    fill_linear(b, cJSON_AddObjectToObject(o, "linear2"), tname(sub, sizeof sub, base, "linear2"),
                F, D, 1.0f);
    fill_norm(b, cJSON_AddObjectToObject(o, "norm2"), tname(sub, sizeof sub, base, "norm2"), D, 1);
}

static void patch_embed(bld *b, cJSON *list, const char *prefix, const char *name, int C, int D,
                        int ph, int pw, int T, int cls, int pos)
{
    cJSON *o = add_layer(list, name, "patch_embed");
    cJSON_AddNumberToObject(o, "in_channels", C);
    cJSON_AddNumberToObject(o, "embed_dim", D);
    add_pair(o, "patch_size", ph, pw);
    int64_t ws[4] = {D, C, ph, pw}, bs[1] = {D}, ps[2] = {T, D};
    add_tensor(b, o, "weight", prefix, 4, ws, 0.0f, 1.0f / sqrtf((float)(C * ph * pw)), 0);
    add_tensor(b, o, "bias", prefix, 1, bs, 0.0f, 0.1f, 0);
    if (cls)
        add_tensor(b, o, "class_token", prefix, 1, bs, 0.0f, 0.5f, 0);
    if (pos)
        add_tensor(b, o, "position", prefix, 2, ps, 0.0f, 0.5f, 0);
}

static void token_embed(bld *b, cJSON *list, const char *prefix, const char *name, int V, int D,
                        int T, int pos, int seg)
{
    cJSON *o = add_layer(list, name, "token_embed");
    cJSON_AddNumberToObject(o, "vocab_size", V);
    cJSON_AddNumberToObject(o, "embed_dim", D);
    int64_t ws[2] = {V, D}, ps[2] = {T, D}, ss[1] = {D};
    add_tensor(b, o, "weight", prefix, 2, ws, 0.0f, 1.0f, 0);
    if (pos)
        add_tensor(b, o, "position", prefix, 2, ps, 0.0f, 0.5f, 0);
    if (seg)
        add_tensor(b, o, "segment", prefix, 1, ss, 0.0f, 0.3f, 0);
}

static int pick(bld *b, int n) { return (int)(mw_rng_next(&b->rng) % (uint64_t)n); }

/* D 16, 24 or 32 and H among 1, 2, 4 and D (each divides D). */
static void pick_dims(bld *b, int *D, int *H)
{
    static const int dims[] = {16, 24, 32};
    *D = dims[pick(b, 3)];
    int h = pick(b, 4);
    *H = h == 3 ? *D : 1 << h;
}

static cJSON *build_vit(bld *b)
{
    static const int img[4][4] = {{12, 12, 4, 4}, {16, 16, 4, 4}, {12, 16, 4, 4}, {8, 12, 4, 2}};
    const int *g = img[pick(b, 4)];
    int D, H;
    pick_dims(b, &D, &H);
    const int T = (g[0] / g[2]) * (g[1] / g[3]) + 1, K = 4 + pick(b, 4), blocks = 2 + pick(b, 2);
    const int gelu = pick(b, 3) != 0, bias = pick(b, 4) != 0;
    cJSON *bb, *ex, *fin;
    cJSON *r = model_root(3, g[0], g[1], K, &bb, &ex, &fin);
    patch_embed(b, bb, "backbone", "patch", 3, D, g[2], g[3], T, 1, 1);
    self_attention(b, bb, "backbone", "attn", D, H, 1); /* a self_attention of its own */
    static const char *const policies[] = {"entropy", "max_prob", "margin"};
    char name[32], en[32];
    for (int k = 0; k < blocks; k++) {
        snprintf(name, sizeof name, "block%d", k + 1);
        encoder(b, bb, "backbone", name, D, H, 2 * D, 1, gelu, bias || k > 0);
    }
    layer_norm(b, bb, "backbone", "ln", D, 1);
    for (int k = 0; k < blocks; k++) {
        snprintf(name, sizeof name, "block%d", k + 1);
        snprintf(en, sizeof en, "exit%d", k + 1);
        cJSON *h = cJSON_AddArrayToObject(add_exit(ex, en, name, policies[k], 0.5), "head");
        token_pool(h, "pool", "first");
        layer_norm(b, h, en, "ln", D, k != 1);
        linear(b, h, en, "fc", D, K, 3.0f);
    }
    cJSON *h = cJSON_AddArrayToObject(fin, "head");
    token_pool(h, "pool", "first");
    linear(b, h, "final", "fc", D, K, 3.0f);
    return r;
}

/* BERT's pooler and a classifier: [token_pool, linear, act, linear]. */
static void pooler_head(bld *b, cJSON *h, const char *prefix, const char *mode, const char *act,
                        int D, int K)
{
    token_pool(h, "pool", mode);
    linear(b, h, prefix, "pooler", D, D, 1.0f);
    add_layer(h, "act", act);
    linear(b, h, prefix, "fc", D, K, 3.0f);
}

static cJSON *build_bert(bld *b)
{
    const int T = 8 + pick(b, 10), V = 40 + pick(b, 60);
    int D, H;
    pick_dims(b, &D, &H);
    const int K = 4 + pick(b, 4);
    cJSON *bb, *ex, *fin;
    cJSON *r = model_root(1, 1, 1, K, &bb, &ex, &fin);
    cJSON *in = cJSON_CreateObject();
    cJSON_AddNumberToObject(in, "tokens", T);
    cJSON_ReplaceItemInObject(r, "input", in);
    token_embed(b, bb, "backbone", "embed", V, D, T, 1, 1);
    layer_norm(b, bb, "backbone", "emb_ln", D, 1);
    char name[32];
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "block%d", k + 1);
        encoder(b, bb, "backbone", name, D, H, 2 * D, 0, 1, 1);
    }
    cJSON *h = cJSON_AddArrayToObject(add_exit(ex, "exit0", "emb_ln", "max_prob", 0.5), "head");
    token_pool(h, "pool", "mean");
    linear(b, h, "exit0", "fc", D, K, 3.0f);
    pooler_head(b, cJSON_AddArrayToObject(add_exit(ex, "exit1", "block1", "entropy", 1.0), "head"),
                "exit1", "first", "tanh", D, K);
    pooler_head(b, cJSON_AddArrayToObject(add_exit(ex, "exit2", "block2", "margin", 0.3), "head"),
                "exit2", "mean", "gelu", D, K);
    pooler_head(b, cJSON_AddArrayToObject(fin, "head"), "final", "first", "tanh", D, K);
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
    mw_model_inputs(m, x, N, 0xCA11B4A7Eull);
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
    static const char *const names[] = {"mlp", "cnn", "resnet", "vit", "bert"};
    return kind >= 0 && kind < MW_ALL_KINDS ? names[kind] : "unknown";
}

int mw_random_model(const char *dir, uint64_t seed, mw_kind kind)
{
    if (kind < 0 || kind >= MW_ALL_KINDS)
        return -1;
    bld b = {.st = mw_st_new(), .rng = mw_rng_seed(seed * 3 + (uint64_t)kind)};
    if (!b.st)
        return -1;
    cJSON *root = kind == MW_MLP      ? build_mlp(&b)
                  : kind == MW_CNN    ? build_cnn(&b)
                  : kind == MW_RESNET ? build_resnet(&b)
                  : kind == MW_VIT    ? build_vit(&b)
                                      : build_bert(&b);
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

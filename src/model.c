/* model.c - loading a model (models/FORMAT.md), validating its graph, and
 * the model getters of the public API.
 *
 * Loading: read model.json (bounded), check the top-level fields, open the
 * weights, then parse the graph twice (model_parse.h): once to validate and
 * count the weight floats, once to fill the single weight block with batch
 * norm folded. model_finalize then computes shapes and MACs and checks that
 * the layers fit together.
 */
#include "model.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model_parse.h"
#include "safetensors.h"
#include "util.h"

#define MAX_JSON_BYTES (16L * 1024 * 1024)
/* Floats per sample of any one activation; far beyond any model we run. */
#define MAX_ACT_FLOATS ((uint64_t)1 << 30)

/* ---- the names of enums ---------------------------------------------------- */

const char *ert_status_string(ert_status s)
{
    switch (s) {
    case ERT_OK: return "ok";
    case ERT_INVALID_ARGUMENT: return "invalid argument";
    case ERT_IO: return "i/o error";
    case ERT_FORMAT: return "format error";
    case ERT_UNSUPPORTED: return "unsupported";
    case ERT_OUT_OF_MEMORY: return "out of memory";
    case ERT_NO_DEVICE: return "no device";
    case ERT_CUDA: return "cuda error";
    case ERT_BUSY: return "busy";
    case ERT_INTERNAL: return "internal error";
    case ERT_QUEUE_FULL: return "queue full";
    }
    return "unknown status";
}

const char *ert_backend_string(ert_backend b)
{
    switch (b) {
    case ERT_BACKEND_AUTO: return "auto";
    case ERT_BACKEND_CPU: return "cpu";
    case ERT_BACKEND_CUDA: return "cuda";
    }
    return "unknown";
}

const char *ert_mode_string(ert_mode m)
{
    switch (m) {
    case ERT_MODE_FULL: return "full";
    case ERT_MODE_MASKED: return "masked";
    case ERT_MODE_COMPACTED: return "compacted";
    }
    return "unknown";
}

const char *ert_policy_string(ert_policy_kind p)
{
    switch (p) {
    case ERT_POLICY_NONE: return "none";
    case ERT_POLICY_ENTROPY: return "entropy";
    case ERT_POLICY_MAX_PROB: return "max_prob";
    case ERT_POLICY_MARGIN: return "margin";
    case ERT_POLICY_CONFIDENCE_HEAD: return "confidence_head";
    }
    return "unknown";
}

/* ---- finalize: shapes, MACs, graph checks ------------------------------------ */

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

static ert_status finalize_layer(const ert_model *m, layer *l, const char *where, int nested,
                                 ert_error *err)
{
    const char *f = model_file(m);
    shape3 in = l->in, o = in;
    uint64_t macs = 0;
    switch (l->kind) {
    case LAYER_CONV2D: {
        const conv_params *c = &l->p.conv;
        if (c->in_ch < 1 || c->out_ch < 1 || c->groups < 1 || c->kh < 1 || c->kw < 1 ||
            c->stride_h < 1 || c->stride_w < 1 || c->pad_h < 0 || c->pad_w < 0 || c->dil_h < 1 ||
            c->dil_w < 1)
            return LFAIL("%s: %s layer '%s': conv2d parameters out of range", f, where, l->name);
        if (c->in_ch % c->groups || c->out_ch % c->groups)
            return LFAIL("%s: %s layer '%s': groups %d does not divide in_channels %d and out_channels %d",
                         f, where, l->name, c->groups, c->in_ch, c->out_ch);
        if (c->in_ch != in.c)
            return LFAIL("%s: %s layer '%s': in_channels is %d, but its input has %d channels", f,
                         where, l->name, c->in_ch, in.c);
        if (!c->weight || !c->bias)
            return LFAIL("%s: %s layer '%s': conv2d without weight or bias", f, where, l->name);
        int64_t oh = window_out(in.h, c->pad_h, (int64_t)c->dil_h * (c->kh - 1) + 1, c->stride_h);
        int64_t ow = window_out(in.w, c->pad_w, (int64_t)c->dil_w * (c->kw - 1) + 1, c->stride_w);
        if (oh < 1 || ow < 1)
            return LFAIL("%s: %s layer '%s': the kernel does not fit the %dx%d input (output would be empty)",
                         f, where, l->name, in.h, in.w);
        o = (shape3){c->out_ch, (int)oh, (int)ow};
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
            return LFAIL("%s: %s layer '%s': the %dx%d window does not fit the %dx%d input", f, where,
                         l->name, p->kh, p->kw, in.h, in.w);
        o = (shape3){in.c, (int)oh, (int)ow};
        break;
    }
    case LAYER_GLOBAL_AVGPOOL: o = (shape3){in.c, 1, 1}; break;
    case LAYER_FLATTEN: o = (shape3){(int)shape_size(in), 1, 1}; break;
    case LAYER_RELU:
    case LAYER_SIGMOID: break;
    case LAYER_LINEAR: {
        const linear_params *p = &l->p.linear;
        if (p->in_features < 1 || p->out_features < 1 || !p->weight)
            return LFAIL("%s: %s layer '%s': linear parameters out of range", f, where, l->name);
        if ((size_t)p->in_features != shape_size(in))
            return LFAIL("%s: %s layer '%s': in_features is %d, but its input has %zu values (%dx%dx%d)",
                         f, where, l->name, p->in_features, shape_size(in), in.c, in.h, in.w);
        o = (shape3){p->out_features, 1, 1};
        macs = (uint64_t)p->in_features * (uint64_t)p->out_features;
        break;
    }
    case LAYER_RESIDUAL: {
        if (nested)
            return LFAIL("%s: %s layer '%s': residuals do not nest", f, where, l->name);
        residual_params *r = &l->p.residual;
        char sub[256];
        shape3 ob = {0, 0, 0}, os = {0, 0, 0};
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
        return ert_fail(err, ERT_INVALID_ARGUMENT, "%s: %s layer '%s': %s must be removed before finalize",
                        f, where, l->name, l->kind == LAYER_DROPOUT ? "dropout" : "batchnorm2d");
    default:
        return ert_fail(err, ERT_INVALID_ARGUMENT, "%s: %s layer '%s': unknown layer kind %d", f,
                        where, l->name, (int)l->kind);
    }
    if (o.c < 1 || o.h < 1 || o.w < 1 || shape_size(o) > MAX_ACT_FLOATS)
        return LFAIL("%s: %s layer '%s': output %dx%dx%d is empty or too large", f, where, l->name,
                     o.c, o.h, o.w);
    l->out = o;
    l->macs = macs;
    return ERT_OK;
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

static int threshold_ok(ert_policy_kind p, float t)
{
    if (!isfinite(t))
        return 0;
    return p == ERT_POLICY_ENTROPY ? t >= 0.0f : (t >= 0.0f && t <= 1.0f);
}

ert_status model_finalize(ert_model *m, ert_error *err)
{
    if (!m)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "model_finalize: NULL model");
    const char *f = model_file(m);
    shape3 in = m->input;
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
    ert_status st = finalize_list(m, &m->backbone, "backbone", 0, in, &bout, &m->backbone_macs, err);
    if (st != ERT_OK)
        return st;

    int last = m->backbone.count - 1;
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
                return LFAIL("%s: exits[%d].after: must name a backbone layer before the last one", f, e);
            if (e > 0 && x->after <= m->exits[e - 1].after)
                return LFAIL("%s: exits[%d].after: exits must follow distinct layers in backbone order",
                             f, e);
            if (x->policy == ERT_POLICY_NONE || !threshold_ok(x->policy, x->threshold))
                return LFAIL("%s: exits[%d].policy: missing policy or threshold out of range", f, e);
            snprintf(where, sizeof where, "exits[%d].head", e);
        }
        shape3 hin = m->backbone.items[x->after].out, hout = {0, 0, 0}, cout = {0, 0, 0};
        uint64_t hm = 0, cm = 0;
        if ((st = finalize_list(m, &x->head, where, 0, hin, &hout, &hm, err)) != ERT_OK)
            return st;
        if (shape_size(hout) != (size_t)m->num_classes)
            return LFAIL("%s: %s: ends in %dx%dx%d = %zu values, expected num_classes = %d", f, where,
                         hout.c, hout.h, hout.w, shape_size(hout), m->num_classes);
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
        x->head_macs = hm + cm;
    }
    m->macs_full = m->backbone_macs + m->exits[m->num_exits - 1].head_macs;
    return ERT_OK;
}

/* ---- loading ------------------------------------------------------------------ */

/* The directory of a file path ("." when it has none). */
static void dir_of(char *out, size_t len, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(out, len, ".");
    else if (slash == path)
        snprintf(out, len, "/");
    else
        snprintf(out, len, "%.*s", (int)(slash - path), path);
}

static ert_status read_text(const char *path, char **out, ert_error *err)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return ert_fail(err, ERT_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = malloc(MAX_JSON_BYTES + 1);
    if (!buf) {
        fclose(fp);
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, MAX_JSON_BYTES + 1, fp);
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        return ert_fail(err, ERT_IO, "%s: read error", path);
    }
    if (n > MAX_JSON_BYTES) {
        free(buf);
        return ert_fail(err, ERT_FORMAT, "%s: larger than %ld bytes", path, MAX_JSON_BYTES);
    }
    buf[n] = '\0';
    *out = buf;
    return ERT_OK;
}

/* A relative path field joined with the model directory into out. */
static ert_status get_path(parse_ctx *c, const cJSON *root, const char *key, int required,
                           const char *dir, char *out, size_t len)
{
    const char *rel;
    out[0] = '\0';
    ert_status st = json_get_string(c, root, "", key, required, &rel);
    if (st != ERT_OK || !rel)
        return st;
    if (!rel[0])
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: empty path", c->file, key);
    if (rel[0] == '/')
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: '%s' is absolute; paths are relative to the model directory",
                        c->file, key, rel);
    if (!path_join(out, len, dir, rel))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: path too long", c->file, key);
    return ERT_OK;
}

/* mean or std: one number or one per channel, into v[4]. */
static ert_status get_norm(parse_ctx *c, const cJSON *input, const char *key, float def, int C,
                           float *v)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(input, key);
    for (int i = 0; i < 4; i++)
        v[i] = def;
    if (!j || cJSON_IsNull(j))
        return ERT_OK;
    int n = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : 1;
    if (!cJSON_IsArray(j) && !cJSON_IsNumber(j))
        return ert_fail(c->err, ERT_FORMAT, "%s: input.%s: must be a number or a list of numbers",
                        c->file, key);
    if (n != 1 && n != C)
        return ert_fail(c->err, ERT_FORMAT, "%s: input.%s: has %d values, expected 1 or %d (channels)",
                        c->file, key, n, C);
    for (int i = 0; i < n; i++) {
        const cJSON *x = cJSON_IsArray(j) ? cJSON_GetArrayItem(j, i) : j;
        if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble))
            return ert_fail(c->err, ERT_FORMAT, "%s: input.%s[%d]: must be a finite number", c->file,
                            key, i);
        if (strcmp(key, "std") == 0 && !(x->valuedouble > 0))
            return ert_fail(c->err, ERT_FORMAT, "%s: input.std[%d]: must be > 0", c->file, i);
        v[i] = (float)x->valuedouble;
    }
    if (n == 1)
        for (int i = 1; i < 4; i++)
            v[i] = v[0];
    return ERT_OK;
}

static ert_status parse_input(parse_ctx *c, const cJSON *root, ert_model *m)
{
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(root, "input");
    if (!cJSON_IsObject(in))
        return ert_fail(c->err, ERT_FORMAT, "%s: input: missing or not an object", c->file);
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(in, "shape");
    if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) != 3)
        return ert_fail(c->err, ERT_FORMAT, "%s: input.shape: must be [C, H, W]", c->file);
    int d[3];
    for (int i = 0; i < 3; i++) {
        const cJSON *x = cJSON_GetArrayItem(sh, i);
        long long hi = i == 0 ? 4 : 65536;
        if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 1 ||
            x->valuedouble > (double)hi)
            return ert_fail(c->err, ERT_FORMAT, "%s: input.shape[%d]: must be an integer in [1, %lld]",
                            c->file, i, hi);
        d[i] = (int)x->valuedouble;
    }
    m->input = (shape3){d[0], d[1], d[2]};
    double scale;
    ert_status st = json_get_number(c, in, "input", "scale", 1, 1.0, &scale);
    if (st != ERT_OK)
        return st;
    m->input_scale = (float)scale;
    if ((st = get_norm(c, in, "mean", 0.0f, d[0], m->mean)) != ERT_OK)
        return st;
    return get_norm(c, in, "std", 1.0f, d[0], m->std);
}

/* The exit's name into dst, checked against the names taken so far. */
static ert_status exit_name(parse_ctx *c, const ert_model *m, int e, const char *field,
                            const char *name, char *dst)
{
    size_t n = strlen(name);
    if (n == 0 || n >= ERT_NAME_LEN)
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.name: must be 1 to %d characters", c->file, field,
                        ERT_NAME_LEN - 1);
    for (int i = 0; i < e; i++)
        if (strcmp(m->exits[i].name, name) == 0)
            return ert_fail(c->err, ERT_FORMAT, "%s: %s.name: '%s' is already the name of exits[%d]",
                            c->file, field, name, i);
    memcpy(dst, name, n + 1);
    return ERT_OK;
}

static ert_status parse_policy(parse_ctx *c, const cJSON *ex, const char *field, exit_def *x)
{
    char f[96];
    snprintf(f, sizeof f, "%s.policy", field);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(ex, "policy");
    if (!cJSON_IsObject(p))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s: missing or not an object", c->file, f);
    const char *type;
    ert_status st = json_get_string(c, p, f, "type", 1, &type);
    if (st != ERT_OK)
        return st;
    static const struct {
        const char *name;
        ert_policy_kind kind;
    } kinds[] = {{"entropy", ERT_POLICY_ENTROPY},
                 {"max_prob", ERT_POLICY_MAX_PROB},
                 {"margin", ERT_POLICY_MARGIN},
                 {"confidence_head", ERT_POLICY_CONFIDENCE_HEAD}};
    x->policy = ERT_POLICY_NONE;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(type, kinds[i].name) == 0)
            x->policy = kinds[i].kind;
    if (x->policy == ERT_POLICY_NONE)
        return ert_fail(c->err, ERT_UNSUPPORTED, "%s: %s.type: unknown policy '%.32s'", c->file, f,
                        type);
    double t;
    if ((st = json_get_number(c, p, f, "threshold", 0, 0, &t)) != ERT_OK)
        return st;
    x->threshold = (float)t;
    if (!threshold_ok(x->policy, x->threshold))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.threshold: %g is out of range (%s)", c->file, f,
                        t, x->policy == ERT_POLICY_ENTROPY ? ">= 0" : "[0, 1]");
    return ERT_OK;
}

/* backbone, exits and final into m; one pass (counting or filling). */
static ert_status parse_graph(parse_ctx *c, const cJSON *root, ert_model *m)
{
    name_map map = {0};
    ert_status st = parse_layer_list(c, cJSON_GetObjectItemCaseSensitive(root, "backbone"),
                                     "backbone", 0, &m->backbone, &map);
    if (st != ERT_OK)
        return st;
    if (m->backbone.count < 1) {
        st = ert_fail(c->err, ERT_FORMAT, "%s: backbone: has no computing layer", c->file);
        goto done;
    }
    const cJSON *exits = cJSON_GetObjectItemCaseSensitive(root, "exits");
    if (exits && !cJSON_IsNull(exits) && !cJSON_IsArray(exits)) {
        st = ert_fail(c->err, ERT_FORMAT, "%s: exits: not an array", c->file);
        goto done;
    }
    int ne = cJSON_GetArraySize(exits);
    if (ne > ERT_MAX_EXITS - 1) {
        st = ert_fail(c->err, ERT_FORMAT, "%s: exits: %d early exits, at most %d", c->file, ne,
                      ERT_MAX_EXITS - 1);
        goto done;
    }
    int last = m->backbone.count - 1;
    for (int e = 0; e < ne; e++) {
        const cJSON *ex = cJSON_GetArrayItem(exits, e);
        exit_def *x = &m->exits[e];
        char f[64], sub[96];
        snprintf(f, sizeof f, "exits[%d]", e);
        if (!cJSON_IsObject(ex)) {
            st = ert_fail(c->err, ERT_FORMAT, "%s: %s: an exit must be an object", c->file, f);
            goto done;
        }
        const char *name, *after;
        if ((st = json_get_string(c, ex, f, "name", 1, &name)) ||
            (st = exit_name(c, m, e, f, name, x->name)) ||
            (st = json_get_string(c, ex, f, "after", 1, &after)))
            goto done;
        int raw = -1;
        for (int i = 0; i < map.count; i++)
            if (strcmp(map.names[i], after) == 0)
                raw = i;
        if (raw < 0) {
            st = ert_fail(c->err, ERT_FORMAT, "%s: %s.after: '%s' is not a top-level backbone layer",
                          c->file, f, after);
            goto done;
        }
        x->after = map.index[raw];
        if (x->after < 0) {
            st = ert_fail(c->err, ERT_FORMAT, "%s: %s.after: '%s' has no computing layer before it",
                          c->file, f, after);
            goto done;
        }
        if (x->after == last) {
            st = ert_fail(c->err, ERT_FORMAT,
                          "%s: %s.after: '%s' is the end of the backbone; the final head reads it",
                          c->file, f, after);
            goto done;
        }
        if (e > 0 && x->after == m->exits[e - 1].after) {
            st = ert_fail(c->err, ERT_FORMAT,
                          "%s: %s.after: '%s' gives the same output as exits[%d]'s layer; at most one exit per layer",
                          c->file, f, after, e - 1);
            goto done;
        }
        if (e > 0 && x->after < m->exits[e - 1].after) {
            st = ert_fail(c->err, ERT_FORMAT, "%s: %s.after: '%s' comes before exits[%d]'s layer; exits must be in backbone order",
                          c->file, f, after, e - 1);
            goto done;
        }
        if ((st = parse_policy(c, ex, f, x)))
            goto done;
        snprintf(sub, sizeof sub, "%s.head", f);
        if ((st = parse_layer_list(c, cJSON_GetObjectItemCaseSensitive(ex, "head"), sub, 0,
                                   &x->head, NULL)))
            goto done;
        const cJSON *conf = cJSON_GetObjectItemCaseSensitive(ex, "confidence");
        snprintf(sub, sizeof sub, "%s.confidence", f);
        if (x->policy == ERT_POLICY_CONFIDENCE_HEAD) {
            if (!conf) {
                st = ert_fail(c->err, ERT_FORMAT, "%s: %s: required for the confidence_head policy",
                              c->file, sub);
                goto done;
            }
            if ((st = parse_layer_list(c, conf, sub, 0, &x->confidence, NULL)))
                goto done;
        } else if (conf && !cJSON_IsNull(conf)) {
            st = ert_fail(c->err, ERT_FORMAT, "%s: %s: only allowed with the confidence_head policy",
                          c->file, sub);
            goto done;
        }
        m->num_exits = e + 1;
    }
    const cJSON *fin = cJSON_GetObjectItemCaseSensitive(root, "final");
    if (!cJSON_IsObject(fin)) {
        st = ert_fail(c->err, ERT_FORMAT, "%s: final: missing or not an object", c->file);
        goto done;
    }
    exit_def *x = &m->exits[ne];
    const char *name;
    if ((st = json_get_string(c, fin, "final", "name", 0, &name)) ||
        (st = exit_name(c, m, ne, "final", name ? name : "final", x->name)))
        goto done;
    x->after = last;
    x->policy = ERT_POLICY_NONE;
    x->threshold = NAN;
    if ((st = parse_layer_list(c, cJSON_GetObjectItemCaseSensitive(fin, "head"), "final.head", 0,
                               &x->head, NULL)))
        goto done;
    m->num_exits = ne + 1;
done:
    free(map.names);
    free(map.index);
    return st;
}

static void free_graph(ert_model *m)
{
    layer_list_free(&m->backbone);
    for (int e = 0; e < ERT_MAX_EXITS; e++) {
        layer_list_free(&m->exits[e].head);
        layer_list_free(&m->exits[e].confidence);
        memset(&m->exits[e], 0, sizeof m->exits[e]);
    }
    m->num_exits = 0;
}

/* Line and column of byte `at` in text, for JSON syntax errors. */
static void line_col(const char *text, size_t at, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < at && text[i]; i++) {
        if (text[i] == '\n') {
            ++*line;
            *col = 1;
        } else {
            ++*col;
        }
    }
}

ert_status ert_model_load(const char *path, ert_model **out, ert_error *err)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_model_load: NULL %s", path ? "out" : "path");
    ert_model *m = calloc(1, sizeof *m);
    if (!m)
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
    char *text = NULL;
    cJSON *root = NULL;
    st_file st_w = {0};
    ert_status st;
    parse_ctx c = {.file = m->path, .st = &st_w, .err = err};

    struct stat sb;
    int is_dir = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    int ok = is_dir ? path_join(m->path, sizeof m->path, path, "model.json")
                    : path_join(m->path, sizeof m->path, "", path);
    if (!ok) {
        st = ert_fail(err, ERT_INVALID_ARGUMENT, "%s: path too long", path);
        goto fail;
    }
    if (is_dir)
        snprintf(m->dir, sizeof m->dir, "%s", path);
    else
        dir_of(m->dir, sizeof m->dir, path);

    if ((st = read_text(m->path, &text, err)) != ERT_OK)
        goto fail;
    const char *end = NULL;
    root = cJSON_ParseWithOpts(text, &end, 1);
    if (!root) {
        int line, col;
        line_col(text, end && end >= text ? (size_t)(end - text) : 0, &line, &col);
        st = ert_fail(err, ERT_FORMAT, "%s: invalid JSON at line %d, column %d", m->path, line, col);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        st = ert_fail(err, ERT_FORMAT, "%s: not a JSON object", m->path);
        goto fail;
    }
    const char *fmt;
    long long version, K;
    if ((st = json_get_string(&c, root, "", "format", 1, &fmt)))
        goto fail;
    if (strcmp(fmt, "exitrt-model") != 0) {
        st = ert_fail(err, ERT_FORMAT, "%s: format: '%.32s' is not \"exitrt-model\"", m->path, fmt);
        goto fail;
    }
    if ((st = json_get_int(&c, root, "", "version", 0, 0, LLONG_MIN / 2, LLONG_MAX / 2, &version)))
        goto fail;
    if (version != 1) {
        st = ert_fail(err, ERT_UNSUPPORTED, "%s: version: %lld is not supported (this reader knows 1)",
                      m->path, version);
        goto fail;
    }
    char wpath[1024];
    if ((st = parse_input(&c, root, m)) ||
        (st = json_get_int(&c, root, "", "num_classes", 0, 0, 1, 65536, &K)) ||
        (st = get_path(&c, root, "sample_data", 0, m->dir, m->sample_data, sizeof m->sample_data)) ||
        (st = get_path(&c, root, "sample_labels", 0, m->dir, m->sample_labels,
                       sizeof m->sample_labels)) ||
        (st = get_path(&c, root, "weights", 1, m->dir, wpath, sizeof wpath)))
        goto fail;
    m->num_classes = (int)K;
    const char *name;
    if ((st = json_get_string(&c, root, "", "name", 0, &name)))
        goto fail;
    if ((st = st_open(wpath, &st_w, err)) != ERT_OK)
        goto fail;

    /* Counting pass, then the filling pass into one block. */
    if ((st = parse_graph(&c, root, m)) != ERT_OK)
        goto fail;
    free_graph(m);
    size_t n = c.used, bytes;
    if (!size_mul(n ? n : 1, sizeof(float), &bytes) || !(m->weights = malloc(bytes))) {
        st = ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory for %zu weight floats", m->path, n);
        goto fail;
    }
    c.block = m->weights;
    c.used = 0;
    if ((st = parse_graph(&c, root, m)) != ERT_OK)
        goto fail;
    if (c.used != n) {
        st = ert_fail(err, ERT_INTERNAL, "%s: weight count changed between passes", m->path);
        goto fail;
    }
    m->weights_len = n;
    st_close(&st_w);
    cJSON_Delete(root);
    free(text);
    root = NULL;
    text = NULL;
    if ((st = model_finalize(m, err)) != ERT_OK)
        goto fail;
    *out = m;
    return ERT_OK;
fail:
    st_close(&st_w);
    cJSON_Delete(root);
    free(text);
    model_destroy(m);
    return st;
}

void model_destroy(ert_model *m)
{
    if (!m)
        return;
    free_graph(m);
    free(m->weights);
    free(m);
}

void ert_model_free(ert_model *m)
{
    if (!m)
        return;
    if (m->engines > 0) {
        m->freed = 1; /* the last ert_engine_free releases it */
        return;
    }
    model_destroy(m);
}

/* ---- getters -------------------------------------------------------------------- */

int ert_model_num_exits(const ert_model *m) { return m ? m->num_exits : 0; }
int ert_model_num_classes(const ert_model *m) { return m ? m->num_classes : 0; }
size_t ert_model_input_size(const ert_model *m) { return m ? shape_size(m->input) : 0; }

void ert_model_input_shape(const ert_model *m, int *c, int *h, int *w)
{
    if (c)
        *c = m ? m->input.c : 0;
    if (h)
        *h = m ? m->input.h : 0;
    if (w)
        *w = m ? m->input.w : 0;
}

const char *ert_model_exit_name(const ert_model *m, int i)
{
    return m && i >= 0 && i < m->num_exits ? m->exits[i].name : NULL;
}

int ert_model_exit_index(const ert_model *m, const char *name)
{
    if (!m || !name)
        return -1;
    for (int i = 0; i < m->num_exits; i++)
        if (strcmp(m->exits[i].name, name) == 0)
            return i;
    return -1;
}

ert_policy_kind ert_model_exit_policy(const ert_model *m, int i)
{
    return m && i >= 0 && i < m->num_exits ? m->exits[i].policy : ERT_POLICY_NONE;
}

float ert_model_exit_threshold(const ert_model *m, int i)
{
    return m && i >= 0 && i < m->num_exits ? m->exits[i].threshold : NAN;
}

uint64_t ert_model_macs_full(const ert_model *m) { return m ? m->macs_full : 0; }

const char *ert_model_sample_data(const ert_model *m)
{
    return m && m->sample_data[0] ? m->sample_data : NULL;
}

const char *ert_model_sample_labels(const ert_model *m)
{
    return m && m->sample_labels[0] ? m->sample_labels : NULL;
}

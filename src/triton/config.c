/* config.c - reading a Triton model configuration for the exitrt backend
 * (config.h). Triton gives the configuration as protobuf's JSON mapping of
 * config.pbtxt: int64 fields (dims) may come as strings, parameters as
 * {"key": {"string_value": "..."}}. */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "triton_api.h"

const char *const ert_triton_output_names[ERT_TRITON_NUM_OUTPUTS] = {"CLASS", "EXIT", "SCORE",
                                                                     "LOGITS"};

static int fail(char *err, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && cap)
        vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return -1;
}

int ert_triton_output_index(const char *name)
{
    for (int i = 0; i < ERT_TRITON_NUM_OUTPUTS; i++)
        if (name && strcmp(name, ert_triton_output_names[i]) == 0)
            return i;
    return -1;
}

/* A JSON integer given as a number or as a decimal string (int64 fields). */
static int json_int64(const cJSON *j, int64_t *out)
{
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (!(d >= -9.0e15 && d <= 9.0e15) || d != floor(d))
            return 0;
        *out = (int64_t)d;
        return 1;
    }
    if (cJSON_IsString(j) && j->valuestring && j->valuestring[0]) {
        char *end;
        errno = 0;
        long long v = strtoll(j->valuestring, &end, 10);
        if (errno || *end)
            return 0;
        *out = v;
        return 1;
    }
    return 0;
}

/* An integer parameter in [lo, hi]. */
static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

/* dims: a JSON array of positive integers. */
static int read_dims(const cJSON *t, const char *what, int64_t *dims, int *ndims, char *err,
                     size_t cap)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(t, "dims");
    int n = cJSON_IsArray(d) ? cJSON_GetArraySize(d) : -1;
    if (n < 1 || n > ERT_TRITON_MAX_DIMS)
        return fail(err, cap, "%s: dims must list 1 to %d sizes", what, ERT_TRITON_MAX_DIMS);
    for (int i = 0; i < n; i++) {
        if (!json_int64(cJSON_GetArrayItem(d, i), &dims[i]) || dims[i] < 1)
            return fail(err, cap,
                        "%s: dims[%d] is not a positive size (variable dims are not "
                        "supported)",
                        what, i);
    }
    *ndims = n;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(t, "reshape");
    if (r && !cJSON_IsNull(r))
        return fail(err, cap, "%s: reshape is not supported", what);
    return 0;
}

static const char *json_str(const cJSON *o, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(j) ? j->valuestring : NULL;
}

/* "exit1=0.8,exit2=0.9" (commas, semicolons or spaces between). */
static int parse_thresholds(const char *spec, ert_triton_config *c, char *err, size_t cap)
{
    const char *p = spec;
    while (*p) {
        while (*p == ',' || *p == ';' || *p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        size_t n = strcspn(p, ",; \t");
        char item[160];
        if (n >= sizeof item)
            return fail(err, cap, "parameter thresholds: item '%.40s...' too long", p);
        memcpy(item, p, n);
        item[n] = '\0';
        p += n;
        char *eq = strchr(item, '=');
        if (!eq || eq == item || eq - item >= 64)
            return fail(err, cap, "parameter thresholds: '%s' is not EXIT=VALUE", item);
        *eq = '\0';
        double v;
        if (!parse_double(eq + 1, &v))
            return fail(err, cap, "parameter thresholds: %s=%s: '%s' is not a finite number", item,
                        eq + 1, eq + 1);
        if (c->num_thresholds >= ERT_MAX_EXITS)
            return fail(err, cap, "parameter thresholds: more than %d items", ERT_MAX_EXITS);
        snprintf(c->threshold_exit[c->num_thresholds], sizeof c->threshold_exit[0], "%.63s", item);
        c->threshold_value[c->num_thresholds++] = (float)v;
    }
    return 0;
}

static int read_parameters(const cJSON *root, ert_triton_config *c, const char **model_path,
                           char *err, size_t cap)
{
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(root, "parameters");
    if (!params || cJSON_IsNull(params))
        return 0;
    if (!cJSON_IsObject(params))
        return fail(err, cap, "parameters: not a map");
    const cJSON *p;
    cJSON_ArrayForEach (p, params) {
        const char *k = p->string, *v = json_str(p, "string_value");
        if (!v)
            return fail(err, cap, "parameter %s: no string_value", k);
        long l;
        double d;
        if (strcmp(k, "model_path") == 0) {
            if (!v[0])
                return fail(err, cap, "parameter model_path: empty");
            *model_path = v;
        } else if (strcmp(k, "mode") == 0) {
            c->refill = 0;
            if (strcmp(v, "full") == 0)
                c->mode = ERT_MODE_FULL;
            else if (strcmp(v, "masked") == 0)
                c->mode = ERT_MODE_MASKED;
            else if (strcmp(v, "compacted") == 0)
                c->mode = ERT_MODE_COMPACTED;
            else if (strcmp(v, "refill") == 0)
                c->mode = ERT_MODE_COMPACTED, c->refill = 1;
            else
                return fail(err, cap,
                            "parameter mode: '%s' is not full, masked, compacted or refill", v);
        } else if (strcmp(k, "thresholds") == 0) {
            if (parse_thresholds(v, c, err, cap))
                return -1;
        } else if (strcmp(k, "threads") == 0) {
            if (!parse_long(v, 0, 4096, &l))
                return fail(err, cap, "parameter threads: '%s' is not an integer in [0, 4096]", v);
            c->threads = (int)l;
        } else if (strcmp(k, "refill_batch") == 0) {
            if (!parse_long(v, 0, 1L << 20, &l))
                return fail(err, cap, "parameter refill_batch: '%s' is not an integer >= 0", v);
            c->refill_batch = (int)l;
        } else if (strcmp(k, "refill_deadline_ms") == 0) {
            if (!parse_double(v, &d) || d < 0 || d > 60000)
                return fail(err, cap,
                            "parameter refill_deadline_ms: '%s' is not a number in [0, 60000]", v);
            c->refill_deadline_ms = d;
        } else {
            return fail(err, cap,
                        "parameter '%s' is unknown (known: model_path, mode, thresholds, "
                        "threads, refill_batch, refill_deadline_ms)",
                        k);
        }
    }
    return 0;
}

int ert_triton_config_parse(const char *json, size_t len, const char *model_folder,
                            uint64_t version, ert_triton_config *c, char *err, size_t cap)
{
    memset(c, 0, sizeof *c);
    c->mode = ERT_MODE_COMPACTED;
    c->refill_deadline_ms = 2.0;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root)
        return fail(err, cap, "the model configuration is not valid JSON");
    int rc = -1;
    const char *model_path = ".";

    const cJSON *mb = cJSON_GetObjectItemCaseSensitive(root, "max_batch_size");
    int64_t v;
    if (!mb || !json_int64(mb, &v) || v < 1 || v > (1 << 20)) {
        fail(err, cap,
             "max_batch_size must be set to an integer in [1, %d] (rows per request "
             "and per batch)",
             1 << 20);
        goto done;
    }
    c->max_batch = (int)v;

    const cJSON *in = cJSON_GetObjectItemCaseSensitive(root, "input");
    if (!cJSON_IsArray(in) || cJSON_GetArraySize(in) != 1) {
        fail(err, cap, "input: exactly one input tensor (TYPE_FP32, dims [C, H, W]) expected");
        goto done;
    }
    const cJSON *t = cJSON_GetArrayItem(in, 0);
    const char *name = json_str(t, "name"), *dt = json_str(t, "data_type");
    if (!name || !name[0] || strlen(name) >= sizeof c->input_name) {
        fail(err, cap, "input: no name (or longer than %zu)", sizeof c->input_name - 1);
        goto done;
    }
    snprintf(c->input_name, sizeof c->input_name, "%s", name);
    if (!dt || strcmp(dt, "TYPE_FP32") != 0) {
        fail(err, cap, "input %s: data_type %s, expected TYPE_FP32", name, dt ? dt : "(none)");
        goto done;
    }
    char what[96];
    snprintf(what, sizeof what, "input %s", name);
    if (read_dims(t, what, c->input_dims, &c->input_ndims, err, cap))
        goto done;

    const cJSON *out = cJSON_GetObjectItemCaseSensitive(root, "output");
    if (!cJSON_IsArray(out) || cJSON_GetArraySize(out) < 1) {
        fail(err, cap, "output: list at least one of CLASS, EXIT, SCORE, LOGITS");
        goto done;
    }
    cJSON_ArrayForEach (t, out) {
        name = json_str(t, "name");
        dt = json_str(t, "data_type");
        int o = ert_triton_output_index(name);
        if (o < 0) {
            fail(err, cap, "output %s: unknown (the outputs are CLASS, EXIT, SCORE, LOGITS)",
                 name ? name : "(no name)");
            goto done;
        }
        if (c->has_output[o]) {
            fail(err, cap, "output %s: listed twice", name);
            goto done;
        }
        const char *want =
            o == ERT_TRITON_CLASS || o == ERT_TRITON_EXIT ? "TYPE_INT32" : "TYPE_FP32";
        if (!dt || strcmp(dt, want) != 0) {
            fail(err, cap, "output %s: data_type %s, expected %s", name, dt ? dt : "(none)", want);
            goto done;
        }
        int64_t dims[ERT_TRITON_MAX_DIMS];
        int nd;
        snprintf(what, sizeof what, "output %s", name);
        if (read_dims(t, what, dims, &nd, err, cap))
            goto done;
        if (o != ERT_TRITON_LOGITS && (nd != 1 || dims[0] != 1)) {
            fail(err, cap, "output %s: dims must be [ 1 ]", name);
            goto done;
        }
        if (o == ERT_TRITON_LOGITS) {
            if (nd != 1) {
                fail(err, cap, "output LOGITS: dims must be [ K ] (the number of classes)");
                goto done;
            }
            c->logits_dim = dims[0];
        }
        c->has_output[o] = 1;
    }

    if (read_parameters(root, c, &model_path, err, cap))
        goto done;
    int n;
    if (model_path[0] == '/')
        n = snprintf(c->model_path, sizeof c->model_path, "%s", model_path);
    else if (strcmp(model_path, ".") == 0)
        n = snprintf(c->model_path, sizeof c->model_path, "%s/%llu", model_folder,
                     (unsigned long long)version);
    else
        n = snprintf(c->model_path, sizeof c->model_path, "%s/%llu/%s", model_folder,
                     (unsigned long long)version, model_path);
    if (n < 0 || (size_t)n >= sizeof c->model_path) {
        fail(err, cap, "parameter model_path: the path is too long");
        goto done;
    }
    if (c->refill_batch > c->max_batch) {
        fail(err, cap, "parameter refill_batch: %d exceeds max_batch_size %d", c->refill_batch,
             c->max_batch);
        goto done;
    }
    if (!c->refill && c->refill_batch) {
        fail(err, cap, "parameter refill_batch: only with mode refill");
        goto done;
    }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int ert_triton_config_check_model(const ert_triton_config *c, const ert_model *m,
                                  int exit_index[ERT_MAX_EXITS], char *err, size_t cap)
{
    int C, H, W;
    ert_model_input_shape(m, &C, &H, &W);
    if (c->input_ndims != 3 || c->input_dims[0] != C || c->input_dims[1] != H ||
        c->input_dims[2] != W) {
        char got[128] = "";
        for (int i = 0; i < c->input_ndims; i++) {
            size_t l = strlen(got);
            snprintf(got + l, sizeof got - l, "%s%lld", i ? ", " : "", (long long)c->input_dims[i]);
        }
        return fail(err, cap, "input %s: dims [ %s ] do not match the model's input [ %d, %d, %d ]",
                    c->input_name, got, C, H, W);
    }
    int K = ert_model_num_classes(m);
    if (c->has_output[ERT_TRITON_LOGITS] && c->logits_dim != K)
        return fail(err, cap, "output LOGITS: dims [ %lld ] do not match the model's %d classes",
                    (long long)c->logits_dim, K);
    int E = ert_model_num_exits(m);
    for (int t = 0; t < c->num_thresholds; t++) {
        const char *name = c->threshold_exit[t];
        int idx = ert_model_exit_index(m, name);
        long li;
        if (idx < 0 && parse_long(name, 0, ERT_MAX_EXITS - 1, &li) && li < E)
            idx = (int)li;
        if (idx < 0 || idx >= E - 1) {
            char names[ERT_MAX_EXITS * 70] = "";
            for (int i = 0; i < E - 1; i++) {
                size_t l = strlen(names);
                snprintf(names + l, sizeof names - l, "%s%s", i ? ", " : "",
                         ert_model_exit_name(m, i));
            }
            return fail(err, cap,
                        "parameter thresholds: '%s' is not an early exit of the model "
                        "(early exits: %s)",
                        name, names[0] ? names : "none");
        }
        float v = c->threshold_value[t];
        int entropy = ert_model_exit_policy(m, idx) == ERT_POLICY_ENTROPY;
        if (entropy ? !(v >= 0.0f) : !(v >= 0.0f && v <= 1.0f))
            return fail(err, cap, "parameter thresholds: %s=%g is out of range for policy %s (%s)",
                        name, (double)v, ert_policy_string(ert_model_exit_policy(m, idx)),
                        entropy ? ">= 0" : "[0, 1]");
        exit_index[t] = idx;
    }
    return 0;
}

long ert_triton_check_input(const ert_triton_config *c, int datatype, const int64_t *shape,
                            uint32_t ndims, uint64_t byte_size, char *err, size_t cap)
{
    if (datatype != TRITONSERVER_TYPE_FP32)
        return fail(err, cap, "input %s: datatype is not FP32", c->input_name);
    char want[160];
    int l = snprintf(want, sizeof want, "[ N");
    for (int i = 0; i < c->input_ndims; i++)
        l += snprintf(want + l, sizeof want - (size_t)l, ", %lld", (long long)c->input_dims[i]);
    snprintf(want + l, sizeof want - (size_t)l, " ]");
    if (!shape || ndims != (uint32_t)c->input_ndims + 1)
        return fail(err, cap, "input %s: shape has %u dims, expected %s", c->input_name, ndims,
                    want);
    for (int i = 0; i < c->input_ndims; i++)
        if (shape[i + 1] != c->input_dims[i])
            return fail(err, cap, "input %s: dim %d is %lld, expected %s", c->input_name, i + 1,
                        (long long)shape[i + 1], want);
    if (shape[0] < 0 || shape[0] > c->max_batch)
        return fail(err, cap, "input %s: %lld rows, at most max_batch_size = %d per request",
                    c->input_name, (long long)shape[0], c->max_batch);
    uint64_t per = sizeof(float);
    for (int i = 0; i < c->input_ndims; i++)
        per *= (uint64_t)c->input_dims[i];
    if (byte_size != per * (uint64_t)shape[0])
        return fail(err, cap, "input %s: %llu bytes for %lld rows, expected %llu", c->input_name,
                    (unsigned long long)byte_size, (long long)shape[0],
                    (unsigned long long)(per * (uint64_t)shape[0]));
    return (long)shape[0];
}

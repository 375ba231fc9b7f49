/* model.c - loading a model (models/FORMAT.md) and validating its graph;
 * the public API's getters and ert_pack_tokens are in model_api.c.
 *
 * Loading: read model.json (bounded), check the top-level fields, open the
 * weights, then parse the graph twice (model_parse.h): once to validate and
 * count the weight floats, once to fill the single weight block with batch
 * norm folded. model_finalize (model_finalize.c) then computes shapes and
 * MACs and checks that the layers fit together.
 */
#include "model.h"

#include <errno.h>
#include <float.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model_parse.h"
#include "safetensors.h"
#include "util.h"
#include "policy.h"


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

/* Reads a whole model.json, at most MODEL_MAX_JSON_BYTES. */
static ert_status read_text(const char *path, char **out, ert_error *err)
{
    *out = NULL;
    /* O_NONBLOCK: opening a FIFO must not hang; only regular files are read. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ert_fail(err, ERT_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ert_fail(err, ERT_IO, "%s: not a regular file", path);
    }
    if (sb.st_size > MODEL_MAX_JSON_BYTES) {
        close(fd);
        return ert_fail(err, ERT_FORMAT, "%s: %lld bytes, larger than the limit of %ld bytes", path,
                        (long long)sb.st_size, (long)MODEL_MAX_JSON_BYTES);
    }
    /* Sized by the file, plus one byte to notice a file that grew meanwhile. */
    size_t cap = (size_t)sb.st_size + 1;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    size_t n = 0;
    while (n < cap) {
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return ert_fail(err, ERT_IO, "%s: read error: %s", path, strerror(e));
        }
        if (got == 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    if (n != (size_t)sb.st_size) {
        free(buf);
        return ert_fail(err, ERT_IO, "%s: the file changed while it was read", path);
    }
    if (memchr(buf, '\0', n)) {
        free(buf);
        return ert_fail(err, ERT_FORMAT, "%s: holds a NUL byte; not a JSON text file", path);
    }
    buf[n] = '\0';
    *out = buf;
    return ERT_OK;
}

/* A relative path field joined with the model directory into out. Every
 * path model.json names stays inside the directory (path_inside: not
 * absolute, no "..", no symlink out of it), the sample files as much as the
 * weights (FORMAT.md). */
static ert_status get_path(parse_ctx *c, const cJSON *root, const char *key, int required,
                           const char *dir, char *out, size_t len)
{
    const char *rel;
    out[0] = '\0';
    ert_status st = json_get_string(c, root, "", key, required, &rel);
    if (st != ERT_OK || !rel)
        return st;
    return path_inside(dir, rel, c->file, key, out, len, c->err);
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
        return ert_fail(c->err, ERT_FORMAT,
                        "%s: input.%s: has %d values, expected 1 or %d (channels)", c->file, key, n,
                        C);
    for (int i = 0; i < n; i++) {
        const cJSON *x = cJSON_IsArray(j) ? cJSON_GetArrayItem(j, i) : j;
        if (!cJSON_IsNumber(x) || !(fabs(x->valuedouble) <= FLT_MAX))
            return ert_fail(c->err, ERT_FORMAT, "%s: input.%s[%d]: must be a finite float32 number",
                            c->file, key, i);
        if (strcmp(key, "std") == 0 && !((float)x->valuedouble > 0.0f))
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
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(in, "tokens");
    if (tok) {
        /* A token model: the input row is the ids, then the mask, as is. */
        static const char *const image_only[] = {"shape", "scale", "mean", "std"};
        for (size_t i = 0; i < sizeof image_only / sizeof *image_only; i++)
            if (cJSON_GetObjectItemCaseSensitive(in, image_only[i]))
                return ert_fail(c->err, ERT_FORMAT,
                                "%s: input.%s: not allowed with input.tokens (a token model's "
                                "input is not an image and is not normalised)",
                                c->file, image_only[i]);
        long long T;
        ert_status st = json_get_int(c, in, "input", "tokens", 0, 0, 1, 65536, &T);
        if (st != ERT_OK)
            return st;
        m->input = (shape3){2, (int)T, 1, SHAPE_IDS};
        m->input_tokens = (int)T;
        m->input_scale = 1.0f;
        for (int i = 0; i < 4; i++) {
            m->mean[i] = 0.0f;
            m->std[i] = 1.0f;
        }
        return ERT_OK;
    }
    if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) != 3)
        return ert_fail(c->err, ERT_FORMAT,
                        "%s: input.shape: must be [C, H, W] (or input.tokens: T for a token model)",
                        c->file);
    int d[3];
    for (int i = 0; i < 3; i++) {
        const cJSON *x = cJSON_GetArrayItem(sh, i);
        long long hi = i == 0 ? 4 : 65536;
        if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 1 ||
            x->valuedouble > (double)hi)
            return ert_fail(c->err, ERT_FORMAT,
                            "%s: input.shape[%d]: must be an integer in [1, %lld]", c->file, i, hi);
        d[i] = (int)x->valuedouble;
    }
    m->input = (shape3){d[0], d[1], d[2], SHAPE_PLAIN};
    double scale;
    ert_status st = json_get_number(c, in, "input", "scale", 1, 1.0, &scale);
    if (st != ERT_OK)
        return st;
    if (!(fabs(scale) <= FLT_MAX))
        return ert_fail(c->err, ERT_FORMAT, "%s: input.scale: %g is out of the float32 range",
                        c->file, scale);
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
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.name: must be 1 to %d characters", c->file,
                        field, ERT_NAME_LEN - 1);
    for (int i = 0; i < e; i++)
        if (strcmp(m->exits[i].name, name) == 0)
            return ert_fail(c->err, ERT_FORMAT,
                            "%s: %s.name: '%s' is already the name of exits[%d]", c->file, field,
                            name, i);
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
                 {"confidence_head", ERT_POLICY_CONFIDENCE_HEAD},
                 {"patience", ERT_POLICY_PATIENCE}};
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
    /* range-check in double first: a double beyond FLT_MAX has no float */
    x->threshold = fabs(t) <= FLT_MAX ? (float)t : NAN;
    if (!isfinite(x->threshold) || !ert_threshold_ok(x->policy, x->threshold))
        return ert_fail(c->err, ERT_FORMAT, "%s: %s.threshold: %g is out of range (%s)", c->file, f,
                        t, ert_threshold_range(x->policy));
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
            st =
                ert_fail(c->err, ERT_FORMAT, "%s: %s.after: '%s' is not a top-level backbone layer",
                         c->file, f, after);
            goto done;
        }
        /* Where the exit reads (FORMAT.md, "Where an exit reads"): a dropout
           is a no-op, so it reads the layer before; a conv2d's own output
           does not exist when a batchnorm2d is folded into it. */
        x->after = map.index[raw];
        int is_dropout = map.kinds[raw] == LAYER_DROPOUT;
        const char *noop = is_dropout ? " (a dropout is a no-op at inference)" : "";
        if (map.kinds[raw] == LAYER_CONV2D && raw + 1 < map.count &&
            map.kinds[raw + 1] == LAYER_BATCHNORM2D) {
            st = ert_fail(
                c->err, ERT_FORMAT,
                "%s: %s.after: '%s' is followed by batchnorm2d '%s', which is folded into it "
                "(the conv's output without it is never computed); attach the exit after '%s'",
                c->file, f, after, map.names[raw + 1], map.names[raw + 1]);
            goto done;
        }
        if (x->after < 0) {
            st = ert_fail(c->err, ERT_FORMAT,
                          "%s: %s.after: '%s' has no computing layer before it%s: the exit would "
                          "read the input",
                          c->file, f, after, noop);
            goto done;
        }
        if (x->after == last) {
            st = ert_fail(
                c->err, ERT_FORMAT,
                "%s: %s.after: '%s' is the end of the backbone%s; the final head reads it", c->file,
                f, after,
                raw + 1 < map.count ? " (only dropout follows it, a no-op at inference)" : "");
            goto done;
        }
        if (e > 0 && x->after == m->exits[e - 1].after) {
            st = ert_fail(
                c->err, ERT_FORMAT,
                "%s: %s.after: '%s' gives the same output as exits[%d]'s layer%s; at most one exit per layer",
                c->file, f, after, e - 1, noop);
            goto done;
        }
        if (e > 0 && x->after < m->exits[e - 1].after) {
            st = ert_fail(
                c->err, ERT_FORMAT,
                "%s: %s.after: '%s' comes before exits[%d]'s layer; exits must be in backbone order",
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
            st = ert_fail(c->err, ERT_FORMAT,
                          "%s: %s: only allowed with the confidence_head policy", c->file, sub);
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
    name_map_free(&map);
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
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_model_load: NULL %s",
                        path ? "out" : "path");
    ert_model *m = calloc(1, sizeof *m);
    if (!m)
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
    pthread_mutex_init(&m->lock, NULL);
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
        st =
            ert_fail(err, ERT_FORMAT, "%s: invalid JSON at line %d, column %d", m->path, line, col);
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
        st = ert_fail(err, ERT_UNSUPPORTED,
                      "%s: version: %lld is not supported (this reader knows 1)", m->path, version);
        goto fail;
    }
    char wpath[1024];
    if ((st = parse_input(&c, root, m)) ||
        (st = json_get_int(&c, root, "", "num_classes", 0, 0, 1, 65536, &K)) ||
        (st =
             get_path(&c, root, "sample_data", 0, m->dir, m->sample_data, sizeof m->sample_data)) ||
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
    if (n > MODEL_MAX_WEIGHT_FLOATS) {
        st = ert_fail(err, ERT_FORMAT,
                      "%s: the layers take %zu weight floats, more than the limit of %llu", m->path,
                      n, (unsigned long long)MODEL_MAX_WEIGHT_FLOATS);
        goto fail;
    }
    if (!size_mul(n ? n : 1, sizeof(float), &bytes) || !(m->weights = malloc(bytes))) {
        st =
            ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory for %zu weight floats", m->path, n);
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
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void ert_model_free(ert_model *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    atomic_store(&m->freed, 1); /* with engines alive, the last ert_engine_free releases it */
    int last = atomic_load(&m->engines) == 0;
    pthread_mutex_unlock(&m->lock);
    if (last)
        model_destroy(m);
}

int model_acquire(ert_model *m)
{
    pthread_mutex_lock(&m->lock);
    int ok = !atomic_load(&m->freed);
    if (ok)
        atomic_fetch_add(&m->engines, 1);
    pthread_mutex_unlock(&m->lock);
    return ok;
}

void model_release(ert_model *m)
{
    pthread_mutex_lock(&m->lock);
    int last = atomic_fetch_sub(&m->engines, 1) == 1 && atomic_load(&m->freed);
    pthread_mutex_unlock(&m->lock);
    if (last)
        model_destroy(m);
}

/* model_copy.c - a copy of a model directory with other thresholds
 * (exitrt calibrate --write). */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "cli.h"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int write_bytes(const char *path, const char *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return cli_error(CLI_FAIL, "%s: cannot create: %s", path, strerror(errno));
    size_t w = fwrite(buf, 1, len, f);
    int bad = w != len || ferror(f);
    if (fclose(f) != 0 || bad)
        return cli_error(CLI_FAIL, "%s: write failed: %s", path, strerror(errno));
    return 0;
}

/* "a/b" into buf; 0 when it does not fit. */
static int join(char *buf, size_t cap, const char *a, const char *b)
{
    int n = snprintf(buf, cap, "%s/%s", a, b);
    return n >= 0 && (size_t)n < cap;
}

/* The model's directory and model.json path from MODEL (a directory or the
 * path of its model.json). */
static void model_paths(const char *model, char *dir, size_t dcap, char *json, size_t jcap)
{
    struct stat st;
    if (stat(model, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dir, dcap, "%s", model);
        snprintf(json, jcap, "%s/model.json", model);
        return;
    }
    snprintf(json, jcap, "%s", model);
    const char *slash = strrchr(model, '/');
    if (slash)
        snprintf(dir, dcap, "%.*s", (int)(slash - model), model);
    else
        snprintf(dir, dcap, ".");
}

/* The relative path from directory `from` to `to` (both absolute and
 * canonical): "../" for each of from's components past the common prefix,
 * then the rest of to. 0 when it does not fit. */
static int relative_path(const char *from, const char *to, char *out, size_t cap)
{
    size_t common = 0; /* length of the common prefix, at a component boundary */
    for (size_t i = 0;; i++) {
        int end_f = from[i] == '\0' || from[i] == '/', end_t = to[i] == '\0' || to[i] == '/';
        if (end_f && end_t)
            common = i;
        if (from[i] != to[i] || from[i] == '\0')
            break;
    }
    size_t o = 0;
    out[0] = '\0';
    for (const char *p = from + common; *p; p++)
        if (*p == '/') {
            if (o + 3 >= cap)
                return 0;
            memcpy(out + o, "../", 4);
            o += 3;
        }
    const char *rest = to + common + (to[common] == '/');
    return snprintf(out + o, cap - o, "%s", rest) < (int)(cap - o);
}

/* A file the model names relative to its directory, named relative to the
 * copy's directory instead (the loader takes relative paths only); left
 * alone when it cannot be resolved. */
static int rebase_ref(cJSON *root, const char *key, const char *dir, const char *out_real)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return 1;
    char joined[4096], real[PATH_MAX], rel[PATH_MAX];
    if (!join(joined, sizeof joined, dir, v->valuestring) || !realpath(joined, real) ||
        !relative_path(out_real, real, rel, sizeof rel))
        return 1;
    return cJSON_ReplaceItemInObjectCaseSensitive(root, key, cJSON_CreateString(rel));
}

/* A copy of the model in out_dir with these thresholds: model.json edited
 * (each exit's policy.threshold; nothing else in it changes), the weights
 * copied beside it, and the sample data it names reached by relative paths
 * from the copy. */
int cli_write_model(const char *model, const ert_model *m, const float *thresholds,
                    const char *out_dir)
{
    char dir[4096], json[4096], path[4096], rin[PATH_MAX], rout[PATH_MAX];
    model_paths(model, dir, sizeof dir, json, sizeof json);
    if (mkdir(out_dir, 0777) != 0 && errno != EEXIST)
        return cli_error(CLI_FAIL, "--write %s: cannot create the directory: %s", out_dir,
                         strerror(errno));
    if (!realpath(dir, rin) || !realpath(out_dir, rout))
        return cli_error(CLI_FAIL, "--write %s: %s", out_dir, strerror(errno));
    if (strcmp(rin, rout) == 0)
        return cli_error(CLI_USAGE, "--write %s: is the model's own directory", out_dir);
    size_t len = 0;
    char *text = read_file(json, &len), *wbuf = NULL, *out = NULL;
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    int rc = 0;
    if (!root) {
        rc = cli_error(CLI_FAIL, "%s: cannot read it back", json);
        goto done;
    }
    cJSON *exits = cJSON_GetObjectItemCaseSensitive(root, "exits"), *x;
    cJSON_ArrayForEach (x, exits) {
        cJSON *name = cJSON_GetObjectItemCaseSensitive(x, "name");
        cJSON *policy = cJSON_GetObjectItemCaseSensitive(x, "policy");
        int e = cJSON_IsString(name) ? ert_model_exit_index(m, name->valuestring) : -1;
        if (e < 0 || e >= ert_model_num_exits(m) - 1 || !cJSON_IsObject(policy) ||
            !cJSON_ReplaceItemInObjectCaseSensitive(
                policy, "threshold", cJSON_CreateNumber(cli_float_decimal(thresholds[e])))) {
            rc = cli_error(CLI_FAIL, "%s: exits: cannot set the threshold of '%s'", json,
                           cJSON_IsString(name) ? name->valuestring : "?");
            goto done;
        }
    }
    cJSON *weights = cJSON_GetObjectItemCaseSensitive(root, "weights");
    if (!cJSON_IsString(weights)) {
        rc = cli_error(CLI_FAIL, "%s: no weights file named", json);
        goto done;
    }
    const char *wname = weights->valuestring[0] == '/' ? weights->valuestring : NULL;
    if (!join(path, sizeof path, dir, weights->valuestring)) {
        rc = cli_error(CLI_FAIL, "%s: the weights' path is too long", json);
        goto done;
    }
    if (!(wbuf = read_file(wname ? wname : path, &len))) {
        rc = cli_error(CLI_FAIL, "%s: cannot read: %s", wname ? wname : path, strerror(errno));
        goto done;
    }
    const char *base = strrchr(weights->valuestring, '/');
    base = base ? base + 1 : weights->valuestring;
    if (!join(path, sizeof path, out_dir, base)) {
        rc = cli_error(CLI_USAGE, "--write %s: the path is too long", out_dir);
        goto done;
    }
    if ((rc = write_bytes(path, wbuf, len)))
        goto done;
    if (!cJSON_ReplaceItemInObjectCaseSensitive(root, "weights", cJSON_CreateString(base)) ||
        !rebase_ref(root, "sample_data", dir, rout) ||
        !rebase_ref(root, "sample_labels", dir, rout) || !(out = cJSON_Print(root))) {
        rc = cli_error(CLI_FAIL, "out of memory writing model.json");
        goto done;
    }
    if (!join(path, sizeof path, out_dir, "model.json")) {
        rc = cli_error(CLI_USAGE, "--write %s: the path is too long", out_dir);
        goto done;
    }
    if ((rc = write_bytes(path, out, strlen(out))))
        goto done;
    /* what was written must load */
    ert_model *check = NULL;
    ert_error err = {{0}};
    if (ert_model_load(out_dir, &check, &err) != ERT_OK)
        rc = cli_error(CLI_FAIL, "--write %s: the copy does not load: %s", out_dir, err.msg);
    ert_model_free(check);
done:
    cJSON_free(out);
    cJSON_Delete(root);
    free(wbuf);
    free(text);
    return rc;
}

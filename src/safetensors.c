/* safetensors.c - a bounds-checked safetensors reader.
 *
 * Layout: an 8-byte little-endian header length N, N bytes of JSON, then the
 * data section. Every tensor is validated here, once, so that st_find hands
 * out only tensors whose bytes lie inside the mapping.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

/* Offsets and dims are JSON numbers (doubles): beyond 2^53 they are inexact. */
#define ST_MAX_INT 9007199254740992.0

struct dtype_info {
    const char *name;
    size_t size;
};

static const struct dtype_info dtypes[] = {
    {"F32", 4},  {"F16", 2},     {"BF16", 2},    {"F64", 8}, {"I64", 8}, {"I32", 4},
    {"I16", 2},  {"I8", 1},      {"U8", 1},      {"U16", 2}, {"U32", 4}, {"U64", 8},
    {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"C64", 8},
};

static size_t dtype_size(const char *name)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return dtypes[i].size;
    return 0;
}

/* A JSON number that is an integer in [0, 2^53]. */
static int json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j))
        return 0;
    double d = j->valuedouble;
    if (!(d >= 0.0 && d <= ST_MAX_INT) || d != (double)(uint64_t)d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

static int cmp_name(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_offset(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    const char *xd = x->data, *yd = y->data;
    return xd < yd ? -1 : xd > yd ? 1 : 0;
}

/* Parses one tensor entry into t. begin/end are checked against data_len;
 * data points into the mapping at data_base + begin. */
static ert_status parse_tensor(const char *path, const cJSON *e, const char *data_base,
                               uint64_t data_len, st_tensor *t, ert_error *err)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return ert_fail(err, ERT_FORMAT, "%s: tensor '%s': entry is not an object", path, name);
    t->name = strdup(name);
    if (!t->name)
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt))
        return ert_fail(err, ERT_FORMAT, "%s: tensor '%s': dtype is missing or not a string", path,
                        name);
    size_t esize = dtype_size(dt->valuestring);
    if (esize == 0)
        return ert_fail(err, ERT_FORMAT,
                        "%s: tensor '%s': dtype '%.32s' is not a safetensors dtype", path, name,
                        dt->valuestring);
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dt->valuestring);
    t->dtype = strcmp(dt->valuestring, "F32") == 0 ? ST_F32 : ST_OTHER;

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(sh))
        return ert_fail(err, ERT_FORMAT, "%s: tensor '%s': shape is missing or not an array", path,
                        name);
    int ndim = cJSON_GetArraySize(sh);
    if (ndim > ST_MAX_DIMS)
        return ert_fail(err, ERT_FORMAT, "%s: tensor '%s': shape has %d dims (at most %d)", path,
                        name, ndim, ST_MAX_DIMS);
    t->ndim = ndim;
    size_t count = 1;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach (d, sh) {
        uint64_t v;
        if (!json_uint(d, &v))
            return ert_fail(err, ERT_FORMAT,
                            "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name,
                            i);
        if (v > SIZE_MAX || !size_mul(count, (size_t)v, &count))
            return ert_fail(err, ERT_FORMAT, "%s: tensor '%s': shape overflows the element count",
                            path, name);
        t->shape[i++] = (int64_t)v;
    }
    size_t nbytes;
    if (!size_mul(count, esize, &nbytes))
        return ert_fail(err, ERT_FORMAT, "%s: tensor '%s': shape overflows the byte size", path,
                        name);
    t->count = count;
    t->nbytes = nbytes;

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b, en;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        !json_uint(cJSON_GetArrayItem(off, 0), &b) || !json_uint(cJSON_GetArrayItem(off, 1), &en))
        return ert_fail(err, ERT_FORMAT,
                        "%s: tensor '%s': data_offsets must be two non-negative integers", path,
                        name);
    if (b > en)
        return ert_fail(err, ERT_FORMAT,
                        "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", path,
                        name, (unsigned long long)b, (unsigned long long)en);
    if (en > data_len)
        return ert_fail(
            err, ERT_FORMAT,
            "%s: tensor '%s': data_offsets [%llu, %llu] exceed the data section (%llu bytes)", path,
            name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_len);
    if (en - b != (uint64_t)nbytes)
        return ert_fail(
            err, ERT_FORMAT,
            "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but %s shape needs %zu",
            path, name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)(en - b),
            t->dtype_name, nbytes);
    t->data = data_base + b;
    return ERT_OK;
}

static ert_status parse_metadata(const char *path, const cJSON *m, st_file *f, ert_error *err)
{
    if (!cJSON_IsObject(m))
        return ert_fail(err, ERT_FORMAT, "%s: __metadata__ is not an object", path);
    int n = cJSON_GetArraySize(m);
    f->meta_keys = calloc((size_t)n + 1, sizeof(char *));
    f->meta_values = calloc((size_t)n + 1, sizeof(char *));
    f->metadata_json = cJSON_PrintUnformatted(m);
    if (!f->meta_keys || !f->meta_values || !f->metadata_json)
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
    const cJSON *e;
    cJSON_ArrayForEach (e, m) {
        if (!cJSON_IsString(e))
            return ert_fail(err, ERT_FORMAT, "%s: __metadata__.%s: value is not a string", path,
                            e->string);
        f->meta_keys[f->num_meta] = strdup(e->string);
        f->meta_values[f->num_meta] = strdup(e->valuestring);
        f->num_meta++;
        if (!f->meta_keys[f->num_meta - 1] || !f->meta_values[f->num_meta - 1])
            return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    return ERT_OK;
}

/* Parses the header JSON; tensors and metadata go into f. */
static ert_status parse_header(const char *path, const char *hdr, size_t hlen, uint64_t data_len,
                               st_file *f, ert_error *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, hlen, &end, 0);
    if (!root) {
        size_t at = end && end >= hdr ? (size_t)(end - hdr) : 0;
        return ert_fail(err, ERT_FORMAT, "%s: header: invalid JSON near byte %zu", path, at);
    }
    ert_status st = ERT_OK;
    st_tensor **order = NULL;
    /* Writers pad the header with spaces; anything else after the JSON is not ours. */
    for (const char *p = end; p && p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            st =
                ert_fail(err, ERT_FORMAT, "%s: header: unexpected bytes after the JSON at byte %zu",
                         path, (size_t)(p - hdr));
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = ert_fail(err, ERT_FORMAT, "%s: header: not a JSON object", path);
        goto done;
    }
    int n = cJSON_GetArraySize(root);
    if (n - (cJSON_GetObjectItemCaseSensitive(root, "__metadata__") ? 1 : 0) > ST_MAX_TENSORS) {
        st = ert_fail(err, ERT_FORMAT, "%s: header: %d tensors, more than the limit of %d", path, n,
                      ST_MAX_TENSORS);
        goto done;
    }
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    if (!f->tensors) {
        st = ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    const char *data_base = (const char *)f->map + 8 + hlen;
    int seen_meta = 0;
    const cJSON *e;
    cJSON_ArrayForEach (e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta++) {
                st = ert_fail(err, ERT_FORMAT, "%s: __metadata__ appears twice", path);
                goto done;
            }
            if ((st = parse_metadata(path, e, f, err)) != ERT_OK)
                goto done;
            continue;
        }
        st_tensor *t = &f->tensors[f->num_tensors++];
        if ((st = parse_tensor(path, e, data_base, data_len, t, err)) != ERT_OK)
            goto done;
    }

    order = malloc(((size_t)f->num_tensors + 1) * sizeof *order);
    if (!order) {
        st = ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < f->num_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, (size_t)f->num_tensors, sizeof *order, cmp_name);
    for (int i = 1; i < f->num_tensors; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            st = ert_fail(err, ERT_FORMAT, "%s: tensor '%s' appears twice", path, order[i]->name);
            goto done;
        }
    }
    f->by_name = malloc(((size_t)f->num_tensors + 1) * sizeof *f->by_name);
    if (!f->by_name) {
        st = ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < f->num_tensors; i++)
        f->by_name[i] = order[i];
    /* Overlap: sorted by start, each non-empty tensor must begin at or after
     * the end of every earlier one. */
    qsort(order, (size_t)f->num_tensors, sizeof *order, cmp_offset);
    const st_tensor *prev = NULL;
    for (int i = 0; i < f->num_tensors; i++) {
        const st_tensor *t = order[i];
        if (t->nbytes == 0)
            continue;
        if (prev && (const char *)prev->data + prev->nbytes > (const char *)t->data) {
            st = ert_fail(err, ERT_FORMAT, "%s: tensors '%s' and '%s' overlap in the data section",
                          path, prev->name, t->name);
            goto done;
        }
        if (!prev || (const char *)t->data + t->nbytes > (const char *)prev->data + prev->nbytes)
            prev = t;
    }
done:
    free(order);
    cJSON_Delete(root);
    return st;
}

/* Checks the length prefix of f->map[f->size] and parses the header. */
static ert_status parse_file(const char *path, st_file *f, ert_error *err)
{
    const unsigned char *b = f->map;
    size_t size = f->size;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | b[i];
    if (hlen > ST_MAX_HEADER)
        return ert_fail(err, ERT_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes",
                        path, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
    if (hlen > size - 8)
        return ert_fail(err, ERT_FORMAT,
                        "%s: header length %llu exceeds the file (%zu bytes after the length)",
                        path, (unsigned long long)hlen, size - 8);
    if (hlen < 2)
        return ert_fail(err, ERT_FORMAT, "%s: header length %llu is too short for a JSON object",
                        path, (unsigned long long)hlen);
    return parse_header(path, (const char *)b + 8, (size_t)hlen, size - 8 - hlen, f, err);
}

ert_status st_open(const char *path, st_file *f, ert_error *err)
{
    if (!f)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "st_open: NULL file");
    memset(f, 0, sizeof *f);
    if (!path)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "st_open: NULL path");
    ert_status st;
    /* O_NONBLOCK: a FIFO named as the weights must not hang the open. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ert_fail(err, ERT_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = ert_fail(err, ERT_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return st;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ert_fail(err, ERT_IO, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return ert_fail(err, ERT_FORMAT,
                        "%s: file is %lld bytes, too short for a safetensors header", path,
                        (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return ert_fail(err, ERT_FORMAT, "%s: file too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return ert_fail(err, ERT_IO, "%s: cannot map: %s", path, strerror(errno));
    snprintf(f->path, sizeof f->path, "%s", path);
    f->map = map;
    f->size = size;

    f->owns_map = 1;
    if ((st = parse_file(path, f, err)) != ERT_OK)
        goto fail;
    return ERT_OK;
fail:
    st_close(f);
    return st;
}

ert_status st_open_memory(const char *name, const void *buf, size_t len, st_file *f, ert_error *err)
{
    if (!f)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "st_open_memory: NULL file");
    memset(f, 0, sizeof *f);
    if (!name || (!buf && len))
        return ert_fail(err, ERT_INVALID_ARGUMENT, "st_open_memory: NULL %s",
                        name ? "buffer" : "name");
    if (len < 8)
        return ert_fail(err, ERT_FORMAT,
                        "%s: file is %zu bytes, too short for a safetensors header", name, len);
    snprintf(f->path, sizeof f->path, "%s", name);
    f->map = (void *)buf; /* borrowed, read only */
    f->size = len;
    ert_status st = parse_file(name, f, err);
    if (st != ERT_OK)
        st_close(f);
    return st;
}

void st_close(st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->num_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->num_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->metadata_json);
    free(f->by_name);
    if (f->map && f->owns_map)
        munmap(f->map, f->size);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    if (!f || !name || !f->by_name)
        return NULL;
    int lo = 0, hi = f->num_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0)
            return f->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

const char *st_metadata(const st_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (int i = 0; i < f->num_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}

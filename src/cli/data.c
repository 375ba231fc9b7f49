/* data.c - input and label files: .npy (v1, v2, v3) and IDX, gzipped or not.
 *
 * Files are read as a stream through zlib's gzread, which reads plain files
 * unchanged and inflates gzip ones, so the format is decided by the magic
 * bytes of the (decompressed) content, never by the name. The header is
 * parsed and validated first; only then is the exact number of data bytes it
 * announces read, and a byte more means the file does not match its header.
 * Every size is overflow-checked and bounded by DATA_MAX_BYTES, both for the
 * data as stored and for the float array it becomes.
 */
#include "data.h"
#include "../../kernels/tx_math.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "data_read.h"
#include "util.h"

/* ---- IDX header ---------------------------------------------------------- */

/* Reads the IDX header after its 4 magic bytes (00 00 type ndim). */
static ert_status idx_header(reader *r, const unsigned char magic[4], array_info *info)
{
    if (magic[2] != 0x08)
        return ert_fail(r->err, ERT_UNSUPPORTED,
                        "%s: IDX data type 0x%02x is not supported (unsigned byte 0x08 only)",
                        r->path, magic[2]);
    int ndim = magic[3];
    if (ndim < 1 || ndim > DATA_MAX_DIMS)
        return ert_fail(r->err, ERT_FORMAT, "%s: IDX header has %d dimensions (1..%d)", r->path,
                        ndim, DATA_MAX_DIMS);
    unsigned char b[4 * DATA_MAX_DIMS];
    ert_status st = rd_exact(r, b, (size_t)ndim * 4, "IDX dimensions");
    if (st)
        return st;
    info->type = DT_U1;
    info->ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        const unsigned char *d = b + 4 * i;
        info->dims[i] = (int64_t)((uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 |
                                  (uint32_t)d[2] << 8 | (uint32_t)d[3]);
    }
    return info_sizes(r, info);
}

/* Opens path and reads whichever header it has. */
static ert_status read_header(reader *r, const char *path, ert_error *err, array_info *info)
{
    memset(info, 0, sizeof *info);
    ert_status st = rd_open(r, path, err);
    if (st)
        return st;
    unsigned char magic[6];
    long long got = rd_some(r, magic, 4);
    if (got < 0)
        return ERT_FORMAT;
    if (got == 0)
        return ert_fail(err, ERT_FORMAT, "%s: the file is empty", path);
    if (got == 4 && magic[0] == 0 && magic[1] == 0)
        return idx_header(r, magic, info);
    if (got == 4 && memcmp(magic, "\x93NUM", 4) == 0) {
        if ((st = rd_exact(r, magic + 4, 2, ".npy magic")))
            return st;
        if (memcmp(magic + 4, "PY", 2) != 0)
            return ert_fail(err, ERT_FORMAT, "%s: bad .npy magic", path);
        return npy_header(r, info);
    }
    if (got < 4)
        return ert_fail(err, ERT_FORMAT, "%s: truncated: %lld bytes is too short for a header",
                        path, got);
    return ert_fail(err, ERT_FORMAT, "%s: not a .npy or IDX file (first bytes %02x %02x %02x %02x)",
                    path, magic[0], magic[1], magic[2], magic[3]);
}

/* Reads info->elems values of info->type and converts each through conv
 * into out (element i at out[i]); reads through a bounded staging buffer. */
typedef void (*convert_fn)(const unsigned char *src, size_t n, void *dst, size_t at);

/* Little-endian 32- and 64-bit words, whatever the host. */
static uint32_t le32(const unsigned char *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t le64(const unsigned char *b) { return (uint64_t)le32(b + 4) << 32 | le32(b); }

static void conv_u1_f32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    float *o = (float *)dst + at;
    for (size_t i = 0; i < n; i++)
        o[i] = (float)s[i];
}

/* float64 to float32 as IEEE rounding (and numpy's astype) gives it: C
 * leaves a conversion beyond the float range undefined, so it is spelt
 * out: magnitudes from halfway between FLT_MAX and 2^128 on become
 * infinities (which the engine then reports as non-finite inputs), those
 * below it FLT_MAX; NaN stays NaN; tiny values become subnormals or zero. */
static float f64_to_f32(double v)
{
    if (fabs(v) > FLT_MAX) {
        float big = fabs(v) < 0x1.ffffffp127 ? FLT_MAX : INFINITY;
        return v < 0 ? -big : big;
    }
    return (float)v;
}

static void conv_f8_f32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    float *o = (float *)dst + at;
    for (size_t i = 0; i < n; i++) {
        uint64_t u = le64(s + 8 * i);
        double v;
        memcpy(&v, &u, sizeof v);
        o[i] = f64_to_f32(v);
    }
}

/* Token ids (int32, int64) to float32: exact up to 2^24 (the largest
 * vocabulary a model may have); beyond, rounded as numpy's astype. */
static void conv_i4_f32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    float *o = (float *)dst + at;
    for (size_t i = 0; i < n; i++)
        o[i] = (float)(int32_t)le32(s + 4 * i);
}

static void conv_i8_f32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    float *o = (float *)dst + at;
    for (size_t i = 0; i < n; i++)
        o[i] = (float)(int64_t)le64(s + 8 * i);
}

static ert_status read_payload(reader *r, const array_info *info, void *dst, convert_fn conv)
{
    if (!conv) /* stored exactly as we keep it */
        return rd_exact(r, dst, info->bytes, "data");
    size_t esz = dtype_size(info->type);
    size_t chunk = info->bytes < CHUNK_BYTES ? info->bytes : CHUNK_BYTES;
    unsigned char *buf = malloc(chunk ? chunk : 1);
    if (!buf)
        return ert_fail(r->err, ERT_OUT_OF_MEMORY, "%s: out of memory", r->path);
    ert_status st = ERT_OK;
    size_t per = CHUNK_BYTES / esz;
    for (size_t at = 0; at < info->elems; at += per) {
        size_t n = info->elems - at < per ? info->elems - at : per;
        if ((st = rd_exact(r, buf, n * esz, "data")))
            break;
        conv(buf, n, dst, at);
    }
    free(buf);
    return st;
}

/* ---- datasets ------------------------------------------------------------ */

ert_status cli_dataset_load(const char *path, cli_dataset *out, ert_error *err)
{
    if (!out)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "cli_dataset_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "cli_dataset_load: path is NULL");
    reader r;
    array_info info;
    ert_status st = read_header(&r, path, err, &info);
    if (st)
        goto fail;
    if (info.type != DT_F4 && info.type != DT_F8 && info.type != DT_U1 && info.type != DT_I4 &&
        info.type != DT_I8) {
        st = ert_fail(err, ERT_UNSUPPORTED,
                      "%s: input data must be float32, float64, uint8 or (token ids) int32 or "
                      "int64, not %s",
                      path, dtype_name(info.type));
        goto fail;
    }
    if (info.ndim < 1) {
        st = ert_fail(err, ERT_FORMAT, "%s: the array is a scalar, not a list of samples", path);
        goto fail;
    }
    if (info.elems == 0) {
        st = ert_fail(err, ERT_FORMAT, "%s: the array holds no values", path);
        goto fail;
    }
    /* float64 is converted while it is read: the bound applies to both the
       stored bytes (info_sizes) and the float32 array */
    size_t fbytes;
    if (!size_mul(info.elems, sizeof(float), &fbytes) || fbytes > DATA_MAX_BYTES) {
        st = ert_fail(err, ERT_FORMAT, "%s: the data is too large (over %zu bytes as float32)",
                      path, DATA_MAX_BYTES);
        goto fail;
    }
    if ((st = rd_can_hold(&r, info.bytes)))
        goto fail;
    out->values = malloc(fbytes);
    if (!out->values) {
        st = ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory for %zu bytes", path, fbytes);
        goto fail;
    }
    convert_fn conv = info.type == DT_U1   ? conv_u1_f32
                      : info.type == DT_F8 ? conv_f8_f32
                      : info.type == DT_I4 ? conv_i4_f32
                      : info.type == DT_I8 ? conv_i8_f32
                                           : NULL;
    if ((st = read_payload(&r, &info, out->values, conv)))
        goto fail;
    if ((st = rd_expect_end(&r)))
        goto fail;
    rd_close(&r);
    out->count = (size_t)info.dims[0];
    out->sample_size = info.elems / out->count;
    out->ndim = info.ndim;
    memcpy(out->dims, info.dims, sizeof info.dims);
    out->was_uint8 = info.type == DT_U1;
    out->was_int = info.type == DT_I4 || info.type == DT_I8;
    return ERT_OK;
fail:
    rd_close(&r);
    cli_dataset_free(out);
    return st;
}

/* dims[from..n) as "AxBxC" into buf. */
static const char *fmt_dims(char *buf, size_t len, const int64_t *dims, int from, int n)
{
    buf[0] = '\0';
    for (int i = from; i < n; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, len - l, "%s%lld", i > from ? "x" : "", (long long)dims[i]);
    }
    return buf;
}

ert_status cli_dataset_check_shape(const cli_dataset *d, const char *path, int c, int h, int w,
                                   ert_error *err)
{
    size_t per = (size_t)c * (size_t)h * (size_t)w;
    char shape[160];
    fmt_dims(shape, sizeof shape, d->dims, 1, d->ndim);
    if (d->sample_size != per)
        return ert_fail(err, ERT_FORMAT,
                        "%s: each sample has %zu value%s (%s), the model takes %dx%dx%d = %zu",
                        path, d->sample_size, d->sample_size == 1 ? "" : "s",
                        shape[0] ? shape : "1-D data", c, h, w, per);
    /* Dimensions of size 1 do not change the order of the values: the two
       layouts agree when their other dimensions do, or when the data has
       at most one (flat: [N, C*H*W], or [N] for a one-value input). */
    const int64_t model[3] = {c, h, w};
    int64_t a[DATA_MAX_DIMS], b[3];
    int na = 0, nb = 0;
    for (int i = 1; i < d->ndim; i++)
        if (d->dims[i] != 1)
            a[na++] = d->dims[i];
    for (int i = 0; i < 3; i++)
        if (model[i] != 1)
            b[nb++] = model[i];
    int same = na == nb;
    for (int i = 0; same && i < na; i++)
        same = a[i] == b[i];
    if (na <= 1 || same)
        return ERT_OK;
    const int64_t *x = d->dims;
    const char *hint = "";
    if (d->ndim == 4 && x[1] == h && x[2] == w && x[3] == c)
        hint = " (channels last? numpy: x.transpose(0, 3, 1, 2))";
    else if (d->ndim == 4 && x[1] == c && x[2] == w && x[3] == h)
        hint = " (height and width swapped? numpy: x.transpose(0, 1, 3, 2))";
    else if (c == 1 && d->ndim == 3 && x[1] == w && x[2] == h)
        hint = " (height and width swapped? numpy: x.transpose(0, 2, 1))";
    char hw[48] = "";
    if (c == 1)
        snprintf(hw, sizeof hw, ", [N, %d, %d]", h, w);
    return ert_fail(err, ERT_FORMAT,
                    "%s: samples of shape %s do not match the model's input %dx%dx%d: the same %zu "
                    "values in another layout%s; accepted: [N, %d, %d, %d]%s or [N, %zu]",
                    path, shape, c, h, w, per, hint, c, h, w, hw, per);
}

/* A token model's rows: [N, 2, T] (or flat [N, 2T]) as they are; [N, T]
 * ids get a mask of ones (FORMAT.md, "Token inputs"). */
static ert_status fit_tokens(cli_dataset *d, const char *path, size_t T, ert_error *err)
{
    char shape[160];
    fmt_dims(shape, sizeof shape, d->dims, 1, d->ndim);
    int pair = d->sample_size == 2 * T &&
               (d->ndim == 2 || (d->ndim == 3 && d->dims[1] == 2 && (size_t)d->dims[2] == T));
    if (pair)
        return ERT_OK;
    if (d->sample_size != T || d->ndim != 2)
        return ert_fail(err, ERT_FORMAT,
                        "%s: samples of shape %s do not fit a model of %zu tokens: accepted "
                        "[N, 2, %zu] (ids, then the attention mask) or [N, %zu] (ids only)",
                        path, shape[0] ? shape : "1-D data", T, T, T);
    size_t bytes;
    if (!size_mul(d->count, 2 * T * sizeof(float), &bytes))
        return ert_fail(err, ERT_FORMAT, "%s: too many samples", path);
    float *rows = malloc(bytes ? bytes : 1);
    if (!rows)
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
    for (size_t i = 0; i < d->count; i++) {
        memcpy(rows + i * 2 * T, d->values + i * T, T * sizeof(float));
        for (size_t t = 0; t < T; t++)
            rows[i * 2 * T + T + t] = 1.0f;
    }
    free(d->values);
    d->values = rows;
    d->sample_size = 2 * T;
    d->ndim = 3;
    d->dims[1] = 2;
    d->dims[2] = (int64_t)T;
    return ERT_OK;
}

ert_status cli_dataset_fit_model(cli_dataset *d, const char *path, const ert_model *m,
                                 ert_error *err)
{
    int T = ert_model_input_tokens(m);
    if (T > 0)
        return fit_tokens(d, path, (size_t)T, err);
    if (d->was_int)
        return ert_fail(err, ERT_FORMAT,
                        "%s: integer data is read as token ids, but the model takes images", path);
    int c, h, w;
    ert_model_input_shape(m, &c, &h, &w);
    return cli_dataset_check_shape(d, path, c, h, w, err);
}

int cli_tokens_first_invalid(const float *row, int T, int vocab)
{
    for (int t = 0; t < T; t++)
        if (ert_token_row(row[t], vocab) < 0) /* the embedding's own rule */
            return t;
    return -1;
}

void cli_dataset_free(cli_dataset *d)
{
    if (!d)
        return;
    free(d->values);
    memset(d, 0, sizeof *d);
}

/* ---- labels -------------------------------------------------------------- */

/* Raw little-endian labels to int32; out-of-range values are marked by
 * storing INT32_MIN, which cli_labels_load then reports. */
static void conv_u1_i32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    int32_t *o = (int32_t *)dst + at;
    for (size_t i = 0; i < n; i++)
        o[i] = s[i];
}

static void conv_i4_i32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    int32_t *o = (int32_t *)dst + at;
    for (size_t i = 0; i < n; i++)
        o[i] = (int32_t)le32(s + 4 * i);
}

static void conv_i8_i32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    int32_t *o = (int32_t *)dst + at;
    for (size_t i = 0; i < n; i++) {
        int64_t v = (int64_t)le64(s + 8 * i);
        o[i] = v < INT32_MIN + 1 || v > INT32_MAX ? INT32_MIN : (int32_t)v;
    }
}

ert_status cli_labels_load(const char *path, cli_labels *out, ert_error *err)
{
    if (!out)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "cli_labels_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "cli_labels_load: path is NULL");
    reader r;
    array_info info;
    ert_status st = read_header(&r, path, err, &info);
    if (st)
        goto fail;
    if (info.type == DT_F4 || info.type == DT_F8) {
        st = ert_fail(err, ERT_UNSUPPORTED, "%s: labels must be integers (u1, i4 or i8), not %s",
                      path, dtype_name(info.type));
        goto fail;
    }
    /* (N,) or (N, 1) */
    if (info.ndim != 1 && !(info.ndim == 2 && info.dims[1] == 1)) {
        st = ert_fail(err, ERT_FORMAT, "%s: labels must be one-dimensional (got %d dimensions)",
                      path, info.ndim);
        goto fail;
    }
    if (info.elems == 0) {
        st = ert_fail(err, ERT_FORMAT, "%s: the file holds no labels", path);
        goto fail;
    }
    if ((st = rd_can_hold(&r, info.bytes)))
        goto fail;
    out->values = malloc(info.elems * sizeof(int32_t)); /* <= elems * 8 <= bound */
    if (!out->values) {
        st = ert_fail(err, ERT_OUT_OF_MEMORY, "%s: out of memory", path);
        goto fail;
    }
    convert_fn conv = info.type == DT_U1   ? conv_u1_i32
                      : info.type == DT_I4 ? conv_i4_i32
                                           : conv_i8_i32;
    if ((st = read_payload(&r, &info, out->values, conv)))
        goto fail;
    if ((st = rd_expect_end(&r)))
        goto fail;
    for (size_t i = 0; i < info.elems; i++) {
        if (out->values[i] < 0) {
            st = ert_fail(err, ERT_FORMAT, "%s: label %zu is negative or out of range", path, i);
            goto fail;
        }
    }
    rd_close(&r);
    out->count = info.elems;
    return ERT_OK;
fail:
    rd_close(&r);
    cli_labels_free(out);
    return st;
}

void cli_labels_free(cli_labels *l)
{
    if (!l)
        return;
    free(l->values);
    memset(l, 0, sizeof *l);
}

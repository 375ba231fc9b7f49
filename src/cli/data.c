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

#include "util.h"

/* Largest decompressed payload, and largest float array, we accept. */
#define DATA_MAX_BYTES ((size_t)4 << 30)
/* numpy itself refuses headers over 10000 bytes unless told otherwise. */
#define NPY_MAX_HEADER 65536
#define DATA_MAX_DIMS 8
#define CHUNK_BYTES ((size_t)1 << 20)
/* deflate expands at most ~1032:1; a gzip file of n bytes cannot hold more
 * than this many decompressed bytes, so a header announcing more is refused
 * before anything is allocated for it. */
#define GZ_MAX_RATIO 1032
#define GZ_SLACK 65536

typedef enum dtype { DT_F4 = 0, DT_U1, DT_I4, DT_I8, DT_F8 } dtype;

static size_t dtype_size(dtype t)
{
    switch (t) {
    case DT_F4: return 4;
    case DT_U1: return 1;
    case DT_I4: return 4;
    default: return 8; /* DT_I8, DT_F8 */
    }
}

static const char *dtype_name(dtype t)
{
    switch (t) {
    case DT_F4: return "float32";
    case DT_U1: return "uint8";
    case DT_I4: return "int32";
    case DT_I8: return "int64";
    default: return "float64";
    }
}

/* What a header says about the array that follows it. */
typedef struct array_info {
    dtype type;
    int big_endian;  /* IDX multi-byte types; never set for the types we read */
    int ndim;
    int64_t dims[DATA_MAX_DIMS];
    size_t elems;    /* product of dims */
    size_t bytes;    /* elems * element size */
} array_info;

typedef struct reader {
    gzFile gz;
    const char *path;
    ert_error *err;
    size_t offset;   /* decompressed bytes read so far */
    uint64_t file_size; /* on disk (compressed when gzipped) */
} reader;

/* ---- stream ------------------------------------------------------------- */

static ert_status rd_open(reader *r, const char *path, ert_error *err)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    r->err = err;
    /* O_NONBLOCK: opening a FIFO must not hang (regular files ignore it). */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return ert_fail(err, ERT_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ert_fail(err, ERT_IO, "%s: not a regular file", path);
    }
    r->file_size = (uint64_t)st.st_size;
    r->gz = gzdopen(fd, "rb");
    if (!r->gz) {
        close(fd);
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: cannot start reading (zlib)", path);
    }
    /* zlib's buffers (2x this for gzip): large for big files, small for small ones */
    unsigned buf = 256 * 1024;
    if ((uint64_t)st.st_size < buf)
        buf = st.st_size < 8192 ? 8192 : (unsigned)st.st_size;
    gzbuffer(r->gz, buf);
    return ERT_OK;
}

static void rd_close(reader *r)
{
    if (r->gz)
        gzclose(r->gz);
    r->gz = NULL;
}

/* Reads up to n bytes; returns how many, or -1 on a zlib error (message set). */
static long long rd_some(reader *r, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        size_t want = n - done;
        if (want > (size_t)1 << 30)
            want = (size_t)1 << 30;
        int got = gzread(r->gz, (char *)buf + done, (unsigned)want);
        if (got < 0) {
            int code = 0;
            const char *msg = gzerror(r->gz, &code);
            ert_fail(r->err, ERT_FORMAT, "%s: read error at byte %zu: %s", r->path,
                     r->offset + done, msg ? msg : "zlib error");
            return -1;
        }
        if (got == 0)
            break;
        done += (size_t)got;
    }
    r->offset += done;
    return (long long)done;
}

/* Reads exactly n bytes of `what`; a short read is a truncated file. */
static ert_status rd_exact(reader *r, void *buf, size_t n, const char *what)
{
    size_t at = r->offset;
    long long got = rd_some(r, buf, n);
    if (got < 0)
        return ERT_FORMAT;
    if ((size_t)got < n) {
        int code = 0;
        const char *msg = gzerror(r->gz, &code);
        if (code != Z_OK && code != Z_STREAM_END && msg && msg[0])
            return ert_fail(r->err, ERT_FORMAT, "%s: truncated %s at byte %zu (%s)", r->path,
                            what, at + (size_t)got, msg);
        return ert_fail(r->err, ERT_FORMAT,
                        "%s: truncated: %s needs %zu bytes from byte %zu, the file has %lld",
                        r->path, what, n, at, got);
    }
    return ERT_OK;
}

/* Before allocating for `bytes` of data: can the rest of the file hold them?
 * Plain files exactly; gzip ones by the deflate ratio bound. */
static ert_status rd_can_hold(reader *r, size_t bytes)
{
    uint64_t avail;
    if (gzdirect(r->gz)) {
        avail = r->file_size > r->offset ? r->file_size - r->offset : 0;
        if (bytes > avail)
            return ert_fail(r->err, ERT_FORMAT,
                            "%s: truncated: data needs %zu bytes from byte %zu, the file has %llu",
                            r->path, bytes, r->offset, (unsigned long long)avail);
        return ERT_OK;
    }
    avail = r->file_size * GZ_MAX_RATIO + GZ_SLACK;
    if (bytes > avail)
        return ert_fail(r->err, ERT_FORMAT,
                        "%s: truncated: data needs %zu bytes, more than a %llu-byte gzip file can hold",
                        r->path, bytes, (unsigned long long)r->file_size);
    return ERT_OK;
}

/* After the data: the file must end here. */
static ert_status rd_expect_end(reader *r)
{
    unsigned char extra;
    size_t at = r->offset;
    long long got = rd_some(r, &extra, 1);
    if (got < 0)
        return ERT_FORMAT;
    if (got > 0)
        return ert_fail(r->err, ERT_FORMAT,
                        "%s: the file is longer than its header says (%zu bytes expected)",
                        r->path, at);
    return ERT_OK;
}

/* ---- shared size checks -------------------------------------------------- */

/* Fills info->elems and info->bytes from the dims, bounded. */
static ert_status info_sizes(reader *r, array_info *info)
{
    size_t elems = 1;
    for (int i = 0; i < info->ndim; i++) {
        if (info->dims[i] < 0)
            return ert_fail(r->err, ERT_FORMAT, "%s: dimension %d is negative", r->path, i);
        if ((uint64_t)info->dims[i] > SIZE_MAX || !size_mul(elems, (size_t)info->dims[i], &elems) ||
            elems > DATA_MAX_BYTES)
            return ert_fail(r->err, ERT_FORMAT,
                            "%s: the shape is too large (over %zu elements)", r->path,
                            DATA_MAX_BYTES);
    }
    size_t bytes;
    if (!size_mul(elems, dtype_size(info->type), &bytes) || bytes > DATA_MAX_BYTES)
        return ert_fail(r->err, ERT_FORMAT, "%s: the data is too large (over %zu bytes)", r->path,
                        DATA_MAX_BYTES);
    info->elems = elems;
    info->bytes = bytes;
    return ERT_OK;
}

/* ---- .npy header ----------------------------------------------------------- */

/* The header is a Python dict literal, e.g.
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (10000, 1, 28, 28), }
 * We parse exactly that grammar: string keys, and string, True/False and
 * tuple-of-integers values. */
typedef struct hparser {
    const char *s, *end;
    reader *r;
} hparser;

static void hp_ws(hparser *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

static int hp_eat(hparser *p, char c)
{
    hp_ws(p);
    if (p->s < p->end && *p->s == c) {
        p->s++;
        return 1;
    }
    return 0;
}

static ert_status hp_bad(hparser *p, const char *what)
{
    return ert_fail(p->r->err, ERT_FORMAT, "%s: malformed .npy header: %s", p->r->path, what);
}

/* A quoted string ('...' or "..."), without escapes, into out. */
static ert_status hp_string(hparser *p, char *out, size_t len)
{
    hp_ws(p);
    if (p->s >= p->end || (*p->s != '\'' && *p->s != '"'))
        return hp_bad(p, "expected a quoted string");
    char q = *p->s++;
    size_t n = 0;
    while (p->s < p->end && *p->s != q) {
        if (*p->s == '\\' || n + 1 >= len)
            return hp_bad(p, "string too long or escaped");
        out[n++] = *p->s++;
    }
    if (p->s >= p->end)
        return hp_bad(p, "unterminated string");
    p->s++;
    out[n] = '\0';
    return ERT_OK;
}

static ert_status hp_bool(hparser *p, int *out)
{
    hp_ws(p);
    size_t left = (size_t)(p->end - p->s);
    if (left >= 4 && memcmp(p->s, "True", 4) == 0) {
        p->s += 4;
        *out = 1;
        return ERT_OK;
    }
    if (left >= 5 && memcmp(p->s, "False", 5) == 0) {
        p->s += 5;
        *out = 0;
        return ERT_OK;
    }
    return hp_bad(p, "fortran_order is not True or False");
}

static ert_status hp_shape(hparser *p, array_info *info)
{
    if (!hp_eat(p, '('))
        return hp_bad(p, "shape is not a tuple");
    info->ndim = 0;
    for (;;) {
        if (hp_eat(p, ')'))
            return ERT_OK;
        hp_ws(p);
        if (p->s >= p->end || *p->s < '0' || *p->s > '9')
            return hp_bad(p, "shape holds something other than non-negative integers");
        int64_t v = 0;
        while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
            int d = *p->s++ - '0';
            if (v > (INT64_MAX - d) / 10)
                return ert_fail(p->r->err, ERT_FORMAT, "%s: a dimension of the shape overflows",
                                p->r->path);
            v = v * 10 + d;
        }
        if (p->s < p->end && *p->s == 'L') /* Python 2 longs */
            p->s++;
        if (info->ndim >= DATA_MAX_DIMS)
            return ert_fail(p->r->err, ERT_UNSUPPORTED, "%s: more than %d dimensions",
                            p->r->path, DATA_MAX_DIMS);
        info->dims[info->ndim++] = v;
        if (hp_eat(p, ','))
            continue;
        if (hp_eat(p, ')'))
            return ERT_OK;
        return hp_bad(p, "shape tuple is not closed");
    }
}

static ert_status parse_descr(reader *r, const char *d, array_info *info)
{
    /* the byte order of one-byte types is '|' (numpy writes that), '<' or '=' */
    if ((d[0] == '|' || d[0] == '<' || d[0] == '>' || d[0] == '=') && strcmp(d + 1, "u1") == 0) {
        info->type = DT_U1;
        return ERT_OK;
    }
    if (strcmp(d, "<f4") == 0) {
        info->type = DT_F4;
        return ERT_OK;
    }
    if (strcmp(d, "<f8") == 0) { /* numpy's default float */
        info->type = DT_F8;
        return ERT_OK;
    }
    if (strcmp(d, "<i4") == 0) {
        info->type = DT_I4;
        return ERT_OK;
    }
    if (strcmp(d, "<i8") == 0) {
        info->type = DT_I8;
        return ERT_OK;
    }
    return ert_fail(r->err, ERT_UNSUPPORTED,
                    "%s: unsupported dtype '%s' (inputs: float32 '<f4', float64 '<f8' or uint8 "
                    "'|u1'; labels: '|u1', '<i4' or '<i8')",
                    r->path, d);
}

/* Reads the .npy header after its 6 magic bytes. */
static ert_status npy_header(reader *r, array_info *info)
{
    unsigned char ver[2];
    ert_status st = rd_exact(r, ver, 2, ".npy version");
    if (st)
        return st;
    size_t hlen;
    if (ver[0] == 1) {
        unsigned char b[2];
        if ((st = rd_exact(r, b, 2, ".npy header length")))
            return st;
        hlen = (size_t)b[0] | (size_t)b[1] << 8;
    } else if (ver[0] == 2 || ver[0] == 3) {
        unsigned char b[4];
        if ((st = rd_exact(r, b, 4, ".npy header length")))
            return st;
        uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24;
        if (v > NPY_MAX_HEADER)
            return ert_fail(r->err, ERT_FORMAT, "%s: .npy header length %u is over %d bytes",
                            r->path, v, NPY_MAX_HEADER);
        hlen = v;
    } else {
        return ert_fail(r->err, ERT_UNSUPPORTED, "%s: .npy version %d.%d is not supported",
                        r->path, ver[0], ver[1]);
    }
    if (hlen == 0)
        return ert_fail(r->err, ERT_FORMAT, "%s: .npy header is empty", r->path);
    char *h = malloc(hlen);
    if (!h)
        return ert_fail(r->err, ERT_OUT_OF_MEMORY, "%s: out of memory", r->path);
    if ((st = rd_exact(r, h, hlen, ".npy header"))) {
        free(h);
        return st;
    }

    hparser p = {h, h + hlen, r};
    int have_descr = 0, have_order = 0, have_shape = 0, fortran = 0;
    char descr[32] = "";
    if (!hp_eat(&p, '{')) {
        st = hp_bad(&p, "not a dict");
        goto done;
    }
    for (;;) {
        if (hp_eat(&p, '}'))
            break;
        char key[32];
        if ((st = hp_string(&p, key, sizeof key)))
            goto done;
        if (!hp_eat(&p, ':')) {
            st = hp_bad(&p, "expected ':' after a key");
            goto done;
        }
        if (strcmp(key, "descr") == 0 && !have_descr) {
            if ((st = hp_string(&p, descr, sizeof descr)))
                goto done;
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !have_order) {
            if ((st = hp_bool(&p, &fortran)))
                goto done;
            have_order = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            if ((st = hp_shape(&p, info)))
                goto done;
            have_shape = 1;
        } else {
            st = ert_fail(r->err, ERT_FORMAT, "%s: malformed .npy header: unexpected key '%s'",
                          r->path, key);
            goto done;
        }
        if (hp_eat(&p, ','))
            continue;
        if (hp_eat(&p, '}'))
            break;
        st = hp_bad(&p, "expected ',' or '}'");
        goto done;
    }
    /* the rest is padding: spaces and a final newline */
    hp_ws(&p);
    if (p.s != p.end) {
        st = hp_bad(&p, "unexpected text after the dict");
        goto done;
    }
    if (!have_descr || !have_order || !have_shape) {
        st = ert_fail(r->err, ERT_FORMAT, "%s: malformed .npy header: missing '%s'", r->path,
                      !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
        goto done;
    }
    if (fortran) {
        st = ert_fail(r->err, ERT_UNSUPPORTED,
                      "%s: fortran_order True is not supported (save a C-order array)", r->path);
        goto done;
    }
    if ((st = parse_descr(r, descr, info)))
        goto done;
    st = info_sizes(r, info);
done:
    free(h);
    return st;
}

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
    return ert_fail(err, ERT_FORMAT,
                    "%s: not a .npy or IDX file (first bytes %02x %02x %02x %02x)", path, magic[0],
                    magic[1], magic[2], magic[3]);
}

/* Reads info->elems values of info->type and converts each through conv
 * into out (element i at out[i]); reads through a bounded staging buffer. */
typedef void (*convert_fn)(const unsigned char *src, size_t n, void *dst, size_t at);

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
        uint64_t u = 0;
        for (int j = 7; j >= 0; j--) /* little-endian, whatever the host */
            u = u << 8 | s[8 * i + j];
        double v;
        memcpy(&v, &u, sizeof v);
        o[i] = f64_to_f32(v);
    }
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

ert_status ert_dataset_load(const char *path, ert_dataset *out, ert_error *err)
{
    if (!out)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_dataset_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_dataset_load: path is NULL");
    reader r;
    array_info info;
    ert_status st = read_header(&r, path, err, &info);
    if (st)
        goto fail;
    if (info.type != DT_F4 && info.type != DT_F8 && info.type != DT_U1) {
        st = ert_fail(err, ERT_UNSUPPORTED,
                      "%s: input data must be float32, float64 or uint8, not %s", path,
                      dtype_name(info.type));
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
    convert_fn conv = info.type == DT_U1 ? conv_u1_f32 : info.type == DT_F8 ? conv_f8_f32 : NULL;
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
    return ERT_OK;
fail:
    rd_close(&r);
    ert_dataset_free(out);
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

ert_status ert_dataset_check_shape(const ert_dataset *d, const char *path, int c, int h, int w,
                                   ert_error *err)
{
    size_t per = (size_t)c * (size_t)h * (size_t)w;
    char shape[160];
    fmt_dims(shape, sizeof shape, d->dims, 1, d->ndim);
    if (d->sample_size != per)
        return ert_fail(err, ERT_FORMAT,
                        "%s: each sample has %zu value%s (%s), the model takes %dx%dx%d = %zu", path,
                        d->sample_size, d->sample_size == 1 ? "" : "s",
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

void ert_dataset_free(ert_dataset *d)
{
    if (!d)
        return;
    free(d->values);
    memset(d, 0, sizeof *d);
}

/* ---- labels -------------------------------------------------------------- */

/* Raw little-endian labels to int32; out-of-range values are marked by
 * storing INT32_MIN, which ert_labels_load then reports. */
static void conv_u1_i32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    int32_t *o = (int32_t *)dst + at;
    for (size_t i = 0; i < n; i++)
        o[i] = s[i];
}

static void conv_i4_i32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    int32_t *o = (int32_t *)dst + at;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *b = s + 4 * i;
        o[i] = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                         (uint32_t)b[3] << 24);
    }
}

static void conv_i8_i32(const unsigned char *s, size_t n, void *dst, size_t at)
{
    int32_t *o = (int32_t *)dst + at;
    for (size_t i = 0; i < n; i++) {
        uint64_t u = 0;
        for (int j = 7; j >= 0; j--)
            u = u << 8 | s[8 * i + j];
        int64_t v = (int64_t)u;
        o[i] = v < INT32_MIN + 1 || v > INT32_MAX ? INT32_MIN : (int32_t)v;
    }
}

ert_status ert_labels_load(const char *path, ert_labels *out, ert_error *err)
{
    if (!out)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_labels_load: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_labels_load: path is NULL");
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
    convert_fn conv = info.type == DT_U1 ? conv_u1_i32 : info.type == DT_I4 ? conv_i4_i32
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
    ert_labels_free(out);
    return st;
}

void ert_labels_free(ert_labels *l)
{
    if (!l)
        return;
    free(l->values);
    memset(l, 0, sizeof *l);
}

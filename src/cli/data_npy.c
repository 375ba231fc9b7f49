/* data_npy.c - the .npy header (versions 1 to 3): the Python dict literal
 * numpy writes, parsed by its exact grammar and validated (data_read.h). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_read.h"
#include "util.h"

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
            return ert_fail(p->r->err, ERT_UNSUPPORTED, "%s: more than %d dimensions", p->r->path,
                            DATA_MAX_DIMS);
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
                    "'|u1', token ids '<i4' or '<i8'; labels: '|u1', '<i4' or '<i8')",
                    r->path, d);
}

/* Reads the .npy header after its 6 magic bytes. */
ert_status npy_header(reader *r, array_info *info)
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
        uint32_t v =
            (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        if (v > NPY_MAX_HEADER)
            return ert_fail(r->err, ERT_FORMAT, "%s: .npy header length %u is over %d bytes",
                            r->path, v, NPY_MAX_HEADER);
        hlen = v;
    } else {
        return ert_fail(r->err, ERT_UNSUPPORTED, "%s: .npy version %d.%d is not supported", r->path,
                        ver[0], ver[1]);
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
                      !have_descr   ? "descr"
                      : !have_order ? "fortran_order"
                                    : "shape");
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

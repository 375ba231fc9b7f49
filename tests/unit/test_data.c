/* test_data.c - the .npy and IDX readers (src/cli/data.c), against files written
 * here byte by byte, plain and gzipped, and a set of malformed files. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "data.h"
#include "exitrt.h"

/* ---- helpers ------------------------------------------------------------- */

/* A fresh directory per test: Criterion runs tests in parallel processes. */
static char g_dir[512];

static void make_dir(void)
{
    snprintf(g_dir, sizeof g_dir, "%s/test_data_XXXXXX", ERT_BINARY_DIR);
    cr_assert_not_null(mkdtemp(g_dir), "mkdtemp %s", g_dir);
}

static void remove_dir(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        cr_log_warn("could not remove %s", g_dir);
}

TestSuite(data, .init = make_dir, .fini = remove_dir);

static const char *path_of(const char *name)
{
    static char p[640];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    return p;
}

/* Writes bytes to name, gzipped when gz; returns the full path. */
static const char *write_file(const char *name, const void *buf, size_t n, int gz)
{
    const char *p = path_of(name);
    if (gz) {
        gzFile f = gzopen(p, "wb");
        cr_assert_not_null(f);
        if (n)
            cr_assert_eq(gzwrite(f, buf, (unsigned)n), (int)n);
        cr_assert_eq(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(p, "wb");
        cr_assert_not_null(f);
        if (n)
            cr_assert_eq(fwrite(buf, 1, n, f), n);
        cr_assert_eq(fclose(f), 0);
    }
    return p;
}

/* A byte buffer that grows. */
typedef struct bytes {
    unsigned char *p;
    size_t n;
} bytes;

static void put(bytes *b, const void *src, size_t n)
{
    b->p = realloc(b->p, b->n + n + 1);
    cr_assert_not_null(b->p);
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

/* A .npy file: magic, version, header length, the dict padded so the data
 * starts at a multiple of 64 (as numpy writes it), then the data. */
static bytes npy_bytes(int version, const char *dict, const void *data, size_t n)
{
    bytes b = {0};
    unsigned char pre[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    put(&b, pre, 6);
    unsigned char ver[2] = {(unsigned char)version, 0};
    put(&b, ver, 2);
    size_t lenbytes = version == 1 ? 2 : 4;
    size_t hlen = strlen(dict) + 1;
    size_t total = 8 + lenbytes + hlen;
    size_t pad = (64 - total % 64) % 64;
    hlen += pad;
    unsigned char l[4] = {(unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8 & 0xff),
                          (unsigned char)(hlen >> 16 & 0xff), (unsigned char)(hlen >> 24)};
    put(&b, l, lenbytes);
    put(&b, dict, strlen(dict));
    for (size_t i = 0; i < pad; i++)
        put(&b, " ", 1);
    put(&b, "\n", 1);
    if (n)
        put(&b, data, n);
    return b;
}

static const char *write_npy(const char *name, int version, const char *dict, const void *data,
                             size_t n, int gz)
{
    bytes b = npy_bytes(version, dict, data, n);
    const char *p = write_file(name, b.p, b.n, gz);
    free(b.p);
    return p;
}

/* An IDX file of unsigned bytes. */
static const char *write_idx(const char *name, int ndim, const uint32_t *dims, const void *data,
                             size_t n, int gz)
{
    bytes b = {0};
    unsigned char magic[4] = {0, 0, 0x08, (unsigned char)ndim};
    put(&b, magic, 4);
    for (int i = 0; i < ndim; i++) {
        unsigned char d[4] = {(unsigned char)(dims[i] >> 24), (unsigned char)(dims[i] >> 16),
                              (unsigned char)(dims[i] >> 8), (unsigned char)dims[i]};
        put(&b, d, 4);
    }
    if (n)
        put(&b, data, n);
    const char *p = write_file(name, b.p, b.n, gz);
    free(b.p);
    return p;
}

#define assert_fails(call, status, substr)                                                         \
    do {                                                                                           \
        ert_error e_ = {{0}};                                                                      \
        ert_status s_ = (call);                                                                    \
        cr_assert_eq(s_, (status), "status %d (%s), want %d; message: %s", s_,                     \
                     ert_status_string(s_), (status), e_.msg);                                     \
        cr_assert_not_null(strstr(e_.msg, (substr)), "message '%s' lacks '%s'", e_.msg, (substr)); \
        cr_assert_not_null(strstr(e_.msg, g_dir), "message '%s' does not name the file", e_.msg);  \
    } while (0)

/* A version 1 .npy file with this header and data, loaded as input data:
 * refused with status st and a message that names the file and contains
 * msg. */
static void npy_refused(const char *dict, const void *data, size_t n, ert_status st,
                        const char *msg)
{
    const char *p = write_npy("refused.npy", 1, dict, data, n, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), st, msg);
}

/* ---- well-formed files ------------------------------------------------- */

static void check_f4(int version, int gz)
{
    float v[2 * 3 * 2];
    for (int i = 0; i < 12; i++)
        v[i] = (float)i * 0.5f - 2.25f;
    const char *p = write_npy("a.npy", version,
                              "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 2), }", v,
                              sizeof v, gz);
    cli_dataset d;
    ert_error err = {{0}};
    cr_assert_eq(cli_dataset_load(p, &d, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(d.count, 2);
    cr_assert_eq(d.sample_size, 6);
    cr_assert_eq(d.ndim, 3);
    cr_assert_eq(d.dims[0], 2);
    cr_assert_eq(d.dims[1], 3);
    cr_assert_eq(d.dims[2], 2);
    cr_assert_eq(d.was_uint8, 0);
    for (int i = 0; i < 12; i++)
        cr_assert_eq(d.values[i], v[i], "value %d", i);
    cli_dataset_free(&d);
    cr_assert_null(d.values);
}

Test(data, npy_f4_v1) { check_f4(1, 0); }
Test(data, npy_f4_v2) { check_f4(2, 0); }
Test(data, npy_f4_v3) { check_f4(3, 0); }
Test(data, npy_f4_gzip) { check_f4(1, 1); }

Test(data, npy_u1_v1_and_v2)
{
    unsigned char v[4 * 5];
    for (int i = 0; i < 20; i++)
        v[i] = (unsigned char)(i * 13);
    for (int version = 1; version <= 2; version++) {
        /* double quotes, no trailing comma, other key order: all valid Python */
        const char *p = write_npy(
            "u.npy", version, "{\"shape\": (4, 5), \"fortran_order\": False, \"descr\": \"|u1\"}",
            v, sizeof v, 0);
        cli_dataset d;
        ert_error err = {{0}};
        cr_assert_eq(cli_dataset_load(p, &d, &err), ERT_OK, "%s", err.msg);
        cr_assert_eq(d.count, 4);
        cr_assert_eq(d.sample_size, 5);
        cr_assert_eq(d.was_uint8, 1);
        for (int i = 0; i < 20; i++)
            cr_assert_eq(d.values[i], (float)v[i]);
        cli_dataset_free(&d);
    }
}

Test(data, npy_one_dim_is_one_value_per_sample)
{
    float v[3] = {1, 2, 3};
    const char *p = write_npy(
        "a.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", v, sizeof v, 0);
    cli_dataset d;
    ert_error err = {{0}};
    cr_assert_eq(cli_dataset_load(p, &d, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(d.count, 3);
    cr_assert_eq(d.sample_size, 1);
    cli_dataset_free(&d);
}

/* float64 (numpy's default dtype) is read as float32, rounded as numpy's
 * astype(np.float32) rounds: beyond the float range an infinity (from
 * halfway between FLT_MAX and 2^128 on) or FLT_MAX (below that), NaN
 * stays NaN, tiny values become subnormals or zero. */
static void check_f8(int version, int gz)
{
    const double v[2 * 6] = {0.1,           -2.25,          1e300,   -1e300,
                             NAN,           1e-40,          1e-50,   3.4028235e38,
                             3.40282356e38, -3.40282357e38, 65504.0, 0x1.ffffffp127};
    const float want[12] = {0.1f, -2.25f,  INFINITY, -INFINITY, NAN,      1e-40f,
                            0.0f, FLT_MAX, FLT_MAX,  -INFINITY, 65504.0f, INFINITY};
    const char *p =
        write_npy("d.npy", version, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 6), }",
                  v, sizeof v, gz);
    cli_dataset d;
    ert_error err = {{0}};
    cr_assert_eq(cli_dataset_load(p, &d, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(d.count, 2);
    cr_assert_eq(d.sample_size, 6);
    cr_assert_eq(d.was_uint8, 0);
    for (int i = 0; i < 12; i++) {
        if (isnan(want[i]))
            cr_assert(isnan(d.values[i]), "value %d: %g, want NaN", i, (double)d.values[i]);
        else
            cr_assert_eq(d.values[i], want[i], "value %d: %a, want %a", i, (double)d.values[i],
                         (double)want[i]);
    }
    cli_dataset_free(&d);
}

Test(data, npy_f8_v1) { check_f8(1, 0); }
Test(data, npy_f8_v3_gzip) { check_f8(3, 1); }

Test(data, npy_f8_sizes_checked)
{
    double v[6] = {0};
    /* 2x3 doubles announced, 47 bytes there */
    bytes b =
        npy_bytes(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", v, sizeof v);
    const char *p = write_file("t.npy", b.p, b.n - 1, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "truncated");
    p = write_file("t.npy.gz", b.p, b.n - 1, 1);
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "truncated");
    free(b.p);
    /* 600M doubles: 2.4 GB as float32, within the bound, but 4.8 GB stored */
    npy_refused("{'descr': '<f8', 'fortran_order': False, 'shape': (600000000,), }", v, sizeof v,
                ERT_FORMAT, "the data is too large");
    /* a plain file shorter than the data it announces: refused before allocating */
    npy_refused("{'descr': '<f8', 'fortran_order': False, 'shape': (100000000,), }", v, sizeof v,
                ERT_FORMAT, "data needs 800000000 bytes");
    /* one more double than announced */
    npy_refused("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }", v, sizeof v,
                ERT_FORMAT, "longer than its header");
    /* float64 labels are refused like float32 ones */
    cli_labels l;
    p = write_npy("y.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (6,), }", v,
                  sizeof v, 0);
    assert_fails(cli_labels_load(p, &l, &e_), ERT_UNSUPPORTED, "not float64");
}

static void check_idx(int gz)
{
    enum {
        N = 3,
        H = 4,
        W = 5
    };
    unsigned char img[N * H * W];
    for (int i = 0; i < N * H * W; i++)
        img[i] = (unsigned char)(255 - i * 3);
    uint32_t dims[3] = {N, H, W};
    const char *p = write_idx("images-idx3-ubyte", 3, dims, img, sizeof img, gz);
    cli_dataset d;
    ert_error err = {{0}};
    cr_assert_eq(cli_dataset_load(p, &d, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(d.count, N);
    cr_assert_eq(d.sample_size, H * W);
    cr_assert_eq(d.ndim, 3);
    cr_assert_eq(d.was_uint8, 1);
    for (int i = 0; i < N * H * W; i++)
        cr_assert_eq(d.values[i], (float)img[i]);
    cli_dataset_free(&d);

    unsigned char lab[N] = {7, 0, 9};
    uint32_t ldims[1] = {N};
    p = write_idx("labels-idx1-ubyte", 1, ldims, lab, sizeof lab, gz);
    cli_labels l;
    cr_assert_eq(cli_labels_load(p, &l, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(l.count, N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(l.values[i], lab[i]);
    cli_labels_free(&l);
    cr_assert_null(l.values);
}

Test(data, idx_plain) { check_idx(0); }
Test(data, idx_gzip) { check_idx(1); }

Test(data, npy_labels_i4_i8_u1)
{
    int32_t a[4] = {3, 1, 4, 1};
    int64_t b[4] = {5, 9, 2, 6};
    unsigned char c[4] = {2, 7, 1, 8};
    cli_labels l;
    ert_error err = {{0}};

    const char *p = write_npy(
        "a.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", a, sizeof a, 0);
    cr_assert_eq(cli_labels_load(p, &l, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(l.count, 4);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(l.values[i], a[i]);
    cli_labels_free(&l);

    p = write_npy("b.npy", 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (4, 1), }", b,
                  sizeof b, 1);
    cr_assert_eq(cli_labels_load(p, &l, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(l.count, 4);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(l.values[i], (int32_t)b[i]);
    cli_labels_free(&l);

    p = write_npy("c.npy", 2, "{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", c,
                  sizeof c, 0);
    cr_assert_eq(cli_labels_load(p, &l, &err), ERT_OK, "%s", err.msg);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(l.values[i], c[i]);
    cli_labels_free(&l);
}

Test(data, free_accepts_null_and_zeroed)
{
    cli_dataset_free(NULL);
    cli_labels_free(NULL);
    cli_dataset d = {0};
    cli_dataset_free(&d);
    cli_labels l = {0};
    cli_labels_free(&l);
}

/* ---- malformed files ---------------------------------------------------- */

static const char F4_2x3[] = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

Test(data, missing_file)
{
    cli_dataset d;
    assert_fails(cli_dataset_load(path_of("nope.npy"), &d, &e_), ERT_IO, "cannot open");
    cr_assert_null(d.values);
}

Test(data, directory_is_not_a_file)
{
    cli_dataset d;
    assert_fails(cli_dataset_load(g_dir, &d, &e_), ERT_IO, "not a regular file");
}

Test(data, empty_file)
{
    const char *p = write_file("e.npy", "", 0, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "empty");
}

Test(data, bad_magic)
{
    const char *p = write_file("x.npy", "PK\x03\x04garbage", 11, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "not a .npy or IDX file");
    p = write_file("y.npy", "\x93NUMPZ\x01\x00", 8, 0);
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "bad .npy magic");
}

Test(data, npy_truncated_data)
{
    float v[6] = {0};
    bytes b = npy_bytes(1, F4_2x3, v, sizeof v);
    const char *p = write_file("t.npy", b.p, b.n - 3, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "truncated");
    p = write_file("t.npy.gz", b.p, b.n - 3, 1);
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "truncated");
    free(b.p);
}

Test(data, npy_truncated_header)
{
    float v[6] = {0};
    bytes b = npy_bytes(1, F4_2x3, v, sizeof v);
    const char *p = write_file("t.npy", b.p, 30, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "truncated");
    free(b.p);
}

Test(data, gzip_stream_cut_short)
{
    /* a valid gzip file cut in the middle of its deflate stream */
    float v[600];
    for (int i = 0; i < 600; i++)
        v[i] = (float)i;
    bytes b =
        npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (600,), }", v, sizeof v);
    const char *full = write_file("g.npy.gz", b.p, b.n, 1);
    FILE *f = fopen(full, "rb");
    cr_assert_not_null(f);
    unsigned char gzbuf[8192];
    size_t n = fread(gzbuf, 1, sizeof gzbuf, f);
    fclose(f);
    cr_assert_gt(n, 40);
    const char *p = write_file("cut.npy.gz", gzbuf, n / 2, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "truncated");
    free(b.p);
}

Test(data, npy_trailing_bytes)
{
    float v[7] = {0};
    npy_refused(F4_2x3, v, sizeof v, ERT_FORMAT, "longer than its header");
}

Test(data, npy_fortran_order)
{
    float v[6] = {0};
    npy_refused("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", v, sizeof v,
                ERT_UNSUPPORTED, "fortran_order");
}

Test(data, npy_unsupported_dtype)
{
    double v[6] = {0};
    /* big-endian float64, half precision */
    npy_refused("{'descr': '>f8', 'fortran_order': False, 'shape': (2, 3), }", v, sizeof v,
                ERT_UNSUPPORTED, "'>f8'");
    npy_refused("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", v, 12,
                ERT_UNSUPPORTED, "float64 '<f8'");
    /* big-endian float32 */
    npy_refused("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", v, 24,
                ERT_UNSUPPORTED, "'>f4'");
    /* integers are read as token ids (exact in float32), marked as such */
    int32_t ids[6] = {0, 1, 16777216, -3, 7, 30521};
    const char *ip =
        write_npy("ids.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", ids,
                  sizeof ids, 0);
    cli_dataset d;
    ert_error err = {{0}};
    cr_assert_eq(cli_dataset_load(ip, &d, &err), ERT_OK, "%s", err.msg);
    cr_assert(d.was_int && d.count == 2 && d.sample_size == 3);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(d.values[i], (float)ids[i]);
    cli_dataset_free(&d);
    /* and floats are not labels */
    cli_labels l;
    const char *p = write_npy(
        "l.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", v, 24, 0);
    assert_fails(cli_labels_load(p, &l, &e_), ERT_UNSUPPORTED, "integers");
}

Test(data, npy_unsupported_version)
{
    float v[6] = {0};
    const char *p = write_npy("v.npy", 4, F4_2x3, v, sizeof v, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_UNSUPPORTED, "version 4");
}

Test(data, npy_malformed_headers)
{
    static const struct {
        const char *dict, *msg;
    } cases[] = {
        {"['descr', '<f4']", "not a dict"},
        {"{'descr': '<f4', 'fortran_order': False}", "missing 'shape'"},
        {"{'descr': '<f4', 'shape': (2, 3)}", "missing 'fortran_order'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}",
         "unexpected key 'extra'"},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",
         "unexpected key 'descr'"},
        {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 3)}", "True or False"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}", "non-negative integers"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}", "not a tuple"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}", "not closed"},
        {"{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3)}", "expected ':'"},
        {"{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}", "expected ',' or '}'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} x", "after the dict"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1)}",
         "more than 8 dimensions"},
    };
    float v[6] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *p = write_npy("h.npy", 1, cases[i].dict, v, sizeof v, 0);
        cli_dataset d;
        ert_error e = {{0}};
        ert_status s = cli_dataset_load(p, &d, &e);
        cr_assert_neq(s, ERT_OK, "case %zu accepted: %s", i, cases[i].dict);
        cr_assert_not_null(strstr(e.msg, cases[i].msg), "case %zu: '%s' lacks '%s'", i, e.msg,
                           cases[i].msg);
        cr_assert_null(d.values);
    }
}

Test(data, npy_shape_size_mismatch)
{
    /* the header says 2x3 floats, the file holds 4 */
    float v[4] = {0};
    npy_refused(F4_2x3, v, sizeof v, ERT_FORMAT, "truncated");
}

Test(data, npy_huge_dims_overflow)
{
    float v[6] = {0};
    npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }", v,
                sizeof v, ERT_FORMAT, "too large");
    npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", v,
                sizeof v, ERT_FORMAT, "overflows");
    /* within size_t, but over the 4 GiB bound: refused before any allocation */
    npy_refused("{'descr': '|u1', 'fortran_order': False, 'shape': (70000, 70000), }", v, sizeof v,
                ERT_FORMAT, "too large");
}

Test(data, npy_empty_array)
{
    npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", NULL, 0, ERT_FORMAT,
                "no values");
    npy_refused("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", "abcd", 4, ERT_FORMAT,
                "scalar");
}

Test(data, idx_huge_dims)
{
    uint32_t dims[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    const char *p = write_idx("h-idx4-ubyte", 4, dims, "abc", 3, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "too large");
}

Test(data, idx_bad_type_and_dims)
{
    unsigned char hdr[8] = {0, 0, 0x0D, 1, 0, 0, 0, 1};
    const char *p = write_file("f-idx1", hdr, 8, 0);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_UNSUPPORTED, "0x0d");
    unsigned char hdr0[4] = {0, 0, 0x08, 0};
    p = write_file("z-idx0", hdr0, 4, 0);
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "0 dimensions");
}

Test(data, idx_truncated)
{
    uint32_t dims[3] = {10, 28, 28};
    unsigned char img[100] = {0};
    const char *p = write_idx("t-idx3-ubyte", 3, dims, img, sizeof img, 1);
    cli_dataset d;
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "truncated");
    /* cut inside the dimensions */
    unsigned char hdr[6] = {0, 0, 0x08, 3, 0, 0};
    p = write_file("d-idx3", hdr, 6, 0);
    assert_fails(cli_dataset_load(p, &d, &e_), ERT_FORMAT, "IDX dimensions");
}

Test(data, labels_shape_and_range)
{
    cli_labels l;
    uint32_t dims[2] = {2, 2};
    const char *p = write_idx("l-idx2", 2, dims, "\1\2\3\4", 4, 0);
    assert_fails(cli_labels_load(p, &l, &e_), ERT_FORMAT, "one-dimensional");
    int64_t big[2] = {1, (int64_t)1 << 40};
    p = write_npy("b.npy", 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", big,
                  sizeof big, 0);
    assert_fails(cli_labels_load(p, &l, &e_), ERT_FORMAT, "label 1");
    int32_t neg[3] = {0, 1, -1};
    p = write_npy("n.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }", neg,
                  sizeof neg, 0);
    assert_fails(cli_labels_load(p, &l, &e_), ERT_FORMAT, "label 2");
    cr_assert_null(l.values);
}

Test(data, null_arguments)
{
    cli_dataset d;
    ert_error e = {{0}};
    cr_assert_eq(cli_dataset_load(NULL, &d, &e), ERT_INVALID_ARGUMENT);
    cr_assert_eq(cli_dataset_load("x", NULL, &e), ERT_INVALID_ARGUMENT);
    cli_labels l;
    cr_assert_eq(cli_labels_load(NULL, &l, NULL), ERT_INVALID_ARGUMENT);
}

/* ---- the layout of the samples against the model's input --------------------- */

/* A data set of n samples with these dims after the first (no values: the
 * check reads the shape only). */
static cli_dataset shaped(int ndim, const int64_t *dims)
{
    cli_dataset d = {0};
    d.ndim = ndim;
    d.count = 5;
    d.dims[0] = 5;
    d.sample_size = 1;
    for (int i = 1; i < ndim; i++) {
        d.dims[i] = dims[i - 1];
        d.sample_size *= (size_t)dims[i - 1];
    }
    return d;
}

static void shape_ok(int c, int h, int w, int ndim, const int64_t *dims)
{
    cli_dataset d = shaped(ndim, dims);
    ert_error err = {{0}};
    cr_assert_eq(cli_dataset_check_shape(&d, "x.npy", c, h, w, &err), ERT_OK,
                 "model %dx%dx%d, %d dims: %s", c, h, w, ndim, err.msg);
}

static void shape_bad(int c, int h, int w, int ndim, const int64_t *dims, const char *want1,
                      const char *want2)
{
    cli_dataset d = shaped(ndim, dims);
    ert_error err = {{0}};
    cr_assert_eq(cli_dataset_check_shape(&d, path_of("x.npy"), c, h, w, &err), ERT_FORMAT,
                 "model %dx%dx%d, %d dims: accepted", c, h, w, ndim);
    cr_assert_not_null(strstr(err.msg, g_dir), "'%s' names no file", err.msg);
    cr_assert_not_null(strstr(err.msg, want1), "'%s' lacks '%s'", err.msg, want1);
    cr_assert_not_null(strstr(err.msg, want2), "'%s' lacks '%s'", err.msg, want2);
    cr_assert_null(strchr(err.msg, '\n'));
}

Test(data, layout_accepted)
{
    const int64_t nchw[3] = {3, 30, 34}, flat[1] = {3060}, ones[5] = {1, 3, 30, 1, 34};
    shape_ok(3, 30, 34, 4, nchw);
    shape_ok(3, 30, 34, 2, flat);
    shape_ok(3, 30, 34, 6, ones); /* size-1 dims do not move any value */
    const int64_t hw[2] = {28, 28}, chw[3] = {1, 28, 28}, hwc[3] = {28, 28, 1};
    const int64_t f784[1] = {784}, col[2] = {784, 1};
    shape_ok(1, 28, 28, 3, hw); /* Fashion-MNIST as it comes */
    shape_ok(1, 28, 28, 4, chw);
    shape_ok(1, 28, 28, 4, hwc); /* one channel: channels last is the same order */
    shape_ok(1, 28, 28, 2, f784);
    shape_ok(1, 28, 28, 3, col);
    shape_ok(1, 1, 1, 1, NULL); /* [N] for a one-value input */
}

Test(data, layout_refused_naming_both_shapes)
{
    const int64_t nhwc[3] = {30, 34, 3}, swapped[3] = {3, 34, 30}, merged[2] = {3, 1020},
                  hwflat[2] = {1020, 3};
    shape_bad(3, 30, 34, 4, nhwc,
              "samples of shape 30x34x3 do not match the model's input 3x30x34: the same 3060 "
              "values in another layout (channels last? numpy: x.transpose(0, 3, 1, 2))",
              "accepted: [N, 3, 30, 34] or [N, 3060]");
    shape_bad(3, 30, 34, 4, swapped,
              "samples of shape 3x34x30 do not match the model's input 3x30x34",
              "height and width swapped? numpy: x.transpose(0, 1, 3, 2)");
    shape_bad(3, 30, 34, 3, merged, "samples of shape 3x1020 do not match", "another layout;");
    shape_bad(3, 30, 34, 3, hwflat, "samples of shape 1020x3 do not match", "another layout;");
    const int64_t wh[2] = {20, 28};
    shape_bad(1, 28, 20, 3, wh, "samples of shape 20x28 do not match the model's input 1x28x20",
              "(height and width swapped? numpy: x.transpose(0, 2, 1)); accepted: [N, 1, 28, 20], "
              "[N, 28, 20] or [N, 560]");
    /* another number of values: the size message */
    const int64_t small[3] = {3, 30, 33};
    shape_bad(3, 30, 34, 4, small, "each sample has 2970 values (3x30x33)",
              "the model takes 3x30x34 = 3060");
    shape_bad(3, 30, 34, 1, NULL, "each sample has 1 value (1-D data)", "= 3060");
}

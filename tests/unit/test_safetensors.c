/* test_safetensors.c - the safetensors reader on valid and malformed files. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "model_writer.h"
#include "safetensors.h"

static char dir[64];
static char file[128];

static void setup(void)
{
    cr_assert_eq(mw_tempdir(dir, sizeof dir), 0);
    cr_assert_eq(mw_path(file, sizeof file, dir, "w.safetensors"), 0);
}

static void teardown(void) { mw_rmtree(dir); }

TestSuite(safetensors, .init = setup, .fini = teardown);

/* Writes header (its true length) followed by data_len zero bytes, opens it,
 * and checks the status and that the message holds the file name and want. */
static void expect_bad_header(const char *header, size_t data_len, ert_status want_st,
                              const char *want)
{
    cr_assert_eq(mw_write_st_raw(file, strlen(header), header, NULL, data_len), 0);
    st_file f;
    ert_error err = {{0}};
    ert_status st = st_open(file, &f, &err);
    cr_assert_eq(st, want_st, "status %d, want %d: %s", st, want_st, err.msg);
    cr_assert(strstr(err.msg, want), "message '%s' lacks '%s'", err.msg, want);
    cr_assert(strstr(err.msg, file), "message '%s' does not name the file", err.msg);
    cr_assert_eq(f.num_tensors, 0);
    cr_assert_null(f.map);
    st_close(&f); /* harmless on a failed open */
}

Test(safetensors, round_trip)
{
    mw_st *w = mw_st_new();
    cr_assert_not_null(w);
    float a[6] = {1, -2, 3.5f, 4, 5, 6e-30f}, s = 42.0f;
    uint16_t h[3] = {0x3c00, 0x4000, 0xc000};
    int64_t sa[2] = {2, 3}, sh[1] = {3}, sz[2] = {0, 5};
    cr_assert_eq(mw_st_add(w, "a", 2, sa, a), 0);
    cr_assert_eq(mw_st_add(w, "scalar", 0, NULL, &s), 0);
    cr_assert_eq(mw_st_add_raw(w, "half", "F16", 1, sh, h, sizeof h), 0);
    cr_assert_eq(mw_st_add(w, "empty", 2, sz, NULL), 0);
    cr_assert_eq(mw_st_add_metadata(w, "format", "pt"), 0);
    cr_assert_eq(mw_st_add_metadata(w, "note", "caf\xc3\xa9 \"q\""), 0);
    cr_assert_eq(mw_st_write(w, file), 0);
    mw_st_free(w);

    st_file f;
    ert_error err = {{0}};
    cr_assert_eq(st_open(file, &f, &err), ERT_OK, "%s", err.msg);
    cr_assert_eq(f.num_tensors, 4);
    const st_tensor *t = st_find(&f, "a");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, ST_F32);
    cr_assert_eq(t->ndim, 2);
    cr_assert_eq(t->shape[0], 2);
    cr_assert_eq(t->shape[1], 3);
    cr_assert_eq(t->count, 6);
    cr_assert_eq(t->nbytes, 24);
    cr_assert_eq(memcmp(t->data, a, sizeof a), 0);
    t = st_find(&f, "scalar");
    cr_assert_not_null(t);
    cr_assert_eq(t->ndim, 0);
    cr_assert_eq(t->count, 1);
    cr_assert_eq(memcmp(t->data, &s, 4), 0);
    t = st_find(&f, "half");
    cr_assert_not_null(t);
    cr_assert_eq(t->dtype, ST_OTHER);
    cr_assert_str_eq(t->dtype_name, "F16");
    cr_assert_eq(t->nbytes, 6);
    cr_assert_eq(memcmp(t->data, h, 6), 0);
    t = st_find(&f, "empty");
    cr_assert_not_null(t);
    cr_assert_eq(t->count, 0);
    cr_assert_eq(t->nbytes, 0);
    cr_assert_null(st_find(&f, "missing"));
    cr_assert_str_eq(st_metadata(&f, "format"), "pt");
    cr_assert_str_eq(st_metadata(&f, "note"), "caf\xc3\xa9 \"q\"");
    cr_assert_null(st_metadata(&f, "absent"));
    cr_assert_not_null(f.metadata_json);
    st_close(&f);
    cr_assert_null(f.map);
}

/* A header whose length is not a multiple of 8 puts the data at an odd
 * address; the values must still come back exactly. */
Test(safetensors, unaligned_data)
{
    const char *hdr = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    float v[2] = {1.25f, -7.5f};
    cr_assert_neq(strlen(hdr) % 4, 0);
    cr_assert_eq(mw_write_st_raw(file, strlen(hdr), hdr, v, sizeof v), 0);
    st_file f;
    ert_error err = {{0}};
    cr_assert_eq(st_open(file, &f, &err), ERT_OK, "%s", err.msg);
    const st_tensor *t = st_find(&f, "x");
    cr_assert_not_null(t);
    float got[2];
    memcpy(got, t->data, sizeof got);
    cr_assert_eq(got[0], 1.25f);
    cr_assert_eq(got[1], -7.5f);
    st_close(&f);
}

Test(safetensors, missing_file)
{
    st_file f;
    ert_error err = {{0}};
    cr_assert_eq(st_open(file, &f, &err), ERT_IO);
    cr_assert(strstr(err.msg, "cannot open"), "%s", err.msg);
}

Test(safetensors, directory)
{
    st_file f;
    ert_error err = {{0}};
    cr_assert_eq(st_open(dir, &f, &err), ERT_IO);
    cr_assert(strstr(err.msg, "not a regular file"), "%s", err.msg);
}

Test(safetensors, too_short)
{
    cr_assert_eq(mw_write_file(file, "\x10\0\0", 3), 0);
    st_file f;
    ert_error err = {{0}};
    cr_assert_eq(st_open(file, &f, &err), ERT_FORMAT);
    cr_assert(strstr(err.msg, "too short"), "%s", err.msg);
}

Test(safetensors, header_beyond_file)
{
    cr_assert_eq(mw_write_st_raw(file, 1000, "{}", NULL, 0), 0);
    st_file f;
    ert_error err = {{0}};
    cr_assert_eq(st_open(file, &f, &err), ERT_FORMAT);
    cr_assert(strstr(err.msg, "header length 1000 exceeds the file"), "%s", err.msg);
}

Test(safetensors, header_over_limit)
{
    cr_assert_eq(mw_write_st_raw(file, (uint64_t)1 << 62, "{}", NULL, 0), 0);
    st_file f;
    ert_error err = {{0}};
    cr_assert_eq(st_open(file, &f, &err), ERT_FORMAT);
    cr_assert(strstr(err.msg, "exceeds the limit"), "%s", err.msg);
}

Test(safetensors, invalid_json) { expect_bad_header("{\"a\": {", 0, ERT_FORMAT, "invalid JSON"); }
Test(safetensors, not_an_object)
{
    expect_bad_header("[1, 2]  ", 0, ERT_FORMAT, "not a JSON object");
}
Test(safetensors, trailing_bytes) { expect_bad_header("{} xx", 0, ERT_FORMAT, "unexpected bytes"); }

Test(safetensors, offsets_beyond_data)
{
    expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12,
                      ERT_FORMAT,
                      "tensor 'w': data_offsets [0, 16] exceed the data section (12 bytes)");
}

Test(safetensors, offsets_reversed)
{
    expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16,
                      ERT_FORMAT, "end before they begin");
}

Test(safetensors, size_does_not_match_shape)
{
    expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16,
                      ERT_FORMAT, "hold 8 bytes, but F32 shape needs 12");
}

Test(safetensors, overlap)
{
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                      32, ERT_FORMAT, "tensors 'a' and 'b' overlap");
}

Test(safetensors, overlap_contained)
{
    /* b lies inside a, c after both: sorting must not hide the overlap */
    expect_bad_header("{\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[40,44]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]},"
                      "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
                      48, ERT_FORMAT, "overlap");
}

Test(safetensors, duplicate_name)
{
    expect_bad_header("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                      8, ERT_FORMAT, "tensor 'a' appears twice");
}

Test(safetensors, unknown_dtype)
{
    expect_bad_header("{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                      ERT_FORMAT, "dtype 'F33' is not a safetensors dtype");
}

Test(safetensors, too_many_dims)
{
    expect_bad_header(
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
        ERT_FORMAT, "9 dims (at most 8)");
}

Test(safetensors, negative_dim)
{
    expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", 4,
                      ERT_FORMAT, "shape[1] is not a non-negative integer");
}

Test(safetensors, shape_overflow)
{
    expect_bad_header(
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}",
        4, ERT_FORMAT, "overflows");
}

Test(safetensors, fractional_offset)
{
    expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0.5,4]}}", 4,
                      ERT_FORMAT, "data_offsets must be two non-negative integers");
}

Test(safetensors, three_offsets)
{
    expect_bad_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                      ERT_FORMAT, "data_offsets must be two");
}

Test(safetensors, entry_not_object)
{
    expect_bad_header("{\"w\":[1,2,3]}", 0, ERT_FORMAT, "tensor 'w': entry is not an object");
}

Test(safetensors, missing_dtype)
{
    expect_bad_header("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, ERT_FORMAT,
                      "dtype is missing");
}

Test(safetensors, metadata_not_string)
{
    expect_bad_header("{\"__metadata__\":{\"k\":3}}", 0, ERT_FORMAT,
                      "__metadata__.k: value is not a string");
}

Test(safetensors, metadata_not_object)
{
    expect_bad_header("{\"__metadata__\":\"x\"}", 0, ERT_FORMAT, "__metadata__ is not an object");
}

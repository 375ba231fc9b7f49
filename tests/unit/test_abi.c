/* test_abi.c - the sized structs (exitrt.h, "Structs that grow"): every
 * call that takes one refuses a struct_size it does not know (0: the
 * struct was not started from its ERT_*_INIT macro; larger than the
 * library's: a newer header; anything else), with a message naming the
 * struct and changing nothing of the caller's; the INIT macros and the
 * default functions agree; and the mechanism a later layout relies on
 * (src/abi.h) reads a shorter layout's fields and defaults the rest. The
 * 0.3 layouts are tested by CTest abi_prev (tests/abi). */
#include <criterion/criterion.h>
#include <stddef.h>
#include <string.h>

#include "abi.h"
#include "exitrt.h"
#include "fixtures.h"
#include "model_writer.h"

static char dir[64];
static ert_model *m;
static ert_engine *e;

static void setup(void)
{
    cr_assert_eq(mw_tempdir(dir, sizeof dir), 0);
    cr_assert_eq(mw_random_model(dir, 11, MW_MLP), 0);
    ert_error err = {{0}};
    cr_assert_eq(ert_model_load(dir, &m, &err), ERT_OK, "%s", err.msg);
    ert_engine_config c = ERT_ENGINE_CONFIG_INIT;
    c.backend = ERT_BACKEND_CPU;
    c.max_batch = 4;
    cr_assert_eq(ert_engine_create(m, &c, &e, &err), ERT_OK, "%s", err.msg);
}

static void teardown(void)
{
    ert_engine_free(e);
    ert_model_free(m);
    mw_rmtree(dir);
}

TestSuite(abi, .init = setup, .fini = teardown);

/* Sizes no library knows: 0, one byte short, one past (a newer header),
 * and with the status each gets. */
typedef struct {
    uint32_t size;
    ert_status want;
    const char *msg;
} bad_size;

static void bad_sizes(uint32_t ours, bad_size out[4])
{
    out[0] = (bad_size){0, ERT_INVALID_ARGUMENT, "struct_size is 0"};
    out[1] = (bad_size){ours - 1, ERT_INVALID_ARGUMENT, "is no layout of exitrt"};
    out[2] = (bad_size){ours + 8, ERT_UNSUPPORTED, "newer exitrt.h"};
    out[3] = (bad_size){4, ERT_INVALID_ARGUMENT, "is no layout of exitrt"};
}

Test(abi, init_macros_match_the_defaults)
{
    ert_engine_config a = ERT_ENGINE_CONFIG_INIT, b = ert_engine_config_default();
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0);
    cr_assert_eq(a.struct_size, sizeof(ert_engine_config));
    ert_stream_config sa = ERT_STREAM_CONFIG_INIT, sb = ert_stream_config_default();
    cr_assert_eq(sa.struct_size, sizeof(ert_stream_config));
    cr_assert(sa.struct_size == sb.struct_size && sa.batch == sb.batch && sa.queue == sb.queue &&
              sa.schedule == sb.schedule && sa.deadline_ms == sb.deadline_ms);
    ert_result r = ERT_RESULT_INIT;
    ert_device_result d = ERT_DEVICE_RESULT_INIT;
    ert_stream_stats st = ERT_STREAM_STATS_INIT;
    cr_assert(r.struct_size == sizeof r && d.struct_size == sizeof d &&
              st.struct_size == sizeof st);
    cr_assert(!r.samples && !r.logits && !d.samples && !d.logits);
}

Test(abi, engine_config_sizes_refused)
{
    bad_size bad[4];
    bad_sizes(sizeof(ert_engine_config), bad);
    for (int i = 0; i < 4; i++) {
        ert_engine_config c = ert_engine_config_default();
        c.backend = ERT_BACKEND_CPU;
        c.struct_size = bad[i].size;
        ert_engine *x = (ert_engine *)&x;
        ert_error err = {{0}};
        ert_status st = ert_engine_create(m, &c, &x, &err);
        cr_assert_eq(st, bad[i].want, "size %u: %s", bad[i].size, err.msg);
        cr_assert_null(x);
        cr_assert(strstr(err.msg, bad[i].msg) && strstr(err.msg, "ert_engine_config"),
                  "size %u: '%s'", bad[i].size, err.msg);
    }
}

Test(abi, result_sizes_refused_and_untouched)
{
    float x[4 * 784] = {0};
    ert_sample s[4];
    float z[4 * 16];
    cr_assert_leq(ert_model_input_size(m), 784);
    cr_assert_leq(ert_model_num_classes(m), 16);
    bad_size bad[4];
    bad_sizes(sizeof(ert_result), bad);
    for (int i = 0; i < 4; i++) {
        ert_result r = ERT_RESULT_INIT;
        r.samples = s;
        r.logits = z;
        r.struct_size = bad[i].size;
        r.macs_full = 77;
        memset(s, 0x5a, sizeof s);
        for (int call = 0; call < 2; call++) {
            ert_status st = call ? ert_infer_tokens(e, (const int32_t *)x, NULL, 1, &r)
                                 : ert_infer(e, x, 1, &r);
            if (call) /* an image model: the tokens call stops there first */
                continue;
            cr_assert_eq(st, bad[i].want, "size %u: %s", bad[i].size, ert_engine_error(e));
            cr_assert(strstr(ert_engine_error(e), bad[i].msg) &&
                          strstr(ert_engine_error(e), "ert_result"),
                      "'%s'", ert_engine_error(e));
            cr_assert_eq(r.macs_full, 77, "a refused call wrote the result");
            cr_assert_eq(r.struct_size, bad[i].size);
            cr_assert_eq(s[0].exit_index, 0x5a5a5a5a, "a refused call wrote the samples");
        }
        ert_device_result d = ERT_DEVICE_RESULT_INIT;
        d.samples = s;
        d.struct_size = i == 2 ? sizeof d + 8 : i == 1 ? sizeof d - 1 : bad[i].size;
        d.host_waits = 5;
        cr_assert_neq(ert_infer_device(e, x, 1, &d, NULL), ERT_OK);
        cr_assert(strstr(ert_engine_error(e), "ert_device_result"), "'%s'", ert_engine_error(e));
        cr_assert_eq(d.host_waits, 5);
    }
    /* the right size works, and writes back its own struct_size */
    ert_result r = ERT_RESULT_INIT;
    r.samples = s;
    cr_assert_eq(ert_infer(e, x, 2, &r), ERT_OK, "%s", ert_engine_error(e));
    cr_assert_eq(r.struct_size, sizeof r);
    int sum = 0;
    for (int i = 0; i < ERT_MAX_EXITS; i++)
        sum += r.exit_counts[i];
    cr_assert_eq(sum, 2);
}

Test(abi, stream_sizes_refused)
{
    bad_size bad[4];
    bad_sizes(sizeof(ert_stream_config), bad);
    for (int i = 0; i < 4; i++) {
        ert_stream_config c = ERT_STREAM_CONFIG_INIT;
        c.struct_size = bad[i].size;
        ert_stream *s = (ert_stream *)&s;
        ert_error err = {{0}};
        ert_status st = ert_stream_create(e, &c, &s, &err);
        cr_assert_eq(st, bad[i].want, "size %u: %s", bad[i].size, err.msg);
        cr_assert_null(s);
        cr_assert(strstr(err.msg, bad[i].msg) && strstr(err.msg, "ert_stream_config"), "'%s'",
                  err.msg);
    }
    ert_stream *s = NULL;
    ert_error err = {{0}};
    cr_assert_eq(ert_stream_create(e, NULL, &s, &err), ERT_OK, "%s", err.msg);
    bad_sizes(sizeof(ert_stream_stats), bad);
    for (int i = 0; i < 4; i++) {
        ert_stream_stats st;
        memset(&st, 0x5a, sizeof st);
        st.struct_size = bad[i].size;
        cr_assert_eq(ert_stream_get_stats(s, &st), ERT_INVALID_ARGUMENT, "size %u", bad[i].size);
        cr_assert_eq(st.submitted, 0x5a5a5a5a5a5a5a5aull, "a refused call wrote the counters");
    }
    ert_stream_stats st = ERT_STREAM_STATS_INIT;
    cr_assert_eq(ert_stream_get_stats(s, &st), ERT_OK);
    cr_assert(st.struct_size == sizeof st && st.num_stages == ert_model_num_exits(m));
    cr_assert_eq(ert_stream_get_stats(NULL, &st), ERT_INVALID_ARGUMENT);
    cr_assert(st.struct_size == sizeof st && st.num_stages == 0, "a NULL stream's are zeros");
    ert_stream_free(s);
}

/* What a later minor version relies on, on a struct with two layouts: the
 * older (shorter) one is known, its fields are read and the rest keep the
 * defaults; a result copied back stops at the caller's size. */
typedef struct {
    uint32_t struct_size;
    int32_t a;
    int32_t b; /* appended in the second layout */
    int32_t c;
} two_layouts;

Test(abi, shorter_layout_read_and_defaulted)
{
    static const size_t sizes[] = {offsetof(two_layouts, b), sizeof(two_layouts)};
    const abi_struct t = {"two_layouts", sizes, 2};
    char msg[256];
    cr_assert_eq(abi_check(&t, (uint32_t)offsetof(two_layouts, b), "test", msg, sizeof msg),
                 ERT_OK);
    cr_assert_eq(abi_check(&t, sizeof(two_layouts), "test", msg, sizeof msg), ERT_OK);
    cr_assert_eq(abi_check(&t, (uint32_t)offsetof(two_layouts, c), "test", msg, sizeof msg),
                 ERT_INVALID_ARGUMENT);
    cr_assert(strstr(msg, "two_layouts.struct_size 12"), "%s", msg);
    /* an old caller's struct: 8 bytes, then whatever lies after it */
    struct {
        uint32_t struct_size;
        int32_t a;
        int32_t junk[2];
    } old = {8, 7, {-1, -1}};
    two_layouts full = {sizeof full, 1, 2, 3}; /* the defaults */
    abi_read(&full, sizeof full, &old, old.struct_size);
    cr_assert(full.struct_size == sizeof full && full.a == 7 && full.b == 2 && full.c == 3);
}

/* test_config.c - the Triton backend's reading of config.pbtxt (as the JSON
 * Triton hands a backend) and its checks of a request's input
 * (src/triton/config.h), without a server. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "triton_api.h"

#ifndef ERT_SOURCE_DIR
#error ERT_SOURCE_DIR
#endif

/* The JSON Triton 2.51 gives for the documented config (trimmed of the
 * fields the backend does not read), with %s for extra parameters and
 * %s for the input dims. */
static const char *TEMPLATE =
    "{\"name\":\"m\",\"backend\":\"exitrt\",\"max_batch_size\":%d,"
    "\"input\":[{\"name\":\"INPUT\",\"data_type\":\"TYPE_FP32\",\"format\":\"FORMAT_NONE\","
    "\"dims\":[%s],\"is_shape_tensor\":false}],"
    "\"output\":[{\"name\":\"CLASS\",\"data_type\":\"TYPE_INT32\",\"dims\":[1]},"
    "{\"name\":\"EXIT\",\"data_type\":\"TYPE_INT32\",\"dims\":[1]},"
    "{\"name\":\"SCORE\",\"data_type\":\"TYPE_FP32\",\"dims\":[1]},"
    "{\"name\":\"LOGITS\",\"data_type\":\"TYPE_FP32\",\"dims\":[\"%d\"]}],"
    "\"instance_group\":[{\"name\":\"m_0\",\"kind\":\"KIND_CPU\",\"count\":1}],"
    "\"parameters\":{%s}}";

static char json[8192], err[1024];

static int parse_with(int max_batch, const char *dims, int logits, const char *params,
                      ert_triton_config *c)
{
    snprintf(json, sizeof json, TEMPLATE, max_batch, dims, logits, params);
    err[0] = '\0';
    return ert_triton_config_parse(json, strlen(json), "/repo/m", 3, c, err, sizeof err);
}

static int parse_params(const char *params, ert_triton_config *c)
{
    return parse_with(64, "1,28,28", 10, params, c);
}

#define P(k, v) "\"" k "\":{\"string_value\":\"" v "\"}"

Test(triton_config, documented_config)
{
    ert_triton_config c;
    cr_assert_eq(parse_params(P("mode", "refill") "," P("thresholds", "exit1=0.9, exit2=0.8") "," P(
                                  "threads", "2") "," P("refill_deadline_ms", "0.5"),
                              &c),
                 0, "%s", err);
    cr_assert_eq(c.max_batch, 64);
    cr_assert(c.refill);
    cr_assert_eq(c.mode, ERT_MODE_COMPACTED);
    cr_assert_eq(c.threads, 2);
    cr_assert_float_eq(c.refill_deadline_ms, 0.5, 1e-12);
    cr_assert_str_eq(c.input_name, "INPUT");
    cr_assert_eq(c.input_ndims, 3);
    cr_assert_eq(c.input_dims[2], 28);
    for (int o = 0; o < ERT_TRITON_NUM_OUTPUTS; o++)
        cr_assert(c.has_output[o]);
    cr_assert_eq(c.logits_dim, 10); /* int64 given as a string */
    cr_assert_eq(c.num_thresholds, 2);
    cr_assert_str_eq(c.threshold_exit[1], "exit2");
    cr_assert_float_eq(c.threshold_value[1], 0.8f, 1e-7);
    cr_assert_str_eq(c.model_path, "/repo/m/3"); /* the version folder */
}

Test(triton_config, defaults_and_model_path)
{
    ert_triton_config c;
    cr_assert_eq(parse_params("", &c), 0, "%s", err);
    cr_assert(!c.refill);
    cr_assert_eq(c.mode, ERT_MODE_COMPACTED);
    cr_assert_eq(c.num_thresholds, 0);
    cr_assert_float_eq(c.refill_deadline_ms, 2.0, 1e-12);
    cr_assert_eq(parse_params(P("model_path", "sub/model.json"), &c), 0, "%s", err);
    cr_assert_str_eq(c.model_path, "/repo/m/3/sub/model.json");
    cr_assert_eq(parse_params(P("model_path", "/abs/model"), &c), 0, "%s", err);
    cr_assert_str_eq(c.model_path, "/abs/model");
    const char *modes[] = {"full", "masked", "compacted"};
    for (int m = 0; m < 3; m++) {
        char p[128];
        snprintf(p, sizeof p, "\"mode\":{\"string_value\":\"%s\"}", modes[m]);
        cr_assert_eq(parse_params(p, &c), 0, "%s", err);
        cr_assert_eq((int)c.mode, m);
        cr_assert(!c.refill);
    }
}

/* Each bad configuration is refused with a line naming the problem. */
Test(triton_config, refusals)
{
    ert_triton_config c;
    struct {
        int max_batch;
        const char *dims, *params, *want;
    } cases[] = {
        {0, "1,28,28", "", "max_batch_size"},
        {64, "1,28,-1", "", "dims[2]"},
        {64, "", "", "dims"},
        {64, "1,28,28", P("mode", "eager"), "'eager' is not full"},
        {64, "1,28,28", P("colour", "blue"), "parameter 'colour' is unknown"},
        {64, "1,28,28", P("threads", "two"), "parameter threads"},
        {64, "1,28,28", P("threads", "-1"), "parameter threads"},
        {64, "1,28,28", P("thresholds", "exit1"), "not EXIT=VALUE"},
        {64, "1,28,28", P("thresholds", "exit1=nan"), "not a finite number"},
        {64, "1,28,28", P("thresholds", "exit1=0.5x"), "not a finite number"},
        {64, "1,28,28", P("refill_deadline_ms", "-1"), "refill_deadline_ms"},
        {64, "1,28,28", P("refill_batch", "8"), "only with mode refill"},
        {64, "1,28,28", P("mode", "refill") "," P("refill_batch", "65"), "exceeds max_batch_size"},
        {64, "1,28,28", P("model_path", ""), "model_path: empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(parse_with(cases[i].max_batch, cases[i].dims, 10, cases[i].params, &c), -1,
                     "case %zu accepted", i);
        cr_assert(strstr(err, cases[i].want), "case %zu: '%s' does not name '%s'", i, err,
                  cases[i].want);
        cr_assert(!strchr(err, '\n'), "case %zu: more than one line", i);
    }
    /* outputs and input types */
    const char *bad[][2] = {
        {"{\"max_batch_size\":8,\"input\":[{\"name\":\"X\",\"data_type\":\"TYPE_FP16\",\"dims\":[1]}],"
         "\"output\":[{\"name\":\"CLASS\",\"data_type\":\"TYPE_INT32\",\"dims\":[1]}]}",
         "expected TYPE_FP32"},
        {"{\"max_batch_size\":8,\"input\":[{\"name\":\"X\",\"data_type\":\"TYPE_FP32\",\"dims\":[1]}],"
         "\"output\":[{\"name\":\"PROBS\",\"data_type\":\"TYPE_FP32\",\"dims\":[1]}]}",
         "output PROBS: unknown"},
        {"{\"max_batch_size\":8,\"input\":[{\"name\":\"X\",\"data_type\":\"TYPE_FP32\",\"dims\":[1]}],"
         "\"output\":[{\"name\":\"CLASS\",\"data_type\":\"TYPE_INT64\",\"dims\":[1]}]}",
         "expected TYPE_INT32"},
        {"{\"max_batch_size\":8,\"input\":[{\"name\":\"X\",\"data_type\":\"TYPE_FP32\",\"dims\":[1]}],"
         "\"output\":[{\"name\":\"SCORE\",\"data_type\":\"TYPE_FP32\",\"dims\":[2]}]}",
         "dims must be [ 1 ]"},
        {"{\"max_batch_size\":8,\"input\":[{\"name\":\"X\",\"data_type\":\"TYPE_FP32\",\"dims\":[1],"
         "\"reshape\":{\"shape\":[]}}],"
         "\"output\":[{\"name\":\"CLASS\",\"data_type\":\"TYPE_INT32\",\"dims\":[1]}]}",
         "reshape"},
        {"{\"max_batch_size\":8,\"input\":[],\"output\":[]}", "exactly one input"},
        {"{\"max_batch_size\":8,\"input\":[{\"name\":\"X\",\"data_type\":\"TYPE_FP32\",\"dims\":[1]}],"
         "\"output\":[]}",
         "at least one of"},
        {"not json", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(
            ert_triton_config_parse(bad[i][0], strlen(bad[i][0]), "/r", 1, &c, err, sizeof err), -1,
            "bad %zu accepted", i);
        cr_assert(strstr(err, bad[i][1]), "bad %zu: '%s' does not name '%s'", i, err, bad[i][1]);
    }
}

static ert_model *load_mlp3(void)
{
    ert_model *m = NULL;
    ert_error e;
    cr_assert_eq(ert_model_load(ERT_SOURCE_DIR "/models/fmnist-mlp3", &m, &e), ERT_OK, "%s", e.msg);
    return m;
}

Test(triton_config, against_the_model)
{
    ert_model *m = load_mlp3();
    ert_triton_config c;
    int idx[ERT_MAX_EXITS];
    cr_assert_eq(parse_params(P("thresholds", "exit2=0.5,0=0.25"), &c), 0, "%s", err);
    cr_assert_eq(ert_triton_config_check_model(&c, m, idx, err, sizeof err), 0, "%s", err);
    cr_assert_eq(idx[0], 1);
    cr_assert_eq(idx[1], 0); /* by index */
    struct {
        const char *dims;
        int logits;
        const char *params, *want;
    } cases[] = {
        {"1,28,27", 10, "", "do not match the model's input [ 1, 28, 28 ]"},
        {"784", 10, "", "do not match"},
        {"1,28,28", 11, "", "LOGITS: dims [ 11 ] do not match the model's 10 classes"},
        {"1,28,28", 10, P("thresholds", "exit7=0.5"), "'exit7' is not an early exit"},
        {"1,28,28", 10, P("thresholds", "final=0.5"), "'final' is not an early exit"},
        {"1,28,28", 10, P("thresholds", "2=0.5"), "'2' is not an early exit"},
        {"1,28,28", 10, P("thresholds", "exit1=1.5"), "out of range for policy max_prob"},
        {"1,28,28", 10, P("thresholds", "exit1=-0.1"), "out of range"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cr_assert_eq(parse_with(64, cases[i].dims, cases[i].logits, cases[i].params, &c), 0,
                     "case %zu: %s", i, err);
        cr_assert_eq(ert_triton_config_check_model(&c, m, idx, err, sizeof err), -1,
                     "case %zu accepted", i);
        cr_assert(strstr(err, cases[i].want), "case %zu: '%s' does not name '%s'", i, err,
                  cases[i].want);
    }
    ert_model_free(m);
}

/* What the backend checks of a request before running it. */
Test(triton_config, request_input)
{
    ert_triton_config c;
    cr_assert_eq(parse_params("", &c), 0, "%s", err);
    const uint64_t row = 784 * 4;
    int64_t good[4] = {5, 1, 28, 28};
    cr_assert_eq(
        ert_triton_check_input(&c, TRITONSERVER_TYPE_FP32, good, 4, 5 * row, err, sizeof err), 5,
        "%s", err);
    int64_t none[4] = {0, 1, 28, 28};
    cr_assert_eq(ert_triton_check_input(&c, TRITONSERVER_TYPE_FP32, none, 4, 0, err, sizeof err), 0,
                 "%s", err);
    int64_t max[4] = {64, 1, 28, 28};
    cr_assert_eq(
        ert_triton_check_input(&c, TRITONSERVER_TYPE_FP32, max, 4, 64 * row, err, sizeof err), 64,
        "%s", err);
    struct {
        int dt;
        int64_t shape[5];
        uint32_t nd;
        uint64_t bytes;
        const char *want;
    } cases[] = {
        {TRITONSERVER_TYPE_INT32, {5, 1, 28, 28}, 4, 5 * row, "not FP32"},
        {TRITONSERVER_TYPE_FP64, {5, 1, 28, 28}, 4, 10 * row, "not FP32"},
        {TRITONSERVER_TYPE_FP32, {5, 784}, 2, 5 * row, "2 dims, expected [ N, 1, 28, 28 ]"},
        {TRITONSERVER_TYPE_FP32, {5, 1, 28, 27}, 4, 5 * row, "dim 3 is 27"},
        {TRITONSERVER_TYPE_FP32, {5, 1, 28, 28, 1}, 5, 5 * row, "5 dims"},
        {TRITONSERVER_TYPE_FP32, {65, 1, 28, 28}, 4, 65 * row, "65 rows, at most"},
        {TRITONSERVER_TYPE_FP32, {-1, 1, 28, 28}, 4, 0, "rows"},
        {TRITONSERVER_TYPE_FP32, {5, 1, 28, 28}, 4, 5 * row - 4, "bytes for 5 rows"},
        {TRITONSERVER_TYPE_FP32, {5, 1, 28, 28}, 4, 6 * row, "bytes for 5 rows"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        cr_assert_eq(ert_triton_check_input(&c, cases[i].dt, cases[i].shape, cases[i].nd,
                                            cases[i].bytes, err, sizeof err),
                     -1, "case %zu accepted", i);
        cr_assert(strstr(err, cases[i].want), "case %zu: '%s' does not name '%s'", i, err,
                  cases[i].want);
    }
}

Test(triton_config, output_names)
{
    cr_assert_eq(ert_triton_output_index("CLASS"), ERT_TRITON_CLASS);
    cr_assert_eq(ert_triton_output_index("LOGITS"), ERT_TRITON_LOGITS);
    cr_assert_eq(ert_triton_output_index("logits"), -1);
    cr_assert_eq(ert_triton_output_index(NULL), -1);
}

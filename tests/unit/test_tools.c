/* test_tools.c - the tools' defaults and number parsing (src/cli/tools.h). */
#include <criterion/criterion.h>
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

Test(tools, graph_buckets_default_from_environment)
{
    unsetenv("ERT_GRAPH_BUCKETS");
    cr_assert_eq(tools_graph_buckets_default(), 0);
    setenv("ERT_GRAPH_BUCKETS", "8", 1);
    cr_assert_eq(tools_graph_buckets_default(), 8);
    setenv("ERT_GRAPH_BUCKETS", "64", 1);
    cr_assert_eq(tools_graph_buckets_default(), 64);
    const char *bad[] = {"65", "-1", "8x", "x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("ERT_GRAPH_BUCKETS", bad[i], 1);
        cr_assert_eq(tools_graph_buckets_default(), 0, "'%s'", bad[i]);
    }
    unsetenv("ERT_GRAPH_BUCKETS");
}

/* Command-line numbers read as model.json's are: an underflow is a number
 * (strtof's ERANGE on 1e-38 once made --threshold refuse it), overflow,
 * NaN, infinities and text are not, each with its own reason. */
Test(tools, parse_float_underflow_is_a_number)
{
    float f = -1;
    cr_assert_null(tools_parse_float("1e-38", &f));
    cr_assert_eq(f, 1e-38f); /* a subnormal float, as (float)1e-38 in the loader */
    cr_assert(f > 0 && f < FLT_MIN);
    cr_assert_null(tools_parse_float("1e-50", &f));
    cr_assert_eq(f, 0.0f);
    cr_assert_null(tools_parse_float("-1e-50", &f));
    cr_assert_eq(f, 0.0f);
    cr_assert_null(tools_parse_float("3.4028234e38", &f));
    cr_assert_eq(f, FLT_MAX);
    cr_assert_null(tools_parse_float("0.25", &f));
    cr_assert_eq(f, 0.25f);
    cr_assert_null(tools_parse_float("1", &f));
    cr_assert_eq(f, 1.0f);
    double d = -1;
    cr_assert_null(tools_parse_double("1e-400", &d));
    cr_assert_eq(d, 0.0);
    cr_assert_null(tools_parse_double("1e-310", &d)); /* a subnormal double */
    cr_assert(d > 0 && d < DBL_MIN);
    cr_assert_null(tools_parse_double("1e39", &d)); /* a double, not a float */
    cr_assert_eq(d, 1e39);
}

Test(tools, parse_float_says_what_is_wrong)
{
    static const struct {
        const char *s, *why;
    } bad[] = {
        {"", "empty"},
        {"abc", "is not a number"},
        {"0.5x", "text after the number"},
        {"0.5 ", "text after the number"},
        {"nan", "NaN"},
        {"-NaN", "NaN"},
        {"inf", "infinite"},
        {"-Infinity", "infinite"},
        {"1e39", "beyond the float32 range"},
        {"-3.5e38", "beyond the float32 range"},
        {"1e999", "beyond the range of a double"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        float f = 7;
        const char *why = tools_parse_float(bad[i].s, &f);
        cr_assert_not_null(why, "'%s' accepted", bad[i].s);
        cr_assert_not_null(strstr(why, bad[i].why), "'%s': '%s' lacks '%s'", bad[i].s, why,
                           bad[i].why);
        cr_assert_eq(f, 7.0f, "'%s' changed the output", bad[i].s);
    }
    double d;
    cr_assert_not_null(tools_parse_double(NULL, &d));
    cr_assert_not_null(strstr(tools_parse_double("1e999", &d), "beyond"));
}

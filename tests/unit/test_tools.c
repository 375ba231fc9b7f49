/* test_tools.c - the tools' defaults (src/cli/tools.h). */
#include <criterion/criterion.h>
#include <stdlib.h>

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

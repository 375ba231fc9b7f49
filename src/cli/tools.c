/* tools.c - see tools.h. */
#include "tools.h"

#include <stdlib.h>

int tools_graph_buckets_default(void)
{
    const char *v = getenv("ERT_GRAPH_BUCKETS");
    if (!v || !*v)
        return 0;
    char *end = NULL;
    long k = strtol(v, &end, 10);
    if (*end != '\0' || k < 0 || k > 64)
        return 0;
    return (int)k;
}

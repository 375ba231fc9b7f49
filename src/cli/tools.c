/* tools.c - see tools.h. */
#include "tools.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

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

const char *tools_parse_double(const char *s, double *out)
{
    if (!s || !*s)
        return "is not a number (empty)";
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s)
        return "is not a number";
    if (*end)
        return "is not a number (text after the number)";
    if (isnan(v))
        return "is NaN, not a finite number";
    if (isinf(v)) /* ERANGE: an overflow ("1e999"); else written as "inf" */
        return errno == ERANGE ? "is beyond the range of a double (magnitude over 1.8e308)"
                               : "is infinite, not a finite number";
    /* A finite result with ERANGE is an underflow: a value nearer zero than
       the type holds exactly is still a number (strtof's ERANGE on "1e-38"
       made --threshold refuse what model.json accepts). */
    *out = v;
    return NULL;
}

const char *tools_parse_float(const char *s, float *out)
{
    double v;
    const char *why = tools_parse_double(s, &v);
    if (why)
        return why;
    /* range-check in double first, as the loader does: beyond FLT_MAX a
       double has no float */
    if (!(fabs(v) <= FLT_MAX))
        return "is beyond the float32 range (magnitude over 3.40282e+38)";
    *out = (float)v; /* below FLT_MIN: a subnormal, or zero */
    return NULL;
}

double tools_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* triton_util.c - logging, errors, the clock and counters for the Triton
 * backend's files (triton_internal.h). */
#include <stdarg.h>
#include <time.h>

#include "triton_internal.h"

void logf_(TRITONSERVER_LogLevel level, int line, const char *fmt, ...)
{
    if (!TRITONSERVER_LogIsEnabled(level))
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    TRITONSERVER_Error *e = TRITONSERVER_LogMessage(level, __FILE__, line, msg);
    if (e)
        TRITONSERVER_ErrorDelete(e);
}

TRITONSERVER_Error *errf(TRITONSERVER_Error_Code code, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return TRITONSERVER_ErrorNew(code, msg);
}

/* Logs and drops an error a call returned (where nothing better can be done). */
void log_drop(TRITONSERVER_Error *e, const char *what)
{
    if (!e)
        return;
    LOG_ERROR("exitrt: %s: %s", what, TRITONSERVER_ErrorMessage(e));
    TRITONSERVER_ErrorDelete(e);
}

/* ns of the monotonic clock (what steady_clock reads on Linux). */
uint64_t triton_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void metric_add(TRITONSERVER_Metric *m, double v)
{
    if (m && v > 0)
        log_drop(TRITONSERVER_MetricIncrement(m, v), "incrementing a metric");
}

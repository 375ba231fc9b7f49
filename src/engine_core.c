/* engine_core.c - what the backends and the stream share of the engine:
 * failure messages and the busy flag (engine_core.h). */
#include "engine_core.h"

#include <stdarg.h>
#include <stdio.h>

ert_status engine_fail(ert_engine *e, ert_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, sizeof e->err, fmt, ap);
    va_end(ap);
    return status;
}

int engine_enter(ert_engine *e)
{
    int expected = 0;
    return atomic_compare_exchange_strong(&e->busy, &expected, 1);
}

void engine_leave(ert_engine *e) { atomic_store(&e->busy, 0); }

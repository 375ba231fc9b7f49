/* util.c - error formatting and path helpers. */
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void ert_errf(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

ert_status ert_fail(ert_error *err, ert_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return status;
}

int path_join(char *out, size_t len, const char *dir, const char *rel)
{
    int n;
    if (!dir || !dir[0] || rel[0] == '/')
        n = snprintf(out, len, "%s", rel);
    else
        n = snprintf(out, len, "%s/%s", dir, rel);
    return n >= 0 && (size_t)n < len;
}

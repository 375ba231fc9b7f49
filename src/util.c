/* util.c - error formatting and path helpers. */
#define _XOPEN_SOURCE 700 /* realpath */
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

/* 1 when one of path's '/'-separated components is "..". */
static int has_dotdot(const char *path)
{
    for (const char *p = path; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 1;
        p += n;
        p += *p == '/';
    }
    return 0;
}

ert_status path_inside(const char *dir, const char *rel, const char *file, const char *field,
                       char *out, size_t len, ert_error *err)
{
    if (!rel[0])
        return ert_fail(err, ERT_FORMAT, "%s: %s: empty path", file, field);
    if (rel[0] == '/')
        return ert_fail(err, ERT_FORMAT,
                        "%s: %s: '%s' is absolute; paths are relative to the model directory", file,
                        field, rel);
    if (has_dotdot(rel))
        return ert_fail(err, ERT_FORMAT,
                        "%s: %s: '%s' has a '..' component; paths must stay inside the model "
                        "directory",
                        file, field, rel);
    if (!path_join(out, len, dir, rel))
        return ert_fail(err, ERT_FORMAT, "%s: %s: path too long", file, field);
    /* symlinks: where the path really leads, against where the directory is */
    char rdir[PATH_MAX], rpath[PATH_MAX];
    const char *d = dir && dir[0] ? dir : ".";
    if (!realpath(d, rdir))
        return ert_fail(err, ERT_IO, "%s: the model directory '%s' cannot be resolved: %s", file, d,
                        strerror(errno));
    if (!realpath(out, rpath)) {
        if (errno == ENOENT || errno == ENOTDIR)
            return ERT_OK; /* nothing there to leave through; the open says so */
        return ert_fail(err, ERT_IO, "%s: %s: '%s' cannot be resolved: %s", file, field, rel,
                        strerror(errno));
    }
    size_t n = strlen(rdir);
    if (n == 1) /* the directory is "/" */
        n = 0;
    if (strncmp(rpath, rdir, n) != 0 || (rpath[n] != '/' && rpath[n] != '\0'))
        return ert_fail(err, ERT_FORMAT,
                        "%s: %s: '%s' leads to '%s', outside the model directory '%s' (a symlink "
                        "must stay inside it)",
                        file, field, rel, rpath, rdir);
    return ERT_OK;
}

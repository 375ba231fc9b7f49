/* util.h - small helpers shared by the library's C files. */
#ifndef ERT_UTIL_H
#define ERT_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "exitrt.h"

/* printf into a fixed buffer (truncating), when buf is not NULL. */
void ert_errf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Writes the message into err (when not NULL) and returns status. */
ert_status ert_fail(ert_error *err, ert_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Overflow-checked size arithmetic: return 0 and leave *out untouched on
 * overflow. */
static inline int size_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

static inline int size_add(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a)
        return 0;
    *out = a + b;
    return 1;
}

/* Joins dir and rel into out ("rel" when dir is empty). 0 if it does not fit. */
int path_join(char *out, size_t len, const char *dir, const char *rel);

/* A path that a model directory's model.json names (a model directory is
 * untrusted input), joined onto the directory into out when it stays
 * inside it: refused, before anything is opened, when rel is empty or
 * absolute, has a ".." component, or resolves (symlinks followed, as
 * realpath does) to a file outside the directory's own real path. A
 * symlink that stays inside is fine. A path that does not exist is let
 * through: opening it fails with its own message. file and field name the
 * path in the messages ("models/x/model.json", "weights"). ERT_FORMAT for a
 * path that leaves the directory, ERT_IO when it cannot be resolved. */
ert_status path_inside(const char *dir, const char *rel, const char *file, const char *field,
                       char *out, size_t len, ert_error *err);

#endif /* ERT_UTIL_H */

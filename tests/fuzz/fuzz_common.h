/* fuzz_common.h - a scratch directory for harnesses that must give the
 * library file paths (the model loader and the data readers open files). */
#ifndef ERT_FUZZ_COMMON_H
#define ERT_FUZZ_COMMON_H

#include <stddef.h>

/* The process's scratch directory, created on first use (under $TMPDIR, else
 * /dev/shm, else /tmp) and removed at exit. */
const char *fuzz_dir(void);

/* Writes n bytes to fuzz_dir()/name; its path into out. 0 on success. */
int fuzz_write(const char *name, const void *bytes, size_t n, char *out, size_t len);

#endif

/* fuzz_common.c - scratch files for the harnesses (fuzz_common.h). */
#include "fuzz_common.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[512];

static void cleanup(void)
{
    char cmd[600];
    if (dir[0] && snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir) < (int)sizeof cmd)
        (void)!system(cmd);
}

const char *fuzz_dir(void)
{
    if (!dir[0]) {
        /* tmpfs when there is one: on a disk, rewriting the files for every
         * input costs block I/O (30x fewer executions per second here) */
        const char *t = getenv("TMPDIR");
        if (!t || !t[0])
            t = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(dir, sizeof dir, "%s/exitrt-fuzz-XXXXXX", t);
        if (!mkdtemp(dir))
            abort();
        atexit(cleanup);
    }
    return dir;
}

int fuzz_write(const char *name, const void *bytes, size_t n, char *out, size_t len)
{
    if (snprintf(out, len, "%s/%s", fuzz_dir(), name) >= (int)len)
        return -1;
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    const char *p = bytes;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return close(fd);
}

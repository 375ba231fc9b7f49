/* outfile.c - see outfile.h. */
#define _XOPEN_SOURCE 700 /* realpath, fchmod */
#include "outfile.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static int in_place_path(const char *path)
{
    return strncmp(path, "/dev/", 5) == 0 || strncmp(path, "/proc/", 6) == 0;
}

int cli_out_open(cli_out *o, const char *path)
{
    memset(o, 0, sizeof *o);
    o->path = path;
    struct stat st;
    int exists = stat(path, &st) == 0;
    if (!exists && errno != ENOENT)
        return cli_error(CLI_FAIL, "%s: cannot create: %s", path, strerror(errno));
    if (exists && S_ISDIR(st.st_mode))
        return cli_error(CLI_FAIL, "%s: cannot create: is a directory", path);
    if (in_place_path(path) || (exists && !S_ISREG(st.st_mode))) {
        /* a device or a FIFO: nothing to keep, and no directory to put a
           temporary in (/dev/stdout) */
        if (!(o->f = fopen(path, "wb")))
            return cli_error(CLI_FAIL, "%s: cannot open: %s", path, strerror(errno));
        return 0;
    }
    if (exists) {
        char real[PATH_MAX];
        if (!realpath(path, real))
            return cli_error(CLI_FAIL, "%s: cannot resolve: %s", path, strerror(errno));
        o->final = dup_str(real);
        o->mode = (int)(st.st_mode & 07777);
    } else {
        o->final = dup_str(path);
        mode_t mask = umask(0);
        umask(mask);
        o->mode = (int)(0666 & ~mask);
    }
    static const char suffix[] = ".tmp.XXXXXX";
    size_t len = o->final ? strlen(o->final) : 0;
    o->tmp = o->final ? malloc(len + sizeof suffix) : NULL;
    if (!o->tmp) {
        free(o->final);
        o->final = NULL;
        return cli_error(CLI_FAIL, "%s: out of memory", path);
    }
    memcpy(o->tmp, o->final, len);
    memcpy(o->tmp + len, suffix, sizeof suffix);
    int fd = mkstemp(o->tmp);
    if (fd < 0) {
        int e = errno;
        free(o->tmp);
        free(o->final);
        o->tmp = o->final = NULL;
        return cli_error(CLI_FAIL, "%s: cannot create: %s", path, strerror(e));
    }
    if (fchmod(fd, (mode_t)o->mode) != 0 || !(o->f = fdopen(fd, "wb"))) {
        int e = errno;
        close(fd);
        cli_out_abort(o);
        return cli_error(CLI_FAIL, "%s: cannot create: %s", path, strerror(e));
    }
    return 0;
}

void cli_out_abort(cli_out *o)
{
    if (o->f)
        fclose(o->f);
    o->f = NULL;
    if (o->tmp)
        unlink(o->tmp);
    free(o->tmp);
    free(o->final);
    o->tmp = o->final = NULL;
    o->done = 1;
}

/* Flushes, syncs and closes o; 0, or the errno of the failure (EIO when
 * the stream saw an error without one). */
static int finish(cli_out *o)
{
    int e = 0;
    if (o->f) {
        if (fflush(o->f) != 0 || ferror(o->f))
            e = errno ? errno : EIO;
        if (!e && o->tmp && fsync(fileno(o->f)) != 0)
            e = errno;
        if (fclose(o->f) != 0 && !e)
            e = errno ? errno : EIO;
        o->f = NULL;
    } else if (o->tmp) {
        /* written by another program (bench --plot: gnuplot) */
        int fd = open(o->tmp, O_RDONLY);
        if (fd < 0 || fsync(fd) != 0)
            e = errno;
        if (fd >= 0)
            close(fd);
    }
    return e;
}

void cli_parent_dir(const char *path, char *dir, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, cap, ".");
    else if (slash == path)
        snprintf(dir, cap, "/");
    else
        snprintf(dir, cap, "%.*s", (int)(slash - path), path);
}

void cli_sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd); /* best effort: the files themselves are synced */
        close(fd);
    }
}

/* The directory entry of a rename made durable: the parent's fsync. */
static void sync_parent(const char *path)
{
    char dir[PATH_MAX];
    cli_parent_dir(path, dir, sizeof dir);
    cli_sync_dir(dir);
}

int cli_out_commit_all(cli_out *const *outs, int n)
{
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        cli_out *o = outs[i];
        if (o->done)
            continue;
        errno = 0;
        int e = finish(o);
        if (e)
            rc = cli_error(CLI_FAIL, "%s: write failed: %s", o->path, strerror(e));
    }
    for (int i = 0; i < n && !rc; i++) {
        cli_out *o = outs[i];
        if (o->done || !o->tmp)
            continue;
        if (rename(o->tmp, o->final) != 0) {
            rc = cli_error(CLI_FAIL, "%s: cannot replace: %s", o->path, strerror(errno));
            break;
        }
        sync_parent(o->final);
        free(o->tmp);
        o->tmp = NULL;
    }
    for (int i = 0; i < n; i++)
        cli_out_abort(outs[i]); /* after a commit: frees; after a failure: removes */
    return rc;
}

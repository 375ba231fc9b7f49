/* data_read.c - the byte stream under the data readers: plain or gzip
 * through zlib, bounded reads, the checks that a file holds what its header
 * says (data_read.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data_read.h"
#include "util.h"

size_t dtype_size(dtype t)
{
    switch (t) {
    case DT_F4: return 4;
    case DT_U1: return 1;
    case DT_I4: return 4;
    default: return 8; /* DT_I8, DT_F8 */
    }
}

const char *dtype_name(dtype t)
{
    switch (t) {
    case DT_F4: return "float32";
    case DT_U1: return "uint8";
    case DT_I4: return "int32";
    case DT_I8: return "int64";
    default: return "float64";
    }
}

/* ---- stream ------------------------------------------------------------- */

ert_status rd_open(reader *r, const char *path, ert_error *err)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    r->err = err;
    /* O_NONBLOCK: opening a FIFO must not hang (regular files ignore it). */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return ert_fail(err, ERT_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ert_fail(err, ERT_IO, "%s: not a regular file", path);
    }
    r->file_size = (uint64_t)st.st_size;
    r->gz = gzdopen(fd, "rb");
    if (!r->gz) {
        close(fd);
        return ert_fail(err, ERT_OUT_OF_MEMORY, "%s: cannot start reading (zlib)", path);
    }
    /* zlib's buffers (2x this for gzip): large for big files, small for small ones */
    unsigned buf = 256 * 1024;
    if ((uint64_t)st.st_size < buf)
        buf = st.st_size < 8192 ? 8192 : (unsigned)st.st_size;
    gzbuffer(r->gz, buf);
    return ERT_OK;
}

void rd_close(reader *r)
{
    if (r->gz)
        gzclose(r->gz);
    r->gz = NULL;
}

/* Reads up to n bytes; returns how many, or -1 on a zlib error (message set). */
long long rd_some(reader *r, void *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        size_t want = n - done;
        if (want > (size_t)1 << 30)
            want = (size_t)1 << 30;
        int got = gzread(r->gz, (char *)buf + done, (unsigned)want);
        if (got < 0) {
            int code = 0;
            const char *msg = gzerror(r->gz, &code);
            ert_fail(r->err, ERT_FORMAT, "%s: read error at byte %zu: %s", r->path,
                     r->offset + done, msg ? msg : "zlib error");
            return -1;
        }
        if (got == 0)
            break;
        done += (size_t)got;
    }
    r->offset += done;
    return (long long)done;
}

/* Reads exactly n bytes of `what`; a short read is a truncated file. */
ert_status rd_exact(reader *r, void *buf, size_t n, const char *what)
{
    size_t at = r->offset;
    long long got = rd_some(r, buf, n);
    if (got < 0)
        return ERT_FORMAT;
    if ((size_t)got < n) {
        int code = 0;
        const char *msg = gzerror(r->gz, &code);
        if (code != Z_OK && code != Z_STREAM_END && msg && msg[0])
            return ert_fail(r->err, ERT_FORMAT, "%s: truncated %s at byte %zu (%s)", r->path, what,
                            at + (size_t)got, msg);
        return ert_fail(r->err, ERT_FORMAT,
                        "%s: truncated: %s needs %zu bytes from byte %zu, the file has %lld",
                        r->path, what, n, at, got);
    }
    return ERT_OK;
}

/* Before allocating for `bytes` of data: can the rest of the file hold them?
 * Plain files exactly; gzip ones by the deflate ratio bound. */
ert_status rd_can_hold(reader *r, size_t bytes)
{
    uint64_t avail;
    if (gzdirect(r->gz)) {
        avail = r->file_size > r->offset ? r->file_size - r->offset : 0;
        if (bytes > avail)
            return ert_fail(r->err, ERT_FORMAT,
                            "%s: truncated: data needs %zu bytes from byte %zu, the file has %llu",
                            r->path, bytes, r->offset, (unsigned long long)avail);
        return ERT_OK;
    }
    avail = r->file_size * GZ_MAX_RATIO + GZ_SLACK;
    if (bytes > avail)
        return ert_fail(
            r->err, ERT_FORMAT,
            "%s: truncated: data needs %zu bytes, more than a %llu-byte gzip file can hold",
            r->path, bytes, (unsigned long long)r->file_size);
    return ERT_OK;
}

/* After the data: the file must end here. */
ert_status rd_expect_end(reader *r)
{
    unsigned char extra;
    size_t at = r->offset;
    long long got = rd_some(r, &extra, 1);
    if (got < 0)
        return ERT_FORMAT;
    if (got > 0)
        return ert_fail(r->err, ERT_FORMAT,
                        "%s: the file is longer than its header says (%zu bytes expected)", r->path,
                        at);
    return ERT_OK;
}

/* ---- shared size checks -------------------------------------------------- */

/* Fills info->elems and info->bytes from the dims, bounded. */
ert_status info_sizes(reader *r, array_info *info)
{
    size_t elems = 1;
    for (int i = 0; i < info->ndim; i++) {
        if (info->dims[i] < 0)
            return ert_fail(r->err, ERT_FORMAT, "%s: dimension %d is negative", r->path, i);
        if ((uint64_t)info->dims[i] > SIZE_MAX || !size_mul(elems, (size_t)info->dims[i], &elems) ||
            elems > DATA_MAX_BYTES)
            return ert_fail(r->err, ERT_FORMAT, "%s: the shape is too large (over %zu elements)",
                            r->path, DATA_MAX_BYTES);
    }
    size_t bytes;
    if (!size_mul(elems, dtype_size(info->type), &bytes) || bytes > DATA_MAX_BYTES)
        return ert_fail(r->err, ERT_FORMAT, "%s: the data is too large (over %zu bytes)", r->path,
                        DATA_MAX_BYTES);
    info->elems = elems;
    info->bytes = bytes;
    return ERT_OK;
}

/* data_read.h - the byte stream under the data readers (data_read.c), used
 * by data.c and the .npy header parser (data_npy.c). Private to src/cli/data*. */
#ifndef ERT_DATA_READ_H
#define ERT_DATA_READ_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

#include "exitrt.h"

/* Largest decompressed payload, and largest float array, we accept. */
#define DATA_MAX_BYTES ((size_t)4 << 30)
/* numpy itself refuses headers over 10000 bytes unless told otherwise. */
#define NPY_MAX_HEADER 65536
#define DATA_MAX_DIMS 8
#define CHUNK_BYTES ((size_t)1 << 20)
/* deflate expands at most ~1032:1; a gzip file of n bytes cannot hold more
 * than this many decompressed bytes, so a header announcing more is refused
 * before anything is allocated for it. */
#define GZ_MAX_RATIO 1032
#define GZ_SLACK 65536

typedef enum dtype {
    DT_F4 = 0,
    DT_U1,
    DT_I4,
    DT_I8,
    DT_F8
} dtype;

/* What a header says about the array that follows it. */
typedef struct array_info {
    dtype type;
    int big_endian; /* IDX multi-byte types; never set for the types we read */
    int ndim;
    int64_t dims[DATA_MAX_DIMS];
    size_t elems; /* product of dims */
    size_t bytes; /* elems * element size */
} array_info;

typedef struct reader {
    gzFile gz;
    const char *path;
    ert_error *err;
    size_t offset;      /* decompressed bytes read so far */
    uint64_t file_size; /* on disk (compressed when gzipped) */
} reader;

size_t dtype_size(dtype t);
const char *dtype_name(dtype t);

/* Opens path (plain or gzip) for reading; errors go to err, naming path. */
ert_status rd_open(reader *r, const char *path, ert_error *err);
void rd_close(reader *r);
/* Up to n bytes; the count, or -1 after a read error (message set). */
long long rd_some(reader *r, void *buf, size_t n);
/* Before allocating for `bytes` of data: can the rest of the file hold them? */
ert_status rd_can_hold(reader *r, size_t bytes);
/* After the data: the file must end here. */
ert_status rd_expect_end(reader *r);
/* Reads exactly n bytes of `what`; a short read is a truncated file. */
ert_status rd_exact(reader *r, void *buf, size_t n, const char *what);
/* Fills info->elems and info->bytes from the dims, bounded. */
ert_status info_sizes(reader *r, array_info *info);
/* Parses a .npy header after its 6-byte magic (data_npy.c). */
ert_status npy_header(reader *r, array_info *info);

#endif /* ERT_DATA_READ_H */

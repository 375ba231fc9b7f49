/* safetensors.h - a bounds-checked safetensors reader.
 *
 * The file is mapped read-only; every tensor's dtype, shape and offsets are
 * checked against the header and the file size when the file is opened, so
 * a tensor handed out is always inside the mapping. The file is untrusted
 * input: every error names the file, the tensor or field, and the problem.
 */
#ifndef ERT_SAFETENSORS_H
#define ERT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "exitrt.h"

/* Limits (models/FORMAT.md, "Limits"). */
#define ST_MAX_DIMS 8
#define ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024) /* header JSON bytes */
#define ST_MAX_TENSORS 65536                        /* tensors per file */

typedef enum st_dtype {
    ST_F32 = 0,
    ST_OTHER
} st_dtype;

typedef struct st_tensor {
    char *name;
    char dtype_name[16]; /* as written: "F32", "F16", ... */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t count;     /* elements */
    const void *data; /* inside the mapping */
    size_t nbytes;
} st_tensor;

typedef struct st_file {
    char path[1024];
    void *map;
    size_t size;
    st_tensor *tensors;
    int num_tensors;
    char *metadata_json; /* the __metadata__ object re-serialised, or NULL */
    char **meta_keys;    /* the __metadata__ entries, for st_metadata */
    char **meta_values;
    int num_meta;
    const st_tensor **by_name; /* tensors sorted by name, for st_find */
    int owns_map;              /* 1: map came from mmap (st_open) */
} st_file;

/* Opens and validates path. On failure returns a status, writes the message
 * to err and leaves *f zeroed (st_close on it is harmless). */
ert_status st_open(const char *path, st_file *f, ert_error *err);
void st_close(st_file *f);

/* The same checks on a file already in memory: buf[len] is borrowed (it must
 * outlive f and is never written); name stands for the path in messages.
 * Used by the fuzzer, and by callers that hold the bytes already. */
ert_status st_open_memory(const char *name, const void *buf, size_t len, st_file *f,
                          ert_error *err);

/* The tensor with this name, or NULL (binary search: O(log n)). */
const st_tensor *st_find(const st_file *f, const char *name);

/* A __metadata__ string value, or NULL. */
const char *st_metadata(const st_file *f, const char *key);

#endif /* ERT_SAFETENSORS_H */

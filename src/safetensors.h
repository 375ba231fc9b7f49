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

#define ST_MAX_DIMS 8

typedef enum st_dtype { ST_F32 = 0, ST_OTHER } st_dtype;

typedef struct st_tensor {
    char *name;
    char dtype_name[16];       /* as written: "F32", "F16", ... */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t count;              /* elements */
    const void *data;          /* inside the mapping */
    size_t nbytes;
} st_tensor;

typedef struct st_file {
    char path[1024];
    void *map;
    size_t size;
    st_tensor *tensors;
    int num_tensors;
    char *metadata_json;       /* the __metadata__ object re-serialised, or NULL */
    char **meta_keys;          /* the __metadata__ entries, for st_metadata */
    char **meta_values;
    int num_meta;
} st_file;

/* Opens and validates path. On failure returns a status, writes the message
 * to err and leaves *f zeroed (st_close on it is harmless). */
ert_status st_open(const char *path, st_file *f, ert_error *err);
void st_close(st_file *f);

/* The tensor with this name, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name);

/* A __metadata__ string value, or NULL. */
const char *st_metadata(const st_file *f, const char *key);

#endif /* ERT_SAFETENSORS_H */

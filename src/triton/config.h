/* config.h - the exitrt Triton backend's reading of a model configuration
 * (config.pbtxt, which Triton hands to the backend as JSON) and its checks
 * of a request's input. No Triton calls: plain functions over strings and
 * numbers, so the unit tests run them without a server. */
#ifndef ERT_TRITON_CONFIG_H
#define ERT_TRITON_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include <exitrt.h>

/* The outputs the backend can produce, by index. */
enum {
    ERT_TRITON_CLASS,
    ERT_TRITON_EXIT,
    ERT_TRITON_SCORE,
    ERT_TRITON_LOGITS,
    ERT_TRITON_NUM_OUTPUTS
};

/* Their names as config.pbtxt and the requests spell them. */
extern const char *const ert_triton_output_names[ERT_TRITON_NUM_OUTPUTS];

#define ERT_TRITON_MAX_DIMS 8
#define ERT_TRITON_PATH_MAX 4096

typedef struct ert_triton_config {
    char model_path[ERT_TRITON_PATH_MAX]; /* the exitrt model directory, resolved */
    ert_mode mode;                        /* the engine's mode (refill: COMPACTED engine) */
    int refill;                           /* mode "refill": through an ert_stream */
    int max_batch;                        /* max_batch_size (> 0) */
    int threads;                          /* CPU threads, 0 = the library's default */
    int refill_batch;                     /* rows per stage run, 0 = max_batch */
    double refill_deadline_ms;            /* a partial stage batch runs once this old */
    int num_thresholds;
    char threshold_exit[ERT_MAX_EXITS][64]; /* exit name or index, as written */
    float threshold_value[ERT_MAX_EXITS];
    char input_name[64];
    int input_ndims;
    int64_t input_dims[ERT_TRITON_MAX_DIMS];
    int has_output[ERT_TRITON_NUM_OUTPUTS];
    int64_t logits_dim; /* LOGITS' dims[0] when present */
} ert_triton_config;

/* Reads a model configuration in Triton's JSON form. model_folder is the
 * model's folder in the repository (the one holding config.pbtxt), version
 * the version being loaded: the parameter model_path is relative to the
 * version folder model_folder/version (default "." : the version folder
 * itself holds model.json), or absolute. Returns 0, or -1 with one line in
 * err saying what is wrong. */
int ert_triton_config_parse(const char *json, size_t len, const char *model_folder,
                            uint64_t version, ert_triton_config *c, char *err, size_t cap);

/* Checks the configuration against the loaded model: input dims == the
 * model's [C, H, W], LOGITS dims == [classes], each threshold names an exit
 * before the final head and lies in its policy's range. Fills exit_index[t]
 * for threshold t. Returns 0, or -1 with one line in err. */
int ert_triton_config_check_model(const ert_triton_config *c, const ert_model *m,
                                  int exit_index[ERT_MAX_EXITS], char *err, size_t cap);

/* Checks one request's input tensor (its datatype as Triton's enum value,
 * shape with the batch dimension first, and byte size). Returns the number
 * of rows, or -1 with one line in err. */
long ert_triton_check_input(const ert_triton_config *c, int datatype, const int64_t *shape,
                            uint32_t ndims, uint64_t byte_size, char *err, size_t cap);

/* Output index for a name, or -1. */
int ert_triton_output_index(const char *name);

#endif /* ERT_TRITON_CONFIG_H */

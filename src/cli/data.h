/* data.h - reading input and label files: .npy (float32, float64 or uint8
 * inputs, integer labels; C order) and IDX (ubyte), gzipped or not (decided
 * by the magic bytes, not the name). Files are untrusted input: every error
 * names the file and the problem, and sizes are bounded and overflow-checked. */
#ifndef ERT_DATA_H
#define ERT_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "exitrt.h"

typedef struct cli_dataset {
    float *values;      /* [count * sample_size] as floats (uint8 and float64
                          converted; float64 beyond the float range becomes
                          an infinity, as numpy's astype(np.float32) gives) */
    size_t count;       /* samples */
    size_t sample_size; /* values per sample (product of the dims after the first) */
    int ndim;
    int64_t dims[8];
    int was_uint8;
    int was_int; /* int32 or int64: token ids */
} cli_dataset;

typedef struct cli_labels {
    int32_t *values; /* [count] */
    size_t count;
} cli_labels;

ert_status cli_dataset_load(const char *path, cli_dataset *out, ert_error *err);
void cli_dataset_free(cli_dataset *d);

/* Whether the samples of d (read from path) fit a model input of shape
 * [c, h, w]: the same number of values per sample, in the order the model
 * reads them. Accepted after the sample dimension N: the model's [C, H, W],
 * the same with dimensions of size 1 left out or added ([H, W] for one
 * channel, as Fashion-MNIST comes), or one flat dimension of C*H*W. Any
 * other shape of as many values (channels last, height and width swapped)
 * would be read in the wrong order and is refused. The message names the
 * file and both shapes. Every command that reads inputs for a model calls
 * this (exitrt run, exitrt bench). */
ert_status cli_dataset_check_shape(const cli_dataset *d, const char *path, int c, int h, int w,
                                   ert_error *err);

/* Fits d to model m's input: for an image model cli_dataset_check_shape
 * (integer data refused); for a token model of T tokens, [N, 2, T] or
 * [N, 2T] rows as they are (ids, then the mask), and [N, T] ids given a
 * mask of ones, so d->values holds input rows of 2T floats. */
ert_status cli_dataset_fit_model(cli_dataset *d, const char *path, const ert_model *m,
                                 ert_error *err);

/* The first position t in a token row (T ids, then T mask values) whose id
 * is not an integer in [0, vocab) -- what ert_pack_tokens refuses and the
 * model's token_embed turns into NaN, whatever the mask says; -1 when every
 * id is valid. */
int cli_tokens_first_invalid(const float *row, int T, int vocab);

/* Labels: IDX1 ubyte, or .npy of integer (u1, i4, i8) values. */
ert_status cli_labels_load(const char *path, cli_labels *out, ert_error *err);
void cli_labels_free(cli_labels *l);

#endif /* ERT_DATA_H */

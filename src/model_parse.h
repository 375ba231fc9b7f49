/* model_parse.h - model.json layer parsing, shared by model.c and
 * model_parse.c only.
 *
 * The loader parses the graph twice: a counting pass (block == NULL) that
 * validates everything and counts the floats the folded weights need, then a
 * filling pass that copies every used tensor into the one weight block,
 * folds batch norm into the preceding conv as it goes, and leaves batchnorm2d
 * and dropout layers out of the lists.
 */
#ifndef ERT_MODEL_PARSE_H
#define ERT_MODEL_PARSE_H

#include <cjson/cJSON.h>

#include "model.h"
#include "safetensors.h"

/* Limits of model.json (models/FORMAT.md, "Limits"). */
#define MODEL_MAX_JSON_BYTES (16L * 1024 * 1024)  /* model.json */
#define MODEL_MAX_LAYERS 4096                     /* layers per list */
#define MODEL_MAX_WEIGHT_FLOATS ((size_t)1 << 31) /* the folded weight block */
#define MODEL_MAX_MACS ((uint64_t)1 << 40)        /* per sample, any exit's path */

#define MAX_COUNT (1LL << 30) /* channels, features */
#define MAX_DIM 65536LL       /* kernel, stride, padding, dilation */

typedef struct parse_ctx {
    const char *file;  /* model.json, the prefix of every message */
    const st_file *st; /* the weights */
    float *block;      /* NULL in the counting pass */
    size_t used;       /* floats taken from the block so far */
    ert_error *err;
} parse_ctx;

/* Where each layer of a top-level list went: names[i] is the JSON list's
 * i-th layer name, kinds[i] its type, index[i] the position in the parsed
 * list of the layer whose output equals its output (a batchnorm maps to its
 * conv, a dropout to the layer before it, -1 when there is none). A conv2d
 * followed by a batchnorm2d also maps to itself, but its parsed output is
 * the folded one: its own output is never computed (kinds[i + 1] says). */
typedef struct name_map {
    char (*names)[ERT_NAME_LEN];
    layer_kind *kinds;
    int *index;
    int count;
} name_map;

/* Parses arr (a JSON array of layers; field is its path, e.g. "backbone" or
 * "exits[0].head") into out. nested: inside a residual (no residual
 * allowed). map may be NULL; otherwise it is allocated and filled, and the
 * caller frees it with name_map_free. On failure out is emptied. */
ert_status parse_layer_list(parse_ctx *c, const cJSON *arr, const char *field, int nested,
                            layer_list *out, name_map *map);
void name_map_free(name_map *map);

void layer_list_free(layer_list *l);

/* Field readers: obj[key], named "<field>.<key>" in messages (just "<key>"
 * when field is ""). A missing key takes the default when has_def, else is
 * an error. */
ert_status json_get_int(parse_ctx *c, const cJSON *obj, const char *field, const char *key,
                        int has_def, long long def, long long lo, long long hi, long long *out);
ert_status json_get_number(parse_ctx *c, const cJSON *obj, const char *field, const char *key,
                           int has_def, double def, double *out);
/* A string (NULL when absent or null and optional). */
ert_status json_get_string(parse_ctx *c, const cJSON *obj, const char *field, const char *key,
                           int required, const char **out);

/* Field readers, tensors and the linear layer's fields: model_fields.c. */

/* "<field>.<key>" into buf. */
const char *fpath(char *buf, size_t len, const char *field, const char *key);
/* An int or an [h, w] pair. */
ert_status get_pair(parse_ctx *c, const cJSON *obj, const char *field, const char *key, int has_def,
                    int def, long long lo, long long hi, int *h, int *w);
/* Looks up the tensor obj[key] names and checks dtype and shape. *t is
 * NULL when the key is absent and optional. */
ert_status find_tensor(parse_ctx *c, const cJSON *obj, const char *field, const char *key,
                       int required, int ndim, const int64_t *shape, const st_tensor **t);
/* The i-th float of tensor t (its data may be unaligned). */
float tensor_at(const st_tensor *t, size_t i);
/* Takes n floats from the weight block (counting pass: counts only); copies
 * t's data there when t is not NULL, else zeroes them. */
float *take(parse_ctx *c, size_t n, const st_tensor *t);

ert_status parse_linear(parse_ctx *c, const cJSON *o, const char *f, linear_params *lp);

/* The transformer layers (model_parse_tx.c). */
ert_status parse_patch_embed(parse_ctx *c, const cJSON *o, const char *f, patch_params *p);
ert_status parse_token_embed(parse_ctx *c, const cJSON *o, const char *f, embed_params *p);
ert_status parse_layer_norm(parse_ctx *c, const cJSON *o, const char *f, norm_params *p);
ert_status parse_attention(parse_ctx *c, const cJSON *o, const char *f, attention_params *p);
ert_status parse_encoder_block(parse_ctx *c, const cJSON *o, const char *f, encoder_params *p);
ert_status parse_token_pool(parse_ctx *c, const cJSON *o, const char *f, token_pool_mode *mode);

#endif /* ERT_MODEL_PARSE_H */

/* model_writer.h - writing model directories for tests.
 *
 * Every function returns 0 on success and -1 on failure (nothing is
 * printed), unless it says otherwise.
 *
 *   char dir[64];
 *   mw_tempdir(dir, sizeof dir);                  // /tmp/exitrt-test-XXXXXX
 *   mw_random_model(dir, 42, MW_RESNET);          // model.json + model.safetensors
 *   ert_model *m; ert_model_load(dir, &m, &err);
 *   ...
 *   mw_rmtree(dir);
 *
 * Random models (mw_random_model) are valid multi-exit networks whose
 * weights come from a seeded PRNG, so the same (seed, kind) always gives the
 * same files. Their inputs are meant to be uniform in [0, 1) (mw_random_input);
 * the thresholds are calibrated on such inputs so that roughly equal shares
 * of samples leave at each exit, the final head included. A sample whose
 * score lies within float rounding of a threshold can still exit
 * differently on two backends; equivalence tests should expect that to be
 * rare, not impossible.
 */
#ifndef ERT_TEST_MODEL_WRITER_H
#define ERT_TEST_MODEL_WRITER_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "exitrt.h"

typedef enum mw_kind {
    /* input [1, 8, 8], K = 5: flatten, linear/relu/dropout layers; exits
     * after the 1st and 2nd hidden layers (entropy, max_prob) */
    MW_MLP = 0,
    /* input [3, 12, 12], K = 6: conv+bn+relu (one conv without bias),
     * grouped dilated conv, maxpool, a [3,1]-kernel conv, avgpool with
     * padding, a strided conv; one early exit after the maxpool with a
     * confidence head (policy confidence_head) */
    MW_CNN,
    /* input [3, 16, 16], K = 10: stem conv+bn+relu, an identity residual
     * block, a downsampling block with a 1x1 conv+bn shortcut, another
     * identity block, global_avgpool, flatten; exits after each block with
     * entropy, max_prob and margin policies */
    MW_RESNET,
    /* the image kinds above: a loop to MW_KIND_COUNT keeps to them */
    MW_KIND_COUNT,
    /* Transformer encoders (models/FORMAT.md, "Transformer encoders"). Their
     * sizes vary with the seed: D 16, 24 or 32, H among 1, 2, 4 and D,
     * F = 2D, T 8..17, K 4..7. */
    /* input [3, H, W] (12x12, 16x16, 12x16 or 8x12), patch_embed (patch 4
     * or [4, 2]) with class token and position (T = patches + 1), a
     * self_attention (no residual), 2 or 3 pre-LN blocks (GELU, or ReLU for
     * some seeds; some without attention biases in block 1), a final
     * layer_norm; exits after each block with
     * [token_pool first, layer_norm, linear] heads (entropy, max_prob,
     * margin); final head [token_pool first, linear] */
    MW_VIT = MW_KIND_COUNT,
    /* input {"tokens": T}, vocabulary 40..99: token_embed with position and
     * segment, layer_norm, 3 post-LN GELU blocks; exits after the layer
     * norm ([token_pool mean, linear], max_prob) and after blocks 1 and 2
     * (BERT's pooler then a classifier, [token_pool first, linear, tanh,
     * linear], entropy; and a mean-pool head, margin); final head the
     * pooler and classifier. Its inputs: mw_random_tokens. */
    MW_BERT,
    MW_ALL_KINDS /* every kind: image and token models */
} mw_kind;

/* "mlp", "cnn", "resnet", "vit", "bert". */
const char *mw_kind_name(mw_kind kind);

/* Writes a random valid model of this kind into dir (model.json and
 * model.safetensors). */
int mw_random_model(const char *dir, uint64_t seed, mw_kind kind);

/* Rewrites dir/model.json so that early exit `exit` has policy type with
 * this threshold (any type and value: invalid ones test the loader); a
 * confidence head is dropped unless type is "confidence_head". */
int mw_set_policy(const char *dir, int exit, const char *type, double threshold);

/* ---- files and directories -------------------------------------------------- */

/* Creates a fresh directory /tmp/exitrt-test-XXXXXX; its path into out. */
int mw_tempdir(char *out, size_t len);
/* Removes dir and everything under it. */
int mw_rmtree(const char *dir);
/* dir + "/" + name into out. */
int mw_path(char *out, size_t len, const char *dir, const char *name);

int mw_write_file(const char *path, const void *bytes, size_t n);
int mw_write_text(const char *path, const char *text);
/* The tree printed (formatted) into path. */
int mw_write_json(const char *path, const cJSON *json);

/* ---- safetensors ------------------------------------------------------------- */

/* A safetensors file being assembled; tensors are laid out in the order
 * added, back to back. */
typedef struct mw_st mw_st;

mw_st *mw_st_new(void); /* NULL when out of memory */
void mw_st_free(mw_st *st);
/* A float32 tensor: shape[ndim], data holds the product of the dims floats
 * (copied). */
int mw_st_add(mw_st *st, const char *name, int ndim, const int64_t *shape, const float *data);
/* Any dtype string (written as given, even an invalid one), nbytes raw bytes
 * of data; the shape is written as given and not checked against nbytes. */
int mw_st_add_raw(mw_st *st, const char *name, const char *dtype, int ndim, const int64_t *shape,
                  const void *data, size_t nbytes);
/* Adds "__metadata__": {key: value}. */
int mw_st_add_metadata(mw_st *st, const char *key, const char *value);
int mw_st_write(const mw_st *st, const char *path);

/* For malformed files: writes header_len as the 8-byte little-endian length
 * (whatever the header's real length), then the header text as given, then
 * data_len bytes of data (zeros when data is NULL). */
int mw_write_st_raw(const char *path, uint64_t header_len, const char *header, const void *data,
                    size_t data_len);

/* ---- random numbers and a reference ---------------------------------------- */

typedef struct mw_rng {
    uint64_t s;
} mw_rng;

mw_rng mw_rng_seed(uint64_t seed);
uint64_t mw_rng_next(mw_rng *r); /* splitmix64 */
float mw_rng_uniform(mw_rng *r); /* [0, 1) */
float mw_rng_normal(mw_rng *r);  /* mean 0, standard deviation 1 */

/* n floats uniform in [0, 1), the inputs random image models are calibrated
 * for. */
void mw_random_input(float *x, size_t n, uint64_t seed);

/* n input rows for a token model of T tokens and vocabulary vocab, 2T
 * floats each (models/FORMAT.md, "Token inputs"): the ids, then the mask.
 * Row i attends to its first L tokens and pads the rest (id 0, mask 0):
 * every fourth row (i % 4 == 0) has L = T, the others L uniform in [1, T].
 * Attended ids are uniform in [0, vocab). */
void mw_random_tokens(float *rows, int n, int T, int vocab, uint64_t seed);

/* n rows of m's input, those its thresholds were calibrated on:
 * mw_random_tokens for a token model, mw_random_input otherwise. */
void mw_model_inputs(const ert_model *m, float *x, int n, uint64_t seed);

/* A slow, plain-loop reference of early-exit inference on a loaded model,
 * accumulating in double: every exit's logits are computed; each sample takes
 * the first exit whose policy (policy.h) says so with the model's
 * thresholds, the final head otherwise. input: [batch, C, H, W] raw values.
 * samples: [batch]; logits: [batch * K] or NULL; all_logits (or NULL):
 * [num_exits * batch * K], exit-major, the logits of every exit; scores (or
 * NULL): [num_exits * batch], every exit's policy score. */
int mw_reference_infer(const ert_model *m, const float *input, int batch, ert_sample *samples,
                       float *logits, float *all_logits, float *scores);

/* One layer on one sample, in the reference's plain loops (double): x
 * holds shape_size(l->in) values; returns a malloc'd array of
 * shape_size(l->out) values, or NULL (out of memory, a layer kind the
 * reference does not know). The transformer layers follow models/FORMAT.md
 * ("Transformer encoders"), written from its text: a token row is T tokens
 * of D features each followed by its mask value; a padded key gets no
 * weight in attention (it is skipped, so its values never enter); a query
 * with no attended key gets NaN; an id that is not an integer in
 * [0, vocab) gets NaN features; token_pool mean over no attended token is
 * NaN. */
struct layer;
double *mw_reference_layer(const struct layer *l, const double *x);

/* One sample's walk over the exits, in plain loops, given every exit's
 * logits z [num_exits * K] (float, as some engine or reference computed
 * them) and the confidence heads' outputs conf [num_exits] (NULL: none).
 * At each exit in order: the class (argmax, lowest index on ties), the
 * patience streak (models/FORMAT.md: equal classes at consecutive exits
 * with finite logits, broken by non-finite ones), the policy score
 * (policy.h's ert_policy_score for the softmax policies and the confidence
 * head; the streak for patience, NaN where the logits are not finite) and
 * the decision with thresholds thr [num_exits - 1] (NULL: the model's).
 * out: the first exit that fires (the final head always does), its class and
 * score; scores, classes [num_exits] (or NULL): every exit's. Written apart
 * from policy.h's patience code, as a second reading of the rule. */
void mw_walk_exits(const ert_model *m, const float *thr, const float *z, const float *conf,
                   ert_sample *out, float *scores, int32_t *classes);

#endif /* ERT_TEST_MODEL_WRITER_H */

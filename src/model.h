/* model.h - the in-memory model: a validated graph with folded weights.
 *
 * Shapes are per sample (the batch dimension is never stored). A layer's
 * weights point into the model's single weight block (model->weights), laid
 * out as PyTorch stores them: conv [Cout, Cin/groups, KH, KW], linear
 * [out, in], row-major. Batch norm is folded into the preceding conv at load
 * time, so no batchnorm2d layer survives loading.
 */
#ifndef ERT_MODEL_H
#define ERT_MODEL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "exitrt.h"

#define ERT_NAME_LEN 64

typedef enum layer_kind {
    LAYER_CONV2D = 0,
    LAYER_BATCHNORM2D, /* only while loading: folded, then removed */
    LAYER_RELU,
    LAYER_MAXPOOL2D,
    LAYER_AVGPOOL2D,
    LAYER_GLOBAL_AVGPOOL,
    LAYER_FLATTEN,
    LAYER_LINEAR,
    LAYER_RESIDUAL,
    LAYER_DROPOUT, /* only while loading: a no-op, removed */
    LAYER_SIGMOID,
    /* transformer encoders (FORMAT.md, "Transformer encoders") */
    LAYER_PATCH_EMBED,
    LAYER_TOKEN_EMBED,
    LAYER_LAYER_NORM,
    LAYER_GELU,
    LAYER_TANH,
    LAYER_SELF_ATTENTION,
    LAYER_ENCODER_BLOCK,
    LAYER_TOKEN_POOL,
    LAYER_KIND_COUNT
} layer_kind;

/* A per-sample activation shape. After flatten or linear: c = features,
 * h = w = 1. A token activation (tokens = SHAPE_TOKENS) is T tokens of D
 * features, each followed by its mask value: c = T, h = D + 1, w = 1,
 * stored token after token (FORMAT.md, "Token activations"). A token
 * model's input (SHAPE_IDS) is c = 2, h = T, w = 1: the ids, then the mask. */
enum {
    SHAPE_PLAIN = 0,
    SHAPE_TOKENS = 1,
    SHAPE_IDS = 2
};
typedef struct shape3 {
    int c, h, w;
    int tokens; /* SHAPE_PLAIN, SHAPE_TOKENS or SHAPE_IDS */
} shape3;

/* A token activation's T and D. */
static inline int shape_tokens(shape3 s) { return s.c; }
static inline int shape_dim(shape3 s) { return s.h - 1; }

static inline size_t shape_size(shape3 s) { return (size_t)s.c * (size_t)s.h * (size_t)s.w; }

typedef struct layer layer;

/* An ordered run of layers; each feeds the next. */
typedef struct layer_list {
    layer *items;
    int count;
} layer_list;

typedef struct conv_params {
    int in_ch, out_ch, kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
    const float *weight; /* [out_ch, in_ch/groups, kh, kw] */
    const float *bias;   /* [out_ch]; always present after folding */
} conv_params;

typedef struct pool_params {
    int kh, kw, stride_h, stride_w, pad_h, pad_w;
    /* avgpool2d: padding zeros count in the divisor (PyTorch's default
       count_include_pad=True). maxpool2d: padding is -inf. */
} pool_params;

typedef struct linear_params {
    int in_features, out_features;
    const float *weight; /* [out_features, in_features] */
    const float *bias;   /* [out_features] or NULL */
} linear_params;

typedef struct bn_params { /* loading only */
    int channels;
    float eps;
    const float *gamma, *beta, *mean, *var;
} bn_params;

/* out = act(body(x) + shortcut(x)); shortcut empty = identity. */
/* Layer norm over D values (each token's features, or a vector). weight and
 * bias are always present after loading (1 and 0 when the file has none). */
typedef struct norm_params {
    int dim;
    float eps;
    const float *weight, *bias; /* [dim] */
} norm_params;

/* Multi-head self-attention (nn.MultiheadAttention, q = k = v). Biases are
 * always present after loading (zeros when the file has none). */
typedef struct attention_params {
    int dim, heads;
    const float *in_weight;  /* [3 * dim, dim]: q, k, v rows */
    const float *in_bias;    /* [3 * dim] */
    const float *out_weight; /* [dim, dim] */
    const float *out_bias;   /* [dim] */
} attention_params;

/* One nn.TransformerEncoderLayer. ff1/ff2 apply to every token; their
 * biases are always present after loading. */
typedef struct encoder_params {
    int norm_first; /* 1: pre-LN, 0: post-LN */
    int act;        /* act.h: ERT_ACT_RELU or ERT_ACT_GELU */
    attention_params attn;
    norm_params norm1, norm2;
    linear_params ff1, ff2; /* dim -> ffn, ffn -> dim */
} encoder_params;

/* Patches to tokens: conv (kernel = stride = patch, no padding, bias always
 * present), then the class token first when cls != NULL, then + pos. */
typedef struct patch_params {
    conv_params conv;
    const float *cls; /* [dim] or NULL */
    const float *pos; /* [pos_len, dim] or NULL; pos_len == tokens (checked at finalize) */
    int pos_len;
} patch_params;

/* Token ids to vectors: weight[id] + pos[t] + segment. */
typedef struct embed_params {
    int vocab, dim;
    const float *weight;  /* [vocab, dim] */
    const float *pos;     /* [pos_len, dim] or NULL; pos_len == tokens */
    const float *segment; /* [dim] or NULL */
    int pos_len;
} embed_params;

typedef enum token_pool_mode {
    TOKEN_POOL_FIRST = 0,
    TOKEN_POOL_MEAN
} token_pool_mode;

typedef struct residual_params {
    layer_list body;
    layer_list shortcut;
    int relu_after; /* 1: ReLU after the add (ResNet blocks) */
} residual_params;

struct layer {
    layer_kind kind;
    char name[ERT_NAME_LEN];
    shape3 in, out;
    uint64_t macs; /* per sample, for this layer (residual: body + shortcut) */
    union {
        conv_params conv;
        pool_params pool;
        linear_params linear;
        bn_params bn;
        residual_params residual;
        norm_params norm;           /* layer_norm */
        attention_params attn;      /* self_attention */
        encoder_params enc;         /* encoder_block */
        patch_params patch;         /* patch_embed */
        embed_params embed;         /* token_embed */
        token_pool_mode token_pool; /* token_pool */
    } p;
};

typedef struct exit_def {
    char name[ERT_NAME_LEN];
    int after;             /* index into backbone.items; the final head: backbone.count-1 */
    layer_list head;       /* ends in num_classes logits */
    layer_list confidence; /* confidence_head policy only: ends in 1 value after sigmoid */
    ert_policy_kind policy;
    float threshold;    /* NaN for the final head */
    uint64_t head_macs; /* per sample: head + confidence */
} exit_def;

struct ert_model {
    char path[1024]; /* model.json */
    char dir[1024];
    char sample_data[1024]; /* "" when none */
    char sample_labels[1024];

    shape3 input;          /* token models: (2, T, 1), the ids then the mask */
    int input_tokens;      /* token models: T; image models: 0 */
    int vocab;             /* token models: the token_embed's vocab_size */
    float input_scale;     /* x' = (x * scale - mean[c]) / std[c] */
    float mean[4], std[4]; /* per input channel (C <= 4), or one value repeated */
    int num_classes;

    layer_list backbone;
    exit_def exits[ERT_MAX_EXITS]; /* early exits in backbone order, then the final head */
    int num_exits;

    uint64_t backbone_macs; /* per sample */
    uint64_t macs_full;     /* backbone + final head, per sample */

    float *weights;     /* one block owning every folded tensor */
    size_t weights_len; /* floats */

    /* Engines hold the model (exitrt.h: freeing a model with live engines
     * only marks it). Engines are created and freed from any thread, so the
     * decision to release the model is taken under `lock`. */
    atomic_int engines;   /* live engines using this model */
    atomic_int freed;     /* ert_model_free was called while engines lived */
    pthread_mutex_t lock; /* zeroed = PTHREAD_MUTEX_INITIALIZER (glibc) */
};

/* The layer type's name in model.json ("conv2d", "encoder_block", ...). */
const char *layer_kind_name(layer_kind k);

/* Computes every layer's in/out shape and MACs, every exit's head_macs,
 * backbone_macs and macs_full, and validates the graph (shapes agree, heads
 * end in num_classes values, the confidence head in 1, exits in backbone
 * order, parameters in range). Used by the loader after parsing, and by tests
 * that build models in memory. On failure writes a message naming the layer
 * and the problem into err. */
ert_status model_finalize(ert_model *m, ert_error *err);


/* Releases the model now (no engine check). */
void model_destroy(ert_model *m);

/* An engine takes the model: 0 when ert_model_free was already called
 * (then nothing is taken). */
int model_acquire(ert_model *m);
/* An engine lets it go; the last one releases a model the user freed. */
void model_release(ert_model *m);

#endif /* ERT_MODEL_H */

/* program.h - a model compiled into a flat list of ops, with buffers.
 *
 * Built once at engine creation, with no library call, so the host tests
 * check it in every build. Every op reads and writes activation buffers
 * named by index 0..nbuf-1; each buffer holds one activation per sample for
 * cfg.max_batch samples. The CUDA backend (src/cuda/) and the CPU backend's
 * oneDNN path (src/cpu/dnnl.c) walk the stages and run each op on the rows
 * still active.
 *
 * Buffer assignment: a layer list runs with the buffers its caller still
 * needs marked protected; ReLU and sigmoid work in place on a buffer the
 * list owns (or are fused into the conv/linear/add before them), as do GELU
 * and tanh; layer norm works in place on a buffer the list owns; every
 * other op writes a free buffer. Residuals do not nest (FORMAT.md), so a head over
 * a residual needs at most: the stage output, the block input, the body's
 * output, and two for the shortcut: 5. PROG_MAX_BUF leaves room.
 */
#ifndef ERT_PROGRAM_H
#define ERT_PROGRAM_H

#include "act.h"
#include "engine_core.h"

/* op.act holds one of act.h's activations. */

#define PROG_MAX_BUF 8

typedef enum prog_op_kind {
    OP_CONV = 0, /* convolution + bias, then + in2 when in2 >= 0 (a fused
                     residual join), then op.act */
    OP_MAXPOOL,  /* cuDNN pooling */
    OP_AVGPOOL,  /* cuDNN pooling, padding counted in the divisor */
    OP_GAP,      /* global average pooling kernel */
    OP_LINEAR,   /* cuBLAS SGEMM + bias/activation kernel */
    OP_ACT,      /* activation kernel: out = act(in) (in == out: in place) */
    OP_ADD,      /* out = act(in + in2), the residual join */
    /* transformer layers (models/FORMAT.md, "Transformer encoders"); a
       token row is T * (D + 1) floats, the mask value after each token */
    OP_PATCH_EMBED, /* the patch conv into buffer tmp, then tokens into out */
    OP_TOKEN_EMBED, /* token ids and mask (2T floats) to tokens */
    OP_LAYER_NORM,  /* per token or over a vector; in == out: in place */
    OP_TOKEN_POOL,  /* tokens to a D-vector */
    OP_ATTENTION,   /* self_attention: tokens to tokens (no residual) */
    OP_ENCODER      /* encoder_block: tokens to tokens */
} prog_op_kind;

typedef struct prog_op {
    prog_op_kind kind;
    const layer *l;             /* conv, pools, linear: the model layer */
    int in, in2, out;           /* buffers (in2: OP_ADD, and OP_CONV with a fused
                           residual join; else -1) */
    int tmp;                    /* OP_PATCH_EMBED: the buffer its convolution
                           writes ([D, h, w] per sample); else -1 */
    int act;                    /* applied to the output */
    shape3 in_shape, out_shape; /* per sample */
} prog_op;

typedef struct prog_range {
    int begin, end; /* ops [begin, end) */
} prog_range;

typedef struct prog_stage {
    prog_range backbone, head, conf;
    int has_exit;   /* an exit decision runs after this stage */
    int in_buf;     /* the stage's input rows */
    int out_buf;    /* the backbone output, which the heads read */
    int logits_buf; /* [n, K] logits (may equal out_buf: empty final head) */
    int conf_buf;   /* [n, 1] confidence head output, or -1 */
    int gather_buf; /* COMPACTED early exits: the survivors go here; else -1 */
    size_t out_row; /* floats per sample of out_buf's rows */
} prog_stage;

typedef struct program {
    prog_op *ops;
    int nops;
    prog_stage stages[ERT_MAX_EXITS];
    int num_stages;
    int nbuf; /* buffers the ops use */
    ert_mode mode;
} program;

/* How to compile. */
typedef struct program_opts {
    /* A residual block whose body ends in a convolution runs its shortcut
     * first, then the body, and the body's last conv adds the shortcut and
     * applies the block's ReLU itself (OP_CONV with in2): no OP_ADD. */
    int fuse_residual;
} program_opts;

/* Compiles model m (with plan p) for the given mode (opts NULL: none). On failure writes a
 * message to err and returns its status (ERT_UNSUPPORTED for a layer the
 * device path cannot run, ERT_OUT_OF_MEMORY, ERT_INTERNAL when a buffer
 * would not fit the plan). *out owns its ops afterwards: program_free. */
ert_status program_build(const ert_model *m, const plan *p, ert_mode mode, const program_opts *opts,
                         program *out, ert_error *err);

void program_free(program *prog);

/* The op a layer of kind k compiles to: 1 and *op (an activation: OP_ACT,
 * or fused into the op before it; residual: OP_ADD after the branches' ops,
 * or the join fused into the body's last conv), 0 for a kind that compiles
 * to no op (flatten; batchnorm2d and dropout, removed at load), -1 for a
 * value that is not a layer kind. The one table program_build reads;
 * tests/unit/test_layer_kinds.c checks it against models/FORMAT.md. */
int program_layer_op(layer_kind k, prog_op_kind *op);

#endif /* ERT_PROGRAM_H */

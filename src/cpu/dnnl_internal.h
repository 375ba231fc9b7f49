/* dnnl_internal.h - what the oneDNN path's two files share: the executor's
 * structs, the layout helpers and the making of one op's primitives
 * (dnnl_ops.c, below dnnl.c). Private to src/cpu/dnnl*.c. */
#ifndef ERT_CPU_DNNL_INTERNAL_H
#define ERT_CPU_DNNL_INTERNAL_H

#include <stddef.h>

#include <oneapi/dnnl/dnnl.h>

#include "cpu/dnnl.h"

/* Rows per block (rounded to whole tiles): a block's activations through a
 * stage stay in the L2 cache for the bundled models' sizes. */
#define DX_BLOCK 64

/* Tiles below an op's own, powers of two down to one row, with the same
 * layouts and weights: the rows past a call's whole tiles run as these
 * (8 + 4 + 1 for 13), so no row is computed only to fill a tile. */
#define DX_MAX_SUB 7
/* entries of a plan row: the tiles to run, then DX_PLAN_END */
#define DX_PLAN_LEN (DX_MAX_SUB + 2)
#define DX_PLAN_WHOLE (-1)
#define DX_PLAN_END (-2)

typedef struct dx_sub {
    int tile;
    dnnl_primitive_t prim, pre, post;
    dnnl_memory_t src, src1, dst, scratch, pre_src, pre_dst, post_dst;
} dx_sub;

typedef struct dx_op {
    const prog_op *op;
    dnnl_primitive_t prim;
    dnnl_memory_t src, src1, dst, wei, bias, scratch;
    float *wei_buf;                    /* the weights in the primitive's layout (owned) */
    int tile;                          /* rows per execution of this primitive */
    size_t src_row, src1_row, dst_row; /* floats per row */
    int src1_arg;                      /* the argument id of src1, 0: none */
    const char *impl;                  /* oneDNN's implementation name */
    /* a conv whose src layout differs from its input buffer's: a reorder
       of each tile into pre_buf first */
    dnnl_primitive_t pre;
    dnnl_memory_t pre_src, pre_dst;
    float *pre_buf;
    size_t pre_src_row;
    /* a linear layer as a matmul with a run-time row count: memory objects
       for every count 1..block (made at creation), no padded tile */
    int matmul;
    dnnl_memory_t *mm_src, *mm_dst;
    /* a residual join the conv could not fuse: dst += src1 (+ activation)
       after it, in place */
    dnnl_primitive_t post;
    dnnl_memory_t post_dst;
    dx_sub sub[DX_MAX_SUB]; /* tiles tile/2 .. 1 (nsub 0: the last tile padded) */
    int nsub;
    /* [tile][DX_PLAN_LEN]: for r rows left after the whole tiles, row r
       lists the tiles that run them (a sub index or DX_PLAN_WHOLE; the
       last may be padded), ending with DX_PLAN_END */
    signed char *plan;
} dx_op;

struct dnnl_exec {
    dnnl_engine_t eng;
    dnnl_stream_t stream;
    int tile_conv, tile_linear; /* rows per execution: linear ops, all others */
    int tile_max, rows_alloc;   /* the larger; buffers hold rows_alloc rows */
    const program *prog;
    dx_op *ops;               /* [prog->nops] */
    float *buf[PROG_MAX_BUF]; /* the program's buffers, for one block of rows */
    int block;                /* rows per block: a multiple of both tiles */
    size_t in_row[ERT_MAX_EXITS], out_row[ERT_MAX_EXITS];
    float *io[2];         /* rows_alloc rows of the largest stage input/output */
    float *logits, *conf; /* rows_alloc rows of K floats, of one float */
    void *scratch;
    size_t scratch_size;
    int invariant;
    int subs;   /* the smaller tiles run (0: the last tile padded, dx_create) */
    int K;      /* classes: floats per logits row */
    int single; /* max_batch 1: every call runs one row */
    char desc[400];
};

typedef struct dx_build {
    dnnl_exec *x;
    const ert_model *m;
    int T;                                /* the current op's tile */
    dnnl_memory_desc_t cur[PROG_MAX_BUF]; /* each buffer's layout at this point */
    size_t need[PROG_MAX_BUF];            /* floats per row each buffer must hold */
    unsigned char *plain_out;             /* [nops]: the op's output must be plain */
    dnnl_primitive_attr_t attr;           /* user scratchpad, + post-ops per op */
    int fused_joins, separate_joins, reorders, nhwc, plain_forced, matmuls;
    int subs; /* ops with smaller tiles */
} dx_build;

/* A oneDNN call inside a function with `char *why, size_t cap`: on failure
 * it says which call failed and returns ERT_UNSUPPORTED (the caller falls
 * back) or ERT_OUT_OF_MEMORY. */
#define DX_TRY(call, what)                                                                \
    do {                                                                                  \
        dnnl_status_t r_ = (call);                                                        \
        if (r_ != dnnl_success) {                                                         \
            snprintf(why, cap, "%s: %s failed (oneDNN status %d)", what, #call, (int)r_); \
            return r_ == dnnl_out_of_memory ? ERT_OUT_OF_MEMORY : ERT_UNSUPPORTED;        \
        }                                                                                 \
    } while (0)

/* ---- layout helpers (dnnl_ops.c; each described there) ---- */

size_t md_floats(const dnnl_memory_desc_t *md);
size_t md_row(const dnnl_memory_desc_t *md);
dnnl_memory_desc_t retile(dnnl_memory_desc_t md, int T);
int batch_outermost(const dnnl_memory_desc_t *md);
dnnl_memory_desc_t md_tag(int ndims, const dnnl_dims_t dims, dnnl_format_tag_t tag);
dnnl_format_tag_t plain_tag(int ndims);
void *alloc_floats(size_t n);

/* ---- one op (dnnl_ops.c) ---- */

ert_status dx_make_op(dx_build *b, int i, char *why, size_t cap);
/* Whether oneDNN serves pd with a reference (unoptimised) kernel. */
int dx_is_ref(const_dnnl_primitive_desc_t pd);
/* One tile of op d (its whole tile or a smaller one) from row r0 of its
 * buffers on, without waiting for the stream (dnnl.c). */
dnnl_status_t dx_run_tile(dnnl_exec *x, const dx_op *d, const dx_sub *t, size_t r0);

/* ---- smaller tiles (dnnl_tiles.c) ---- */

/* The op's own tile as a dx_sub (its primitives and memories), beside its
 * smaller ones in sub[]. */
dx_sub dx_whole(const dx_op *d);

/* Makes op d's smaller tiles (the op made, its weights set); where oneDNN
 * cannot make one, d keeps none. */
void dx_make_subs(dx_build *b, dx_op *d);
/* Once the buffers and the scratchpad exist: every op's smaller tiles
 * against its whole tile on pseudo-random rows (an op whose rows differ
 * loses them), then each op's plan of tiles for the rows left after its
 * whole tiles. ERT_INTERNAL or ERT_OUT_OF_MEMORY (why says) on failure. */
ert_status dx_check_subs(dnnl_exec *x, char *why, size_t cap);
/* Destroys what an op's smaller tiles and plan hold; nsub becomes 0. */
void dx_free_subs(dx_op *d);

#endif /* ERT_CPU_DNNL_INTERNAL_H */

/* layers.h - running a list of layers on the CPU: the CNN ops of
 * cpu_ops.h and the transformer ops of tx_ops.h chained, with buffers the
 * caller gives (no allocation). */
#ifndef ERT_CPU_LAYERS_H
#define ERT_CPU_LAYERS_H

#include <stddef.h>

#include "model.h"

/* Scratch for run_layers: three buffers of act_cap floats each, and the
 * im2col scratch, which also serves op_linear's tile (so it holds at least
 * tile_rows * 2 * the largest activation). act_cap must hold n * (the
 * largest per-sample activation in the list, residual internals included). */
typedef struct ops_ws {
    float *buf[3];
    size_t act_cap; /* floats per buffer */
    float *col;
    size_t col_cap;   /* floats */
    int conv_batched; /* op_conv2d's `batched` */
    int tile_rows;    /* op_linear's t */
    int tok_tile;     /* the transformer ops' GEMM tile (tx_ops.h) */
    int threads;      /* the transformer ops' team (tx_ops.h); col holds their scratch for it */
} ops_ws;

/* Runs the layers of `list` on n rows.
 *   in   [n, list->items[0].in]: read only, may be a buffer outside ws
 *        (it must not be one of ws->buf)
 *   returns the output [n, last layer's out]: one of ws->buf, or `in` itself
 *        when every layer is a reshape (flatten) or the list is empty.
 * conv2d and linear followed by relu run with the ReLU fused. Residuals run
 * the body ping-ponging between two buffers, then the shortcut (identity
 * when empty) into the remaining ones, then the add (+ReLU) in place. */
const float *run_layers(const layer_list *list, const float *in, int n, const ops_ws *ws);

/* Per-sample floats of the largest activation run_layers writes for list. */
size_t layers_max_act(const layer_list *list);

#endif /* ERT_CPU_LAYERS_H */

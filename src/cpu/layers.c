/* layers.c - run_layers (layers.h): a list of layers through the CPU ops,
 * CNN (cpu_ops.h) and transformer (tx_ops.h) alike. */
#include "cpu/layers.h"

#include "cpu/cpu_ops.h"
#include "cpu/tx_ops.h"

/* Index of p among ws->buf, or -1 (a buffer outside ws). */
static int buf_index(const ops_ws *ws, const float *p)
{
    for (int i = 0; i < 3; i++)
        if (ws->buf[i] == p)
            return i;
    return -1;
}

/* A buffer from the mask `allowed` other than `avoid`. */
static int pick(unsigned allowed, int avoid)
{
    for (int i = 0; i < 3; i++)
        if ((allowed & (1u << i)) && i != avoid)
            return i;
    return -1; /* cannot happen with two allowed buffers */
}

/* Runs items[0..count) from cur. Writes only into the buffers in `allowed`
 * (a bit mask over ws->buf); cur is overwritten only when it is one of them. */
static const float *run_range(const layer *items, int count, const float *cur, int n,
                              const ops_ws *ws, unsigned allowed)
{
    for (int i = 0; i < count; i++) {
        const layer *L = &items[i];
        int ci = buf_index(ws, cur);
        int cur_writable = ci >= 0 && (allowed & (1u << ci));
        size_t len = shape_size(L->out) * (size_t)n;
        int fuse_relu = i + 1 < count && items[i + 1].kind == LAYER_RELU;
        float *dst;
        switch (L->kind) {
        case LAYER_FLATTEN:
        case LAYER_DROPOUT:
        case LAYER_BATCHNORM2D: /* folded at load; never reaches here */ continue;
        case LAYER_RELU:
        case LAYER_SIGMOID:
        case LAYER_GELU:
        case LAYER_TANH:
        case LAYER_LAYER_NORM:
            dst = cur_writable ? (float *)cur : ws->buf[pick(allowed, ci)];
            if (L->kind == LAYER_RELU)
                op_relu(cur, dst, len);
            else if (L->kind == LAYER_SIGMOID)
                op_sigmoid(cur, dst, len);
            else if (L->kind == LAYER_GELU)
                op_gelu(cur, dst, len);
            else if (L->kind == LAYER_TANH)
                op_tanh(cur, dst, len);
            else
                op_layer_norm(&L->p.norm, L->in, cur, n, dst);
            cur = dst;
            continue;
        default: break;
        }
        if (L->kind == LAYER_RESIDUAL) {
            const residual_params *rp = &L->p.residual;
            /* body: ping-pong between two allowed buffers other than cur */
            unsigned body_mask = allowed & ~(ci >= 0 ? 1u << ci : 0u);
            unsigned lo = body_mask & (0u - body_mask), rest = body_mask & ~lo;
            body_mask = lo | (rest & (0u - rest)); /* the two lowest */
            const float *bo = run_range(rp->body.items, rp->body.count, cur, n, ws, body_mask);
            int bi = buf_index(ws, bo);
            /* shortcut: anything but the body's result; cur may go now */
            unsigned sc_mask = allowed & ~(bi >= 0 ? 1u << bi : 0u);
            const float *so =
                run_range(rp->shortcut.items, rp->shortcut.count, cur, n, ws, sc_mask);
            int si = buf_index(ws, so);
            int di = bi >= 0 && (allowed & (1u << bi)) ? bi : si >= 0 ? si : pick(allowed, -1);
            op_add(bo, so, ws->buf[di], len, rp->relu_after);
            cur = ws->buf[di];
            continue;
        }
        dst = ws->buf[pick(allowed, ci)];
        switch (L->kind) {
        case LAYER_CONV2D:
            op_conv2d(&L->p.conv, L->in, cur, n, dst, fuse_relu, ws->col, ws->col_cap,
                      ws->conv_batched);
            i += fuse_relu;
            break;
        case LAYER_LINEAR:
            op_linear(&L->p.linear, cur, n, dst, fuse_relu, ws->tile_rows, ws->col);
            i += fuse_relu;
            break;
        case LAYER_MAXPOOL2D: op_maxpool2d(&L->p.pool, L->in, cur, n, dst); break;
        case LAYER_AVGPOOL2D: op_avgpool2d(&L->p.pool, L->in, cur, n, dst); break;
        case LAYER_GLOBAL_AVGPOOL: op_global_avgpool(L->in, cur, n, dst); break;
        case LAYER_PATCH_EMBED:
            op_patch_embed(&L->p.patch, L->in, L->out, cur, n, dst, ws->col, ws->threads);
            break;
        case LAYER_TOKEN_EMBED: op_token_embed(&L->p.embed, L->in.h, cur, n, dst); break;
        case LAYER_SELF_ATTENTION:
            op_self_attention(&L->p.attn, L->in, cur, n, dst, ws->col, ws->tok_tile, ws->threads);
            break;
        case LAYER_ENCODER_BLOCK:
            op_encoder_block(&L->p.enc, L->in, cur, n, dst, ws->col, ws->tok_tile, ws->threads);
            break;
        case LAYER_TOKEN_POOL: op_token_pool(L->p.token_pool, L->in, cur, n, dst); break;
        default: continue; /* unreachable: every kind is handled above */
        }
        cur = dst;
    }
    return cur;
}

const float *run_layers(const layer_list *list, const float *in, int n, const ops_ws *ws)
{
    return run_range(list->items, list->count, in, n, ws, 7u);
}

size_t layers_max_act(const layer_list *list)
{
    size_t m = 0;
    for (int i = 0; i < list->count; i++) {
        const layer *L = &list->items[i];
        size_t s = shape_size(L->out);
        if (L->kind == LAYER_RESIDUAL) {
            size_t b = layers_max_act(&L->p.residual.body);
            size_t c = layers_max_act(&L->p.residual.shortcut);
            if (b > s)
                s = b;
            if (c > s)
                s = c;
        }
        if (s > m)
            m = s;
    }
    return m;
}

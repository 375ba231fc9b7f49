/* program.c - compiles a model into ops with buffer assignments: see
 * program.h. */
#include "program.h"

#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ---- builder state ------------------------------------------------------------- */

typedef struct builder {
    const ert_model *m;
    const plan *p;
    program *prog;
    int cap;
    unsigned live; /* buffers holding data someone still needs */
    int nbuf;      /* high-water mark */
    ert_error *err;
    ert_status st;
    program_opts opts;
} builder;

static int bit(int b) { return b >= 0 ? 1 << b : 0; }

static int buf_alloc(builder *b)
{
    for (int i = 0; i < PROG_MAX_BUF; i++) {
        if (!(b->live & (1u << i))) {
            b->live |= 1u << i;
            if (i + 1 > b->nbuf)
                b->nbuf = i + 1;
            return i;
        }
    }
    b->st = ert_fail(b->err, ERT_INTERNAL, "program: more than %d activation buffers needed",
                     PROG_MAX_BUF);
    return -1;
}

static void buf_free(builder *b, int i)
{
    if (i >= 0)
        b->live &= ~(1u << i);
}

int program_layer_op(layer_kind k, prog_op_kind *op)
{
    switch (k) {
    case LAYER_CONV2D: *op = OP_CONV; return 1;
    case LAYER_MAXPOOL2D: *op = OP_MAXPOOL; return 1;
    case LAYER_AVGPOOL2D: *op = OP_AVGPOOL; return 1;
    case LAYER_GLOBAL_AVGPOOL: *op = OP_GAP; return 1;
    case LAYER_LINEAR: *op = OP_LINEAR; return 1;
    case LAYER_RELU:
    case LAYER_SIGMOID:
    case LAYER_GELU:
    case LAYER_TANH: *op = OP_ACT; return 1;
    case LAYER_RESIDUAL: *op = OP_ADD; return 1;
    case LAYER_PATCH_EMBED: *op = OP_PATCH_EMBED; return 1;
    case LAYER_TOKEN_EMBED: *op = OP_TOKEN_EMBED; return 1;
    case LAYER_LAYER_NORM: *op = OP_LAYER_NORM; return 1;
    case LAYER_TOKEN_POOL: *op = OP_TOKEN_POOL; return 1;
    case LAYER_SELF_ATTENTION: *op = OP_ATTENTION; return 1;
    case LAYER_ENCODER_BLOCK: *op = OP_ENCODER; return 1;
    case LAYER_FLATTEN:     /* NCHW rows are contiguous: flatten moves no data */
    case LAYER_BATCHNORM2D: /* folded into its conv2d at load */
    case LAYER_DROPOUT: /* removed at load */ return 0;
    case LAYER_KIND_COUNT: break;
    }
    return -1; /* not a layer kind */
}

static int emit(builder *b, prog_op op)
{
    program *g = b->prog;
    if (shape_size(op.out_shape) > b->p->max_act) {
        b->st = ert_fail(b->err, ERT_INTERNAL,
                         "program: layer %s output (%zu floats) exceeds the plan's largest "
                         "activation (%zu)",
                         op.l ? op.l->name : "?", shape_size(op.out_shape), b->p->max_act);
        return -1;
    }
    if (g->nops == b->cap) {
        int cap = b->cap ? 2 * b->cap : 32;
        prog_op *ops = realloc(g->ops, (size_t)cap * sizeof *ops);
        if (!ops) {
            b->st =
                ert_fail(b->err, ERT_OUT_OF_MEMORY, "program: out of memory building the program");
            return -1;
        }
        g->ops = ops;
        b->cap = cap;
    }
    g->ops[g->nops] = op;
    return g->nops++;
}

static prog_op op_new(prog_op_kind kind, const layer *l, int in, int out, shape3 is, shape3 os)
{
    prog_op op;
    memset(&op, 0, sizeof op);
    op.kind = kind;
    op.l = l;
    op.in = in;
    op.in2 = -1;
    op.tmp = -1;
    op.out = out;
    op.act = ERT_ACT_NONE;
    op.in_shape = is;
    op.out_shape = os;
    return op;
}

/* ---- layer lists ------------------------------------------------------------------ */

static int run_list(builder *b, const layer *items, int count, int in, shape3 shape,
                    unsigned protect);

/* The last layer of a list that computes something (BN is folded away,
 * dropout and flatten are no-ops), or NULL. */
static const layer *last_computing(const layer_list *list)
{
    for (int i = list->count - 1; i >= 0; i--) {
        layer_kind k = list->items[i].kind;
        if (k != LAYER_BATCHNORM2D && k != LAYER_DROPOUT && k != LAYER_FLATTEN)
            return &list->items[i];
    }
    return NULL;
}

/* program_opts.fuse_residual: the shortcut, then the body, whose last op (a
 * conv) takes the shortcut as in2 and the block's activation. Returns the
 * fused conv's op index; -2 when the block does not qualify (its body does
 * not end in a conv), having emitted nothing; -1 on failure. */
static int fused_residual(builder *b, const layer *l, int x, unsigned px, int owned)
{
    const residual_params *r = &l->p.residual;
    const layer *lc = last_computing(&r->body);
    if (!lc || lc->kind != LAYER_CONV2D)
        return -2;
    int sc = run_list(b, r->shortcut.items, r->shortcut.count, x, l->in, px);
    if (sc < 0)
        return -1;
    int body = run_list(b, r->body.items, r->body.count, x, l->in, px | (unsigned)bit(sc));
    if (body < 0)
        return -1;
    int at = b->prog->nops - 1;
    prog_op *op = &b->prog->ops[at];
    if (op->kind != OP_CONV || op->l != lc || op->out != body || op->act != ERT_ACT_NONE) {
        b->st = ert_fail(b->err, ERT_INTERNAL,
                         "program: residual %s: the body's last op is "
                         "not its conv",
                         l->name);
        return -1;
    }
    op->in2 = sc;
    op->act = r->relu_after ? ERT_ACT_RELU : ERT_ACT_NONE;
    op->out_shape = l->out;
    if (sc != x)
        buf_free(b, sc);
    if (owned)
        buf_free(b, x);
    return at;
}

/* Emits the ops of items[0..count) reading buffer `in` (shape `shape`).
 * Buffers in `protect` (in among them when the caller still needs it) are
 * never written. Returns the buffer holding the output, or -1 on failure
 * (b->st set). The output is `in` only for a list with no op at all. */
static int run_list(builder *b, const layer *items, int count, int in, shape3 shape,
                    unsigned protect)
{
    int cur = in;
    int last = -1; /* the op that wrote cur, if it may take a fused activation */
    for (int i = 0; i < count && b->st == ERT_OK; i++) {
        const layer *l = &items[i];
        int owned = !(protect & (1u << cur));
        if ((unsigned)l->kind >= LAYER_KIND_COUNT) {
            b->st = ert_fail(b->err, ERT_UNSUPPORTED, "program: layer %s: kind %d not supported",
                             l->name, (int)l->kind);
            return -1;
        }
        switch (l->kind) {
        case LAYER_DROPOUT:
        case LAYER_FLATTEN: /* NCHW rows are contiguous: flatten moves no data */
        case LAYER_BATCHNORM2D: /* folded at load; none survives */ break;
        case LAYER_RELU:
        case LAYER_SIGMOID:
        case LAYER_GELU:
        case LAYER_TANH: {
            int act = l->kind == LAYER_RELU      ? ERT_ACT_RELU
                      : l->kind == LAYER_SIGMOID ? ERT_ACT_SIGMOID
                      : l->kind == LAYER_GELU    ? ERT_ACT_GELU
                                                 : ERT_ACT_TANH;
            if (last >= 0 && b->prog->ops[last].act == ERT_ACT_NONE) {
                b->prog->ops[last].act = act;
                last = -1;
                break;
            }
            int out = owned ? cur : buf_alloc(b);
            if (out < 0)
                return -1;
            if (emit(b, op_new(OP_ACT, l, cur, out, l->in, l->out)) < 0)
                return -1;
            b->prog->ops[b->prog->nops - 1].act = act;
            cur = out;
            last = -1;
            break;
        }
        case LAYER_CONV2D:
        case LAYER_MAXPOOL2D:
        case LAYER_AVGPOOL2D:
        case LAYER_GLOBAL_AVGPOOL:
        case LAYER_LINEAR:
        case LAYER_TOKEN_EMBED:
        case LAYER_TOKEN_POOL:
        case LAYER_SELF_ATTENTION:
        case LAYER_ENCODER_BLOCK: {
            prog_op_kind k = OP_GAP;
            if (program_layer_op(l->kind, &k) != 1) {
                b->st = ert_fail(b->err, ERT_INTERNAL, "program: layer %s: kind %d has no op",
                                 l->name, (int)l->kind);
                return -1;
            }
            int out = buf_alloc(b);
            if (out < 0)
                return -1;
            int at = emit(b, op_new(k, l, cur, out, l->in, l->out));
            if (at < 0)
                return -1;
            if (owned)
                buf_free(b, cur);
            cur = out;
            last = (k == OP_CONV || k == OP_LINEAR) ? at : -1;
            break;
        }
        case LAYER_LAYER_NORM: {
            /* per value after its row's mean and variance: in place is safe */
            int out = owned ? cur : buf_alloc(b);
            if (out < 0)
                return -1;
            if (emit(b, op_new(OP_LAYER_NORM, l, cur, out, l->in, l->out)) < 0)
                return -1;
            cur = out;
            last = -1;
            break;
        }
        case LAYER_PATCH_EMBED: {
            /* the convolution's [D, h, w] goes to a scratch buffer, then the
               tokens to out; D * h * w < T * (D + 1), so it fits a buffer */
            int out = buf_alloc(b);
            int tmp = out < 0 ? -1 : buf_alloc(b);
            if (tmp < 0)
                return -1;
            prog_op op = op_new(OP_PATCH_EMBED, l, cur, out, l->in, l->out);
            op.tmp = tmp;
            if (emit(b, op) < 0)
                return -1;
            buf_free(b, tmp);
            if (owned)
                buf_free(b, cur);
            cur = out;
            last = -1;
            break;
        }
        case LAYER_RESIDUAL: {
            const residual_params *r = &l->p.residual;
            int x = cur;
            unsigned px = protect | (1u << x);
            if (b->opts.fuse_residual) {
                int at = fused_residual(b, l, x, px, owned);
                if (at == -2)
                    goto unfused;
                if (at < 0)
                    return -1;
                cur = b->prog->ops[at].out;
                last = r->relu_after ? -1 : at;
                break;
            }
        unfused:;
            int body = run_list(b, r->body.items, r->body.count, x, l->in, px);
            if (body < 0)
                return -1;
            int sc = run_list(b, r->shortcut.items, r->shortcut.count, x, l->in,
                              px | (unsigned)bit(body));
            if (sc < 0)
                return -1;
            /* the join writes over the body's output when the body made one */
            int out = body != x ? body : (owned ? x : buf_alloc(b));
            if (out < 0)
                return -1;
            prog_op op = op_new(OP_ADD, l, body, out, l->out, l->out);
            op.in2 = sc;
            op.act = r->relu_after ? ERT_ACT_RELU : ERT_ACT_NONE;
            int at = emit(b, op);
            if (at < 0)
                return -1;
            if (sc != x && sc != out)
                buf_free(b, sc);
            if (owned && x != out)
                buf_free(b, x);
            cur = out;
            last = r->relu_after ? -1 : at;
            break;
        }
        case LAYER_KIND_COUNT: break; /* refused above */
        }
        shape = l->out;
    }
    (void)shape;
    return b->st == ERT_OK ? cur : -1;
}

/* ---- stages -------------------------------------------------------------------------- */

ert_status program_build(const ert_model *m, const plan *p, ert_mode mode, const program_opts *opts,
                         program *out, ert_error *err)
{
    memset(out, 0, sizeof *out);
    out->mode = mode;
    builder b = {.m = m, .p = p, .prog = out, .err = err, .st = ERT_OK};
    if (opts)
        b.opts = *opts;
    if (p->num_stages != m->num_exits || p->num_stages < 1) {
        b.st = ert_fail(err, ERT_INTERNAL, "program: plan has %d stages for %d exits",
                        p->num_stages, m->num_exits);
        goto fail;
    }
    out->num_stages = p->num_stages;

    int cur = buf_alloc(&b); /* the normalised input */
    if (cur < 0)
        goto fail;
    for (int s = 0; s < p->num_stages; s++) {
        const stage *sg = &p->stages[s];
        const exit_def *x = &m->exits[s];
        prog_stage *ps = &out->stages[s];
        int last = s == p->num_stages - 1;
        ps->in_buf = cur;
        ps->conf_buf = -1;
        ps->gather_buf = -1;
        ps->out_row = shape_size(sg->out);

        ps->backbone.begin = out->nops;
        cur = run_list(&b, m->backbone.items + sg->begin, sg->end - sg->begin, cur, sg->in, 0);
        if (cur < 0)
            goto fail;
        ps->backbone.end = out->nops;
        ps->out_buf = cur;

        ps->has_exit = last || mode != ERT_MODE_FULL;
        ps->head.begin = ps->head.end = ps->conf.begin = ps->conf.end = out->nops;
        ps->logits_buf = cur;
        if (ps->has_exit) {
            unsigned prot = 1u << cur;
            int lg = run_list(&b, x->head.items, x->head.count, cur, sg->out, prot);
            if (lg < 0)
                goto fail;
            ps->head.end = out->nops;
            ps->logits_buf = lg;
            ps->conf.begin = out->nops;
            if (x->policy == ERT_POLICY_CONFIDENCE_HEAD) {
                int cf = run_list(&b, x->confidence.items, x->confidence.count, cur, sg->out,
                                  prot | (unsigned)bit(lg));
                if (cf < 0)
                    goto fail;
                if (cf == cur || cf == lg) {
                    b.st = ert_fail(err, ERT_UNSUPPORTED,
                                    "program: exit %s: an empty confidence head", x->name);
                    goto fail;
                }
                ps->conf_buf = cf;
            }
            ps->conf.end = out->nops;
            /* the heads' outputs are read by the exit kernel, then free */
            if (lg != cur)
                buf_free(&b, lg);
            buf_free(&b, ps->conf_buf);
        }
        if (mode == ERT_MODE_COMPACTED && !last) {
            int g = buf_alloc(&b);
            if (g < 0)
                goto fail;
            ps->gather_buf = g;
            buf_free(&b, cur);
            cur = g;
        }
    }
    out->nbuf = b.nbuf;
    return ERT_OK;

fail:
    program_free(out);
    return b.st != ERT_OK ? b.st : ERT_INTERNAL;
}

void program_free(program *prog)
{
    if (!prog)
        return;
    free(prog->ops);
    prog->ops = NULL;
    prog->nops = 0;
}

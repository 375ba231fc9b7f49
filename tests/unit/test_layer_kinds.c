/* test_layer_kinds.c - every layer kind models/FORMAT.md documents has a
 * name, an op (program_layer_op, the table program_build compiles with), a
 * shape rule and a MAC rule. The documented kinds are read from FORMAT.md's
 * two layer tables ("## Layers" and the transformers' "### Layers"), so a
 * kind added to the format without its entries, or to the code without its
 * documentation, fails here. The shape and MAC rules are checked on loaded
 * models holding every kind: shapes and MACs by hand for the layers whose
 * rule is a closed form, set and positive for the rest. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "model.h"
#include "model_writer.h"
#include "plan.h"
#include "program.h"

#define MAX_DOC 64

/* The type names in the first column of FORMAT.md's layer tables. */
static int documented_kinds(char names[][32])
{
    char path[1024];
    snprintf(path, sizeof path, "%s/models/FORMAT.md", ERT_SOURCE_DIR);
    FILE *f = fopen(path, "r");
    cr_assert(f, "cannot open %s", path);
    char line[8192];
    int in_layers = 0, n = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') {
            in_layers = strcmp(line, "## Layers\n") == 0 || strcmp(line, "### Layers\n") == 0;
            continue;
        }
        if (!in_layers || strncmp(line, "| `", 3) != 0)
            continue;
        char *end = strchr(line + 1, '|'); /* the first cell */
        cr_assert(end, "FORMAT.md: a table row without cells: %s", line);
        *end = '\0';
        for (char *p = strchr(line, '`'); p; p = strchr(p, '`')) {
            char *q = strchr(p + 1, '`');
            cr_assert(q, "FORMAT.md: unbalanced ` in %s", line);
            cr_assert_lt(n, MAX_DOC);
            cr_assert_lt(q - p - 1, 32);
            memcpy(names[n], p + 1, (size_t)(q - p - 1));
            names[n][q - p - 1] = '\0';
            n++;
            p = q + 1;
        }
    }
    fclose(f);
    return n;
}

static int kind_of(const char *name)
{
    for (int k = 0; k < LAYER_KIND_COUNT; k++)
        if (strcmp(layer_kind_name((layer_kind)k), name) == 0)
            return k;
    return -1;
}

/* Kinds that compile to no op, and why (the test's own list). */
static int no_op_kind(layer_kind k)
{
    return k == LAYER_FLATTEN        /* moves no data */
           || k == LAYER_BATCHNORM2D /* folded into its conv2d at load */
           || k == LAYER_DROPOUT;    /* removed at load */
}

Test(layer_kinds, every_documented_kind_has_a_name_and_an_op)
{
    char names[MAX_DOC][32];
    int n = documented_kinds(names);
    cr_assert_geq(n, 19, "FORMAT.md: only %d layer types found in its layer tables", n);
    int seen[LAYER_KIND_COUNT] = {0};
    for (int i = 0; i < n; i++) {
        int k = kind_of(names[i]);
        cr_assert_geq(k, 0, "FORMAT.md documents layer type '%s', which the loader has no kind for",
                      names[i]);
        seen[k] = 1;
        prog_op_kind op = OP_GAP;
        int r = program_layer_op((layer_kind)k, &op);
        cr_assert(r == 1 || (r == 0 && no_op_kind((layer_kind)k)),
                  "'%s': program_layer_op gives %d (op %d)", names[i], r, (int)op);
    }
    for (int k = 0; k < LAYER_KIND_COUNT; k++)
        cr_assert(seen[k], "layer kind %d ('%s') is not documented in FORMAT.md's layer tables", k,
                  layer_kind_name((layer_kind)k));
    prog_op_kind op;
    cr_assert_eq(program_layer_op(LAYER_KIND_COUNT, &op), -1);
    cr_assert_eq(program_layer_op((layer_kind)-1, &op), -1);
}

typedef struct kinds_seen {
    int shape[LAYER_KIND_COUNT]; /* layers of the kind with an output shape */
    int macs[LAYER_KIND_COUNT];  /* ... and MACs > 0 */
} kinds_seen;

static void check_list(const layer_list *ls, kinds_seen *ks)
{
    for (int i = 0; i < ls->count; i++) {
        const layer *l = &ls->items[i];
        cr_assert(l->kind >= 0 && l->kind < LAYER_KIND_COUNT, "layer %s: kind %d", l->name,
                  (int)l->kind);
        const char *kn = layer_kind_name(l->kind);
        cr_assert(!no_op_kind(l->kind) || l->kind == LAYER_FLATTEN,
                  "layer %s: a %s survived the load", l->name, kn);
        cr_assert(l->out.c >= 1 && l->out.h >= 1 && l->out.w >= 1,
                  "layer %s (%s): no output shape (%dx%dx%d)", l->name, kn, l->out.c, l->out.h,
                  l->out.w);
        ks->shape[l->kind]++;
        if (l->macs > 0)
            ks->macs[l->kind]++;
        size_t in = shape_size(l->in), out = shape_size(l->out);
        switch (l->kind) {
        case LAYER_LINEAR: {
            const linear_params *p = &l->p.linear;
            if (l->in.tokens == SHAPE_PLAIN) {
                cr_assert_eq(in, (size_t)p->in_features, "%s", l->name);
                cr_assert_eq(out, (size_t)p->out_features, "%s", l->name);
                cr_assert_eq(l->macs, (uint64_t)p->in_features * (uint64_t)p->out_features,
                             "%s: %llu MACs", l->name, (unsigned long long)l->macs);
            }
            break;
        }
        case LAYER_CONV2D: {
            const conv_params *c = &l->p.conv;
            int oh = (l->in.h + 2 * c->pad_h - c->dil_h * (c->kh - 1) - 1) / c->stride_h + 1;
            int ow = (l->in.w + 2 * c->pad_w - c->dil_w * (c->kw - 1) - 1) / c->stride_w + 1;
            cr_assert(l->out.c == c->out_ch && l->out.h == oh && l->out.w == ow,
                      "%s: %dx%dx%d, expected %dx%dx%d", l->name, l->out.c, l->out.h, l->out.w,
                      c->out_ch, oh, ow);
            uint64_t want = (uint64_t)c->out_ch * (uint64_t)oh * (uint64_t)ow *
                            (uint64_t)(c->in_ch / c->groups) * (uint64_t)c->kh * (uint64_t)c->kw;
            cr_assert_eq(l->macs, want, "%s: %llu MACs, expected %llu", l->name,
                         (unsigned long long)l->macs, (unsigned long long)want);
            break;
        }
        case LAYER_FLATTEN:
            cr_assert(l->out.c == (int)in && l->out.h == 1 && l->out.w == 1, "%s", l->name);
            break;
        case LAYER_GLOBAL_AVGPOOL:
            cr_assert(l->out.c == l->in.c && l->out.h == 1 && l->out.w == 1, "%s", l->name);
            break;
        case LAYER_RELU:
        case LAYER_SIGMOID:
        case LAYER_GELU:
        case LAYER_TANH:
        case LAYER_LAYER_NORM:
        case LAYER_SELF_ATTENTION:
        case LAYER_ENCODER_BLOCK:
            cr_assert_eq(out, in, "%s (%s): the same shape", l->name, kn);
            break;
        case LAYER_RESIDUAL:
            check_list(&l->p.residual.body, ks);
            check_list(&l->p.residual.shortcut, ks);
            break;
        case LAYER_BATCHNORM2D:
        case LAYER_MAXPOOL2D:
        case LAYER_AVGPOOL2D:
        case LAYER_DROPOUT:
        case LAYER_PATCH_EMBED:
        case LAYER_TOKEN_EMBED:
        case LAYER_TOKEN_POOL:
        case LAYER_KIND_COUNT: break;
        }
    }
}

/* Every op of the compiled program is its layer's op in the table, but for
 * an activation fused into the op before it (then no op names it) and a
 * residual join fused into the body's last conv (OP_CONV with in2). */
static void check_program(const ert_model *m, int fuse)
{
    plan p;
    plan_build(m, &p);
    program g;
    ert_error err = {{0}};
    program_opts o = {.fuse_residual = fuse};
    cr_assert_eq(program_build(m, &p, ERT_MODE_MASKED, &o, &g, &err), ERT_OK, "%s", err.msg);
    for (int i = 0; i < g.nops; i++) {
        const prog_op *op = &g.ops[i];
        if (!op->l)
            continue;
        prog_op_kind want = OP_GAP;
        cr_assert_eq(program_layer_op(op->l->kind, &want), 1, "op %d: layer %s", i, op->l->name);
        cr_assert(op->kind == want || (op->kind == OP_CONV && op->in2 >= 0),
                  "op %d: layer %s (%s) ran as op %d, the table says %d", i, op->l->name,
                  layer_kind_name(op->l->kind), (int)op->kind, (int)want);
    }
    program_free(&g);
}

Test(layer_kinds, every_kind_has_a_shape_and_mac_rule)
{
    kinds_seen ks = {{0}, {0}};
    for (int kind = 0; kind < MW_ALL_KINDS; kind++) {
        for (uint64_t seed = 1; seed <= 2; seed++) {
            ert_model *m = fx_random_model(seed * 7919u + (uint64_t)kind, (mw_kind)kind);
            check_list(&m->backbone, &ks);
            for (int e = 0; e < m->num_exits; e++) {
                check_list(&m->exits[e].head, &ks);
                check_list(&m->exits[e].confidence, &ks);
            }
            check_program(m, 0);
            check_program(m, 1);
            ert_model_free(m);
        }
    }
    for (int k = 0; k < LAYER_KIND_COUNT; k++) {
        if (k == LAYER_BATCHNORM2D || k == LAYER_DROPOUT)
            continue; /* removed at load */
        const char *kn = layer_kind_name((layer_kind)k);
        cr_assert_gt(ks.shape[k], 0, "no test model holds a %s layer", kn);
        /* MACs count the products of conv2d, linear and attention (plan.h):
           the element-wise, pooling and data-moving ones none */
        int costs = k == LAYER_CONV2D || k == LAYER_LINEAR || k == LAYER_RESIDUAL ||
                    k == LAYER_PATCH_EMBED || k == LAYER_SELF_ATTENTION || k == LAYER_ENCODER_BLOCK;
        if (costs)
            cr_assert_eq(ks.macs[k], ks.shape[k], "%s: %d of %d layers counted no MACs", kn,
                         ks.shape[k] - ks.macs[k], ks.shape[k]);
        else
            cr_assert_eq(ks.macs[k], 0, "%s: %d layers counted MACs", kn, ks.macs[k]);
    }
}

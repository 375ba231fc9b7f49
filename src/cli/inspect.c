/* inspect.c - `exitrt inspect MODEL`: the graph, stages, exits, parameters
 * and MACs of a loaded model. Reads the model's internals (model.h, plan.h):
 * the command is part of the project, not a user of the public API only. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "act.h"
#include "cli.h"
#include "model.h"
#include "plan.h"

static const char INSPECT_USAGE[] =
    "usage: exitrt inspect MODEL\n"
    "\n"
    "Loads MODEL (a model directory or its model.json), validates it, and\n"
    "prints its input and normalisation, classes, the backbone layers with\n"
    "shapes, parameters and MACs per sample, the stages between exits, and\n"
    "each exit's policy, threshold and head MACs.\n";

static uint64_t list_params(const layer_list *l);

static uint64_t layer_params(const layer *ly)
{
    switch (ly->kind) {
    case LAYER_CONV2D: {
        const conv_params *c = &ly->p.conv;
        uint64_t w = (uint64_t)c->out_ch * (uint64_t)(c->in_ch / (c->groups ? c->groups : 1)) *
                     (uint64_t)c->kh * (uint64_t)c->kw;
        return w + (c->bias ? (uint64_t)c->out_ch : 0);
    }
    case LAYER_LINEAR: {
        const linear_params *p = &ly->p.linear;
        return (uint64_t)p->in_features * (uint64_t)p->out_features +
               (p->bias ? (uint64_t)p->out_features : 0);
    }
    case LAYER_RESIDUAL:
        return list_params(&ly->p.residual.body) + list_params(&ly->p.residual.shortcut);
    case LAYER_LAYER_NORM: return 2 * (uint64_t)ly->p.norm.dim;
    case LAYER_SELF_ATTENTION: return 4 * (uint64_t)ly->p.attn.dim * (ly->p.attn.dim + 1);
    case LAYER_ENCODER_BLOCK: {
        const encoder_params *p = &ly->p.enc;
        uint64_t D = (uint64_t)p->attn.dim, F = (uint64_t)p->ff1.out_features;
        return 4 * D * (D + 1) + 4 * D + 2 * D * F + F + D;
    }
    case LAYER_PATCH_EMBED: {
        const patch_params *p = &ly->p.patch;
        uint64_t D = (uint64_t)p->conv.out_ch;
        return D * (uint64_t)p->conv.in_ch * (uint64_t)p->conv.kh * (uint64_t)p->conv.kw + D +
               (p->cls ? D : 0) + (uint64_t)p->pos_len * D;
    }
    case LAYER_TOKEN_EMBED: {
        const embed_params *p = &ly->p.embed;
        uint64_t D = (uint64_t)p->dim;
        return (uint64_t)p->vocab * D + (uint64_t)p->pos_len * D + (p->segment ? D : 0);
    }
    case LAYER_BATCHNORM2D: /* folded into its conv at load */
    case LAYER_RELU:
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D:
    case LAYER_GLOBAL_AVGPOOL:
    case LAYER_FLATTEN:
    case LAYER_DROPOUT:
    case LAYER_SIGMOID:
    case LAYER_GELU:
    case LAYER_TANH:
    case LAYER_TOKEN_POOL:
    case LAYER_KIND_COUNT: return 0; /* no parameters */
    }
    return 0; /* not a layer kind: the loader makes none */
}

static uint64_t list_params(const layer_list *l)
{
    uint64_t n = 0;
    for (int i = 0; i < l->count; i++)
        n += layer_params(&l->items[i]);
    return n;
}

/* The layer's settings, e.g. "16->32 k3x3 s1 p1". */
static void layer_detail(const layer *ly, char *buf, size_t len)
{
    buf[0] = '\0';
    switch (ly->kind) {
    case LAYER_CONV2D: {
        const conv_params *c = &ly->p.conv;
        int n = snprintf(buf, len, "%d->%d k%dx%d s%dx%d p%dx%d", c->in_ch, c->out_ch, c->kh, c->kw,
                         c->stride_h, c->stride_w, c->pad_h, c->pad_w);
        if (n > 0 && (size_t)n < len && (c->dil_h != 1 || c->dil_w != 1))
            n += snprintf(buf + n, len - (size_t)n, " d%dx%d", c->dil_h, c->dil_w);
        if (n > 0 && (size_t)n < len && c->groups != 1)
            snprintf(buf + n, len - (size_t)n, " g%d", c->groups);
        break;
    }
    case LAYER_MAXPOOL2D:
    case LAYER_AVGPOOL2D: {
        const pool_params *p = &ly->p.pool;
        snprintf(buf, len, "k%dx%d s%dx%d p%dx%d", p->kh, p->kw, p->stride_h, p->stride_w, p->pad_h,
                 p->pad_w);
        break;
    }
    case LAYER_LINEAR:
        snprintf(buf, len, "%d->%d%s", ly->p.linear.in_features, ly->p.linear.out_features,
                 ly->p.linear.bias ? "" : " no bias");
        break;
    case LAYER_RESIDUAL:
        snprintf(buf, len, "%s%s", ly->p.residual.shortcut.count ? "projection" : "identity",
                 ly->p.residual.relu_after ? ", relu after add" : "");
        break;
    case LAYER_PATCH_EMBED:
        snprintf(buf, len, "%d->%d patch %dx%d%s%s", ly->p.patch.conv.in_ch,
                 ly->p.patch.conv.out_ch, ly->p.patch.conv.kh, ly->p.patch.conv.kw,
                 ly->p.patch.cls ? " +cls" : "", ly->p.patch.pos ? " +pos" : "");
        break;
    case LAYER_TOKEN_EMBED:
        snprintf(buf, len, "vocab %d->%d%s%s", ly->p.embed.vocab, ly->p.embed.dim,
                 ly->p.embed.pos ? " +pos" : "", ly->p.embed.segment ? " +seg" : "");
        break;
    case LAYER_LAYER_NORM:
        snprintf(buf, len, "%d eps %g", ly->p.norm.dim, (double)ly->p.norm.eps);
        break;
    case LAYER_SELF_ATTENTION:
        snprintf(buf, len, "D%d H%d", ly->p.attn.dim, ly->p.attn.heads);
        break;
    case LAYER_ENCODER_BLOCK:
        snprintf(buf, len, "D%d H%d F%d %s %s", ly->p.enc.attn.dim, ly->p.enc.attn.heads,
                 ly->p.enc.ff1.out_features, ly->p.enc.norm_first ? "pre-LN" : "post-LN",
                 ly->p.enc.act == ERT_ACT_GELU ? "gelu" : "relu");
        break;
    case LAYER_TOKEN_POOL:
        snprintf(buf, len, "%s", ly->p.token_pool == TOKEN_POOL_MEAN ? "mean" : "first");
        break;
    case LAYER_BATCHNORM2D:
    case LAYER_RELU:
    case LAYER_GLOBAL_AVGPOOL:
    case LAYER_FLATTEN:
    case LAYER_DROPOUT:
    case LAYER_SIGMOID:
    case LAYER_GELU:
    case LAYER_TANH:
    case LAYER_KIND_COUNT: break; /* nothing to detail */
    }
}

static void print_shape(shape3 s, char *buf, size_t len)
{
    if (s.tokens == SHAPE_TOKENS) /* T tokens of D features (+ the mask column) */
        snprintf(buf, len, "%dx%d tok", s.c, s.h - 1);
    else if (s.tokens == SHAPE_IDS)
        snprintf(buf, len, "%d ids+mask", s.h);
    else if (s.h == 1 && s.w == 1)
        snprintf(buf, len, "[%d]", s.c);
    else
        snprintf(buf, len, "[%d,%d,%d]", s.c, s.h, s.w);
}

static void print_list(const layer_list *l, int depth, int first_index)
{
    for (int i = 0; i < l->count; i++) {
        const layer *ly = &l->items[i];
        char det[96], in[40], out[40], p[40], m[40], idx[16] = "";
        layer_detail(ly, det, sizeof det);
        print_shape(ly->in, in, sizeof in);
        print_shape(ly->out, out, sizeof out);
        if (first_index >= 0)
            snprintf(idx, sizeof idx, "%2d ", first_index + i);
        int pad = 2 * depth + (first_index >= 0 ? 0 : 3);
        char label[ERT_NAME_LEN + 40];
        snprintf(label, sizeof label, "%*s%s%s", pad, "", idx, ly->name);
        printf("  %-28s %-14s %-26s %14s -> %-14s params %10s  MACs %12s\n", label,
               layer_kind_name(ly->kind), det, in, out, cli_commas(layer_params(ly), p, sizeof p),
               cli_commas(ly->macs, m, sizeof m));
        if (ly->kind == LAYER_RESIDUAL) {
            printf("  %*sbody:\n", pad + 5, "");
            print_list(&ly->p.residual.body, depth + 3, -1);
            if (ly->p.residual.shortcut.count) {
                printf("  %*sshortcut:\n", pad + 5, "");
                print_list(&ly->p.residual.shortcut, depth + 3, -1);
            }
        }
    }
}

static void print_floats(const char *label, const float *v, int n)
{
    printf("%s [", label);
    for (int i = 0; i < n; i++)
        printf("%s%.6g", i ? ", " : "", (double)v[i]);
    printf("]");
}

int cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(INSPECT_USAGE, stdout);
            return CLI_OK;
        }
        if (argv[i][0] == '-' && argv[i][1] != '\0')
            return cli_error(CLI_USAGE,
                             "inspect: unknown option '%s' (see 'exitrt inspect --help')", argv[i]);
        if (path)
            return cli_error(CLI_USAGE, "inspect: unexpected argument '%s' (one MODEL only)",
                             argv[i]);
        path = argv[i];
    }
    if (!path)
        return cli_error(CLI_USAGE, "inspect: no MODEL given (see 'exitrt inspect --help')");

    ert_model *m = NULL;
    ert_error err = {{0}};
    ert_status st = ert_model_load(path, &m, &err);
    if (st != ERT_OK)
        return cli_error(CLI_FAIL, "%s", err.msg[0] ? err.msg : ert_status_string(st));
    plan pl;
    plan_build(m, &pl);
    char a[40], b[40];

    printf("model    %s\n", m->path);
    if (m->input_tokens > 0) {
        printf("input    %d tokens (a row of 2x%d floats: the ids, then the mask)  vocab %d\n",
               m->input_tokens, m->input_tokens, m->vocab);
    } else {
        printf("input    [%d, %d, %d]  scale %.6g  ", m->input.c, m->input.h, m->input.w,
               (double)m->input_scale);
        int nc = m->input.c <= 4 ? m->input.c : 4;
        print_floats("mean", m->mean, nc);
        printf("  ");
        print_floats("std", m->std, nc);
        printf("\n");
    }
    printf("classes  %d\n", m->num_classes);
    if (m->sample_data[0])
        printf("sample   %s\n", m->sample_data);
    if (m->sample_labels[0])
        printf("labels   %s\n", m->sample_labels);

    printf("\nbackbone (%d layers; shapes per sample, batch norm folded)\n", m->backbone.count);
    print_list(&m->backbone, 0, 0);

    printf("\nexits\n");
    for (int x = 0; x < m->num_exits; x++) {
        const exit_def *e = &m->exits[x];
        int final = x == m->num_exits - 1;
        char thr[32];
        if (final || isnan(e->threshold))
            snprintf(thr, sizeof thr, "-");
        else
            snprintf(thr, sizeof thr, "%.6g", (double)e->threshold);
        printf("  %d %-16s after %-16s policy %-16s threshold %-8s head MACs %s  params %s\n", x,
               e->name, m->backbone.items[e->after].name,
               final ? "final" : ert_policy_string(e->policy), thr,
               cli_commas(e->head_macs, a, sizeof a),
               cli_commas(list_params(&e->head) + list_params(&e->confidence), b, sizeof b));
        if (!final && e->policy == ERT_POLICY_PATIENCE) {
            if (e->threshold == 1.0f)
                printf("      patience 1: a sample leaves here whenever its logits are finite\n");
            else if (e->threshold > (float)(x + 1))
                printf("      patience %s: never fires (exit %d is only the %d%s exit)\n", thr, x,
                       x + 1,
                       x == 0   ? "st"
                       : x == 1 ? "nd"
                       : x == 2 ? "rd"
                                : "th");
            else
                printf("      patience %s: a sample leaves once its class was the same at the "
                       "last %s exits (this one included)\n",
                       thr, thr);
        }
        if (e->head.count) {
            printf("      head:\n");
            print_list(&e->head, 3, -1);
        }
        if (e->confidence.count) {
            printf("      confidence:\n");
            print_list(&e->confidence, 3, -1);
        }
    }

    printf("\nstages (stage s runs its layers, then exit s's head)\n");
    uint64_t cum = 0;
    for (int s = 0; s < pl.num_stages; s++) {
        const stage *sg = &pl.stages[s];
        const exit_def *e = &m->exits[s];
        char range[2 * ERT_NAME_LEN + 96];
        if (sg->end > sg->begin)
            snprintf(range, sizeof range, "layers %d..%d (%s..%s)", sg->begin, sg->end - 1,
                     m->backbone.items[sg->begin].name, m->backbone.items[sg->end - 1].name);
        else
            snprintf(range, sizeof range, "no layers");
        cum += sg->macs;
        char in[40], out[40], c[40];
        print_shape(sg->in, in, sizeof in);
        print_shape(sg->out, out, sizeof out);
        printf("  %d %-40s %12s -> %-12s MACs %12s  + head %-10s %12s  (to exit: %s, %.1f%% of "
               "full)\n",
               s, range, in, out, cli_commas(sg->macs, a, sizeof a), e->name,
               cli_commas(e->head_macs, b, sizeof b), cli_commas(cum + e->head_macs, c, sizeof c),
               m->macs_full ? 100.0 * (double)(cum + e->head_macs) / (double)m->macs_full : 0.0);
    }

    uint64_t params = list_params(&m->backbone);
    for (int x = 0; x < m->num_exits; x++)
        params += list_params(&m->exits[x].head) + list_params(&m->exits[x].confidence);
    printf("\nparameters   %s (after folding)\n", cli_commas(params, a, sizeof a));
    printf("MACs full    %s per sample (backbone %s + final head)\n",
           cli_commas(m->macs_full, a, sizeof a), cli_commas(m->backbone_macs, b, sizeof b));
    printf("MACs masked  %s per sample (backbone + every head)\n",
           cli_commas(pl.macs_all_heads, a, sizeof a));
    ert_model_free(m);
    return CLI_OK;
}

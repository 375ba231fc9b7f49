/* plan.c - a loaded model cut into stages at its exits. */
#include "plan.h"

#include <string.h>

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* Largest activation and im2col matrix (floats per sample) in a list. */
static void list_sizes(const layer_list *l, size_t *act, size_t *col)
{
    for (int i = 0; i < l->count; i++) {
        const layer *ly = &l->items[i];
        *act = max_sz(*act, max_sz(shape_size(ly->in), shape_size(ly->out)));
        if (ly->kind == LAYER_CONV2D) {
            const conv_params *c = &ly->p.conv;
            size_t rows = (size_t)(c->in_ch / c->groups) * (size_t)c->kh * (size_t)c->kw;
            *col = max_sz(*col, rows * (size_t)ly->out.h * (size_t)ly->out.w);
        } else if (ly->kind == LAYER_RESIDUAL) {
            list_sizes(&ly->p.residual.body, act, col);
            list_sizes(&ly->p.residual.shortcut, act, col);
        }
    }
}

void plan_build(const ert_model *m, plan *p)
{
    memset(p, 0, sizeof *p);
    p->num_stages = m->num_exits;
    int begin = 0;
    for (int s = 0; s < m->num_exits; s++) {
        stage *st = &p->stages[s];
        st->begin = begin;
        st->end = m->exits[s].after + 1;
        st->in = begin == 0 ? m->input : m->backbone.items[begin - 1].out;
        st->out = m->backbone.items[st->end - 1].out;
        for (int i = st->begin; i < st->end; i++)
            st->macs += m->backbone.items[i].macs;
        begin = st->end;
    }
    p->max_act = shape_size(m->input);
    list_sizes(&m->backbone, &p->max_act, &p->max_col);
    p->macs_all_heads = m->backbone_macs;
    for (int s = 0; s < m->num_exits; s++) {
        list_sizes(&m->exits[s].head, &p->max_act, &p->max_col);
        list_sizes(&m->exits[s].confidence, &p->max_act, &p->max_col);
        p->macs_all_heads += m->exits[s].head_macs;
    }
}

uint64_t plan_ideal_macs(const ert_model *m, const plan *p, const int32_t *exit_counts)
{
    uint64_t rows = 0, macs = 0;
    for (int s = 0; s < p->num_stages; s++)
        rows += (uint64_t)exit_counts[s];
    for (int s = 0; s < p->num_stages; s++) {
        macs += rows * (p->stages[s].macs + m->exits[s].head_macs);
        rows -= (uint64_t)exit_counts[s];
    }
    return macs;
}

/* plan.h - a model cut into stages, with shapes, buffer sizes and MACs.
 *
 * Stage s runs backbone layers (exits[s-1].after, exits[s].after] (stage 0
 * starts at layer 0), then exit s's head reads its output. The last stage
 * ends at the backbone's last layer and feeds the final head. So there are
 * exactly num_exits stages.
 *
 * MACs per sample: conv2d = out_ch * Hout * Wout * (in_ch/groups) * kh * kw;
 * linear = in * out; residual = its body + shortcut; patch_embed,
 * self_attention and encoder_block: their products (model_finalize.c);
 * every other layer 0.
 * The ideal early-exit cost of a batch is
 *   sum_s rows_entering(s) * (stage_macs[s] + head_macs[s])
 * which is what COMPACTED executes. FULL executes batch * macs_full; MASKED
 * executes batch * (backbone + every head).
 */
#ifndef ERT_PLAN_H
#define ERT_PLAN_H

#include "model.h"

typedef struct stage {
    int begin, end; /* backbone layers [begin, end) */
    shape3 in, out; /* per sample */
    uint64_t macs;  /* backbone MACs of the stage, per sample */
} stage;

typedef struct plan {
    stage stages[ERT_MAX_EXITS];
    int num_stages;          /* == model->num_exits */
    size_t max_act;          /* floats per sample of the largest activation anywhere
                           (input, backbone, residual internals, heads) */
    size_t max_col;          /* floats per sample of the largest im2col matrix
                           (in_ch/groups*kh*kw * Hout*Wout), 0 if no conv */
    uint64_t macs_all_heads; /* backbone + every head, per sample (MASKED) */
} plan;

/* Builds the plan of a loaded (validated) model. Cannot fail for a model
 * ert_model_load accepted. */
void plan_build(const ert_model *m, plan *out);

/* The ideal MACs of a batch whose exit counts are given:
 * sum over stages of rows entering * (stage + head MACs). */
uint64_t plan_ideal_macs(const ert_model *m, const plan *p, const int32_t *exit_counts);

#endif /* ERT_PLAN_H */

/* model_api.c - the public API's model getters, and ert_pack_tokens
 * (the input rows of a token model: models/FORMAT.md, "Token inputs"). */
#include <math.h>
#include <string.h>

#include "model.h"
#include "util.h"

int ert_model_num_exits(const ert_model *m) { return m ? m->num_exits : 0; }
int ert_model_num_classes(const ert_model *m) { return m ? m->num_classes : 0; }
size_t ert_model_input_size(const ert_model *m) { return m ? shape_size(m->input) : 0; }

int ert_model_input_tokens(const ert_model *m) { return m ? m->input_tokens : 0; }
int ert_model_vocab_size(const ert_model *m) { return m ? m->vocab : 0; }

ert_status ert_pack_tokens(const ert_model *m, const int32_t *ids, const int32_t *mask, int n,
                           float *rows, ert_error *err)
{
    if (!m || !ids || !rows)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_pack_tokens: %s is NULL",
                        !m     ? "model"
                        : !ids ? "ids"
                               : "rows");
    if (m->input_tokens < 1)
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "ert_pack_tokens: the model takes images, not tokens");
    if (n < 0)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_pack_tokens: n is %d", n);
    const size_t T = (size_t)m->input_tokens;
    for (size_t i = 0; i < (size_t)n; i++) {
        float *row = rows + i * 2 * T;
        for (size_t t = 0; t < T; t++) {
            int32_t id = ids[i * T + t];
            if (id < 0 || id >= m->vocab)
                return ert_fail(err, ERT_INVALID_ARGUMENT,
                                "ert_pack_tokens: sequence %zu, token %zu: id %d outside the "
                                "vocabulary [0, %d)",
                                i, t, (int)id, m->vocab);
            row[t] = (float)id;
            row[T + t] = !mask || mask[i * T + t] != 0 ? 1.0f : 0.0f;
        }
    }
    return ERT_OK;
}

void ert_model_input_shape(const ert_model *m, int *c, int *h, int *w)
{
    if (c)
        *c = m ? m->input.c : 0;
    if (h)
        *h = m ? m->input.h : 0;
    if (w)
        *w = m ? m->input.w : 0;
}

const char *ert_model_exit_name(const ert_model *m, int i)
{
    return m && i >= 0 && i < m->num_exits ? m->exits[i].name : NULL;
}

int ert_model_exit_index(const ert_model *m, const char *name)
{
    if (!m || !name)
        return -1;
    for (int i = 0; i < m->num_exits; i++)
        if (strcmp(m->exits[i].name, name) == 0)
            return i;
    return -1;
}

ert_policy_kind ert_model_exit_policy(const ert_model *m, int i)
{
    return m && i >= 0 && i < m->num_exits ? m->exits[i].policy : ERT_POLICY_NONE;
}

float ert_model_exit_threshold(const ert_model *m, int i)
{
    return m && i >= 0 && i < m->num_exits ? m->exits[i].threshold : NAN;
}

uint64_t ert_model_macs_full(const ert_model *m) { return m ? m->macs_full : 0; }

const char *ert_model_sample_data(const ert_model *m)
{
    return m && m->sample_data[0] ? m->sample_data : NULL;
}

const char *ert_model_sample_labels(const ert_model *m)
{
    return m && m->sample_labels[0] ? m->sample_labels : NULL;
}

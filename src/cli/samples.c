/* samples.c - the data set and labels a command runs on, checked against
 * the model (shared by run and calibrate). */
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cli_load_samples(const char *model_path, const ert_model *m, const char *data,
                     const char *labels, int need_labels, cli_samples *out)
{
    ert_error err = {{0}};
    ert_status st;
    memset(out, 0, sizeof *out);
    out->data_path = data;
    out->labels_path = labels;
    if (!data) {
        out->data_path = ert_model_sample_data(m);
        if (!out->data_path || !out->data_path[0])
            return cli_error(CLI_USAGE, "%s: the model names no sample data; give --data FILE",
                             model_path);
        if (!labels) {
            out->labels_path = ert_model_sample_labels(m);
            if (out->labels_path && !out->labels_path[0])
                out->labels_path = NULL;
        }
    }
    if (need_labels && !out->labels_path)
        return cli_error(CLI_USAGE, "%s: no labels: give --labels FILE", out->data_path);
    if ((st = cli_dataset_load(out->data_path, &out->data, &err)) != ERT_OK)
        return cli_error(CLI_FAIL, "%s", err.msg);
    if ((st = cli_dataset_fit_model(&out->data, out->data_path, m, &err)) != ERT_OK)
        return cli_error(CLI_FAIL, "%s", err.msg);
    if (!out->labels_path)
        return 0;
    if ((st = cli_labels_load(out->labels_path, &out->labels, &err)) != ERT_OK)
        return cli_error(CLI_FAIL, "%s", err.msg);
    if (out->labels.count != out->data.count)
        return cli_error(CLI_FAIL, "%s has %zu labels but %s has %zu samples", out->labels_path,
                         out->labels.count, out->data_path, out->data.count);
    const int K = ert_model_num_classes(m);
    for (size_t i = 0; i < out->labels.count; i++)
        if (out->labels.values[i] < 0 || out->labels.values[i] >= K)
            return cli_error(CLI_FAIL, "%s: label %zu is %d, the model has %d classes",
                             out->labels_path, i, (int)out->labels.values[i], K);
    return 0;
}

void cli_samples_free(cli_samples *s)
{
    cli_dataset_free(&s->data);
    cli_labels_free(&s->labels);
}

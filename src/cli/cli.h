/* cli.h - shared pieces of the `exitrt` command.
 *
 * Exit statuses: 0 success, 1 a runtime or file error, 2 a usage error.
 * Every error is one line on stderr, "exitrt: <message>".
 */
#ifndef ERT_CLI_H
#define ERT_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "exitrt.h"

#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

/* Prints "exitrt: <message>" as one line on stderr (newlines in the message
 * become spaces) and returns code. */
int cli_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict integer parsing: the whole string, in range. 1 on success.
 * (Floating-point options: tools_parse_float and tools_parse_double,
 * tools.h, shared with the bench.) */
int cli_parse_long(const char *s, long min, long max, long *out);

/* --precision's value: "fp32" or "tf32" (ert_precision_string's names).
 * 1 on success. */
int cli_parse_precision(const char *s, ert_precision *out);

/* "1,234,567" into buf. */
const char *cli_commas(uint64_t v, char *buf, size_t len);

/* Option parsing shared by the verbs: matches argv[*i] against --name or
 * --name=VALUE. Returns 0 when it is another option, 1 when matched with
 * *value set (consuming the next argument when needed), -1 on a missing
 * value (message printed). */
int cli_opt_value(int argc, char **argv, int *i, const char *name, const char **value);

/* "0.3" for 0.3f: the shortest decimal that reads back as the same float. */
double cli_float_decimal(float v);

/* A command's data set and labels. */
typedef struct cli_samples {
    const char *data_path;   /* --data, or the model's sample data */
    const char *labels_path; /* --labels, the model's sample labels (when
                                --data was not given), or NULL */
    cli_dataset data;
    cli_labels labels; /* count 0 without labels */
} cli_samples;

/* Loads data (NULL: the model's sample data, and then its sample labels
 * unless labels is given) and labels, and checks them against the model:
 * values per sample, as many labels as samples, labels in [0, K). With
 * need_labels, having no labels is a usage error. The data's layout must be
 * the model's input (cli_dataset_check_shape). Returns 0, or the CLI status
 * after printing the error (free *out either way). */
int cli_load_samples(const char *model_path, const ert_model *m, const char *data,
                     const char *labels, int need_labels, cli_samples *out);
void cli_samples_free(cli_samples *s);

/* Writes a copy of the model MODEL (a directory or its model.json) into
 * out_dir with each early exit's threshold set from thresholds[exit]:
 * model.json with only the thresholds changed, the weights file copied, the
 * sample data it names reached by relative paths. All or nothing: the copy
 * is written to a temporary directory beside out_dir, checked to load, and
 * renamed into place. out_dir may be missing, empty, or an earlier copy
 * (model.json and its weights only: replaced as a whole); anything else
 * there, or the model's own directory, is refused before anything is
 * written. Returns 0, or the CLI status after printing the error (out_dir
 * then as it was, nothing left beside it). (model_copy.c) */
int cli_write_model(const char *model, const ert_model *m, const float *thresholds,
                    const char *out_dir);

int cmd_run(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_calibrate(int argc, char **argv);

/* ---- the run report (report.c) ---- */

typedef struct exit_report {
    const char *name;
    ert_policy_kind policy;
    float threshold; /* NaN for the final head */
    uint64_t taken;
    uint64_t correct; /* among those taken, when labels are given */
} exit_report;

#define REPORT_ROWS 10 /* non-finite rows the report lists */

typedef struct run_report {
    const char *model;
    const char *data;
    const char *labels; /* NULL without labels */
    uint64_t samples;
    int num_exits;
    exit_report exits[ERT_MAX_EXITS];
    uint64_t correct;
    uint64_t macs_executed, macs_full;
    uint64_t host_waits;
    /* Non-finite rows: a row counts once in nonfinite_samples when its
       input holds NaN or Inf (nonfinite_inputs), a token id outside the
       vocabulary (invalid_token_samples: run --allow-invalid-tokens) or when
       the exit it took gave a non-finite score, its logits not finite
       (nonfinite_outputs). The first REPORT_ROWS of them, in row order. */
    uint64_t nonfinite_samples;
    uint64_t nonfinite_inputs, invalid_token_samples, nonfinite_outputs;
    int nonfinite_listed;
    uint64_t nonfinite_rows[REPORT_ROWS];
    double seconds; /* inside the inference calls only */
    ert_mode mode;
    ert_backend device;
    ert_precision precision;
    unsigned cuda_options;
    int batch;
    const char *note; /* the engine's note (e.g. why CUDA graphs are off), "" if none */
    /* --mode refill: the mode prints as "refill", plus the per-sample
       latency from submit to finish */
    int refill;
    double latency_p50_s, latency_p99_s;
} run_report;

/* The human report on stdout. */
void report_print_text(const run_report *r);
/* One JSON object on stdout; returns 0, or -1 when out of memory. */
int report_print_json(const run_report *r);

#endif /* ERT_CLI_H */

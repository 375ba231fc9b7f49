/* bench_run.h - what one `exitrt bench` run holds, shared by bench.c (the
 * sweep), bench_report.c (table, JSON, plot) and bench_peer.c (the PyTorch peer). */
#ifndef ERT_BENCH_RUN_H
#define ERT_BENCH_RUN_H

#include <stdint.h>
#include <stdio.h>

#include "cuda_info.h"
#include "exitrt.h"
#include "model.h"
#include "plan.h"

#define BENCH_MAX_BATCHES 16
#define BENCH_MAX_PROFILES 16
#define BENCH_NAME_LEN 48

typedef struct bench_profile {
    char name[BENCH_NAME_LEN];
    double shares[ERT_MAX_EXITS]; /* target share per early exit, as given */
    int nshares;
    /* calibration on the N bench inputs */
    float thresholds[ERT_MAX_EXITS];   /* early exits only */
    int32_t targets[ERT_MAX_EXITS];    /* samples wanted per exit (final: the rest) */
    int32_t calibrated[ERT_MAX_EXITS]; /* samples per exit the scores give */
    int32_t achieved[ERT_MAX_EXITS];   /* samples per exit an engine gave (CPU, MASKED) */
    int32_t *exits;                    /* [N] each sample's exit (that engine) */
    /* the peer's check of its exit decisions against `exits` */
    int peer_checked;
    int peer_mismatch_masked, peer_mismatch_compacted;
    int peer_mismatch_b1if; /* PyTorch's batch-1-with-if loop; -1: not checked */
    int ort_mismatch;       /* ONNX Runtime pipeline vs exitrt; -1: not checked */
} bench_profile;

/* One measured cell: backend x profile x batch x mode. */
typedef struct bench_cell {
    ert_backend backend;
    int profile; /* index into run->prof */
    int batch;
    ert_mode mode;
    int reps, batches_per_rep, samples_per_rep;
    double samples_per_s;           /* samples_per_rep / median rep time */
    double p50_ms, p99_ms;          /* per-batch latency over every timed batch */
    double macs_per_sample;         /* executed (ert_result.macs_executed) */
    double padding_macs_per_sample; /* ert_result.macs_padding: bucket padding */
    double ideal_macs_per_sample;   /* plan_ideal_macs for the cell's exit counts */
    double ideal_speedup;           /* full MACs / ideal MACs */
    double speedup;                 /* samples/s over FULL's, same backend and batch */
    double efficiency;              /* speedup / ideal_speedup */
    double host_waits_per_batch;
    int32_t exit_counts[ERT_MAX_EXITS]; /* summed over one rep */
    double torch_samples_per_s;         /* the peer, same device/profile/batch/mode; < 0: none */
    double torch_best_ee;               /* the peer's best of MASKED/COMPACTED; < 0: none */
    double torch_b1if;        /* the peer's batch-1-with-if loop (DeeBERT's), same device and
                          profile, whatever the cell's batch; < 0: none */
    double ort_samples_per_s; /* ONNX Runtime (CPU): FULL cells the full network,
                                   COMPACTED cells its early-exit pipeline; < 0: none */
} bench_cell;

/* What the stages up to one exit cost: COMPACTED with every sample sent
 * to that exit (bench_stages.c). */
typedef struct bench_stage {
    ert_backend backend;
    int batch;
    int exit; /* every sample sent here: stages 0..exit run */
    int samples_per_rep;
    double macs_per_sample;             /* executed, from the first rep */
    double us_per_sample;               /* the median rep's time / samples_per_rep */
    int32_t exit_counts[ERT_MAX_EXITS]; /* the first rep's */
} bench_stage;

typedef struct bench_run {
    const char *model_path;
    ert_model *model;
    plan plan;
    int num_exits;
    int random_weights;
    char input_desc[1200]; /* where the bench inputs came from */
    int n;                 /* bench inputs: max batch size */
    float *inputs;         /* [(n + max batch) * input size]: rows wrap around */
    size_t input_size;

    int batches[BENCH_MAX_BATCHES], nbatches;
    bench_profile prof[BENCH_MAX_PROFILES];
    int nprof;
    int mode_on[3];    /* requested modes (FULL is always measured) */
    int backend_on[3]; /* indexed by ert_backend */
    int reps, warmup, rep_samples, threads, inflight;
    int b1_samples;          /* the peer's batch1-if: samples per rep (0: off; -1: rep_samples) */
    int peer_runs;           /* 1: the peer once (OpenMP's default wait); 2: also PASSIVE */
    int peer_dense;          /* --peer-dense: the peer's encoders without nested tensors */
    int graph_buckets;       /* -1: the engine's default */
    ert_precision precision; /* --precision (default FP32) */
    unsigned cuda_options;   /* --fused-attention: ERT_CUDA_FUSED_ATTENTION */
    int quick;
    int no_default_profiles; /* --no-default-profiles: the --profile ones alone */

    bench_cell *cells;
    int ncells, cap;

    /* stage costs: thresholds that send every sample to exit k, and the
       results (num_exits per backend and batch) */
    int no_stages; /* --no-stages */
    float stage_thr[ERT_MAX_EXITS][ERT_MAX_EXITS];
    bench_stage *stages;
    int nstages;

    int peer_requested, peer_ok;
    char peer_note[512]; /* why the peer did not run, or its version */
    char ort_note[256];  /* ONNX Runtime: its version, or why it did not run */
    /* FULL at drift_batch on drift_backend, timed again at the end */
    int drift_batch;
    ert_backend drift_backend;
    double drift_before, drift_after;
    char date[32];      /* UTC, ISO 8601 */
    const char *commit; /* the build's `git describe` (ert_commit.h) */
    cuda_info cuda;     /* device 0 and the CUDA libraries, when the CUDA backend runs */
} bench_run;

/* bench_report.c */
void bench_print_table(const bench_run *r, FILE *out);
/* Writes every cell as JSON (schema in bench/README.md) to f (the
 * temporary of --json: write errors are found when it is committed). 0 on
 * success, -1 when out of memory. */
int bench_write_json(const bench_run *r, FILE *f);
/* Draws throughput and efficiency against batch size per mode with
 * gnuplot into the file path (the temporary of --plot, named shown in
 * messages). 0 on success; on failure prints why to stderr. */
int bench_write_plot(const bench_run *r, const char *path, const char *shown);

/* bench_stages.c: thresholds that send every sample to exit k (from the
 * calibration's scores, [n * num_exits]) into stage_thr[k]; 0 or -1 (out
 * of memory). */
/* The engine a timed cell runs: the bench's threads, in-flight batches,
 * graph buckets, precision and CUDA options, on backend be in mode at
 * max_batch batch. */
ert_engine_config bench_engine_config(const bench_run *r, ert_backend be, ert_mode mode, int batch);
int bench_stage_thresholds(bench_run *r, const ert_policy_kind *kinds, const float *scores);
/* Times COMPACTED on one backend and batch with stage_thr[k] for every exit
 * k, reps interleaved, and appends num_exits stages. 0 (also when skipped:
 * --no-stages, one exit), 1 when the engine cannot be made (said on
 * stderr), -1 on a failure. */
int bench_stage_sweep(bench_run *r, ert_backend be, int batch);
/* The stage table after the cells' (nothing without stages). */
void bench_print_stages(const bench_run *r, FILE *out);
/* Adds "stages" (bench/README.md) to the JSON root; -1 when out of memory. */
struct cJSON;
int bench_stages_json(const bench_run *r, struct cJSON *root);

/* bench_peer.c: runs bench/torch_peer.py on the same inputs, thresholds and batch
 * sizes, fills the cells' torch figures and the profiles' decision checks.
 * Returns 0 when the peer ran; otherwise sets r->peer_note. */
int bench_run_peer(bench_run *r);

/* Writes a C-order float32 or int32 array as .npy. 0 on success. */
int bench_write_npy(const char *path, const void *data, int is_int32, const int64_t *dims,
                    int ndim);

/* The command line as given (bench_args.c); bench_setup_sweep applies it. */
typedef struct bench_opts {
    const char *model, *data, *json, *plot, *device, *batches, *modes;
    const char *profiles[BENCH_MAX_PROFILES];
    int nprofiles;
    int reps_given, warmup_given, rep_samples_given, b1_samples_given;
} bench_opts;

/* Parses argv into r's settings and o. Returns 0, 3 after --help (printed),
 * or 2 after printing a usage error. */
int bench_parse_args(int argc, char **argv, bench_run *r, bench_opts *o);
/* Applies the defaults and --quick, then the explicit options over them:
 * batches, profiles, modes, backends. Returns 0, or 2 after printing a
 * usage error. */
int bench_setup_sweep(bench_run *r, const bench_opts *o);

#endif /* ERT_BENCH_RUN_H */

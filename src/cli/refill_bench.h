/* refill_bench.h - the refill stream (ert_stream_*) as a benchmark case.
 *
 * For `exitrt bench` (src/cli/bench.c), which can add a refill row with one
 * call per (engine, profile, batch):
 *
 *   refill_bench_result rr;
 *   ert_status st = refill_bench_run(engine, x, n, ert_model_input_size(m), batch, -1.0,
 *                                    ERT_SCHEDULE_DEEPEST_FIRST, NULL, &rr, &err);
 *
 * and report rr.samples_per_s, rr.latency_p50_s / p99_s, and the efficiency
 * (FULL's seconds / rr.seconds) / (rr.macs_full / rr.macs_ideal).
 */
#ifndef ERT_REFILL_BENCH_H
#define ERT_REFILL_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "exitrt.h"

typedef struct refill_bench_result {
    double seconds; /* inside the stream calls (submit, poll, flush) */
    double samples_per_s;
    double latency_p50_s, latency_p99_s; /* submit to finish, nearest rank */
    uint64_t macs_executed;              /* as the stream counted them */
    uint64_t macs_ideal;                 /* the ideal cost of the exits taken */
    uint64_t macs_full;                  /* n * the full network's */
    uint64_t stage_runs;                 /* over all stages */
    uint64_t partial_runs;               /* of them with fewer than batch rows */
    int64_t exit_counts[ERT_MAX_EXITS];
} refill_bench_result;

/* Runs n samples through a refill stream on engine e: x [n, C, H, W] raw
 * inputs, per = C*H*W floats each (ert_model_input_size); batch rows per stage run (1 .. e's max_batch); deadline_ms as in
 * ert_stream_config (negative: partial batches only at the final flush);
 * schedule. Submits a batch at a time, polls after every submit (flushing
 * when the queue is full and nothing finished), flushes at the end. Fills
 * samples [n] in sample order when not NULL, and *out. Returns ERT_OK, or
 * the failing status with the message in err (when not NULL). Prints
 * nothing. */
ert_status refill_bench_run(ert_engine *e, const float *x, size_t n, size_t per, int batch,
                            double deadline_ms, ert_stream_schedule schedule, ert_sample *samples,
                            refill_bench_result *out, ert_error *err);

/* One step of driving stream s over n inputs x (per floats each), shared by
 * refill_bench_run and `exitrt run --mode refill`: submits the next batch
 * from *off (advancing it), or flushes once when all are in (*flushed), then
 * polls up to cap finished samples into res (and logits z, when not NULL).
 * When the queue is full and nothing finished, every stage holds a partial
 * batch: only a flush moves them (ert_stream_submit), so it flushes. *got
 * receives the count polled. Returns the first failing status. */
ert_status refill_step(ert_stream *s, const float *x, size_t n, size_t per, int batch, size_t *off,
                       int *flushed, ert_stream_result *res, float *z, int cap, int *got);

#endif /* ERT_REFILL_BENCH_H */

/* backend_test.h - what the backend tests share, written once for both
 * backends.
 *
 * The files in tests/backend are compiled into test_cpu with
 * ERT_TEST_BACKEND=ERT_BACKEND_CPU and into test_gpu with ERT_BACKEND_CUDA
 * (tests/CMakeLists.txt), so a test written here runs on both.
 */
#ifndef ERT_BACKEND_TEST_H
#define ERT_BACKEND_TEST_H

#include "exitrt.h"
#include "fixtures.h"
#include "model_writer.h"

#ifndef ERT_TEST_BACKEND
#error "ERT_TEST_BACKEND must name the backend under test (see tests/CMakeLists.txt)"
#endif

/* Skips the test unless it runs on backend be (in test_cpu for the CPU, in
 * test_gpu for CUDA) and, for CUDA, a device is there. about: what the
 * test is about, for the message ("the CUDA backend's graphs"). */
void tb_only(ert_backend be, const char *about);

/* An engine for m on the backend under test, in this mode, for batches up
 * to max_batch. Fails the test when creation fails; on the CUDA build with no
 * usable device, skips the test (cr_skip_test, "no CUDA device") instead.
 * Free with ert_engine_free. */
ert_engine *tb_engine(ert_model *m, ert_mode mode, int max_batch);

/* An engine on backend be with the CUDA knobs too (graph_buckets, inflight);
 * fails the test when creation fails, naming the settings (fx_engine). Does
 * not skip: the caller checks for a device first. */
ert_engine *tb_engine_on(ert_model *m, ert_backend be, ert_mode mode, int max_batch,
                         int graph_buckets, int inflight);

/* Whether the tests require the engine's modes, refill stages and streams
 * to agree bit for bit: the expectation of tests/common/exact.h (the CPU
 * backend where its libraries round a row alike wherever it sits), not the
 * engine's own probe, which this checks against it (exact_engine). */
int tb_exact(const ert_engine *e);

/* Whether the engine's note (ert_engine_note) starts with prefix. */
int tb_note_is(const ert_engine *e, const char *prefix);

/* One result with its arrays, for batch rows of k classes. */
typedef struct tb_result {
    ert_result r;
    ert_sample *samples; /* [batch] */
    float *logits;       /* [batch * k] */
    int k;
} tb_result;

void tb_result_init(tb_result *t, int batch, int k);
void tb_result_free(tb_result *t);

/* ert_infer into t; fails the test (with the engine's message) on error.
 * Poisons every output first, and checks afterwards that every sample and
 * logit was written and that exit_counts sum to batch. */
void tb_infer(ert_engine *e, const float *input, int batch, tb_result *t);

/* Whether samples a and b (row `row` of two results for one input) left
 * at different exits. Where they did, the earlier exit's score must lie
 * within rounding of that exit's threshold on engine e (tol_near_threshold),
 * or the test fails: only then may two runs take different exits. */
int tb_flip(const ert_engine *e, const ert_sample *a, const ert_sample *b, const char *what,
            int row);

/* got against want over batch rows, per tolerance.h: the same exit (or a
 * flip, tb_flip, with e's thresholds) and, where the exits agree, the
 * logits (fx_check_logits); at most tol_flips_ok flips. Classes are left to
 * the caller (near ties may pick either). Returns the flips. */
int tb_compare(const ert_engine *e, const tb_result *got, const tb_result *want, int batch,
               const char *what);

#endif /* ERT_BACKEND_TEST_H */

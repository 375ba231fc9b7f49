/* fixtures.h - what the Criterion tests share, written once: random models
 * and engines that fail the test when they cannot be made, thresholds over
 * each policy's range, and the logit comparison of tolerance.h.
 *
 * Backend-neutral: only the public API (exitrt.h), model_writer.h and
 * tolerance.h, so the unit tests (test_cpu) and the backend tests (test_cpu
 * and test_gpu, tests/backend/backend_test.h) both use it. A function here
 * that fails does so through cr_assert, in the calling test.
 */
#ifndef ERT_TEST_FIXTURES_H
#define ERT_TEST_FIXTURES_H

#include <stdint.h>

#include "exitrt.h"
#include "model_writer.h"

/* ---- models, engines, inputs -------------------------------------------------- */

/* Writes a random model of this kind (mw_random_model) into a fresh temp
 * directory, loads it, removes the directory. */
ert_model *fx_random_model(uint64_t seed, mw_kind kind);

/* The same with early exit i's policy set to types[i] with threshold thr[i]
 * (mw_set_policy) for i < n; types[i] NULL keeps exit i's. */
ert_model *fx_policy_model(uint64_t seed, mw_kind kind, const char *const *types, const double *thr,
                           int n);

/* ert_engine_create with cfg; the message of a failure names the backend,
 * mode, max_batch, graph_buckets and inflight. */
ert_engine *fx_engine(ert_model *m, const ert_engine_config *cfg);

/* A CPU engine with the other settings at their defaults. */
ert_engine *fx_cpu_engine(ert_model *m, ert_mode mode, int max_batch);

/* n rows of m's input, malloc'd: uniform in [0, 1) (mw_random_input), or
 * for a token model token rows with padding (mw_random_tokens). */
float *fx_random_inputs(const ert_model *m, int n, uint64_t seed);

/* ---- thresholds ---------------------------------------------------------------- */

/* thr[0 .. exits-2]: random thresholds over each policy's useful range
 * (entropy [0, log K), max_prob [1/K, 1), margin and confidence head [0, 1)). */
void fx_random_thresholds(const ert_model *m, mw_rng *r, float *thr);

/* thr[0 .. exits-2] at the bounds. everybody_first 0: no early exit fires
 * (entropy 0; the others 1, which only a probability or confidence rounding
 * to exactly 1 passes); 1: exit 0 takes every finite row (entropy above
 * log K, the others 0) and the later ones never fire (they see nobody). */
void fx_bound_thresholds(const ert_model *m, int everybody_first, float *thr);

/* ---- comparisons (tolerance.h) -------------------------------------------------- */

/* One row of k logits, got against want, with tolerance.h's rule for two
 * backends or a backend and the float64 reference: 1e-4 relative with a
 * floor of 1e-4 of the row's scale (max |want_j| over its finite logits);
 * NaN and infinities must match exactly. what and row name the row in the
 * message. */
void fx_check_logits(const float *got, const float *want, int k, const char *what, int row);

/* Whether the two largest of the k logits z lie within the logit tolerance
 * of each other, so that two backends may pick either class. */
int fx_near_tie(const float *z, int k);

#endif /* ERT_TEST_FIXTURES_H */

/* fuzz_model.c - libFuzzer harness for the model loader (model.json and the
 * safetensors weights together), and for the engine past it.
 *
 * Input: a 4-byte little-endian length n, n bytes of model.json, then the
 * weights file (w.safetensors). Both are written to a scratch directory and
 * ert_model_load reads them. When a model loads and is small enough to run
 * quickly, a CPU engine (max_batch 2) runs one batch of zeros and one with a
 * NaN in COMPACTED mode, and the scores: shape bugs that the loader let
 * through show up there.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exitrt.h"
#include "fuzz_common.h"
#include "model.h"
#include "plan.h"

/* Above these a model is valid but too slow to run per input. */
#define RUN_MAX_MACS 2000000ull
#define RUN_MAX_ACT 1000000u

static void run_engine(ert_model *m)
{
    if (ert_model_macs_full(m) > RUN_MAX_MACS)
        return;
    plan p;
    plan_build(m, &p);
    if (p.macs_all_heads > RUN_MAX_MACS || p.max_act > RUN_MAX_ACT || p.max_col > RUN_MAX_ACT)
        return;
    ert_engine_config cfg = ert_engine_config_default();
    cfg.backend = ERT_BACKEND_CPU;
    cfg.max_batch = 2;
    cfg.threads = 1;
    ert_engine *e = NULL;
    ert_error err = {{0}};
    if (ert_engine_create(m, &cfg, &e, &err) != ERT_OK)
        return; /* out of memory is the only reason it may fail here */
    size_t per = ert_model_input_size(m);
    int K = ert_model_num_classes(m), E = ert_model_num_exits(m);
    float *x = calloc(2 * per, sizeof *x);
    float *logits = calloc(2 * (size_t)K, sizeof *logits);
    float *scores = calloc(2 * (size_t)E, sizeof *scores);
    ert_sample s[2];
    if (x && logits && scores) {
        ert_result r = {.struct_size = sizeof(ert_result), .samples = s, .logits = logits};
        if (ert_infer(e, x, 2, &r) != ERT_OK)
            __builtin_trap(); /* a loaded model must run */
        for (int i = 0; i < 2; i++)
            if (s[i].exit_index < 0 || s[i].exit_index >= E || s[i].predicted < 0 ||
                s[i].predicted >= K)
                __builtin_trap();
        x[0] = NAN;
        if (ert_infer(e, x, 2, &r) != ERT_OK || r.nonfinite_samples != 1)
            __builtin_trap();
        /* A sample leaves early only on a finite score (the NaN may vanish on
         * the way, e.g. under a strided conv that never reads it). */
        for (int i = 0; i < 2; i++)
            if (s[i].exit_index < E - 1 && !isfinite(s[i].score))
                __builtin_trap();
        if (ert_engine_scores(e, x, 2, scores) != ERT_OK)
            __builtin_trap();
    }
    free(x);
    free(logits);
    free(scores);
    ert_engine_free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    size_t n =
        (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    if (n > size - 4)
        n = size - 4;
    char jpath[600], wpath[600];
    if (fuzz_write("model.json", data + 4, n, jpath, sizeof jpath) ||
        fuzz_write("w.safetensors", data + 4 + n, size - 4 - n, wpath, sizeof wpath))
        abort();
    ert_model *m = NULL;
    ert_error err = {{0}};
    ert_status st = ert_model_load(fuzz_dir(), &m, &err);
    if (st != ERT_OK) {
        if (m || !err.msg[0])
            __builtin_trap(); /* a failure sets no model and says why */
        return 0;
    }
    run_engine(m);
    ert_model_free(m);
    return 0;
}

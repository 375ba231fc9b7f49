/* test_cpu_paths.c - the CPU backend's two paths: oneDNN (src/cpu/dnnl.h)
 * and the im2col + OpenBLAS ops (src/cpu/cpu_ops.h).
 *
 *   - an engine whose oneDNN primitives cannot be made (forced with the test
 *     hook) falls back to the ops path, says so in its note, and computes
 *     what the oneDNN path does;
 *   - on every random model kind, the two paths agree: the same exits but
 *     for scores within rounding of a threshold, logits to tolerance.h.
 *
 * CPU only; in test_gpu (and in a build without oneDNN) the tests skip. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend_test.h"

#ifdef ERT_HAVE_DNNL
#include "cpu/dnnl.h"

/* The two paths on one model and input: exits and logits agree. */
static void paths_agree(mw_kind kind, uint64_t seed, ert_mode mode)
{
    tb_only(ERT_BACKEND_CPU, "the CPU backend");
    ert_model *m = fx_random_model(seed, kind);
    const int K = ert_model_num_classes(m), n = 50;
    ert_engine *dn = tb_engine_on(m, ERT_BACKEND_CPU, mode, 64, 0, 1);
    ert_cpu_test_dnnl_fail = 1;
    ert_engine *ops = tb_engine_on(m, ERT_BACKEND_CPU, mode, 64, 0, 1);
    ert_cpu_test_dnnl_fail = 0;
    cr_assert(tb_note_is(dn, "cpu: oneDNN "), "oneDNN path note: '%s'", ert_engine_note(dn));
    cr_assert(tb_note_is(ops, "cpu: oneDNN off (forced by the test hook)"), "fallback note: '%s'",
              ert_engine_note(ops));
    float *x = fx_random_inputs(m, n, seed * 7 + 1);
    tb_result a, b;
    tb_result_init(&a, n, K);
    tb_result_init(&b, n, K);
    tb_infer(dn, x, n, &a);
    tb_infer(ops, x, n, &b);
    char what[64];
    snprintf(what, sizeof what, "%s: oneDNN vs the ops", mw_kind_name(kind));
    tb_compare(dn, &a, &b, n, what);
    tb_result_free(&a);
    tb_result_free(&b);
    free(x);
    ert_engine_free(dn);
    ert_engine_free(ops);
    ert_model_free(m);
}

Test(cpu_paths, mlp_agree) { paths_agree(MW_MLP, 501, ERT_MODE_COMPACTED); }
Test(cpu_paths, cnn_agree) { paths_agree(MW_CNN, 502, ERT_MODE_MASKED); }
Test(cpu_paths, resnet_agree) { paths_agree(MW_RESNET, 44, ERT_MODE_COMPACTED); }
Test(cpu_paths, resnet_full_agree) { paths_agree(MW_RESNET, 42, ERT_MODE_FULL); }

#else

Test(cpu_paths, onednn_only) { cr_skip_test("built without oneDNN"); }

#endif

/* test_cpu_paths.c - the CPU backend's two paths: oneDNN (src/cpu/dnnl.h)
 * and the im2col + OpenBLAS ops (src/cpu/cpu_ops.h).
 *
 *   - an engine whose oneDNN primitives cannot be made (forced with the test
 *     hook) falls back to the ops path, says so in its note, and computes
 *     what the oneDNN path does;
 *   - on every random model kind, the two paths agree: the same exits but
 *     for scores within rounding of a threshold, logits to tolerance.h;
 *   - the oneDNN path's smaller tiles (the rows past a call's whole tiles,
 *     dnnl_tiles.c) are in use on convnets and give every row bit for bit
 *     what the whole tiles give it.
 *
 * CPU only; in test_gpu (and in a build without oneDNN) the tests skip. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The first n rows of 64, for n across the remainders a 16-row tile
 * leaves (run as 8 + 4 + 1 and the like), against the same rows in one
 * call of 64 (whole tiles only): every logit bit for bit. */
static void small_tiles_exact(mw_kind kind, uint64_t seed)
{
    tb_only(ERT_BACKEND_CPU, "the CPU backend");
    ert_model *m = fx_random_model(seed, kind);
    const int K = ert_model_num_classes(m), B = 64;
    ert_engine *e = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_FULL, B, 0, 1);
    const char *note = ert_engine_note(e), *at = strstr(note, "down to 1 row in ");
    cr_assert(at && atoi(at + strlen("down to 1 row in ")) > 0, "%s: no smaller tiles in use: '%s'",
              mw_kind_name(kind), note);
    float *x = fx_random_inputs(m, B, seed * 5 + 3);
    tb_result whole, part;
    tb_result_init(&whole, B, K);
    tb_result_init(&part, B, K);
    tb_infer(e, x, B, &whole);
    static const int counts[] = {1, 2, 3, 5, 7, 13, 15, 17, 29, 31, 47, 63};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        const int n = counts[c];
        tb_infer(e, x, n, &part);
        for (int r = 0; r < n; r++)
            cr_assert(memcmp(part.logits + (size_t)r * K, whole.logits + (size_t)r * K,
                             sizeof(float) * (size_t)K) == 0,
                      "%s: row %d of %d differs from its row in a call of %d", mw_kind_name(kind),
                      r, n, B);
    }
    tb_result_free(&whole);
    tb_result_free(&part);
    free(x);
    ert_engine_free(e);
    ert_model_free(m);
}

Test(cpu_paths, cnn_small_tiles_exact) { small_tiles_exact(MW_CNN, 503); }
Test(cpu_paths, resnet_small_tiles_exact) { small_tiles_exact(MW_RESNET, 45); }

#else

Test(cpu_paths, onednn_only) { cr_skip_test("built without oneDNN"); }

#endif

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
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_test.h"
#include "tolerance.h"

#ifdef ERT_HAVE_DNNL
#include "cpu/dnnl.h"

static void need_cpu(void)
{
    if (ERT_TEST_BACKEND != ERT_BACKEND_CPU)
        cr_skip_test("about the CPU backend: runs in test_cpu");
}

static int starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* The two paths on one model and input: exits and logits agree. */
static void paths_agree(mw_kind kind, uint64_t seed, ert_mode mode)
{
    need_cpu();
    ert_model *m = tb_random_model(seed, kind);
    const int K = ert_model_num_classes(m), n = 50;
    const size_t per = ert_model_input_size(m);
    ert_engine *dn = tb_engine_on(m, ERT_BACKEND_CPU, mode, 64, 0, 1);
    ert_cpu_test_dnnl_fail = 1;
    ert_engine *ops = tb_engine_on(m, ERT_BACKEND_CPU, mode, 64, 0, 1);
    ert_cpu_test_dnnl_fail = 0;
    cr_assert(starts_with(ert_engine_note(dn), "cpu: oneDNN "), "oneDNN path note: '%s'",
              ert_engine_note(dn));
    cr_assert(starts_with(ert_engine_note(ops), "cpu: oneDNN off (forced by the test hook)"),
              "fallback note: '%s'", ert_engine_note(ops));
    float *x = malloc(sizeof(float) * per * n);
    cr_assert_not_null(x);
    mw_random_input(x, per * n, seed * 7 + 1);
    tb_result a, b;
    tb_result_init(&a, n, K);
    tb_result_init(&b, n, K);
    tb_infer(dn, x, n, &a);
    tb_infer(ops, x, n, &b);
    int flips = 0;
    for (int i = 0; i < n; i++) {
        const ert_sample *p = &a.samples[i], *q = &b.samples[i];
        if (p->exit_index != q->exit_index) {
            const ert_sample *early = p->exit_index < q->exit_index ? p : q;
            cr_assert(tol_near_threshold(early->score, ert_engine_threshold(dn, early->exit_index)),
                      "%s sample %d: exit %d on oneDNN, %d on the ops (score %.9g)",
                      mw_kind_name(kind), i, p->exit_index, q->exit_index, early->score);
            flips++;
            continue;
        }
        const float *pl = a.logits + (size_t)i * K, *ql = b.logits + (size_t)i * K;
        float scale = 0.0f;
        for (int j = 0; j < K; j++)
            scale = fmaxf(scale, fabsf(ql[j]));
        for (int j = 0; j < K; j++)
            cr_assert(tol_logit_ok(pl[j], ql[j], scale), "%s sample %d logit %d: %.9g vs %.9g",
                      mw_kind_name(kind), i, j, pl[j], ql[j]);
    }
    cr_assert(tol_flips_ok(flips, n), "%d flips of %d", flips, n);
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

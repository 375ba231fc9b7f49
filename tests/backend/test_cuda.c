/* test_cuda.c - CUDA backend behaviour that the shared mode tests do not
 * reach.
 *
 * device_order: ert_infer_device with cuda_stream NULL starts after the work
 * already enqueued on the legacy default stream (exitrt.h).
 *
 * The engine's slot streams are non-blocking, so nothing orders them after
 * the caller's legacy-stream work unless the call does. The test makes the
 * input late on purpose: a host function that sleeps 200 ms, then the copy
 * of the real input, both on the legacy stream; the device buffer holds a
 * different input until then. A call that does not wait reads that one and
 * gets other predictions. Each path that can take a device input is tried:
 * wait-based COMPACTED with two sub-batches, MASKED, and the bucketed graphs.
 *
 * unfused: when cuDNN refuses the fused conv+bias+ReLU call at engine
 * creation, the conv runs as the plain convolution plus the bias/ReLU
 * kernel, the note names it, and the results still match the CPU backend
 * (tolerance.h). The refusal is forced with the backend's test hook.
 *
 * CUDA only; in test_cpu (and without a device) every test skips. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend_test.h"

#ifdef ERT_HAVE_CUDA
#include <cuda_runtime_api.h>

static void CUDART_CB sleep_200ms(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static void late_input(ert_mode mode, int graph_buckets, int inflight)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend");
    ert_model *m = fx_random_model(71, MW_CNN);
    const int K = ert_model_num_classes(m), n = 64;
    const size_t per = ert_model_input_size(m);
    ert_engine *e = tb_engine_on(m, ERT_BACKEND_CUDA, mode, n, graph_buckets, inflight);

    float *x = NULL, *other = malloc(sizeof(float) * per * n);
    cr_assert_not_null(other);
    cr_assert_eq(cudaMallocHost((void **)&x, sizeof(float) * per * n), cudaSuccess);
    mw_random_input(x, per * n, 7101);
    mw_random_input(other, per * n, 7102);
    tb_result want;
    tb_result_init(&want, n, K);
    tb_infer(e, x, n, &want);

    float *d_x = NULL;
    ert_sample *d_samples = NULL;
    ert_sample *got = malloc(sizeof(ert_sample) * n);
    cr_assert_not_null(got);
    cr_assert_eq(cudaMalloc((void **)&d_x, sizeof(float) * per * n), cudaSuccess);
    cr_assert_eq(cudaMalloc((void **)&d_samples, sizeof(ert_sample) * n), cudaSuccess);
    cr_assert_eq(cudaMemcpy(d_x, other, sizeof(float) * per * n, cudaMemcpyHostToDevice),
                 cudaSuccess);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    /* the real input arrives 200 ms from now, on the legacy stream */
    cr_assert_eq(cudaLaunchHostFunc(cudaStreamLegacy, sleep_200ms, NULL), cudaSuccess);
    cr_assert_eq(
        cudaMemcpyAsync(d_x, x, sizeof(float) * per * n, cudaMemcpyHostToDevice, cudaStreamLegacy),
        cudaSuccess);
    ert_device_result dr = {.samples = d_samples};
    cr_assert_eq(ert_infer_device(e, d_x, n, &dr, NULL), ERT_OK, "%s", ert_engine_error(e));
    cr_assert_eq(cudaMemcpy(got, d_samples, sizeof(ert_sample) * n, cudaMemcpyDeviceToHost),
                 cudaSuccess);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(got[i].exit_index, want.samples[i].exit_index,
                     "%s (graph_buckets %d, inflight %d): sample %d: exit %d, want %d: the "
                     "call did not wait for the legacy stream",
                     ert_mode_string(mode), graph_buckets, inflight, i, got[i].exit_index,
                     want.samples[i].exit_index);
        cr_assert_eq(got[i].predicted, want.samples[i].predicted, "sample %d", i);
    }
    cudaFree(d_x);
    cudaFree(d_samples);
    cudaFreeHost(x);
    free(other);
    free(got);
    tb_result_free(&want);
    ert_engine_free(e);
    ert_model_free(m);
}

Test(device_order, compacted_null_stream) { late_input(ERT_MODE_COMPACTED, 0, 2); }
Test(device_order, masked_null_stream) { late_input(ERT_MODE_MASKED, 0, 1); }
Test(device_order, graphs_null_stream) { late_input(ERT_MODE_COMPACTED, 8, 2); }

/* src/cuda/cuda_internal.h: every fused conv counts as refused while set. */
extern int ert_cuda_test_unfused;

static void unfused(mw_kind kind, uint64_t seed)
{
    tb_only(ERT_BACKEND_CUDA, "the CUDA backend");
    ert_model *m = fx_random_model(seed, kind); /* seed 73 makes no resnet: mw_random_model fails */
    const int K = ert_model_num_classes(m), n = 48;
    ert_cuda_test_unfused = 1;
    ert_engine *g = tb_engine_on(m, ERT_BACKEND_CUDA, ERT_MODE_MASKED, n, 0, 1);
    ert_cuda_test_unfused = 0;
    cr_assert(strstr(ert_engine_note(g), "run unfused: ") != NULL,
              "the note does not name the convs that fell back: '%s'", ert_engine_note(g));
    ert_engine *c = tb_engine_on(m, ERT_BACKEND_CPU, ERT_MODE_MASKED, n, 0, 1);
    float *x = fx_random_inputs(m, n, 7301);
    tb_result got, want;
    tb_result_init(&got, n, K);
    tb_result_init(&want, n, K);
    tb_infer(g, x, n, &got);
    tb_infer(c, x, n, &want);
    tb_compare(c, &got, &want, n, "unfused vs CPU");
    tb_result_free(&got);
    tb_result_free(&want);
    free(x);
    ert_engine_free(g);
    ert_engine_free(c);
    ert_model_free(m);
}

Test(unfused, cnn_matches_cpu) { unfused(MW_CNN, 73); }
Test(unfused, resnet_matches_cpu) { unfused(MW_RESNET, 74); }

#else

Test(device_order, cuda_only) { cr_skip_test("about the CUDA backend: not in this build"); }

#endif

/* stage.c - one stage of the refill stream on the CUDA backend (backend.h's
 * run_stage; the stream itself is src/stream.c).
 *
 * COMPILED, NOT YET RUN ON A GPU. And host-staged: the stream's queues are
 * host memory, so every call copies the rows in (pageable memory, so the
 * copy is synchronous) and the survivors' rows, results and logits out, and
 * waits for the device twice (once for the survivors' count, once for the
 * copies). The device-side part is what the design asks for: the backbone
 * and head ops of the engine's program, the exit decision with stable
 * compaction (ert_k_exit_compact) and the gather of the survivors' rows
 * (ert_k_gather_rows) on the device, so only the survivors' rows cross the
 * bus. The next step is device-resident queues (the gather writing straight
 * into the next stage's device ring) and no host wait per stage run.
 *
 * Resources: slot 0's stream, handles and buffers and the engine's d_samples
 * / d_logits, as ert_infer uses them; the engine's busy flag (held by the
 * stream for the call) keeps the two apart. Nothing is allocated here.
 */
#include <string.h>

#include "cuda_check.h"
#include "cuda_internal.h"
#include "kernels.h"

ert_status cuda_run_stage(ert_engine *e, int si, const float *in, int n, float *out,
                          ert_sample *res, float *logits, unsigned char *exited, uint64_t *macs)
{
    ert_status st = ERT_OK;
    cuda_ctx *c = e->ctx;
    const ert_model *m = e->model;
    const program *prog = &c->prog;
    const prog_stage *ps = &prog->stages[si];
    cuda_slot *s = &c->slots[0];
    const int last = si == prog->num_stages - 1;
    const size_t K = (size_t)m->num_classes;
    const size_t in_row = shape_size(e->plan.stages[si].in);
    CUDA_TRY(e, cudaSetDevice(c->device));

    /* the rows in (host-staged, see above) */
    float *x = s->buf[ps->in_buf];
    CUDA_TRY(e, cudaMemcpyAsync(x, in, (size_t)n * in_row * sizeof(float),
                                cudaMemcpyHostToDevice, s->stream));
    if (si == 0) {
        ert_norm_params np;
        np.scale = m->input_scale;
        for (int i = 0; i < 4; i++) {
            np.mean[i] = m->mean[i];
            np.inv_std[i] = 1.0f / m->std[i]; /* as the CPU's op_normalize */
        }
        KERNEL_TRY(e, ert_k_normalise(x, x, n, m->input.c, m->input.h * m->input.w, np,
                                      s->stream));
    }
    for (int i = ps->backbone.begin; i < ps->backbone.end; i++)
        if ((st = op_run(e, c, s, i, n)) != ERT_OK)
            goto fail;
    *macs += (uint64_t)n * e->plan.stages[si].macs;

    if (!ps->has_exit) {
        /* ERT_MODE_FULL before the final head: every row goes on */
        CUDA_TRY(e, cudaMemcpyAsync(out, s->buf[ps->out_buf], (size_t)n * ps->out_row *
                                                                  sizeof(float),
                                    cudaMemcpyDeviceToHost, s->stream));
        CUDA_TRY(e, cudaStreamSynchronize(s->stream));
        memset(exited, 0, (size_t)n);
        return ERT_OK;
    }
    for (int i = ps->head.begin; i < ps->conf.end; i++) /* head, then confidence */
        if ((st = op_run(e, c, s, i, n)) != ERT_OK)
            goto fail;
    *macs += (uint64_t)n * m->exits[si].head_macs;

    /* rows are their own original positions; a row that stays keeps the
       poison exit index -1, which is how `exited` is read back */
    KERNEL_TRY(e, ert_k_iota(s->orig[0], n, 0, s->stream));
    CUDA_TRY(e, cudaMemsetAsync(c->d_samples, 0xff, (size_t)n * sizeof(ert_sample), s->stream));
    ert_exit_args a;
    memset(&a, 0, sizeof a);
    a.logits = s->buf[ps->logits_buf];
    a.conf = ps->conf_buf >= 0 ? s->buf[ps->conf_buf] : NULL;
    a.orig = s->orig[0];
    a.n = n;
    a.K = (int)K;
    a.policy = (int)m->exits[si].policy;
    a.threshold = e->thresholds[si];
    a.exit_index = si;
    a.samples = c->d_samples;
    a.out_logits = c->d_logits;

    int kept = 0;
    if (last) {
        KERNEL_TRY(e, ert_k_exit_decide(&a, s->stream));
    } else {
        /* the gather's target: the COMPACTED program's, else any buffer but
           the stage output (after the exit kernel, the others are dead) */
        int g = ps->gather_buf;
        for (int b = 0; g < 0 && b < prog->nbuf; b++)
            if (b != ps->out_buf)
                g = b;
        if (g < 0) {
            st = engine_fail(e, ERT_INTERNAL, "cuda stage %d: no buffer to gather into", si);
            goto fail;
        }
        a.new_orig = s->orig[1];
        a.src_row = s->src_row;
        a.count = s->d_count + si;
        KERNEL_TRY(e, ert_k_exit_compact(&a, s->stream));
        KERNEL_TRY(e, ert_k_gather_rows(s->buf[ps->out_buf], s->buf[g], s->src_row,
                                        s->d_count + si, n, ps->out_row, s->stream));
        CUDA_TRY(e, cudaMemcpyAsync(s->h_count + si, s->d_count + si, sizeof(int),
                                    cudaMemcpyDeviceToHost, s->stream));
        CUDA_TRY(e, cudaStreamSynchronize(s->stream)); /* the count, for the copy size */
        kept = s->h_count[si];
        if (kept < 0 || kept > n)
            return engine_fail(e, ERT_INTERNAL, "cuda stage %d: %d survivors of %d rows", si,
                               kept, n);
        if (kept)
            CUDA_TRY(e, cudaMemcpyAsync(out, s->buf[g], (size_t)kept * ps->out_row * sizeof(float),
                                        cudaMemcpyDeviceToHost, s->stream));
    }
    CUDA_TRY(e, cudaMemcpyAsync(res, c->d_samples, (size_t)n * sizeof(ert_sample),
                                cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(e, cudaMemcpyAsync(logits, c->d_logits, (size_t)n * K * sizeof(float),
                                cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(e, cudaStreamSynchronize(s->stream));
    int left = 0;
    for (int i = 0; i < n; i++) {
        exited[i] = res[i].exit_index == si;
        left += exited[i];
    }
    if (!last && left != n - kept)
        return engine_fail(e, ERT_INTERNAL, "cuda stage %d: %d rows left, %d of %d stayed", si,
                           left, kept, n);
    return ERT_OK;
fail:
    (void)cudaStreamSynchronize(s->stream); /* nothing may still write the caller's memory */
    (void)cudaGetLastError();
    return st;
}

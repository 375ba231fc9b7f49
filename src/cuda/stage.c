/* stage.c - the one CUDA stage path, and the refill stream's stage op.
 *
 * stage_enqueue() is the only code that enqueues a stage: the wait-based
 * schedule (cuda_backend.c), every body of the bucketed graphs (graph.c, by
 * stream capture) and the refill stream's run_stage (below) call it, so a
 * bug found in a stage is fixed once. What differs between them is data in
 * stage_args: where the row count lives (host or device), where the results
 * go, and what follows the exit decision.
 *
 * cuda_run_stage (engine_core.h's run_stage for src/stream.c) is host-staged:
 * the stream's queues are host memory, so every call copies the rows in
 * (pageable memory, so the copy is synchronous) and the survivors' rows,
 * results and logits out, and waits for the device twice (once for the
 * survivors' count, once for the copies). The device-side part is what the
 * design asks for: the stage's ops, the exit decision with stable
 * compaction and the gather of the survivors on the device, so only the
 * survivors' rows cross the bus. The next step is device-resident queues
 * (the gather writing straight into the next stage's device ring) and no
 * host wait per stage run. It uses slot 0's stream, handles and buffers and
 * the engine's d_samples / d_logits, as ert_infer does; the engine's busy
 * flag (held by the stream for the call) keeps the two apart.
 */
#include <string.h>

#include "cuda_check.h"
#include "cuda_internal.h"
#include "kernels.h"

ert_status stage_enqueue(ert_engine *e, cuda_ctx *c, cuda_slot *s, const stage_args *a,
                         uint64_t *macs)
{
    ert_status st = ERT_OK;
    const ert_model *m = e->model;
    const prog_stage *ps = &c->prog.stages[a->si];
    const int n = a->n;

    if (a->norm_src && m->input_tokens > 0) {
        /* token ids and mask are taken as they are (FORMAT.md, "Token
           inputs"): only moved where the input is elsewhere */
        if (a->norm_src != s->buf[ps->in_buf])
            CUDA_TRY(e, cudaMemcpyAsync(s->buf[ps->in_buf], a->norm_src,
                                        (size_t)n * shape_size(m->input) * sizeof(float),
                                        cudaMemcpyDeviceToDevice, s->stream));
    } else if (a->norm_src) {
        ert_norm_params np;
        np.scale = m->input_scale;
        for (int i = 0; i < 4; i++) {
            np.mean[i] = m->mean[i];
            np.inv_std[i] = 1.0f / m->std[i]; /* as the CPU's op_normalize */
        }
        KERNEL_TRY(e, k_normalize(a->norm_src, s->buf[ps->in_buf], n, m->input.c,
                                  m->input.h * m->input.w, np, s->stream));
    }
    if (a->iota_base >= 0)
        KERNEL_TRY(e, k_iota(s->orig[a->cur], n, a->iota_base, s->stream));
    for (int i = ps->backbone.begin; i < ps->backbone.end; i++)
        if ((st = op_run(e, c, s, i, n)) != ERT_OK)
            return st;
    if (macs)
        *macs += (uint64_t)n * e->plan.stages[a->si].macs;
    const int outputs = a->out_scores || a->out_classes;
    if (!(outputs ? ps->has_exit : stage_decides(e, c, a->si)))
        return ERT_OK;
    for (int i = ps->head.begin; i < ps->conf.end; i++) /* head, then confidence */
        if ((st = op_run(e, c, s, i, n)) != ERT_OK)
            return st;
    if (macs)
        *macs += (uint64_t)n * m->exits[a->si].head_macs;

    ert_exit_args x;
    memset(&x, 0, sizeof x);
    x.logits = s->buf[ps->logits_buf];
    x.conf = ps->conf_buf >= 0 ? s->buf[ps->conf_buf] : NULL;
    x.orig = s->orig[a->cur];
    x.n = n;
    x.K = m->num_classes;
    x.policy = (int)m->exits[a->si].policy;
    x.threshold = e->thresholds[a->si];
    x.d_threshold = a->d_threshold;
    x.exit_index = a->si;
    x.state = a->state;
    x.samples = a->samples;
    x.out_logits = a->logits;
    x.d_n = a->d_n;
    if (outputs) {
        x.out_scores = a->out_scores;
        x.out_classes = a->out_classes;
        x.num_exits = c->prog.num_stages;
        KERNEL_TRY(e, k_exit_outputs(&x, s->stream));
        /* nobody leaves: the next stage reads every row from its input buffer */
        if (a->gather_buf >= 0)
            CUDA_TRY(e, cudaMemcpyAsync(s->buf[a->gather_buf], s->buf[ps->out_buf],
                                        (size_t)n * ps->out_row * sizeof(float),
                                        cudaMemcpyDeviceToDevice, s->stream));
        return ERT_OK;
    }
    if (a->gather_buf < 0) {
        x.done = a->done;
        KERNEL_TRY(e, k_exit_decide(&x, s->stream));
        return ERT_OK;
    }
    x.new_orig = s->orig[!a->cur];
    x.src_row = s->src_row;
    x.count = s->d_count + a->si;
    x.sw = a->sw;
    KERNEL_TRY(e, k_exit_compact(&x, s->stream));
    if (a->h_count) {
        /* the count on its way to the host before the gather is queued, so
           the host's wait for it overlaps the gather */
        CUDA_TRY(e, cudaMemcpyAsync(a->h_count, x.count, sizeof(int), cudaMemcpyDeviceToHost,
                                    s->stream));
        CUDA_TRY(e, cudaEventRecord(a->count_event, s->stream));
    }
    /* the gather reads the count on the device; its grid covers all n rows */
    KERNEL_TRY(e, k_gather_rows(s->buf[ps->out_buf], s->buf[a->gather_buf], s->src_row, x.count, n,
                                ps->out_row, s->stream));
    return ERT_OK;
fail:
    return st;
}

/* ---- the refill stream's stage op ------------------------------------------------------ */

ert_status cuda_run_stage(ert_engine *e, int si, const float *in, int n, float *out,
                          ert_sample *res, float *logits, unsigned char *exited,
                          ert_patience *state, uint64_t *macs)
{
    ert_status st = ERT_OK;
    cuda_ctx *c = e->ctx;
    const program *prog = &c->prog;
    const prog_stage *ps = &prog->stages[si];
    cuda_slot *s = &c->slots[0];
    const int last = si == prog->num_stages - 1;
    const int decides = stage_decides(e, c, si);
    const size_t K = (size_t)e->model->num_classes;
    const size_t in_row = shape_size(e->plan.stages[si].in);
    CUDA_TRY(e, cudaSetDevice(c->device));

    /* the rows in (host-staged, see above), with their patience states where
       this exit reads them (rows are their own original positions here) */
    float *x = s->buf[ps->in_buf];
    CUDA_TRY(e, cudaMemcpyAsync(x, in, (size_t)n * in_row * sizeof(float), cudaMemcpyHostToDevice,
                                s->stream));
    const int track = decides && !last;
    if (track && si > 0)
        CUDA_TRY(e, cudaMemcpyAsync(s->pstate, state, (size_t)n * sizeof(ert_patience),
                                    cudaMemcpyHostToDevice, s->stream));
    /* a row that stays keeps the poison exit index -1: how `exited` is read */
    if (decides)
        CUDA_TRY(e, cudaMemsetAsync(c->d_samples, 0xff, (size_t)n * sizeof(ert_sample), s->stream));
    /* the gather's target: the COMPACTED program's, else any buffer but the
       stage output (after the exit kernel, the others are dead) */
    int g = -1;
    if (decides && !last) {
        g = ps->gather_buf;
        for (int b = 0; g < 0 && b < prog->nbuf; b++)
            if (b != ps->out_buf)
                g = b;
        if (g < 0) {
            st = engine_fail(e, ERT_INTERNAL, "cuda stage %d: no buffer to gather into", si);
            goto fail;
        }
    }
    /* rows are their own original positions */
    stage_args a = {.si = si,
                    .n = n,
                    .norm_src = si == 0 ? x : NULL,
                    .iota_base = 0,
                    .state = track ? s->pstate : NULL,
                    .samples = c->d_samples,
                    .logits = c->d_logits,
                    .gather_buf = g};
    if ((st = stage_enqueue(e, c, s, &a, macs)) != ERT_OK)
        goto fail;

    if (!decides) {
        /* ERT_MODE_FULL before the final head: every row goes on */
        CUDA_TRY(e,
                 cudaMemcpyAsync(out, s->buf[ps->out_buf], (size_t)n * ps->out_row * sizeof(float),
                                 cudaMemcpyDeviceToHost, s->stream));
        CUDA_TRY(e, cudaStreamSynchronize(s->stream));
        memset(exited, 0, (size_t)n);
        return ERT_OK;
    }
    int kept = 0;
    if (!last) {
        CUDA_TRY(e, cudaMemcpyAsync(s->h_count + si, s->d_count + si, sizeof(int),
                                    cudaMemcpyDeviceToHost, s->stream));
        CUDA_TRY(e, cudaStreamSynchronize(s->stream)); /* the count, for the copy size */
        kept = s->h_count[si];
        if (kept < 0 || kept > n)
            return engine_fail(e, ERT_INTERNAL, "cuda stage %d: %d survivors of %d rows", si, kept,
                               n);
        if (kept)
            CUDA_TRY(e, cudaMemcpyAsync(out, s->buf[g], (size_t)kept * ps->out_row * sizeof(float),
                                        cudaMemcpyDeviceToHost, s->stream));
    }
    CUDA_TRY(e, cudaMemcpyAsync(res, c->d_samples, (size_t)n * sizeof(ert_sample),
                                cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(e, cudaMemcpyAsync(logits, c->d_logits, (size_t)n * K * sizeof(float),
                                cudaMemcpyDeviceToHost, s->stream));
    if (track)
        CUDA_TRY(e, cudaMemcpyAsync(state, s->pstate, (size_t)n * sizeof(ert_patience),
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

/* In stage.c, below cuda_backend.c and graph.c, which both cut calls into jobs. */
void cuda_job_span(int batch, int nj, int j, int *off, int *len)
{
    *off = (int)((long long)batch * j / nj);
    *len = (int)((long long)batch * (j + 1) / nj) - *off;
}

/* cuda_ops.c - the device ops: cuDNN convolution and pooling (and the patch
 * embedding's convolution), cuBLAS linear, and the kernels of the kernels/
 * .cu files for the rest; the transformer ops are in tx_ops.c.
 *
 * cuDNN: the legacy API (cudnnConvolutionForward and friends). cuDNN 9.19
 * marks it deprecated but ships it; we use it because the row count changes
 * from call to call in COMPACTED mode, and here that costs two host-side
 * descriptor updates, where the graph API would need an execution plan per
 * row count (built, autotuned and cached per size bucket). Revisit together
 * with CUDA graphs, which need fixed shapes anyway.
 *
 * Descriptors per row count: each conv/pool op keeps one set of descriptors
 * and its tensor descriptors are reset to the current n before each call
 * (cudnnSetTensor4dDescriptor is a host call, no device work). The
 * algorithm is chosen once at create for max_batch, among those that fit the
 * workspace cap, run in FMA math (no TF32), and are valid at n = 1 too. At a
 * new n the workspace size is asked again (memoised per op for the last n);
 * should the chosen algorithm refuse that n or outgrow the workspace, the op
 * falls back to IMPLICIT_GEMM, which needs none.
 *
 * Precision: FP32 (the default) runs cuDNN with CUDNN_FMA_MATH
 * (CUDNN_DEFAULT_MATH would allow TF32 tensor cores on sm_80+) and cuBLAS
 * with CUBLAS_DEFAULT_MATH, which uses no TF32 for SGEMM unless asked
 * (CUBLAS_TF32_TENSOR_OP_MATH) -- chosen over CUBLAS_PEDANTIC_MATH, which
 * would also rule out split-K reductions that are exact float32 all the
 * same. TF32 (c->tf32) asks for the tensor cores: cuBLAS with
 * CUBLAS_TF32_TENSOR_OP_MATH, and each convolution with the math type of
 * the first algorithm cuDNN ranks (CUDNN_DEFAULT_MATH, which lets cuDNN
 * round the inputs to TF32, or CUDNN_TENSOR_OP_MATH; never
 * ..._ALLOW_CONVERSION, which would round to FP16). Storage stays float32.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "cuda_internal.h"
#include "kernels.h"

static const float ONE = 1.0f, ZERO = 0.0f;

/* ---- setup ------------------------------------------------------------------------ */

/* The convolution of an OP_CONV or an OP_PATCH_EMBED, and its output shape
 * per sample. A patch embedding's conv (FORMAT.md: kernel = stride = the
 * patch, no padding, one group) writes [D, h, w] into op->tmp; its unset
 * fields are taken as those defaults. */
static conv_params op_conv(const prog_op *op, shape3 *os)
{
    if (op->kind != OP_PATCH_EMBED) {
        *os = op->out_shape;
        return op->l->p.conv;
    }
    conv_params cp = op->l->p.patch.conv;
    cp.stride_h = cp.stride_h ? cp.stride_h : cp.kh;
    cp.stride_w = cp.stride_w ? cp.stride_w : cp.kw;
    cp.dil_h = cp.dil_h ? cp.dil_h : 1;
    cp.dil_w = cp.dil_w ? cp.dil_w : 1;
    cp.groups = cp.groups ? cp.groups : 1;
    shape3 is = op->in_shape;
    os->c = cp.out_ch;
    os->h = (is.h + 2 * cp.pad_h - cp.dil_h * (cp.kh - 1) - 1) / cp.stride_h + 1;
    os->w = (is.w + 2 * cp.pad_w - cp.dil_w * (cp.kw - 1) - 1) / cp.stride_w + 1;
    os->tokens = 0;
    return cp;
}

static ert_status conv_setup(ert_engine *e, cuda_ctx *c, cudnnHandle_t h, const prog_op *op,
                             dnn_op *d)
{
    ert_status st = ERT_OK;
    shape3 os;
    const conv_params cpv = op_conv(op, &os);
    const conv_params *cp = &cpv;
    const int B = e->cfg.max_batch;
    shape3 is = op->in_shape;
    CUDNN_TRY(e, cudnnCreateTensorDescriptor(&d->x));
    CUDNN_TRY(e, cudnnCreateTensorDescriptor(&d->y));
    CUDNN_TRY(e, cudnnCreateTensorDescriptor(&d->bias));
    CUDNN_TRY(e, cudnnCreateFilterDescriptor(&d->w));
    CUDNN_TRY(e, cudnnCreateConvolutionDescriptor(&d->conv));
    CUDNN_TRY(e, cudnnSetFilter4dDescriptor(d->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, cp->out_ch,
                                            cp->in_ch / cp->groups, cp->kh, cp->kw));
    CUDNN_TRY(e, cudnnSetConvolution2dDescriptor(d->conv, cp->pad_h, cp->pad_w, cp->stride_h,
                                                 cp->stride_w, cp->dil_h, cp->dil_w,
                                                 CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_TRY(e, cudnnSetConvolutionGroupCount(d->conv, cp->groups));
    CUDNN_TRY(e,
              cudnnSetConvolutionMathType(d->conv, c->tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, B, is.c,
                                            is.h, is.w));
    int on, oc, oh, ow;
    CUDNN_TRY(e, cudnnGetConvolution2dForwardOutputDim(d->conv, d->x, d->w, &on, &oc, &oh, &ow));
    if (on != B || oc != os.c || oh != os.h || ow != os.w)
        return engine_fail(e, ERT_INTERNAL,
                           "cuda: conv %s: cuDNN gives output %dx%dx%d, the model %dx%dx%d",
                           op->l->name, oc, oh, ow, os.c, os.h, os.w);
    CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, B, os.c,
                                            os.h, os.w));
    CUDNN_TRY(
        e, cudnnSetTensor4dDescriptor(d->bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, os.c, 1, 1));
    /* cudnnConvolutionBiasActivationForward takes RELU with any algorithm
       but IDENTITY only with IMPLICIT_PRECOMP_GEMM: fuse only the ReLU; a
       conv without one (or with a sigmoid) runs the plain convolution and
       the bias/activation kernel. */
    d->fused = op->kind == OP_CONV && op->act == ERT_ACT_RELU;

    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int got = 0;
    CUDNN_TRY(e, cudnnGetConvolutionForwardAlgorithm_v7(
                     h, d->x, d->w, d->conv, d->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf));
    /* Ranked by cuDNN's heuristics. FP32, first pass: entries reported for
       FMA math (what the descriptor asks); second: DEFAULT math ones, which
       on sm_80+ might mean TF32 under that math type, but the descriptor
       stays FMA (we never copy perf.mathType into it). Tensor-op entries
       never. TF32: the first entry in any math but ..._ALLOW_CONVERSION,
       whose math type the descriptor then takes. */
    int chosen = 0;
    size_t ws = 0;
    for (int k = 0; k < 2 * got && !chosen; k++) {
        int i = k % got;
        size_t ws1 = 0;
        const cudnnMathType_t mt = perf[i].mathType;
        const int ok = c->tf32 ? k < got && mt != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
                               : mt == (k < got ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH);
        if (perf[i].status != CUDNN_STATUS_SUCCESS || !ok ||
            perf[i].memory > ERT_CUDNN_WORKSPACE_CAP)
            continue;
        if (c->tf32)
            CUDNN_TRY(e, cudnnSetConvolutionMathType(d->conv, mt));
        /* valid at n = 1 as well (the smallest batch COMPACTED can reach) */
        CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, is.c,
                                                is.h, is.w));
        CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, os.c,
                                                os.h, os.w));
        cudnnStatus_t r1 = cudnnGetConvolutionForwardWorkspaceSize(h, d->x, d->w, d->conv, d->y,
                                                                   perf[i].algo, &ws1);
        CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, B, is.c,
                                                is.h, is.w));
        CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, B, os.c,
                                                os.h, os.w));
        if (r1 != CUDNN_STATUS_SUCCESS || ws1 > ERT_CUDNN_WORKSPACE_CAP)
            continue;
        d->algo = perf[i].algo;
        ws = perf[i].memory > ws1 ? perf[i].memory : ws1;
        chosen = 1;
    }
    if (!chosen) {
        d->algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
        CUDNN_TRY(
            e, cudnnSetConvolutionMathType(d->conv, c->tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
        CUDNN_TRY(
            e, cudnnGetConvolutionForwardWorkspaceSize(h, d->x, d->w, d->conv, d->y, d->algo, &ws));
    }
    if (ws > c->dnn_ws_size)
        c->dnn_ws_size = ws;
    d->last_n = 0;
    return ERT_OK;
fail:
    return st;
}

static ert_status pool_setup(ert_engine *e, const prog_op *op, dnn_op *d)
{
    ert_status st = ERT_OK;
    const pool_params *pp = &op->l->p.pool;
    const int B = e->cfg.max_batch;
    shape3 is = op->in_shape, os = op->out_shape;
    /* max: padding never wins (PyTorch pads with -inf); NaN propagates as in
       PyTorch. avg: padded zeros count in the divisor (count_include_pad). */
    cudnnPoolingMode_t mode =
        op->kind == OP_MAXPOOL ? CUDNN_POOLING_MAX : CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING;
    CUDNN_TRY(e, cudnnCreateTensorDescriptor(&d->x));
    CUDNN_TRY(e, cudnnCreateTensorDescriptor(&d->y));
    CUDNN_TRY(e, cudnnCreatePoolingDescriptor(&d->pool));
    CUDNN_TRY(e, cudnnSetPooling2dDescriptor(d->pool, mode, CUDNN_PROPAGATE_NAN, pp->kh, pp->kw,
                                             pp->pad_h, pp->pad_w, pp->stride_h, pp->stride_w));
    CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, B, is.c,
                                            is.h, is.w));
    int on, oc, oh, ow;
    CUDNN_TRY(e, cudnnGetPooling2dForwardOutputDim(d->pool, d->x, &on, &oc, &oh, &ow));
    if (on != B || oc != os.c || oh != os.h || ow != os.w)
        return engine_fail(e, ERT_INTERNAL,
                           "cuda: pool %s: cuDNN gives output %dx%dx%d, the model %dx%dx%d",
                           op->l->name, oc, oh, ow, os.c, os.h, os.w);
    CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, B, os.c,
                                            os.h, os.w));
    d->last_n = B;
    return ERT_OK;
fail:
    return st;
}

ert_status dnn_setup(ert_engine *e, cuda_ctx *c, cudnnHandle_t handle)
{
    ert_status st = ERT_OK;
    const program *g = &c->prog;
    c->dnn = calloc(g->nops ? (size_t)g->nops : 1, sizeof *c->dnn);
    if (!c->dnn)
        return engine_fail(e, ERT_OUT_OF_MEMORY, "cuda: out of memory for cuDNN descriptors");
    CUDNN_TRY(e, cudnnCreateActivationDescriptor(&c->relu));
    CUDNN_TRY(
        e, cudnnSetActivationDescriptor(c->relu, CUDNN_ACTIVATION_RELU, CUDNN_PROPAGATE_NAN, 0.0));
    c->dnn_ws_size = 0;
    for (int i = 0; i < g->nops; i++) {
        const prog_op *op = &g->ops[i];
        if (op->kind == OP_CONV || op->kind == OP_PATCH_EMBED)
            st = conv_setup(e, c, handle, op, &c->dnn[i]);
        else if (op->kind == OP_MAXPOOL || op->kind == OP_AVGPOOL)
            st = pool_setup(e, op, &c->dnn[i]);
        if (st != ERT_OK)
            return st; /* dnn_teardown frees what was made */
    }
    return ERT_OK;
fail:
    return st;
}

void dnn_teardown(cuda_ctx *c)
{
    if (c->dnn) {
        for (int i = 0; i < c->prog.nops; i++) {
            dnn_op *d = &c->dnn[i];
            if (d->x)
                cudnnDestroyTensorDescriptor(d->x);
            if (d->y)
                cudnnDestroyTensorDescriptor(d->y);
            if (d->bias)
                cudnnDestroyTensorDescriptor(d->bias);
            if (d->w)
                cudnnDestroyFilterDescriptor(d->w);
            if (d->conv)
                cudnnDestroyConvolutionDescriptor(d->conv);
            if (d->pool)
                cudnnDestroyPoolingDescriptor(d->pool);
        }
        free(c->dnn);
        c->dnn = NULL;
    }
    if (c->relu) {
        cudnnDestroyActivationDescriptor(c->relu);
        c->relu = NULL;
    }
}

/* ---- the fused conv, tried once --------------------------------------------------- */

int ert_cuda_test_unfused = 0;

/* Whether a cuDNN status says "this call is not for this configuration"
 * (the NOT_SUPPORTED and BAD_PARAM families of cuDNN 9), rather than a
 * failure of the device or the library. */
static int dnn_refused(cudnnStatus_t r)
{
    return (r >= CUDNN_STATUS_BAD_PARAM && r < CUDNN_STATUS_BAD_PARAM + 1000) ||
           (r >= CUDNN_STATUS_NOT_SUPPORTED && r < CUDNN_STATUS_NOT_SUPPORTED + 1000);
}

static ert_status set_rows(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, dnn_op *d,
                           int n);

ert_status dnn_try_fused(ert_engine *e, cuda_ctx *c, char *fell, size_t cap)
{
    ert_status st = ERT_OK;
    cuda_slot *s = &c->slots[0];
    const size_t B = (size_t)e->cfg.max_batch;
    int nfused = 0, nfell = 0;
    size_t used = 0;
    fell[0] = '\0';
    for (int i = 0; i < c->prog.nops; i++) {
        const prog_op *op = &c->prog.ops[i];
        dnn_op *d = &c->dnn[i];
        if (op->kind != OP_CONV || !d->fused || !op->l->p.conv.bias)
            continue;
        nfused++;
        cudnnStatus_t r = CUDNN_STATUS_SUCCESS;
        if (ert_cuda_test_unfused == 1) {
            r = CUDNN_STATUS_NOT_SUPPORTED;
        } else {
            /* defined data in, at both ends of the row counts COMPACTED runs */
            CUDA_TRY(e, cudaMemsetAsync(s->buf[op->in], 0,
                                        B * shape_size(op->in_shape) * sizeof(float), s->stream));
            CUDA_TRY(e, cudaMemsetAsync(s->buf[op->out], 0,
                                        B * shape_size(op->out_shape) * sizeof(float), s->stream));
            const float *w = dev_weight(c, e->model, op->l->p.conv.weight);
            const float *b = dev_weight(c, e->model, op->l->p.conv.bias);
            const int rows[2] = {(int)B, 1};
            for (int k = 0; k < 2 && r == CUDNN_STATUS_SUCCESS; k++) {
                if ((st = set_rows(e, c, s, op, d, rows[k])) != ERT_OK)
                    return st;
                r = cudnnConvolutionBiasActivationForward(
                    s->dnn, &ONE, d->x, s->buf[op->in], d->w, w, d->conv, d->last_algo, s->dnn_ws,
                    c->dnn_ws_size, &ZERO, d->y, s->buf[op->out], d->bias, b, c->relu, d->y,
                    s->buf[op->out]);
            }
            CUDA_TRY(e, cudaStreamSynchronize(s->stream));
        }
        if (r == CUDNN_STATUS_SUCCESS)
            continue;
        if (!dnn_refused(r))
            return engine_fail(e, ERT_CUDA, "cuda: conv %s: trying the fused conv+bias+ReLU: %s",
                               op->l->name, cudnnGetErrorString(r));
        d->fused = 0; /* the plain convolution + the bias/activation kernel */
        nfell++;
        int w = snprintf(fell + used, cap - used, "%s%s", nfell > 1 ? ", " : "", op->l->name);
        if (w > 0 && (size_t)w < cap - used)
            used += (size_t)w;
    }
    if (nfell) {
        char list[ERT_ERROR_LEN / 2];
        snprintf(list, sizeof list, "%s", fell);
        snprintf(fell, cap,
                 "convs: %d of %d fused conv+bias+ReLU calls refused by cuDNN, run "
                 "unfused: %s",
                 nfell, nfused, list);
    }
    return ERT_OK;
fail:
    return st;
}

/* ---- run ---------------------------------------------------------------------------- */

/* Points the op's tensor descriptors at n rows (a no-op when they already
 * are). For a conv, also settles the algorithm and workspace for n. */
static ert_status set_rows(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, dnn_op *d,
                           int n)
{
    ert_status st = ERT_OK;
    if (d->last_n == n)
        return ERT_OK;
    shape3 is = op->in_shape, os = op->out_shape;
    if (op->kind == OP_PATCH_EMBED)
        (void)op_conv(op, &os);
    CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, is.c,
                                            is.h, is.w));
    CUDNN_TRY(e, cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, os.c,
                                            os.h, os.w));
    d->last_n = 0; /* until the algorithm for n is settled */
    if (op->kind == OP_CONV || op->kind == OP_PATCH_EMBED) {
        size_t ws = 0;
        cudnnStatus_t r = cudnnGetConvolutionForwardWorkspaceSize(s->dnn, d->x, d->w, d->conv, d->y,
                                                                  d->algo, &ws);
        d->last_algo = d->algo;
        if (r != CUDNN_STATUS_SUCCESS || ws > c->dnn_ws_size) {
            /* never expected (checked at 1 and max_batch): stay correct */
            d->last_algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
            CUDNN_TRY(e, cudnnGetConvolutionForwardWorkspaceSize(s->dnn, d->x, d->w, d->conv, d->y,
                                                                 d->last_algo, &ws));
            if (ws > c->dnn_ws_size)
                return engine_fail(e, ERT_INTERNAL,
                                   "cuda: conv %s: no algorithm fits the workspace at %d rows",
                                   op->l->name, n);
        }
        d->last_ws = ws;
    }
    d->last_n = n;
    return ERT_OK;
fail:
    return st;
}

/* Appends "conv NAME unfused at N rows" to the engine's note (as far as it
 * fits): a fused call refused at run time (run_conv). */
static void note_unfused(ert_engine *e, const char *name, int n)
{
    size_t used = strlen(e->note);
    if (used + 1 < sizeof e->note)
        snprintf(e->note + used, sizeof e->note - used,
                 "%sconv %s: fused call refused at %d rows, "
                 "unfused from then on",
                 used ? "; " : "", name, n);
}

static ert_status run_conv(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, dnn_op *d,
                           int n)
{
    ert_status st = set_rows(e, c, s, op, d, n);
    if (st != ERT_OK)
        return st;
    const ert_model *m = e->model;
    const float *w = dev_weight(c, m, op->l->p.conv.weight);
    const float *b = dev_weight(c, m, op->l->p.conv.bias);
    const float *x = s->buf[op->in];
    float *y = s->buf[op->out];
    if (d->fused && b) {
        /* y = relu(conv(x) + 0 * z + bias), z = y: alpha2 = 0 as PyTorch's
           cudnn_convolution_relu passes it */
        cudnnStatus_t r = CUDNN_STATUS_NOT_SUPPORTED;
        if (ert_cuda_test_unfused != 2 || n == e->cfg.max_batch || n == 1)
            r = cudnnConvolutionBiasActivationForward(s->dnn, &ONE, d->x, x, d->w, w, d->conv,
                                                      d->last_algo, s->dnn_ws, c->dnn_ws_size,
                                                      &ZERO, d->y, y, d->bias, b, c->relu, d->y, y);
        if (r == CUDNN_STATUS_SUCCESS)
            return ERT_OK;
        if (!dnn_refused(r))
            return engine_fail(e, ERT_CUDA, "cuda: conv %s at %d rows: %s", op->l->name, n,
                               cudnnGetErrorString(r));
        /* refused at a row count the creation probe did not try: cuDNN
           checks before it launches anything, so the plain convolution
           below runs instead, and does from now on */
        d->fused = 0;
        note_unfused(e, op->l->name, n);
    }
    CUDNN_TRY(e, cudnnConvolutionForward(s->dnn, &ONE, d->x, x, d->w, w, d->conv, d->last_algo,
                                         s->dnn_ws, c->dnn_ws_size, &ZERO, d->y, y));
    if (b || op->act != ERT_ACT_NONE) {
        shape3 os = op->out_shape;
        KERNEL_TRY(e, k_bias_act(y, b, n, os.c, os.h * os.w, op->act, s->stream));
    }
    return ERT_OK;
fail:
    return st;
}

static ert_status run_pool(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, dnn_op *d,
                           int n)
{
    ert_status st = set_rows(e, c, s, op, d, n);
    if (st != ERT_OK)
        return st;
    CUDNN_TRY(e, cudnnPoolingForward(s->dnn, d->pool, &ONE, d->x, s->buf[op->in], &ZERO, d->y,
                                     s->buf[op->out]));
    return ERT_OK;
fail:
    return st;
}

/* A patch embedding: the convolution (no bias) into buffer op->tmp, then
 * the tokens (bias, class token, position, mask 1) into op->out. */
static ert_status run_patch(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, dnn_op *d,
                            int n)
{
    ert_status st = set_rows(e, c, s, op, d, n);
    if (st != ERT_OK)
        return st;
    const ert_model *m = e->model;
    const patch_params *pp = &op->l->p.patch;
    shape3 cs;
    (void)op_conv(op, &cs);
    float *conv = s->buf[op->tmp];
    CUDNN_TRY(e, cudnnConvolutionForward(s->dnn, &ONE, d->x, s->buf[op->in], d->w,
                                         dev_weight(c, m, pp->conv.weight), d->conv, d->last_algo,
                                         s->dnn_ws, c->dnn_ws_size, &ZERO, d->y, conv));
    KERNEL_TRY(e, k_patch_tokens(conv, dev_weight(c, m, pp->conv.bias), dev_weight(c, m, pp->cls),
                                 dev_weight(c, m, pp->pos), s->buf[op->out], n, cs.h * cs.w, cs.c,
                                 s->stream));
    return ERT_OK;
fail:
    return st;
}

/* Y[n, out] = X[n, in] W[out, in]^T + b. cuBLAS is column-major: there Y is
 * [out, n] (ld out), X is [in, n] (ld in) and W is [in, out] (ld in), so
 * Y = W^T X, i.e. C^T = W X^T in row-major terms. */
static ert_status run_linear(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, int n)
{
    ert_status st = ERT_OK;
    const linear_params *lp = &op->l->p.linear;
    const float *w = dev_weight(c, e->model, lp->weight);
    const float *b = dev_weight(c, e->model, lp->bias);
    float *y = s->buf[op->out];
    CUBLAS_TRY(e, cublasSgemm(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, lp->out_features, n,
                              lp->in_features, &ONE, w, lp->in_features, s->buf[op->in],
                              lp->in_features, &ZERO, y, lp->out_features));
    if (b || op->act != ERT_ACT_NONE)
        KERNEL_TRY(e, k_bias_act(y, b, n, lp->out_features, 1, op->act, s->stream));
    return ERT_OK;
fail:
    return st;
}

ert_status op_run(ert_engine *e, cuda_ctx *c, cuda_slot *s, int op_index, int n)
{
    ert_status st = ERT_OK;
    const prog_op *op = &c->prog.ops[op_index];
    size_t count = (size_t)n * shape_size(op->out_shape);
    switch (op->kind) {
    case OP_CONV: return run_conv(e, c, s, op, &c->dnn[op_index], n);
    case OP_MAXPOOL:
    case OP_AVGPOOL: return run_pool(e, c, s, op, &c->dnn[op_index], n);
    case OP_LINEAR: return run_linear(e, c, s, op, n);
    case OP_GAP:
        KERNEL_TRY(e, k_global_avgpool(s->buf[op->in], s->buf[op->out], n * op->in_shape.c,
                                       op->in_shape.h * op->in_shape.w, s->stream));
        return ERT_OK;
    case OP_ACT:
        KERNEL_TRY(e, k_act(s->buf[op->in], s->buf[op->out], count, op->act, s->stream));
        return ERT_OK;
    case OP_ADD:
        KERNEL_TRY(
            e, k_add(s->buf[op->in], s->buf[op->in2], s->buf[op->out], count, op->act, s->stream));
        return ERT_OK;
    case OP_PATCH_EMBED: return run_patch(e, c, s, op, &c->dnn[op_index], n);
    case OP_TOKEN_EMBED:
    case OP_LAYER_NORM:
    case OP_TOKEN_POOL:
    case OP_ATTENTION:
    case OP_ENCODER: return tx_op_run(e, c, s, op, n);
    }
    return engine_fail(e, ERT_INTERNAL, "cuda: op %d has an unknown kind %d", op_index,
                       (int)op->kind);
fail:
    return st;
}

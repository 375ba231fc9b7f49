/* cuda_internal.h - the CUDA backend's context, shared by its .c files.
 *
 * cuda_backend.c create/destroy, the per-batch schedule (jobs over slots)
 * cuda_ops.c  the ops: convolution and pooling through cuDNN's legacy API,
 *             linear through cuBLAS, the rest through the kernels/ .cu files
 * ../program.c the model compiled into ops and buffers (no CUDA calls;
 *             shared with the CPU oneDNN path)
 * tx_ops.c    the transformer ops (token embedding, layer norm, token
 *             pooling, self-attention, encoder blocks) over cuBLAS and the
 *             kernels of kernels/transformer.cu
 * stage.c     the one stage path (stage_enqueue), and the refill stream's
 *             stage op (src/stream.c)
 */
#ifndef ERT_CUDA_INTERNAL_H
#define ERT_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "engine_core.h"
#include "kernels.h"
#include "program.h"

/* cuBLAS workspace per slot: NVIDIA's recommended size for Hopper (the
 * cublasSetWorkspace documentation: 32 MiB on sm_90). Set explicitly so
 * cuBLAS never allocates behind our back (and graph capture stays legal). */
#define ERT_CUBLAS_WORKSPACE ((size_t)32 << 20)
/* Upper bound of the one cuDNN workspace per slot; the algorithm of each
 * convolution is chosen among those that fit it at max_batch. */
#define ERT_CUDNN_WORKSPACE_CAP ((size_t)256 << 20)

/* cuDNN state of one conv or pool op. The tensor descriptors are reset to the
 * op's row count before each call (see dnn_conv). */
typedef struct dnn_op {
    cudnnTensorDescriptor_t x, y, bias;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnPoolingDescriptor_t pool;
    cudnnConvolutionFwdAlgo_t algo; /* chosen at create for max_batch */
    int fused;                      /* conv + bias + ReLU in one cuDNN call */
    /* the algorithm and workspace for the row count last set */
    int last_n;
    cudnnConvolutionFwdAlgo_t last_algo;
    size_t last_ws;
} dnn_op;

/* One batch in flight: a stream and everything its kernels write. */
typedef struct cuda_slot {
    cudaStream_t stream;
    cudaEvent_t ev_count[ERT_MAX_EXITS]; /* the survivors' count of exit s is on the host */
    cudaEvent_t ev_done;                 /* the slot's work for a call is done */
    cublasHandle_t blas;
    cudnnHandle_t dnn;
    void *blas_ws;
    void *dnn_ws;
    float *buf[PROG_MAX_BUF]; /* activations: max_act * max_batch floats each */
    int *orig[2];             /* [max_batch] rows' original positions, ping-pong */
    int *src_row;             /* [max_batch] survivors' rows before the gather */
    int *d_count;             /* [ERT_MAX_EXITS] survivors after exit s */
    unsigned char *done;      /* [max_batch] MASKED: row already out */
    ert_patience *pstate;     /* [max_batch] each row's patience state, at its
                                  original position (orig): compaction never
                                  moves it (kernels/exit.cu) */
    int *h_count;             /* pinned [ERT_MAX_EXITS] */
    float *tx_ws;             /* [max_batch * cuda_ctx.tx_ws_row] the attention and
                                 encoder ops' workspace (tx_ops.c), or NULL */
} cuda_slot;

typedef struct cuda_ctx {
    int device;
    program prog;
    dnn_op *dnn; /* [prog.nops]; used by conv and pool ops */
    cudnnActivationDescriptor_t relu;
    size_t dnn_ws_size; /* bytes of each slot's cuDNN workspace */
    float *d_weights;   /* the model's weight block, on the device */
    size_t tx_ws_row;   /* floats per sample of each slot's tx_ws: the largest
                           tx_ws_floats of the program's ops (0: none) */
    cuda_slot *slots;
    int nslots;
    float *h_input;             /* pinned [max_batch * input size] */
    ert_sample *h_samples;      /* pinned [max_batch] */
    float *h_logits;            /* pinned [max_batch * K] */
    ert_sample *d_samples;      /* device [max_batch] (ert_infer's results) */
    float *d_logits;            /* device [max_batch * K] */
    float *d_scores;            /* device [max_batch * num_exits] (exit outputs) */
    int32_t *d_classes;         /* device [max_batch * num_exits] */
    float *h_scores;            /* pinned [max_batch * num_exits] */
    int32_t *h_classes;         /* pinned [max_batch * num_exits] */
    cudaEvent_t ev_caller;      /* infer_device: the caller's stream reached the call */
    struct graph_state *graphs; /* bucketed graphs (graph.c), or NULL: wait-based */
    int fused_attention;        /* attention as k_attn_fused where the heads fit (tx_ops.c) */
    int tf32;                   /* TF32 tensor cores for cuDNN and cuBLAS (cuda_ops.c) */
} cuda_ctx;

/* Whether stage si runs its heads and exit decision in ert_infer and the
 * refill stream. The program of an engine in FULL mode is the MASKED one
 * (cuda_backend.c: ert_engine_exit_outputs needs every head), so there only the
 * last stage decides; in the other modes every stage with a head does. */
static inline int stage_decides(const ert_engine *e, const cuda_ctx *c, int si)
{
    return c->prog.stages[si].has_exit &&
           (e->cfg.mode != ERT_MODE_FULL || si == c->prog.num_stages - 1);
}

/* The device copy of a pointer into model->weights (NULL stays NULL). */
static inline const float *dev_weight(const cuda_ctx *c, const ert_model *m, const float *w)
{
    return w ? c->d_weights + (w - m->weights) : NULL;
}

/* Creates the cuDNN descriptors of every conv and pool op, checks cuDNN's
 * output shapes against the model's, and picks each convolution's algorithm
 * (handle: any slot's). Sets c->dnn, c->relu and c->dnn_ws_size. */
ert_status dnn_setup(ert_engine *e, cuda_ctx *c, cudnnHandle_t handle);
void dnn_teardown(cuda_ctx *c);

/* Runs every fused conv+bias+ReLU once on slot 0 (at max_batch and at one
 * row, after the workspaces exist); a conv whose fused call cuDNN refuses
 * (NOT_SUPPORTED, BAD_PARAM) runs as the plain convolution plus the
 * bias/activation kernel from then on. fell: "" when none fell back, else
 * the note's sentence naming them. A refusal at another row count, at run
 * time, falls back the same way there (cuda_ops.c's run_conv; the note
 * gets a line). Test hook: ert_cuda_test_unfused = 1 makes every fused
 * call of the probe count as refused; = 2 every fused call at run time at
 * a row count other than max_batch and 1 (the probe's). */
ert_status dnn_try_fused(ert_engine *e, cuda_ctx *c, char *fell, size_t cap);
extern int ert_cuda_test_unfused;

/* Enqueues op prog.ops[op_index] for n rows on slot s's stream. */
ert_status op_run(ert_engine *e, cuda_ctx *c, cuda_slot *s, int op_index, int n);

/* tx_ops.c: the workspace floats per sample a transformer op needs (0 for
 * the others); whether the op's sizes fit cuBLAS's int counts at max_batch
 * (ERT_UNSUPPORTED with a message on e if not); and the op itself for n
 * rows (OP_TOKEN_EMBED, OP_LAYER_NORM, OP_TOKEN_POOL, OP_ATTENTION,
 * OP_ENCODER; OP_PATCH_EMBED is a convolution, in cuda_ops.c). */
size_t tx_ws_floats(const prog_op *op);
ert_status tx_check_sizes(ert_engine *e, const prog_op *op);
ert_status tx_op_run(ert_engine *e, cuda_ctx *c, cuda_slot *s, const prog_op *op, int n);

/* One ert_infer / ert_infer_device call, as the wait-based path
 * (cuda_backend.c) and the graphs (graph.c) run it. */
typedef struct cuda_call {
    const float *d_input; /* ert_infer_device: the caller's device input; NULL:
                               ert_infer, whose input is in c->h_input (pinned) */
    ert_sample *samples;  /* device results at original positions */
    float *logits;        /* device [batch, K], or NULL: not wanted */
    int want_host;        /* ert_infer: results into c->h_samples / c->h_logits */
    int32_t host_waits;
    uint64_t macs; /* the wait-based path's count (graphs: graph_figures) */
} cuda_call;

/* The sub-batches ("jobs") of a call: job j of nj gets rows [off, off + len). */
void cuda_job_span(int batch, int nj, int j, int *off, int *len);

/* What a stage run needs besides the stage itself: where its row count
 * lives, where its results go, and what follows the exit decision. */
typedef struct stage_args {
    int si;                   /* the stage */
    int n;                    /* rows launched for: the exact count, or (graphs) the
                               bucket's row count */
    const int *d_n;           /* graphs: the real count on the device (<= n), else NULL */
    const float *norm_src;    /* stage 0: raw rows to normalise into the stage's input
                               buffer (may be that buffer; a token model's rows are
                               copied unchanged); NULL: no normalisation */
    int iota_base;            /* >= 0: first orig[cur][i] = iota_base + i */
    int cur;                  /* s->orig[cur] holds the rows' original positions */
    unsigned char *done;      /* MASKED: rows already out (skipped, then marked); else NULL */
    ert_patience *state;      /* the rows' patience states at their original positions
                               (s->pstate), or NULL at the final head */
    ert_sample *samples;      /* device results at original positions */
    float *logits;            /* device [*, K] at original positions, or NULL */
    const float *d_threshold; /* graphs: the threshold read on the device, else NULL */
    int gather_buf;           /* >= 0: compact the survivors (count in s->d_count[si],
                               positions in s->orig[!cur]) and gather their rows into
                               this buffer; -1: decide only (MASKED, FULL, last stage) */
    int *h_count;             /* with gather_buf: copy the count here (pinned) and */
    cudaEvent_t count_event;  /* record this event after the copy; NULL: neither */
    ert_switch_args sw;       /* graphs: the exit kernel selects the next stage's bucket */
    /* ert_engine_exit_outputs: when either is set, every row's score and class
       go here at [orig * num_exits + si] (device) instead of a decision; with
       gather_buf >= 0 every row is then copied there, in place (nobody left) */
    float *out_scores;
    int32_t *out_classes;
} stage_args;

/* Enqueues one stage on slot s's stream: [normalise, row ids,] the backbone
 * ops, and where the stage decides (stage_decides) or outputs are asked for,
 * the head and confidence ops, then the exit decision, and with gather_buf
 * the compaction and the gather (or the outputs and a copy of every row).
 * Adds the MACs of n rows to *macs (NULL: not counted). The only place a
 * stage is enqueued (stage.c). */
ert_status stage_enqueue(ert_engine *e, cuda_ctx *c, cuda_slot *s, const stage_args *a,
                         uint64_t *macs);

/* ert_infer_device: slots [0, used) start after the work already enqueued
 * on cs, or on the legacy default stream when cs is NULL. */
ert_status order_after_caller(ert_engine *e, cuda_ctx *c, cudaStream_t cs, int used);

/* engine_core.h's run_stage, for the refill stream (stage.c). */
ert_status cuda_run_stage(ert_engine *e, int stage, const float *in, int n, float *out,
                          ert_sample *res, float *logits, unsigned char *exited,
                          ert_patience *state, uint64_t *macs);

#endif /* ERT_CUDA_INTERNAL_H */

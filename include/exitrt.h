/* exitrt.h - the public C API of exitrt, an early-exit inference runtime.
 *
 * A model is a multi-exit network: a backbone with classifier heads ("exits")
 * attached part-way. At inference each sample leaves at the first exit whose
 * policy is confident; the later layers are not computed for it.
 *
 * Plain C11, no CUDA types: one ABI for CPU-only and CUDA builds.
 *
 * Ownership and errors:
 *   - Functions that create a handle take an optional `ert_error *` that
 *     receives a one-line message on failure.
 *   - Functions on an engine keep the message of their last failure on the
 *     engine; read it with ert_engine_error().
 *   - Every *_free accepts NULL.
 *   - The library never prints, never exits and never aborts.
 *   - A model must outlive every engine created from it. Freeing a model
 *     while an engine still uses it is refused: ert_model_free() then only
 *     marks it, and the last ert_engine_free() releases it.
 *   - An engine is not thread-safe: call ert_infer() on one engine from one
 *     thread at a time (a concurrent call returns ERT_BUSY). Every call
 *     that takes an engine (ert_infer, ert_infer_tokens, ert_infer_device,
 *     ert_engine_scores, ert_engine_exit_outputs, ert_engine_set_threshold,
 *     and a stream's submit, poll and flush) claims it first: one made
 *     while another runs returns ERT_BUSY at once, before checking its
 *     arguments, and changes nothing on the engine, its message included.
 *
 * Structs that grow (the ABI within one major version):
 *   - The config, result and counter structs (ert_engine_config,
 *     ert_result, ert_device_result, ert_stream_config, ert_stream_stats)
 *     begin with `uint32_t struct_size`: sizeof the struct in the header the
 *     program was built with. Start each from its ERT_*_INIT macro (or, for
 *     the two configs, ert_*_config_default()), which sets it; a struct
 *     zeroed or filled by hand without it is refused (ERT_INVALID_ARGUMENT,
 *     "struct_size is 0 ...").
 *   - A later minor version only appends fields, and every layout ends
 *     without trailing padding, so each layout has its own size. The
 *     library reads and writes only the fields the caller's size covers and
 *     gives a config's missing fields their defaults. A size that is not a
 *     layout the library knows is refused with ERT_INVALID_ARGUMENT; one
 *     larger than the library's own (a program built against a newer
 *     exitrt.h than the library it runs with) with ERT_UNSUPPORTED; the
 *     message names the struct and both sizes.
 *   - ert_sample, ert_stream_result and ert_error never change: arrays of
 *     them are indexed by the caller's sizeof.
 *   - Programs built against exitrt 0.3 (whose structs had no struct_size)
 *     keep running: the shared library keeps their entry points under the
 *     symbol version EXITRT_0.3 (docs/ARCHITECTURE.md, "ABI").
 */
#ifndef EXITRT_H
#define EXITRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header. ert_version() gives the library's, which a
 * program linked against the shared library may find newer; the ABI stays
 * the same within one major version (the shared library's SONAME is
 * libexitrt.so.<major>). */
#define ERT_VERSION_MAJOR 0
#define ERT_VERSION_MINOR 4
#define ERT_VERSION_PATCH 0

/* ERT_API marks what the shared library exports (everything else is hidden);
 * ERT_NODISCARD makes the compiler warn when a status is ignored. */
#if defined(__GNUC__) || defined(__clang__)
#define ERT_API __attribute__((visibility("default")))
#define ERT_NODISCARD __attribute__((warn_unused_result))
#else
#define ERT_API
#define ERT_NODISCARD
#endif

/* The library's version as "MAJOR.MINOR.PATCH" (a static string). */
ERT_API const char *ert_version(void);

/* Exits per model, the final head included. */
#define ERT_MAX_EXITS 16
#define ERT_ERROR_LEN 512

typedef enum ert_status {
    ERT_OK = 0,
    ERT_INVALID_ARGUMENT, /* a NULL pointer, a batch out of range, ... */
    ERT_IO,               /* a file could not be opened or read */
    ERT_FORMAT,           /* a model or data file is malformed */
    ERT_UNSUPPORTED,      /* valid, but not supported (a dtype, a layer) */
    ERT_OUT_OF_MEMORY,
    ERT_NO_DEVICE, /* CUDA backend asked for, no usable device */
    ERT_CUDA,      /* a CUDA, cuBLAS or cuDNN call failed */
    ERT_BUSY,      /* the engine is in use by another call */
    ERT_INTERNAL,
    ERT_QUEUE_FULL /* a stream's queue is full: poll, then resubmit */
} ert_status;

/* A static string naming the status ("ok", "format error", ...). */
ERT_API const char *ert_status_string(ert_status s);

typedef struct ert_error {
    char msg[ERT_ERROR_LEN];
} ert_error;

typedef enum ert_backend {
    ERT_BACKEND_AUTO = 0, /* CUDA when a device is present, else CPU */
    ERT_BACKEND_CPU,
    ERT_BACKEND_CUDA
} ert_backend;

typedef enum ert_mode {
    ERT_MODE_FULL = 0, /* no early exit: every sample takes the final head */
    ERT_MODE_MASKED,   /* everything computed, output chosen per sample */
    ERT_MODE_COMPACTED /* exited samples dropped, later stages on fewer rows */
} ert_mode;

/* The arithmetic of an engine's products (ert_engine_config.precision),
 * one meaning on every backend that offers it. */
typedef enum ert_precision {
    ERT_PRECISION_FP32 = 0, /* float32 products, float32 storage: the exact math
                               the tests hold every backend to (the default) */
    ERT_PRECISION_TF32      /* CUDA only: convolutions and matrix products on
                               the tensor cores, their inputs rounded to TF32
                               (10-bit mantissa), accumulation and storage in
                               float32; everything else (normalisation,
                               softmax, exit scores) float32. The CPU backend
                               refuses it (ERT_UNSUPPORTED). */
} ert_precision;

/* CUDA optimisations an engine may turn on (ert_engine_config.cuda_options,
 * a bitwise or), each its own switch so that one benchmark measures each
 * one's effect. The CPU backend ignores them. */
#define ERT_CUDA_FUSED_ATTENTION \
    1u /* attention as one kernel per block of queries: scores, masked     \
          softmax and the weighted sum with no score stored, keys after a  \
          sequence's last attended one not read (heads of at most 128      \
          features; wider ones take the blocked SGEMMs) */

typedef enum ert_policy_kind {
    ERT_POLICY_NONE = 0,        /* the final head: always exits */
    ERT_POLICY_ENTROPY,         /* exits when softmax entropy < threshold */
    ERT_POLICY_MAX_PROB,        /* exits when max probability >= threshold */
    ERT_POLICY_MARGIN,          /* exits when top1 - top2 probability >= threshold */
    ERT_POLICY_CONFIDENCE_HEAD, /* exits when the learned head's output >= threshold */
    /* Patience (PABEE): exits when the predicted class (argmax, lowest index
     * on ties) has been the same at the last k exits, this one included,
     * k = the threshold, an integer >= 1. Every earlier exit counts,
     * whatever its policy; an exit with non-finite logits never exits and
     * breaks the streak (it restarts at the next finite exit). So the first
     * exit can fire only with k = 1, and the exit at index i never with
     * k > i + 1. Its score is the streak length (ert_sample.score of a
     * sample leaving there; NaN where the logits are not finite). Each
     * sample carries its streak and class from exit to exit, through
     * compaction and the refill stream's queues (src/policy.h). */
    ERT_POLICY_PATIENCE
} ert_policy_kind;

ERT_API const char *ert_backend_string(ert_backend b);
ERT_API const char *ert_mode_string(ert_mode m);
ERT_API const char *ert_precision_string(ert_precision p); /* "fp32", "tf32" */
ERT_API const char *ert_policy_string(ert_policy_kind p);

typedef struct ert_model ert_model;
typedef struct ert_engine ert_engine;

/* ---- model --------------------------------------------------------------- */

/* Loads a model from a directory holding model.json, or from the path of a
 * model.json; the weights file it names is read from beside it. Validates the
 * whole file and folds batch norm into the preceding convolutions.
 * On success *out owns the model (free with ert_model_free). On failure *out
 * is NULL and err (if not NULL) names the file, the field and the problem. */
ERT_API ERT_NODISCARD ert_status ert_model_load(const char *path, ert_model **out, ert_error *err);

/* Frees a model. NULL is accepted. If engines created from it are still
 * alive, the model is released when the last of them is freed. */
ERT_API void ert_model_free(ert_model *m);

/* Number of exits, the final head included (>= 1). The final head is exit
 * ert_model_num_exits() - 1. */
ERT_API int ert_model_num_exits(const ert_model *m);
ERT_API int ert_model_num_classes(const ert_model *m);
/* Floats per input sample (C*H*W), and the shape. */
ERT_API size_t ert_model_input_size(const ert_model *m);
ERT_API void ert_model_input_shape(const ert_model *m, int *c, int *h, int *w);
/* Token models (model.json "input": {"tokens": T}; models/FORMAT.md,
 * "Transformer encoders"): T, the sequence length; 0 for an image model.
 * A token model's input row is 2T floats, the T token ids then the T mask
 * values (nonzero: attended; 0: padding), so ert_model_input_size() is 2T
 * and ert_model_input_shape() gives (2, T, 1): every call that takes float
 * input (ert_infer, ert_engine_exit_outputs, the streams) takes such rows. */
ERT_API int ert_model_input_tokens(const ert_model *m);
/* A token model's vocabulary size (ids lie in [0, vocab)); 0 for an image
 * model. */
ERT_API int ert_model_vocab_size(const ert_model *m);
/* Packs n sequences into input rows for a token model of T tokens.
 *   ids   [n * T] token ids, each in [0, ert_model_vocab_size(m))
 *   mask  [n * T] nonzero: attended, 0: padding; or NULL: all attended
 *   rows  [n * 2T] floats, written
 * ERT_INVALID_ARGUMENT (message in err) for an image model, n < 0, a NULL
 * pointer, or an id out of range; rows is then left unspecified. */
ERT_API ERT_NODISCARD ert_status ert_pack_tokens(const ert_model *m, const int32_t *ids,
                                                 const int32_t *mask, int n, float *rows,
                                                 ert_error *err);
/* The exit's name, or NULL when i is out of range. */
ERT_API const char *ert_model_exit_name(const ert_model *m, int i);
/* The exit's index by name, or -1. */
ERT_API int ert_model_exit_index(const ert_model *m, const char *name);
ERT_API ert_policy_kind ert_model_exit_policy(const ert_model *m, int i);
/* The threshold the model file sets for exit i (NaN for the final head). */
ERT_API float ert_model_exit_threshold(const ert_model *m, int i);
/* Multiply-accumulates per sample of the full network: backbone and final
 * head, no early heads. */
ERT_API uint64_t ert_model_macs_full(const ert_model *m);
/* The sample data file and label file the model directory names, as paths
 * joined with the model directory, or NULL when none. */
ERT_API const char *ert_model_sample_data(const ert_model *m);
ERT_API const char *ert_model_sample_labels(const ert_model *m);

/* ---- engine -------------------------------------------------------------- */

typedef struct ert_engine_config {
    uint32_t struct_size; /* sizeof(ert_engine_config): ERT_ENGINE_CONFIG_INIT */
    ert_backend backend;
    ert_mode mode;
    int max_batch; /* largest batch ert_infer accepts (>= 1) */
    /* CPU: the threads the engine's calls run on (OpenMP team, oneDNN,
     * OpenBLAS); 0 = the libraries' defaults (a model with transformer
     * layers runs OpenBLAS at one thread inside its OpenMP team, whatever
     * the count). Scoped to the engine's own
     * calls: each call sets the calling thread's OpenMP thread count and
     * OpenBLAS's for its duration and gives back what it found, so neither
     * another engine's setting nor the host's own counts change (read them
     * with omp_get_max_threads and openblas_get_num_threads around a call:
     * they are the same before and after). OpenBLAS's count is one per
     * process: while engine calls run, a BLAS call the host makes on another
     * thread may run with the count of an engine's call, and the count the
     * host finds after the last concurrent call has returned is the one it
     * had before the first began. */
    int threads;
    int device;   /* CUDA: device ordinal */
    int inflight; /* CUDA: batches in flight on their own streams (>= 1) */
    /* CUDA, COMPACTED: 0 = the wait-based path (the host learns each row
     * count); K in [1, 64] = size-bucketed CUDA graphs with no host wait:
     * each stage is captured for K row counts (multiples of
     * ceil(max_batch / K)) and a conditional node on the device picks the
     * smallest bucket holding the survivors. If capture or instantiation
     * fails the engine falls back to the wait-based path and says why in
     * ert_engine_note(). Ignored by the other modes and by the CPU. */
    int graph_buckets;
    ert_precision precision; /* ERT_PRECISION_FP32 (default) or TF32 (CUDA) */
    unsigned cuda_options;   /* ERT_CUDA_* bits; 0 (default): none */
} ert_engine_config;

/* Defaults: AUTO backend, COMPACTED mode, max_batch 256, threads 0,
 * device 0, inflight 1, graph_buckets 0, precision FP32, cuda_options 0.
 * The library reads no environment
 * variables; the exitrt command takes its --graph-buckets default from
 * ERT_GRAPH_BUCKETS.
 *   ert_engine_config cfg = ERT_ENGINE_CONFIG_INIT;
 * and ert_engine_config_default() (the same, from the library) both set
 * struct_size. */
#define ERT_ENGINE_CONFIG_INIT                                                                   \
    {                                                                                            \
        (uint32_t)sizeof(ert_engine_config), ERT_BACKEND_AUTO, ERT_MODE_COMPACTED, 256, 0, 0, 1, \
            0, ERT_PRECISION_FP32, 0u                                                            \
    }
ERT_API ert_engine_config ert_engine_config_default(void);

/* Creates an engine for model m. cfg: made as above (its struct_size is
 * checked first: "Structs that grow"). Buffers are sized for cfg->max_batch
 * once, here. With ERT_BACKEND_AUTO and no usable CUDA device the CPU backend is
 * used (ert_engine_backend() tells which). On failure *out is NULL and err
 * says why; nothing is leaked. */
ERT_API ERT_NODISCARD ert_status ert_engine_create(ert_model *m, const ert_engine_config *cfg,
                                                   ert_engine **out, ert_error *err);
ERT_API void ert_engine_free(ert_engine *e);

/* The backend the engine runs on (never AUTO), and its mode. */
ERT_API ert_backend ert_engine_backend(const ert_engine *e);
ERT_API ert_mode ert_engine_mode(const ert_engine *e);

/* The message of the engine's last failure ("" if none). Valid until the
 * next call on the engine. A call refused with ERT_BUSY does not write it:
 * the message belongs to the call that holds the engine, so after a BUSY
 * refusal it still says what it said before (and the call running on the
 * other thread may change it at any moment: read it from the thread whose
 * call failed, once no other call on the engine runs). ERT_BUSY itself is
 * the whole answer: the engine was running another call. */
ERT_API const char *ert_engine_error(const ert_engine *e);

/* A line about how the engine runs that is not an error ("" if none), set at
 * creation. CUDA COMPACTED with graph_buckets > 0: "graphs: on: ..." (the
 * buckets) or "graphs: off: <reason>" (the fallback to the wait-based path,
 * e.g. a library call that could not be captured). Valid while e lives. */
ERT_API const char *ert_engine_note(const ert_engine *e);

/* Overrides exit i's threshold for later calls. Rejects the final head, a
 * NaN, and values outside the policy's range ([0,1] for probabilities and
 * the confidence head, [0, log K] ... any value >= 0 for entropy, a finite
 * integer >= 1 for patience). The model loader checks a file's thresholds
 * by the same rule (and also wants them finite). ERT_BUSY, changing
 * nothing, while another call runs on the engine. */
ERT_API ERT_NODISCARD ert_status ert_engine_set_threshold(ert_engine *e, int exit_index,
                                                          float threshold);
ERT_API float ert_engine_threshold(const ert_engine *e, int exit_index);

/* One sample's outcome. */
typedef struct ert_sample {
    int32_t exit_index; /* the exit taken: 0 .. num_exits-1 */
    int32_t predicted;  /* argmax of that exit's logits (lowest index on ties) */
    float score;        /* the policy score at that exit (the final head's
                           score is its max softmax probability; a patience
                           exit's is the streak length, 1.0, 2.0, ...) */
} ert_sample;

/* Results of one ert_infer call. The caller owns every array. Start it from
 * ERT_RESULT_INIT (struct_size), then set samples and logits:
 *   ert_result res = ERT_RESULT_INIT;
 *   res.samples = samples; */
typedef struct ert_result {
    uint32_t struct_size; /* sizeof(ert_result): ERT_RESULT_INIT */
    ert_sample *samples;  /* [batch] required */
    float *logits;        /* [batch * num_classes] or NULL: not wanted */
    /* filled by the call: */
    int32_t exit_counts[ERT_MAX_EXITS]; /* samples leaving at each exit */
    uint64_t macs_executed;             /* multiply-accumulates actually run */
    uint64_t macs_full;                 /* the full network's, for this batch */
    int32_t host_waits;                 /* blocking host waits on the device */
    int32_t nonfinite_samples;          /* samples whose input held NaN or Inf */
    /* Size-bucketed graphs (graph_buckets > 0 and ert_engine_note() says
     * "graphs: on"); otherwise padding_rows = 0, macs_padding = 0 and every
     * bucket[s] = -1. Read from counters the device wrote, copied back with
     * the results. */
    int32_t padding_rows;          /* rows run only to fill buckets, summed over
                                     stages (and sub-batches when inflight > 1);
                                     they never reach the results */
    int32_t bucket[ERT_MAX_EXITS]; /* stage s: the bucket index the device chose
                                     (rows run = (bucket + 1) * step, at most
                                     max_batch), the largest over sub-batches;
                                     -1 when no row entered the stage */
    uint64_t macs_padding;         /* MACs spent on padding rows; not counted in
                                     macs_executed, which stays the rows' own work */
} ert_result;

#define ERT_RESULT_INIT                                                      \
    {                                                                        \
        (uint32_t)sizeof(ert_result), NULL, NULL, {0}, 0, 0, 0, 0, 0, {0}, 0 \
    }

/* Runs a batch. input: [batch, C, H, W] floats in the model's raw units (the
 * model's input normalisation is applied inside). 1 <= batch <= max_batch.
 * Fills out->samples (and out->logits when not NULL) at the samples' original
 * positions, and the per-batch figures. */
ERT_API ERT_NODISCARD ert_status ert_infer(ert_engine *e, const float *input, int batch,
                                           ert_result *out);

/* ert_infer for a token model, from ids and mask as ert_pack_tokens takes
 * them (packed into a buffer the engine allocated at create, so no
 * allocation per call). ERT_INVALID_ARGUMENT for an image model's engine
 * or an id out of range (the message on ert_engine_error). */
ERT_API ERT_NODISCARD ert_status ert_infer_tokens(ert_engine *e, const int32_t *ids,
                                                  const int32_t *mask, int batch, ert_result *out);

/* Every exit's policy score for every sample of a batch, for calibration
 * (choosing thresholds that give a wanted share of samples per exit).
 * Runs every head on every sample, so it costs what MASKED costs, whatever
 * the engine's mode. scores: [batch * num_exits], row-major; the final
 * head's score is its max softmax probability. The same as
 * ert_engine_exit_outputs(e, input, batch, scores, NULL). */
ERT_API ERT_NODISCARD ert_status ert_engine_scores(ert_engine *e, const float *input, int batch,
                                                   float *scores);

/* Every exit's policy score and predicted class for every sample of a batch
 * (MASKED cost, whatever the engine's mode). scores: [batch * num_exits] or
 * NULL; classes: [batch * num_exits] or NULL (argmax of that exit's logits,
 * lowest index on ties, as ert_sample.predicted); not both NULL. Row-major:
 * sample * num_exits + exit. Every exit is scored for every sample,
 * whether or not an earlier exit would have taken it; where the sample does
 * leave at an exit, its ert_sample there (ERT_MODE_MASKED) has this score
 * and class. */
ERT_API ERT_NODISCARD ert_status ert_engine_exit_outputs(ert_engine *e, const float *input,
                                                         int batch, float *scores,
                                                         int32_t *classes);

/* Device-side results of ert_infer_device: device pointers the caller owns.
 * Start it from ERT_DEVICE_RESULT_INIT. */
typedef struct ert_device_result {
    uint32_t struct_size; /* sizeof(ert_device_result): ERT_DEVICE_RESULT_INIT */
    int32_t host_waits;   /* filled on the host when the call returns */
    ert_sample *samples;  /* device [batch] required */
    float *logits;        /* device [batch * num_classes] or NULL */
} ert_device_result;

#define ERT_DEVICE_RESULT_INIT                             \
    {                                                      \
        (uint32_t)sizeof(ert_device_result), 0, NULL, NULL \
    }

/* Runs a batch whose input already lives on the GPU (CUDA backend only).
 * d_input: device [batch, C, H, W] floats in raw units. cuda_stream: a
 * cudaStream_t. The engine's work starts after what is already enqueued on
 * it, and work enqueued on it after this call sees the results; the call
 * itself waits only where the mode needs row counts on the host
 * (COMPACTED). With cuda_stream NULL the engine's work starts after what is
 * already enqueued on the legacy default stream (cudaStreamLegacy: a plain
 * cudaMemcpy of the input, say; a program built with per-thread default
 * streams passes cudaStreamPerThread instead), and the call returns once the
 * results are written (it synchronises), since nothing else could order
 * after it. */
ERT_API ERT_NODISCARD ert_status ert_infer_device(ert_engine *e, const void *d_input, int batch,
                                                  ert_device_result *out, void *cuda_stream);

/* The CUDA backend is a plugin: libexitrt.so needs no CUDA library, and
 * loads libexitrt_cuda.so (which needs the CUDA runtime, cuBLAS and cuDNN)
 * with dlopen on first use: the first engine with ERT_BACKEND_CUDA or AUTO,
 * or the first ert_cuda_available() / ert_cuda_info(). It looks in the
 * library's plugin directory, "exitrt" beside libexitrt.so (installed:
 * <libdir>/exitrt/libexitrt_cuda.so), unless ert_plugin_dir_set() named
 * another. When the plugin or a CUDA library is missing, ERT_BACKEND_CUDA
 * fails with ERT_UNSUPPORTED (the message names what is missing) and AUTO
 * runs on the CPU. The static library libexitrt.a does the same: a program
 * linked to it needs no CUDA either, and finds the plugin in
 * <bindir>/../<libdir>/exitrt or the installed <libdir>/exitrt. */

/* Whether the CUDA backend can be loaded and sees a usable device. */
ERT_API int ert_cuda_available(void);

/* One line naming CUDA device `device` (name, compute capability, SMs,
 * memory) and the CUDA driver, runtime, cuDNN and cuBLAS versions in use,
 * into buf (cap bytes, always terminated). ERT_NO_DEVICE when the device
 * cannot be queried (the line then says why, with the library versions);
 * ERT_UNSUPPORTED when the CUDA backend cannot be loaded (the line says
 * why: a build without it, the plugin or a CUDA library missing). */
ERT_API ERT_NODISCARD ert_status ert_cuda_info(int device, char *buf, size_t cap);

/* Where the CUDA plugin (libexitrt_cuda.so) is loaded from: dir instead of
 * the default search above; NULL restores the default. Process-wide (one
 * plugin per process, as dlopen is): call it before the first engine or
 * CUDA query. A failed earlier search is forgotten, so the next use tries
 * dir; once a plugin is loaded it stays, and this returns ERT_UNSUPPORTED.
 * The library reads no environment variable for it. */
ERT_API ERT_NODISCARD ert_status ert_plugin_dir_set(const char *dir, ert_error *err);

/* ---- stream (refill) ----------------------------------------------------- *
 *
 * A stream runs samples through an engine stage by stage, each stage with its
 * own queue of rows waiting for it. Samples that exit leave their queue; the
 * survivors join the next stage's queue, where they sit beside samples that
 * entered later. So every stage keeps running full batches (the engine's
 * width is used) while each sample still does only the work of the exits it
 * passed: the slots that exited samples free are refilled by the next
 * samples in line.
 *
 *   ert_stream *s;
 *   ert_stream_create(engine, NULL, &s, &err);      // defaults
 *   ert_stream_submit(s, x, n, NULL);               // ids 0..n-1
 *   ert_stream_flush(s);                            // run what is queued
 *   ert_stream_poll(s, res, NULL, max, &got);       // finished samples
 *   ert_stream_free(s);
 *
 * Results: each sample gets the exit, class, score and logits that ert_infer
 * gives for it on the same engine in ERT_MODE_MASKED (or, for an engine in
 * ERT_MODE_FULL, the final head's): bit for bit where the engine's modes
 * agree bit for bit (ert_engine_note says which: a CPU engine whose
 * libraries round a row alike wherever it sits in a call); elsewhere (CUDA,
 * and a CPU whose BLAS or oneDNN kernels round a row by its place in a call)
 * to float rounding, so a sample whose score lies within rounding of a
 * threshold may leave at another exit. Results come back in the order
 * samples finish, which is not the order they were submitted in; ids tell
 * them apart.
 *
 * Scheduling (the rule is in src/stream.c's header comment): a stage runs
 * when its queue holds a full batch; a partial batch runs only on
 * ert_stream_flush, or on submit/poll when the oldest queued sample has
 * waited longer than the deadline. Work runs inside submit, poll and flush
 * only: a stream has no thread of its own.
 *
 * Memory is bounded and allocated at create: at most `queue` samples are
 * admitted at a time (queued in some stage, or finished and not yet polled);
 * a submit that would exceed that is refused with ERT_QUEUE_FULL. Queues hold
 * host memory: stage 0 `queue` input rows, each later stage min(queue,
 * 2 * batch) rows of its input activation, plus `queue` results with logits.
 *
 * The engine: a stream holds its engine's busy flag only during its own
 * calls, so ert_infer and other streams may use the same engine between
 * them (and get ERT_BUSY during them). A stream reads the engine's
 * thresholds at every stage run: a threshold changed while samples are in
 * flight applies to the stages they run after the change. Free every stream
 * before its engine. A stream is not thread-safe (one thread at a time). */

typedef struct ert_stream ert_stream;

/* Which full batch runs first when several stages hold one. */
typedef enum ert_stream_schedule {
    ERT_SCHEDULE_DEEPEST_FIRST = 0, /* the default: bounds latency and memory */
    ERT_SCHEDULE_SHALLOWEST_FIRST   /* the alternative, for measurement */
} ert_stream_schedule;

typedef struct ert_stream_config {
    uint32_t struct_size; /* sizeof(ert_stream_config): ERT_STREAM_CONFIG_INIT */
    int batch;            /* rows per stage run, 1..engine max_batch;
                           0: the engine's max_batch */
    int queue;            /* samples admitted at a time (queued or finished and
                           not yet polled), >= 1; 0: max(4, stages + 1) *
                           batch, which leaves room for a partial batch
                           waiting in every stage plus a full one */
    ert_stream_schedule schedule;
    double deadline_ms; /* a partial batch runs on submit/poll once the oldest
                           queued sample was submitted this long ago; 0: at
                           every call; negative or +inf: never (flush only) */
} ert_stream_config;

/* Defaults: batch 0 (the engine's max_batch), queue 0 (see above),
 * deadline 2 ms, deepest stage first. ERT_STREAM_CONFIG_INIT and
 * ert_stream_config_default() both set struct_size. */
#define ERT_STREAM_CONFIG_INIT                                                     \
    {                                                                              \
        (uint32_t)sizeof(ert_stream_config), 0, 0, ERT_SCHEDULE_DEEPEST_FIRST, 2.0 \
    }
ERT_API ert_stream_config ert_stream_config_default(void);

/* Creates a stream on engine e (any backend whose engine supports streams:
 * CPU and CUDA; any mode: MASKED and COMPACTED engines give early exits,
 * FULL gives every sample the final head). cfg NULL: the defaults.
 * Allocates every queue here. On success *out owns the stream (free with
 * ert_stream_free, before the engine). On failure *out is NULL and err
 * says why: ERT_INVALID_ARGUMENT for a bad config, ERT_UNSUPPORTED when the
 * backend has no stage runner, ERT_OUT_OF_MEMORY. */
ERT_API ERT_NODISCARD ert_status ert_stream_create(ert_engine *e, const ert_stream_config *cfg,
                                                   ert_stream **out, ert_error *err);

/* Frees the stream and every result not yet polled. NULL is accepted. */
ERT_API void ert_stream_free(ert_stream *s);

/* Enqueues n samples, all or nothing. inputs: [n, C, H, W] floats in raw
 * units (as ert_infer; copied, the caller keeps its buffer). ids: [n] caller
 * ids returned with the results, or NULL: each sample's id is then its
 * submission index over the stream's life (0, 1, 2, ...). Then runs the work
 * that is ready (full batches, and partial ones past the deadline).
 * Returns ERT_QUEUE_FULL, having enqueued and run nothing, when the n
 * samples do not fit beside those admitted (poll to make room);
 * ERT_INVALID_ARGUMENT when n < 0 or n > the queue capacity (they could
 * never fit); ERT_BUSY when the engine is in another call. n == 0 only runs
 * ready work. A queue can also fill with samples that wait in partial
 * batches (more likely with a queue below (stages + 1) * batch); when a poll
 * then finds nothing finished, flush (or wait for the deadline) to move
 * them. A stage that fails leaves the stream as it was before that
 * stage run (a later call retries it); the message is on ert_stream_error. */
ERT_API ERT_NODISCARD ert_status ert_stream_submit(ert_stream *s, const float *inputs, int n,
                                                   const uint64_t *ids);

/* One finished sample. */
typedef struct ert_stream_result {
    uint64_t id;       /* as submitted */
    ert_sample sample; /* exit, class, score: as ert_result's */
    double latency_s;  /* from its submit call to the end of the stage run it
                           left in */
} ert_stream_result;

/* Runs the ready work (as submit does), then moves up to max finished
 * samples, oldest finished first, into results[0 .. *got) and, when logits
 * is not NULL, their logits into logits[0 .. *got * num_classes). Polled
 * samples leave the stream and free their room in the queue. Never waits
 * for a partial batch: samples short of a full batch and not past the
 * deadline stay queued (flush runs them). results may be NULL when max is 0.
 * Returns ERT_OK with *got = 0 when nothing is finished. When a stage run
 * fails, its status is returned (message on ert_stream_error), the stream
 * is as it was before that run, and *got still counts the results handed
 * out. */
ERT_API ERT_NODISCARD ert_status ert_stream_poll(ert_stream *s, ert_stream_result *results,
                                                 float *logits, int max, int *got);

/* Runs stages, partial batches included, until no sample is queued in any
 * stage: every admitted sample is finished and waits for poll. */
ERT_API ERT_NODISCARD ert_status ert_stream_flush(ert_stream *s);

/* Counters over the stream's life. */
typedef struct ert_stream_stats {
    uint32_t struct_size;                /* sizeof(ert_stream_stats): ERT_STREAM_STATS_INIT */
    int32_t num_stages;                  /* == the model's exits */
    int32_t batch;                       /* rows per stage run */
    int32_t queue;                       /* samples admitted at a time, at most */
    int32_t admitted;                    /* now: queued in a stage or finished, not polled */
    uint64_t submitted;                  /* samples accepted by submit */
    uint64_t finished;                   /* samples that left at an exit */
    uint64_t polled;                     /* results handed out by poll */
    uint64_t exit_counts[ERT_MAX_EXITS]; /* finished samples per exit */
    uint64_t stage_rows[ERT_MAX_EXITS];  /* rows run through stage s: the rows
                                             that entered it */
    uint64_t stage_runs[ERT_MAX_EXITS];  /* stage runs ... */
    uint64_t stage_partial_runs[ERT_MAX_EXITS]; /* ... of them with < batch rows */
    uint64_t padding_rows;                      /* always 0: stage runs are never padded to a
                                                   bucket (ert_batch_result's padding_rows);
                                                   kept for the ABI */
    uint64_t macs_executed;                     /* multiply-accumulates run, padding included */
    uint64_t macs_ideal;                        /* the ideal early-exit cost of the finished
                                 samples' exits (plan.h); equals macs_executed
                                 (less padding) once nothing is queued */
    uint64_t macs_full;                         /* finished * the full network's per sample */
    uint64_t nonfinite_samples;                 /* submitted samples holding NaN or Inf */
} ert_stream_stats;

#define ERT_STREAM_STATS_INIT                                                                      \
    {                                                                                              \
        (uint32_t)sizeof(ert_stream_stats), 0, 0, 0, 0, 0, 0, 0, {0}, {0}, {0}, {0}, 0, 0, 0, 0, 0 \
    }

/* Fills *out (made from ERT_STREAM_STATS_INIT) with the stream's counters,
 * the fields its struct_size covers. ERT_INVALID_ARGUMENT for a NULL out or
 * stream (a NULL stream's counters are zeros) and, writing nothing, for a
 * struct_size the library does not know ("Structs that grow"). */
ERT_API ert_status ert_stream_get_stats(const ert_stream *s, ert_stream_stats *out);

/* The message of the stream's last failure ("" if none). */
ERT_API const char *ert_stream_error(const ert_stream *s);

#ifdef __cplusplus
}
#endif

#endif /* EXITRT_H */

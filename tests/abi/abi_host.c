/* abi_host.c - one host program, built twice (tests/CMakeLists.txt):
 * abi_host_prev against exitrt 0.3's header (tests/abi/exitrt_prev.h,
 * structs without struct_size, linked as 0.3 linked: unversioned symbols)
 * and abi_host_new against this exitrt.h; both run against this build's
 * libexitrt.so.0. Each checks what the library gave it in its own layout
 * (the configs' defaults and fields read back through the engine, the
 * result's and the stream counters' fields against the per-sample
 * results, guard bytes after each struct untouched) and prints every
 * sample's outcome; CTest then requires the two printouts to be the same
 * (tests/abi/compare.cmake). Exits 0 when every check passed, 1 otherwise.
 *
 *   abi_host MODEL */
#ifdef ERT_ABI_PREV
#include "exitrt_prev.h"
#else
#include <exitrt.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    B = 24,
    GUARD = 64,
    STREAM_BATCH = 4
};

static int failures;

#define CHECK(cond, ...)                                            \
    do {                                                            \
        if (!(cond)) {                                              \
            fprintf(stderr, "abi_host: check failed: %s: ", #cond); \
            fprintf(stderr, __VA_ARGS__);                           \
            fputc('\n', stderr);                                    \
            failures++;                                             \
        }                                                           \
    } while (0)

static int guard_intact(const unsigned char *g)
{
    for (int i = 0; i < GUARD; i++)
        if (g[i] != 0xa5)
            return 0;
    return 1;
}

static void print_sample(const char *what, unsigned long long id, const ert_sample *s,
                         const float *z, int K)
{
    printf("%s %llu exit %d class %d score %a logits", what, id, (int)s->exit_index,
           (int)s->predicted, (double)s->score);
    for (int k = 0; k < K; k++)
        printf(" %a", (double)z[k]);
    printf("\n");
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    ert_error err;
    ert_model *m;
    if (argc < 2)
        return fprintf(stderr, "usage: abi_host MODEL\n"), 1;
    if (ert_model_load(argv[1], &m, &err) != ERT_OK)
        return fprintf(stderr, "abi_host: %s\n", err.msg), 1;
    const int X = ert_model_num_exits(m), K = ert_model_num_classes(m);
    const size_t per = ert_model_input_size(m);

    /* the defaults, as this header lays them out */
    ert_engine_config cfg = ert_engine_config_default();
    CHECK(cfg.backend == ERT_BACKEND_AUTO && cfg.mode == ERT_MODE_COMPACTED &&
              cfg.max_batch == 256 && cfg.threads == 0 && cfg.device == 0 && cfg.inflight == 1 &&
              cfg.graph_buckets == 0,
          "engine defaults %d %d %d %d %d %d %d", (int)cfg.backend, (int)cfg.mode, cfg.max_batch,
          cfg.threads, cfg.device, cfg.inflight, cfg.graph_buckets);
    cfg.backend = ERT_BACKEND_CPU;
    cfg.mode = ERT_MODE_MASKED;
    cfg.max_batch = B;
    cfg.threads = 1;
    ert_engine *e;
    if (ert_engine_create(m, &cfg, &e, &err) != ERT_OK)
        return fprintf(stderr, "abi_host: %s\n", err.msg), 1;
    CHECK(ert_engine_backend(e) == ERT_BACKEND_CPU && ert_engine_mode(e) == ERT_MODE_MASKED,
          "the engine runs %d in mode %d", (int)ert_engine_backend(e), (int)ert_engine_mode(e));

    float *x = malloc(sizeof(float) * per * B);
    /* logits, and first every exit's scores */
    float *z = malloc(sizeof(float) * (size_t)(K > X ? K : X) * B);
    ert_sample s[B];
    if (!x || !z)
        return fprintf(stderr, "abi_host: out of memory\n"), 1;
    unsigned r = 12345u;
    for (size_t i = 0; i < per * B; i++) {
        r = r * 1103515245u + 12345u;
        x[i] = (float)((r >> 16) & 255) / 255.0f;
    }

    /* exit 0's threshold at the median of its scores, so that samples
       leave at more than one exit */
    {
        float sc0[B];
        if (X > 1 && ert_engine_scores(e, x, B, z) == ERT_OK) {
            for (int i = 0; i < B; i++)
                sc0[i] = z[(size_t)i * X];
            qsort(sc0, B, sizeof sc0[0], cmp_float);
            CHECK(ert_engine_set_threshold(e, 0, sc0[B / 2]) == ERT_OK, "threshold %g: %s",
                  (double)sc0[B / 2], ert_engine_error(e));
        }
    }

    /* ert_infer into a result followed by guard bytes */
    struct {
        ert_result r;
        unsigned char guard[GUARD];
    } gr;
    memset(&gr, 0xa5, sizeof gr);
#ifdef ERT_RESULT_INIT
    gr.r.struct_size = sizeof gr.r;
#endif
    gr.r.samples = s;
    gr.r.logits = z;
    if (ert_infer(e, x, B, &gr.r) != ERT_OK)
        return fprintf(stderr, "abi_host: %s\n", ert_engine_error(e)), 1;
    CHECK(guard_intact(gr.guard), "ert_infer wrote past the result");
    int counts[ERT_MAX_EXITS] = {0};
    for (int i = 0; i < B; i++)
        if (s[i].exit_index >= 0 && s[i].exit_index < X)
            counts[s[i].exit_index]++;
    for (int i = 0; i < X; i++)
        CHECK(gr.r.exit_counts[i] == counts[i], "exit %d: %d samples counted, %d in the result", i,
              counts[i], (int)gr.r.exit_counts[i]);
    CHECK(gr.r.macs_full == (uint64_t)B * ert_model_macs_full(m), "macs_full %llu",
          (unsigned long long)gr.r.macs_full);
    /* MASKED runs the whole network and every early head */
    CHECK(gr.r.macs_executed > gr.r.macs_full, "MASKED runs everything: %llu of %llu",
          (unsigned long long)gr.r.macs_executed, (unsigned long long)gr.r.macs_full);
    CHECK(gr.r.host_waits == 0 && gr.r.nonfinite_samples == 0 && gr.r.padding_rows == 0 &&
              gr.r.macs_padding == 0 && gr.r.bucket[0] == -1,
          "the CPU's other figures %d %d %d %llu %d", (int)gr.r.host_waits,
          (int)gr.r.nonfinite_samples, (int)gr.r.padding_rows,
          (unsigned long long)gr.r.macs_padding, (int)gr.r.bucket[0]);
    for (int i = 0; i < B; i++)
        print_sample("infer", (unsigned long long)i, &s[i], z + (size_t)i * K, K);

    /* a stream: its config's defaults, then results and counters */
    ert_stream_config sc = ert_stream_config_default();
    CHECK(sc.batch == 0 && sc.queue == 0 && sc.deadline_ms == 2.0 &&
              sc.schedule == ERT_SCHEDULE_DEEPEST_FIRST,
          "stream defaults %d %d %g %d", sc.batch, sc.queue, sc.deadline_ms, (int)sc.schedule);
    sc.batch = STREAM_BATCH;
    sc.queue = B;
    sc.deadline_ms = -1; /* partial batches on flush only */
    ert_stream *st;
    if (ert_stream_create(e, &sc, &st, &err) != ERT_OK)
        return fprintf(stderr, "abi_host: %s\n", err.msg), 1;
    if (ert_stream_submit(st, x, B, NULL) != ERT_OK || ert_stream_flush(st) != ERT_OK)
        return fprintf(stderr, "abi_host: %s\n", ert_stream_error(st)), 1;
    ert_stream_result res[B];
    float zs[B * 64];
    int got = 0;
    if (K > 64 || ert_stream_poll(st, res, zs, B, &got) != ERT_OK || got != B)
        return fprintf(stderr, "abi_host: poll gave %d of %d: %s\n", got, B, ert_stream_error(st)),
               1;
    struct {
        ert_stream_stats st;
        unsigned char guard[GUARD];
    } gs;
    memset(&gs, 0xa5, sizeof gs);
#ifdef ERT_STREAM_STATS_INIT
    gs.st.struct_size = sizeof gs.st;
#endif
    (void)ert_stream_get_stats(st, &gs.st);
    CHECK(guard_intact(gs.guard), "ert_stream_get_stats wrote past the counters");
    CHECK(gs.st.num_stages == X && gs.st.batch == STREAM_BATCH && gs.st.admitted == 0 &&
              gs.st.submitted == B && gs.st.finished == B && gs.st.polled == B,
          "stream counters %d %d %d %llu %llu %llu", (int)gs.st.num_stages, (int)gs.st.batch,
          (int)gs.st.admitted, (unsigned long long)gs.st.submitted,
          (unsigned long long)gs.st.finished, (unsigned long long)gs.st.polled);
    CHECK(gs.st.macs_full == (uint64_t)B * ert_model_macs_full(m), "stream macs_full %llu",
          (unsigned long long)gs.st.macs_full);
    for (int i = 0; i < X; i++)
        CHECK(gs.st.exit_counts[i] == (uint64_t)counts[i], "stream exit %d: %llu, MASKED %d", i,
              (unsigned long long)gs.st.exit_counts[i], counts[i]);
    /* in id order, as ert_infer's */
    for (int id = 0; id < B; id++)
        for (int k = 0; k < got; k++)
            if (res[k].id == (uint64_t)id)
                print_sample("stream", res[k].id, &res[k].sample, zs + (size_t)k * K, K);
    printf("exit_counts");
    for (int i = 0; i < X; i++)
        printf(" %d", (int)gr.r.exit_counts[i]);
    printf("\nmacs %llu %llu\n", (unsigned long long)gr.r.macs_executed,
           (unsigned long long)gr.r.macs_full);

    ert_stream_free(st);
    ert_engine_free(e);
    ert_model_free(m);
    free(x);
    free(z);
    if (failures)
        fprintf(stderr, "abi_host: %d checks failed\n", failures);
    return failures ? 1 : 0;
}

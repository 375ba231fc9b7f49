/* plugin_dir.c - ert_plugin_dir_set() as a host program of the shared
 * library uses it (tests/packaging/test_install.sh): argv[1] a model,
 * argv[2] the installed plugin directory, "" when the build has no CUDA
 * plugin. A directory without the plugin makes ERT_BACKEND_CUDA fail with
 * ERT_UNSUPPORTED naming that directory (in a build without the CUDA
 * backend: saying so) while AUTO runs on the CPU; the
 * real directory loads the plugin (ert_cuda_info then answers from it);
 * once loaded, the directory can no longer change. Exits 1 on a mismatch. */
#include <exitrt.h>
#include <stdio.h>
#include <string.h>

static int failures;
#define CHECK(cond, ...)                                       \
    do {                                                       \
        if (!(cond)) {                                         \
            fprintf(stderr, "plugin_dir: FAIL: " __VA_ARGS__); \
            fputc('\n', stderr);                               \
            failures++;                                        \
        }                                                      \
    } while (0)

int main(int argc, char **argv)
{
    if (argc < 3)
        return fprintf(stderr, "usage: plugin_dir MODEL PLUGIN_DIR\n"), 2;
    const char *none = "/nonexistent/exitrt-plugins";
    const char *why = argv[2][0] ? none : "no CUDA backend"; /* the message names it */
    ert_error err = {{0}};
    ert_model *m = NULL;
    if (ert_model_load(argv[1], &m, &err) != ERT_OK)
        return fprintf(stderr, "plugin_dir: %s\n", err.msg), 1;

    char too_long[2048];
    memset(too_long, 'a', sizeof too_long - 1);
    too_long[sizeof too_long - 1] = '\0';
    CHECK(ert_plugin_dir_set(too_long, &err) == ERT_INVALID_ARGUMENT, "a 2047-byte directory");

    CHECK(ert_plugin_dir_set(none, &err) == ERT_OK, "set %s: %s", none, err.msg);
    CHECK(!ert_cuda_available(), "ert_cuda_available() with no plugin");
    char info[512];
    ert_status st = ert_cuda_info(0, info, sizeof info);
    CHECK(st == ERT_UNSUPPORTED && strstr(info, why), "ert_cuda_info: %d '%s'", (int)st, info);
    ert_engine_config c = ert_engine_config_default();
    c.max_batch = 4;
    c.backend = ERT_BACKEND_CUDA;
    ert_engine *e = NULL;
    st = ert_engine_create(m, &c, &e, &err);
    CHECK(st == ERT_UNSUPPORTED && !e && strstr(err.msg, why), "CUDA engine: %d '%s'", (int)st,
          err.msg);
    printf("no plugin: %s\n", err.msg);
    c.backend = ERT_BACKEND_AUTO;
    st = ert_engine_create(m, &c, &e, &err);
    CHECK(st == ERT_OK && ert_engine_backend(e) == ERT_BACKEND_CPU, "AUTO engine: %d '%s'", (int)st,
          err.msg);
    ert_engine_free(e);

    if (argv[2][0]) {
        CHECK(ert_plugin_dir_set(argv[2], &err) == ERT_OK, "set %s: %s", argv[2], err.msg);
        st = ert_cuda_info(0, info, sizeof info);
        /* loaded: NO_DEVICE without a GPU, OK with one; never UNSUPPORTED */
        CHECK(st == ERT_OK || st == ERT_NO_DEVICE, "ert_cuda_info from %s: %d '%s'", argv[2],
              (int)st, info);
        printf("plugin in %s: %s\n", argv[2], info);
        CHECK(ert_plugin_dir_set(none, &err) == ERT_UNSUPPORTED && strstr(err.msg, "already"),
              "set after loading: '%s'", err.msg);
    }
    ert_model_free(m);
    return failures != 0;
}

/* plugin.c - the CUDA backend's entry point (backend_plugin.h).
 *
 * Compiled twice: with ERT_CUDA_PLUGIN_SHARED into libexitrt_cuda.so, where
 * ert_cuda_plugin_entry() is the module's one exported symbol and the loader
 * dlsyms it; without, into libexitrt.a, where the (hidden)
 * ert_cuda_plugin_static() resolves the loader's weak reference, so a
 * statically linked program has the CUDA backend without a plugin. */
#include "backend_plugin.h"

static const ert_cuda_plugin plugin = {
    .abi = ERT_PLUGIN_ABI,
    .version = {ERT_VERSION_MAJOR, ERT_VERSION_MINOR, ERT_VERSION_PATCH},
    .engine_size = sizeof(struct ert_engine),
    .model_size = sizeof(ert_model),
    .plan_size = sizeof(plan),
    .ops = &cuda_backend_ops,
    .device_count = cuda_device_count,
    .info_query = cuda_device_info,
    .info_line = cuda_info_line,
};

#ifdef ERT_CUDA_PLUGIN_SHARED
__attribute__((visibility("default"))) const ert_cuda_plugin *ert_cuda_plugin_entry(void);
const ert_cuda_plugin *ert_cuda_plugin_entry(void) { return &plugin; }
#else
const ert_cuda_plugin *ert_cuda_plugin_static(void);
const ert_cuda_plugin *ert_cuda_plugin_static(void) { return &plugin; }
#endif

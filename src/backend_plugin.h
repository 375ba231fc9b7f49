/* backend_plugin.h - the CUDA backend as a plugin: what libexitrt_cuda.so
 * hands the library (src/cuda/plugin.c), and the loader that finds it
 * (src/backend_loader.c).
 *
 * libexitrt.so (the API, the engine, the CPU backend) needs no CUDA library.
 * The CUDA backend is a separate module, libexitrt_cuda.so, that the loader
 * dlopens on first use (ERT_BACKEND_CUDA or AUTO, ert_cuda_available(),
 * ert_cuda_info()) from the library's plugin directory:
 *   1. the directory ert_plugin_dir_set() named, alone, when one is set;
 *   2. else, with D the directory of the module holding this code, the first
 *      of these that holds the file:
 *      D/exitrt/               libexitrt.so installed in <libdir>
 *      D/../<libdir>/exitrt/   a program linked to libexitrt.a, in <bindir>
 *      D/<libdir>/exitrt/      the build tree (libexitrt.so and the command
 *                              beside each other)
 *      <prefix>/<libdir>/exitrt/, /usr/<libdir>/exitrt/  as installed
 *      where <libdir> is the build's CMAKE_INSTALL_LIBDIR and <prefix> its
 *      CMAKE_INSTALL_PREFIX.
 * No environment variable is read. The plugin is a part of the same build:
 * it shares the engine's internal structures, so the loader refuses one
 * whose version or structure sizes differ.
 *
 * libexitrt.a holds the same objects as libexitrt.so and loads the same
 * plugin, so a program linked to it statically needs no CUDA library
 * either. The tests link the CUDA backend's objects themselves
 * (exitrt_internal): ert_cuda_plugin_static() in them resolves the loader's
 * weak reference, and the loader then loads no plugin.
 */
#ifndef ERT_BACKEND_PLUGIN_H
#define ERT_BACKEND_PLUGIN_H

#include <stddef.h>

#include "cuda_info.h"
#include "engine_core.h"

/* Bumped whenever ert_cuda_plugin or backend_ops changes. */
#define ERT_PLUGIN_ABI 1
#define ERT_CUDA_PLUGIN_FILE "libexitrt_cuda.so"
#define ERT_CUDA_PLUGIN_ENTRY "ert_cuda_plugin_entry"

typedef struct ert_cuda_plugin {
    int abi;            /* ERT_PLUGIN_ABI */
    int version[3];     /* ERT_VERSION_MAJOR, _MINOR, _PATCH it was built as */
    size_t engine_size; /* sizeof(struct ert_engine), sizeof(ert_model), */
    size_t model_size;  /* sizeof(plan): the shared structures */
    size_t plan_size;
    const backend_ops *ops;                        /* the backend's table */
    int (*device_count)(void);                     /* CUDA devices visible, 0 on error */
    int (*info_query)(int device, cuda_info *out); /* cuda_info.h */
    ert_status (*info_line)(int device, char *buf, size_t cap); /* ert_cuda_info() */
} ert_cuda_plugin;

typedef const ert_cuda_plugin *(*ert_cuda_plugin_entry_fn)(void);

/* The CUDA backend: loaded (or taken from the static library) on the first
 * call, then the same answer for the life of the process (a failure is
 * retried only after ert_plugin_dir_set()). NULL when there is none, with
 * why (cap bytes) naming what is missing: the plugin file and where it was
 * looked for, or the library it could not load (libcudart.so.13, ...).
 * Thread-safe. */
const ert_cuda_plugin *cuda_plugin_get(char *why, size_t cap);

/* The CUDA backend's side (src/cuda): the table's functions. */
int cuda_device_count(void);
int cuda_device_info(int device, cuda_info *out);
ert_status cuda_info_line(int device, char *buf, size_t cap);

#endif /* ERT_BACKEND_PLUGIN_H */

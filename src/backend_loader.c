/* backend_loader.c - finds and loads the CUDA backend (backend_plugin.h),
 * and the API calls that ask about CUDA: ert_cuda_available(),
 * ert_cuda_info(), ert_plugin_dir_set(), and cuda_info_query() for the
 * command. */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backend_plugin.h"
#include "util.h"

#ifndef ERT_INSTALL_LIBDIR /* CMAKE_INSTALL_LIBDIR, relative */
#define ERT_INSTALL_LIBDIR "lib"
#endif
#ifndef ERT_PLUGIN_DIR /* <CMAKE_INSTALL_FULL_LIBDIR>/exitrt */
#define ERT_PLUGIN_DIR "/usr/local/" ERT_INSTALL_LIBDIR "/exitrt"
#endif
#ifndef ERT_PLUGIN_DIR_USR /* the same under /usr, where the Debian packages put it */
#define ERT_PLUGIN_DIR_USR "/usr/" ERT_INSTALL_LIBDIR "/exitrt"
#endif

/* The static library's own CUDA backend (src/cuda/plugin.c): defined only
 * when libexitrt.a was built with it, NULL (weak) in libexitrt.so. */
extern const ert_cuda_plugin *ert_cuda_plugin_static(void) __attribute__((weak));

/* One plugin per process, as dlopen is per process: these are the loader's
 * only mutable globals, under `lock`. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char dir_set[1024];            /* ert_plugin_dir_set(), "" = the default search */
static int tried;                     /* 1 once a load was attempted */
static const ert_cuda_plugin *loaded; /* the answer, NULL = none */
static char failure[ERT_ERROR_LEN];   /* why not, when tried && !loaded */

/* Checks that p is from this build; "" when it is, else why not. */
static void check_plugin(const ert_cuda_plugin *p, const char *path, char *why, size_t cap)
{
    why[0] = '\0';
    if (!p)
        ert_errf(why, cap, "%s: %s() returned NULL", path, ERT_CUDA_PLUGIN_ENTRY);
    else if (p->abi != ERT_PLUGIN_ABI || p->version[0] != ERT_VERSION_MAJOR ||
             p->version[1] != ERT_VERSION_MINOR || p->version[2] != ERT_VERSION_PATCH ||
             p->engine_size != sizeof(struct ert_engine) || p->model_size != sizeof(ert_model) ||
             p->plan_size != sizeof(plan) || !p->ops || !p->device_count || !p->info_query ||
             !p->info_line)
        ert_errf(why, cap,
                 "%s is from another build of exitrt (plugin ABI %d, version %d.%d.%d; this "
                 "library: ABI %d, version %d.%d.%d)",
                 path, p->abi, p->version[0], p->version[1], p->version[2], ERT_PLUGIN_ABI,
                 ERT_VERSION_MAJOR, ERT_VERSION_MINOR, ERT_VERSION_PATCH);
}

/* dlopens path; the plugin or NULL with why. */
static const ert_cuda_plugin *open_plugin(const char *path, char *why, size_t cap)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        /* dlerror names the library that is missing (libcudart.so.13: ...) */
        ert_errf(why, cap, "cannot load the CUDA backend (%s): %s", path, e ? e : "dlopen failed");
        return NULL;
    }
    ert_cuda_plugin_entry_fn entry;
    *(void **)&entry = dlsym(h, ERT_CUDA_PLUGIN_ENTRY);
    if (!entry) {
        ert_errf(why, cap, "%s has no %s(): not an exitrt CUDA plugin", path,
                 ERT_CUDA_PLUGIN_ENTRY);
        dlclose(h);
        return NULL;
    }
    const ert_cuda_plugin *p = entry();
    check_plugin(p, path, why, cap);
    if (why[0]) {
        dlclose(h);
        return NULL;
    }
    return p; /* never closed: engines may hold its functions until exit */
}

/* The directory of the module (libexitrt.so, or the program linked to
 * libexitrt.a) holding this code, into dir; 0 when dladdr cannot say. */
static int module_dir(char *dir, size_t cap)
{
    Dl_info info;
    if (!dladdr((void *)&module_dir, &info) || !info.dli_fname || !info.dli_fname[0])
        return 0;
    const char *slash = strrchr(info.dli_fname, '/');
    if (!slash) /* a bare name: dladdr gives the path only when it was opened by one */
        return ert_errf(dir, cap, "."), 1;
    size_t n = (size_t)(slash - info.dli_fname);
    if (n + 1 > cap)
        return 0;
    memcpy(dir, info.dli_fname, n);
    dir[n] = '\0';
    if (n == 0)
        ert_errf(dir, cap, "/");
    return 1;
}

/* Looks for the plugin where backend_plugin.h says; loaded or NULL + why. */
static const ert_cuda_plugin *find_plugin(char *why, size_t cap)
{
    char path[2048];
    if (dir_set[0]) {
        if (!path_join(path, sizeof path, dir_set, ERT_CUDA_PLUGIN_FILE))
            return ert_errf(why, cap, "the plugin directory is too long"), NULL;
        if (access(path, F_OK) != 0)
            return ert_errf(why, cap,
                            "the CUDA backend is not installed: no %s in %s "
                            "(ert_plugin_dir_set)",
                            ERT_CUDA_PLUGIN_FILE, dir_set),
                   NULL;
        return open_plugin(path, why, cap);
    }
    char d[1024];
    if (!module_dir(d, sizeof d))
        return ert_errf(why, cap,
                        "the CUDA backend was not found: cannot tell where libexitrt is "
                        "(dladdr); name the directory of %s with ert_plugin_dir_set()",
                        ERT_CUDA_PLUGIN_FILE),
               NULL;
    /* relative to d, then the installed plugin directory as configured */
    static const char *const where[] = {"%s/exitrt", "%s/../" ERT_INSTALL_LIBDIR "/exitrt",
                                        "%s/" ERT_INSTALL_LIBDIR "/exitrt", ERT_PLUGIN_DIR,
                                        ERT_PLUGIN_DIR_USR};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
        char dir[1536];
        int n = snprintf(dir, sizeof dir, where[i], d);
        if (n < 0 || (size_t)n >= sizeof dir ||
            !path_join(path, sizeof path, dir, ERT_CUDA_PLUGIN_FILE))
            continue;
        if (access(path, F_OK) == 0)
            return open_plugin(path, why, cap);
    }
    ert_errf(why, cap,
             "the CUDA backend is not installed: no %s in %s/exitrt, %s/../%s/exitrt, "
             "%s/%s/exitrt or %s",
             ERT_CUDA_PLUGIN_FILE, d, d, ERT_INSTALL_LIBDIR, d, ERT_INSTALL_LIBDIR, ERT_PLUGIN_DIR);
    return NULL;
}

const ert_cuda_plugin *cuda_plugin_get(char *why, size_t cap)
{
    pthread_mutex_lock(&lock);
    if (!tried) {
        failure[0] = '\0';
        if (ert_cuda_plugin_static) {
            loaded = ert_cuda_plugin_static();
            check_plugin(loaded, "libexitrt.a", failure, sizeof failure);
            if (failure[0])
                loaded = NULL;
        } else {
#ifdef ERT_HAVE_CUDA
            loaded = find_plugin(failure, sizeof failure);
#else
            ert_errf(failure, sizeof failure, "this build of exitrt has no CUDA backend");
            loaded = NULL;
            (void)find_plugin;
#endif
        }
        tried = 1;
    }
    const ert_cuda_plugin *p = loaded;
    if (!p)
        ert_errf(why, cap, "%s", failure);
    pthread_mutex_unlock(&lock);
    return p;
}

ert_status ert_plugin_dir_set(const char *dir, ert_error *err)
{
    if (dir && strlen(dir) >= sizeof dir_set)
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "ert_plugin_dir_set: the directory is %zu bytes, more than %zu",
                        strlen(dir), sizeof dir_set - 1);
    ert_status st = ERT_OK;
    pthread_mutex_lock(&lock);
    if (loaded) {
        st = ert_fail(err, ERT_UNSUPPORTED,
                      "ert_plugin_dir_set: the CUDA backend is already loaded; call this "
                      "before the first engine or CUDA query");
    } else {
        ert_errf(dir_set, sizeof dir_set, "%s", dir ? dir : "");
        tried = 0; /* a failed search is retried where the caller says */
    }
    pthread_mutex_unlock(&lock);
    return st;
}

int ert_cuda_available(void)
{
    const ert_cuda_plugin *p = cuda_plugin_get(NULL, 0);
    return p && p->device_count() > 0;
}

ert_status ert_cuda_info(int device, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return ERT_INVALID_ARGUMENT;
    char why[ERT_ERROR_LEN];
    const ert_cuda_plugin *p = cuda_plugin_get(why, sizeof why);
    if (!p) {
        ert_errf(buf, cap, "%s", why);
        return ERT_UNSUPPORTED;
    }
    return p->info_line(device, buf, cap);
}

int cuda_info_query(int device, cuda_info *out)
{
    char why[ERT_ERROR_LEN];
    const ert_cuda_plugin *p = cuda_plugin_get(why, sizeof why);
    if (p)
        return p->info_query(device, out);
    memset(out, 0, sizeof *out);
    ert_errf(out->error, sizeof out->error, "%s", why);
    return 0;
}

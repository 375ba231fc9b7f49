/* exact.c - see exact.h. */
#include "exact.h"

#include <criterion/criterion.h>
#include <string.h>
#include <strings.h>

#include "cpu/cpu_ops.h"
#include "engine_core.h"
#ifdef ERT_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

/* OpenBLAS's own (cblas.h declares it; its include folder varies). */
char *openblas_get_corename(void);

enum {
    UNSTATED = -1
};

static int in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (strcasecmp(s, *list) == 0)
            return 1;
    return 0;
}

/* The table of exact.h for the OpenBLAS path: 1, 0 or UNSTATED. */
static int blas_stated(const char **core)
{
    static const char *const exact[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    static const char *const rounding[] = {"Haswell", "Zen", NULL};
    const char *c = openblas_get_corename();
    *core = c ? c : "?";
    return in_list(*core, exact) ? 1 : in_list(*core, rounding) ? 0 : UNSTATED;
}

int exact_blas(void)
{
    const char *core;
    int want = blas_stated(&core);
    if (want == UNSTATED)
        return 0;
    cr_assert_eq(ops_blas_batch_invariant(), want,
                 "OpenBLAS core %s should %sround a row alike at every place in a call, but "
                 "ops_blas_batch_invariant() says %d",
                 core, want ? "" : "not ", !want);
    return want;
}

/* The table of exact.h for the oneDNN path. */
static int dnnl_stated(void)
{
#ifdef ERT_HAVE_DNNL
    unsigned isa = (unsigned)dnnl_get_effective_cpu_isa();
    unsigned avx512 = (unsigned)dnnl_cpu_isa_avx512_core;
    if ((isa & avx512) == avx512)
        return 1;
#endif
    return UNSTATED;
}

int exact_engine(const ert_engine *e)
{
    const char *note = ert_engine_note(e);
    int want = UNSTATED;
    const char *path = "CUDA";
    if (ert_engine_backend(e) != ERT_BACKEND_CPU) {
        want = 0;
    } else if (strncmp(note, "cpu: oneDNN ", 12) == 0 &&
               strncmp(note, "cpu: oneDNN off", 15) != 0) {
        path = "the CPU's oneDNN path";
        want = dnnl_stated();
    } else {
        const char *core;
        want = blas_stated(&core);
        path = "the CPU's OpenBLAS path";
    }
    if (want == UNSTATED)
        return 0;
    cr_assert_eq(e->exact_modes, want,
                 "%s: the tests expect the modes to agree %s, the engine's probe says %s (%s)",
                 path, want ? "bit for bit" : "to float rounding",
                 e->exact_modes ? "bit for bit" : "not bit for bit", note);
    return want;
}

/* threads.c - an engine's thread counts, scoped to its calls: see threads.h. */
#include "cpu/threads.h"

#include <cblas.h>
#include <pthread.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* OpenBLAS's count is process-wide state already; these mirror it (the
 * engine calls that have set it, and the count the host had before the
 * first of them), so that overlapping calls on several engines give the
 * host back its own count, whatever order they return in. */
static pthread_mutex_t blas_lock = PTHREAD_MUTEX_INITIALIZER;
static int blas_calls;
static int blas_host;

void cpu_threads_enter(int omp, int blas, cpu_threads *saved)
{
    saved->omp = 0;
    saved->blas = 0;
#ifdef _OPENMP
    const int host_omp = omp_get_max_threads();
#endif
    /* OpenBLAS first: an OpenMP build of it sets the calling thread's
       OpenMP count too, which is then set (or given back) below */
    if (blas > 0) {
        pthread_mutex_lock(&blas_lock);
        if (blas_calls++ == 0)
            blas_host = openblas_get_num_threads();
        openblas_set_num_threads(blas);
        pthread_mutex_unlock(&blas_lock);
        saved->blas = 1;
    }
#ifdef _OPENMP
    if (omp > 0 || blas > 0) {
        saved->omp = host_omp;
        omp_set_num_threads(omp > 0 ? omp : host_omp);
    }
#else
    (void)omp;
#endif
}

void cpu_threads_leave(const cpu_threads *saved)
{
    if (saved->blas) {
        pthread_mutex_lock(&blas_lock);
        if (--blas_calls == 0)
            openblas_set_num_threads(blas_host);
        pthread_mutex_unlock(&blas_lock);
    }
#ifdef _OPENMP
    if (saved->omp > 0)
        omp_set_num_threads(saved->omp);
#endif
}

/* threads.h - an engine's thread counts, scoped to its calls (exitrt.h,
 * ert_engine_config.threads).
 *
 * OpenMP's thread count (nthreads-var, which oneDNN and the transformer
 * ops' teams read) belongs to the calling thread: a call sets it and gives
 * back what it found, so nothing outside the call sees it. OpenBLAS's is
 * one per process (openblas_set_num_threads; OpenBLAS 0.3.21 has no
 * per-thread setter): the first engine call to change it keeps what the
 * host had, and the last to return gives it back. While calls overlap, each
 * sets its own count and the latest set holds for all of them (their
 * results do not depend on it: the batch invariance of cpu_ops.h). */
#ifndef ERT_CPU_THREADS_H
#define ERT_CPU_THREADS_H

/* What a call changed, to give back. */
typedef struct cpu_threads {
    int omp;  /* the calling thread's OpenMP count before the call; 0: not changed */
    int blas; /* 1 when OpenBLAS's count was set */
} cpu_threads;

/* Sets, for one engine call, the calling thread's OpenMP thread count to
 * omp and OpenBLAS's to blas (0: leave that one as it is). */
void cpu_threads_enter(int omp, int blas, cpu_threads *saved);

/* Gives back what cpu_threads_enter changed. */
void cpu_threads_leave(const cpu_threads *saved);

#endif /* ERT_CPU_THREADS_H */

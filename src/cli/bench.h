/* bench.h - the `exitrt bench` verb: FULL vs MASKED vs COMPACTED
 * over batch sizes and exit profiles, against the ideal early-exit cost and
 * against PyTorch. See bench/README.md. */
#ifndef ERT_BENCH_H
#define ERT_BENCH_H

/* Runs the benchmark. argv[0] is "bench", the rest its options (`exitrt
 * bench --help`). Prints to stdout (results) and stderr (progress, errors).
 * Returns the process exit status: 0 ok, 1 a failure, 2 a usage error. */
int bench_main(int argc, char **argv);

#endif /* ERT_BENCH_H */

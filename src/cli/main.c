/* main.c - the `exitrt` command: verb dispatch and help. The verbs and
 * what they share live in the tools library (src/cli, cli.h). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cli.h"
#include "ert_commit.h"

static const char USAGE[] =
    "usage: exitrt <command> [options]\n"
    "\n"
    "exitrt runs multi-exit (early-exit) networks: each sample leaves at the\n"
    "first exit whose policy is confident.\n"
    "\n"
    "commands:\n"
    "  run MODEL [options]   run a data set through the model and report\n"
    "                        accuracy, exits taken, compute saved, throughput\n"
    "  inspect MODEL         print the graph, stages, exits, parameters and MACs\n"
    "  bench MODEL [options] time FULL, MASKED and COMPACTED over batch sizes and\n"
    "                        exit profiles against the ideal (and PyTorch: --peer)\n"
    "  calibrate MODEL [options]\n"
    "                        choose the exits' thresholds for an accuracy target\n"
    "                        at the least compute, checked on held-out samples\n"
    "\n"
    "  exitrt <command> --help   options of a command\n"
    "  exitrt --version          the version\n"
    "\n"
    "MODEL is a model directory or the path of its model.json.\n"
    "Exit status: 0 success, 1 runtime or file error, 2 usage error.\n";

/* Flushes stdout and reports a failed write (a full disk, a closed pipe). */
static int finish(int code)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        int e = errno;
        if (code == CLI_OK)
            return cli_error(CLI_FAIL, "cannot write the output: %s",
                             e ? strerror(e) : "write error");
    }
    return code;
}

int main(int argc, char **argv)
{
    /* A closed pipe on stdout must give an error status, not a signal. */
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        fputs(USAGE, stderr);
        return CLI_USAGE;
    }
    const char *verb = argv[1];
    if (strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0 || strcmp(verb, "help") == 0) {
        fputs(USAGE, stdout);
        return finish(CLI_OK);
    }
    if (strcmp(verb, "--version") == 0 || strcmp(verb, "version") == 0) {
        printf("exitrt %s, commit %s (%s)\n", ert_version(), ERT_COMMIT,
#ifdef ERT_HAVE_CUDA
               "CPU and CUDA backends"
#else
               "CPU backend; built without CUDA"
#endif
        );
#ifdef ERT_HAVE_CUDA
        char info[512];
        ert_status st = ert_cuda_info(0, info, sizeof info); /* the line says why on failure */
        printf("cuda: %s\n", info);
        (void)st;
#endif
        return finish(CLI_OK);
    }
    if (strcmp(verb, "run") == 0)
        return finish(cmd_run(argc - 1, argv + 1));
    if (strcmp(verb, "bench") == 0)
        return finish(bench_main(argc - 1, argv + 1));
    if (strcmp(verb, "inspect") == 0)
        return finish(cmd_inspect(argc - 1, argv + 1));
    if (strcmp(verb, "calibrate") == 0)
        return finish(cmd_calibrate(argc - 1, argv + 1));
    if (verb[0] == '-')
        return cli_error(CLI_USAGE, "unknown option '%s' (see 'exitrt --help')", verb);
    return cli_error(CLI_USAGE, "unknown command '%s' (see 'exitrt --help')", verb);
}

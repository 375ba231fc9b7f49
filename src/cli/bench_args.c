/* bench_args.c - `exitrt bench`'s options: parsing, --quick and the
 * defaults, and the sweep they make (bench_run.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_run.h"
#include "cli.h"
#include "tools.h"

static const char *USAGE =
    "usage: exitrt bench MODEL [options]\n"
    "  --data FILE          inputs (.npy or IDX); default: the model's sample data,\n"
    "                       else deterministic random inputs\n"
    "  --batches LIST       batch sizes (default 1,8,64,256,1024)\n"
    "  --profile [NAME=]S1,S2,...  add an exit profile: target share per early exit\n"
    "                       (defaults: none, late-heavy 0.1,0.1, balanced 0.5,0.25,\n"
    "                       early-heavy 0.8,0.1); may be repeated\n"
    "  --no-default-profiles  the --profile ones alone (at least one)\n"
    "  --no-stages          skip the stage costs (COMPACTED with every sample sent to\n"
    "                       one exit, per exit, backend and batch)\n"
    "  --modes LIST         full,masked,compacted (default all; FULL is always measured)\n"
    "  --device cpu|cuda|all  (default all: the CPU and CUDA when present)\n"
    "  --reps N             timed reps per cell, median taken (default 5)\n"
    "  --warmup N           warm-up batches per cell (default 3)\n"
    "  --rep-samples N      samples per rep (default 1024; at least one batch)\n"
    "  --threads N          CPU threads, exitrt and PyTorch (default: online CPUs)\n"
    "  --inflight N         CUDA batches in flight (default 1)\n"
    "  --graph-buckets K    CUDA COMPACTED: size-bucketed graphs, 0 = off (default:\n"
    "                       $ERT_GRAPH_BUCKETS, else 0)\n"
    "  --precision P        fp32 (default) or tf32 (CUDA tensor cores), for exitrt; the\n"
    "                       GPU peer takes $ERT_GPU_PEER_PRECISION (bench/gpu_peer.py)\n"
    "  --fused-attention    CUDA: exitrt's attention as one fused kernel\n"
    "  --json FILE          every cell as JSON (schema: bench/README.md)\n"
    "  --plot FILE.png      throughput and efficiency vs batch size (gnuplot)\n"
    "                       (--json and --plot replace their files only when the\n"
    "                       bench succeeds: a failed one leaves them as they were)\n"
    "  --peer               run bench/torch_peer.py (python: $ERT_PYTHON or\n"
    "                       /usr/bin/python3) and print exitrt / PyTorch\n"
    "  --b1-samples N       the peer's batch-1-with-if loop (DeeBERT's, PABEE's: one\n"
    "                       sample at a time, a Python `if` after each exit): samples\n"
    "                       per rep (default: --rep-samples; 0: not run)\n"
    "  --peer-runs 1|2      2 (default): the peer with OpenMP's default wait, then with\n"
    "                       OMP_WAIT_POLICY=PASSIVE, the better per cell; 1: the first only\n"
    "  --peer-dense         the peer's nn.TransformerEncoder without nested tensors (by\n"
    "                       default PyTorch skips padded tokens through them)\n"
    "  --quick              batches 64,256, profiles none+balanced, 3 reps of 256+\n"
    "                       samples (the peer's batch1-if 64), 1 warm-up batch\n"
    "                       (options given still apply)\n";

/* ---- options ------------------------------------------------------------- */

/* 0 with *out set, -1 when s is not an integer in [lo, hi] (cli.h's rule). */
static int parse_int(const char *s, int lo, int hi, int *out)
{
    long v;
    if (!cli_parse_long(s, lo, hi, &v))
        return -1;
    *out = (int)v;
    return 0;
}

/* "1,8,64" -> ints in [lo, hi]. */
static int parse_int_list(const char *s, int lo, int hi, int *out, int cap, int *n)
{
    char buf[512];
    if (strlen(s) >= sizeof buf)
        return -1;
    strcpy(buf, s);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (*n >= cap || parse_int(tok, lo, hi, &out[*n]) != 0)
            return -1;
        (*n)++;
    }
    return *n > 0 ? 0 : -1;
}

static void add_profile(bench_run *r, const char *name, const double *s, int n)
{
    bench_profile *p = &r->prof[r->nprof++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    for (int i = 0; i < n; i++)
        p->shares[i] = s[i];
    p->nshares = n;
    p->ort_mismatch = -1;
    p->peer_mismatch_b1if = -1;
}

/* "[NAME=]0.5,0.25": shares in [0, 1] summing to at most 1. Returns 0, or
 * -1 with what is wrong in why. */
static int parse_profile(bench_run *r, const char *arg, char *why, size_t whylen)
{
    if (r->nprof >= BENCH_MAX_PROFILES) {
        snprintf(why, whylen, "too many profiles");
        return -1;
    }
    char buf[256];
    if (strlen(arg) >= sizeof buf) {
        snprintf(why, whylen, "too long");
        return -1;
    }
    strcpy(buf, arg);
    char *name = NULL, *list = buf, *eq = strchr(buf, '=');
    if (eq) {
        *eq = '\0';
        name = buf;
        list = eq + 1;
    }
    double s[ERT_MAX_EXITS], sum = 0.0;
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        double v;
        const char *bad = tools_parse_double(tok, &v);
        if (bad) {
            snprintf(why, whylen, "'%s' %s", tok, bad);
            return -1;
        }
        if (!(v >= 0.0 && v <= 1.0)) {
            snprintf(why, whylen, "share %s is not in [0, 1]", tok);
            return -1;
        }
        if (n >= ERT_MAX_EXITS - 1) {
            snprintf(why, whylen, "more than %d shares (one per early exit)", ERT_MAX_EXITS - 1);
            return -1;
        }
        s[n++] = v;
        sum += v;
    }
    if (n == 0) {
        snprintf(why, whylen, "no shares");
        return -1;
    }
    if (sum > 1.0 + 1e-9) {
        snprintf(why, whylen, "the shares sum to %g, more than 1", sum);
        return -1;
    }
    add_profile(r, name && *name ? name : arg, s, n);
    return 0;
}

static int parse_modes(bench_run *r, const char *s)
{
    char buf[128];
    if (strlen(s) >= sizeof buf)
        return -1;
    strcpy(buf, s);
    memset(r->mode_on, 0, sizeof r->mode_on);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "full"))
            r->mode_on[ERT_MODE_FULL] = 1;
        else if (!strcmp(tok, "masked"))
            r->mode_on[ERT_MODE_MASKED] = 1;
        else if (!strcmp(tok, "compacted"))
            r->mode_on[ERT_MODE_COMPACTED] = 1;
        else
            return -1;
    }
    return 0;
}


int bench_parse_args(int argc, char **argv, bench_run *r, bench_opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(USAGE, stdout);
            return 3;
        }
        if (!strcmp(a, "--quick")) {
            r->quick = 1;
            continue;
        }
        if (!strcmp(a, "--no-stages")) {
            r->no_stages = 1;
            continue;
        }
        if (!strcmp(a, "--no-default-profiles")) {
            r->no_default_profiles = 1;
            continue;
        }
        if (!strcmp(a, "--peer-dense")) {
            r->peer_dense = 1;
            continue;
        }
        if (!strcmp(a, "--peer")) {
            r->peer_requested = 1;
            continue;
        }
        if (!strcmp(a, "--fused-attention")) {
            r->cuda_options |= ERT_CUDA_FUSED_ATTENTION;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (o->model) {
                fprintf(stderr, "exitrt bench: more than one MODEL ('%s')\n", a);
                return 2;
            }
            o->model = a;
            continue;
        }
        /* --opt VALUE or --opt=VALUE */
        char key[32];
        const char *val = strchr(a, '=');
        size_t klen = val ? (size_t)(val - a) : strlen(a);
        if (klen >= sizeof key) {
            fprintf(stderr, "exitrt bench: unknown option '%s'\n%s", a, USAGE);
            return 2;
        }
        memcpy(key, a, klen);
        key[klen] = '\0';
        if (val)
            val++;
        else if (i + 1 < argc)
            val = argv[++i];
        else {
            fprintf(stderr, "exitrt bench: %s needs a value\n", key);
            return 2;
        }
        int bad = 0;
        if (!strcmp(key, "--data"))
            o->data = val;
        else if (!strcmp(key, "--json"))
            o->json = val;
        else if (!strcmp(key, "--plot"))
            o->plot = val;
        else if (!strcmp(key, "--device"))
            o->device = val;
        else if (!strcmp(key, "--batches"))
            o->batches = val;
        else if (!strcmp(key, "--modes"))
            o->modes = val;
        else if (!strcmp(key, "--profile")) {
            if (o->nprofiles >= BENCH_MAX_PROFILES - 4)
                bad = 1;
            else
                o->profiles[o->nprofiles++] = val;
        } else if (!strcmp(key, "--reps")) {
            bad = parse_int(val, 1, 1000, &r->reps);
            o->reps_given = 1;
        } else if (!strcmp(key, "--warmup")) {
            bad = parse_int(val, 0, 1000, &r->warmup);
            o->warmup_given = 1;
        } else if (!strcmp(key, "--rep-samples")) {
            bad = parse_int(val, 1, 1 << 24, &r->rep_samples);
            o->rep_samples_given = 1;
        } else if (!strcmp(key, "--threads"))
            bad = parse_int(val, 1, 1024, &r->threads);
        else if (!strcmp(key, "--b1-samples")) {
            bad = parse_int(val, 0, 1 << 24, &r->b1_samples);
            o->b1_samples_given = 1;
        } else if (!strcmp(key, "--peer-runs"))
            bad = parse_int(val, 1, 2, &r->peer_runs);
        else if (!strcmp(key, "--inflight"))
            bad = parse_int(val, 1, 16, &r->inflight);
        else if (!strcmp(key, "--graph-buckets"))
            bad = parse_int(val, 0, 64, &r->graph_buckets);
        else if (!strcmp(key, "--precision"))
            bad = !cli_parse_precision(val, &r->precision);
        else {
            fprintf(stderr, "exitrt bench: unknown option '%s'\n%s", key, USAGE);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "exitrt bench: bad value '%s' for %s\n", val, key);
            return 2;
        }
    }
    if (!o->model) {
        fputs(USAGE, stderr);
        return 2;
    }
    return 0;
}

int bench_setup_sweep(bench_run *r, const bench_opts *o)
{
    static const double late[] = {0.1, 0.1}, bal[] = {0.5, 0.25}, early[] = {0.8, 0.1};
    static const double zero[] = {0.0};
    if (r->quick) {
        r->batches[0] = 64;
        r->batches[1] = 256;
        r->nbatches = 2;
        if (!r->no_default_profiles) {
            add_profile(r, "none", zero, 1);
            add_profile(r, "balanced", bal, 2);
        }
        /* under a minute on 2 cores for a 30 MMAC network */
        if (!o->reps_given)
            r->reps = 3;
        if (!o->warmup_given)
            r->warmup = 1;
        if (!o->rep_samples_given)
            r->rep_samples = 256;
        if (!o->b1_samples_given)
            r->b1_samples = 64;
    } else {
        static const int defb[] = {1, 8, 64, 256, 1024};
        for (int i = 0; i < 5; i++)
            r->batches[i] = defb[i];
        r->nbatches = 5;
        if (!r->no_default_profiles) {
            add_profile(r, "none", zero, 1);
            add_profile(r, "late-heavy", late, 2);
            add_profile(r, "balanced", bal, 2);
            add_profile(r, "early-heavy", early, 2);
        }
    }
    if (o->batches &&
        parse_int_list(o->batches, 1, 1 << 20, r->batches, BENCH_MAX_BATCHES, &r->nbatches)) {
        fprintf(stderr, "exitrt bench: bad --batches '%s' (e.g. 1,8,64)\n", o->batches);
        return 2;
    }
    for (int i = 0; i < o->nprofiles; i++) {
        char why[160];
        if (parse_profile(r, o->profiles[i], why, sizeof why)) {
            fprintf(stderr,
                    "exitrt bench: bad --profile '%s': %s (e.g. 0.5,0.25 or name=0.5,0.25: "
                    "shares in [0,1] summing to <= 1)\n",
                    o->profiles[i], why);
            return 2;
        }
    }
    if (r->nprof == 0) {
        fprintf(stderr, "exitrt bench: --no-default-profiles needs a --profile\n");
        return 2;
    }
    r->mode_on[0] = r->mode_on[1] = r->mode_on[2] = 1;
    if (o->modes && parse_modes(r, o->modes)) {
        fprintf(stderr, "exitrt bench: bad --modes '%s'\n", o->modes);
        return 2;
    }
    const char *dev = o->device ? o->device : "all";
    if (!strcmp(dev, "cpu"))
        r->backend_on[ERT_BACKEND_CPU] = 1;
    else if (!strcmp(dev, "cuda"))
        r->backend_on[ERT_BACKEND_CUDA] = 1;
    else if (!strcmp(dev, "all")) {
        r->backend_on[ERT_BACKEND_CPU] = 1;
        r->backend_on[ERT_BACKEND_CUDA] = ert_cuda_available();
    } else {
        fprintf(stderr, "exitrt bench: bad --device '%s' (cpu, cuda or all)\n", dev);
        return 2;
    }
    if (r->backend_on[ERT_BACKEND_CUDA] && !ert_cuda_available()) {
        fprintf(stderr, "exitrt bench: --device cuda, but %s\n",
#ifdef ERT_HAVE_CUDA
                "no CUDA device is available"
#else
                "this build of exitrt has no CUDA backend"
#endif
        );
        return 1;
    }
    if (r->precision != ERT_PRECISION_FP32 && r->backend_on[ERT_BACKEND_CPU]) {
        fprintf(stderr,
                "exitrt bench: --precision %s runs on the CUDA backend only (the CPU runs "
                "fp32): add --device cuda\n",
                ert_precision_string(r->precision));
        return 2;
    }
    return 0;
}

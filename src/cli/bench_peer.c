/* bench_peer.c - running bench/torch_peer.py on the bench's inputs and thresholds.
 *
 * The bench writes its inputs ([n, C, H, W] float32, raw units; a token
 * model's rows as [n, 2, T, 1], ids then mask) and each
 * profile's per-sample exits as exitrt decided them ([profiles, n] int32) to
 * .npy files in a temporary folder, runs the peer (no shell: argv), and
 * reads the one JSON object the peer writes. The peer's exit decisions are
 * compared with exitrt's by the peer; mismatches are reported, not hidden.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_run.h"

int bench_write_npy(const char *path, const void *data, int is_int32, const int64_t *dims, int ndim)
{
    char hdr[256];
    int o = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     is_int32 ? "<i4" : "<f4");
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        o += snprintf(hdr + o, sizeof hdr - (size_t)o, "%lld,%s", (long long)dims[i],
                      i + 1 < ndim ? " " : "");
        count *= (size_t)dims[i];
    }
    o += snprintf(hdr + o, sizeof hdr - (size_t)o, "), }");
    /* magic(6) + version(2) + len(2) + header, padded with spaces to a
       multiple of 64 and ended by '\n' (npy format 1.0) */
    int total = 10 + o + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    unsigned short hl = (unsigned short)(o + pad + 1);
    unsigned char pre[10] = {
        0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 0xff), (unsigned char)(hl >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, (size_t)o, f) == (size_t)o;
    for (int i = 0; i < pad && ok; i++)
        ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    ok = ok && fwrite(data, 4, count, f) == count; /* little-endian host assumed */
    if (fclose(f) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

/* The peer script: $ERT_TORCH_PEER, else bench/torch_peer.py next to the
 * source tree the executable was built in (build dirs sit in the tree),
 * else relative to the working directory. */
static int find_peer(char *out, size_t len)
{
    const char *env = getenv("ERT_TORCH_PEER");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return access(out, R_OK) == 0 ? 0 : -1;
    }
    char exe[1024];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            static const char *rel[] = {"/../bench/torch_peer.py", "/bench/torch_peer.py",
                                        "/../../bench/torch_peer.py"};
            for (int i = 0; i < 3; i++) {
                snprintf(out, len, "%s%s", exe, rel[i]);
                if (access(out, R_OK) == 0)
                    return 0;
            }
        }
    }
    snprintf(out, len, "bench/torch_peer.py");
    return access(out, R_OK) == 0 ? 0 : -1;
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0)
            break;
        if (len + 1 == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

static const char *MODE_NAMES[3] = {"full", "masked", "compacted"};

/* The peer's samples/s for a cell, or -1. FULL is listed with profile null. */
static double peer_sps(const cJSON *cells, const char *dev, const char *profile, int batch,
                       const char *mode)
{
    const cJSON *c;
    cJSON_ArrayForEach (c, cells) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "device");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(c, "profile");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(c, "batch");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(c, "mode");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(c, "samples_per_s");
        if (!cJSON_IsString(d) || !cJSON_IsNumber(b) || !cJSON_IsString(m) || !cJSON_IsNumber(s))
            continue;
        if (strcmp(d->valuestring, dev) || (int)b->valuedouble != batch ||
            strcmp(m->valuestring, mode))
            continue;
        /* the full network's cells have no profile */
        if (strcmp(mode, "full") != 0 && strcmp(mode, "ort-full") != 0 &&
            (!cJSON_IsString(p) || strcmp(p->valuestring, profile) != 0))
            continue;
        return s->valuedouble;
    }
    return -1.0;
}

static int mismatch(const cJSON *d, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, key);
    return cJSON_IsNumber(v) ? (int)v->valuedouble : -1;
}

/* The peer's check of its exit decisions against exitrt's, per profile. */
static void read_decisions(bench_run *r, const cJSON *dec)
{
    const cJSON *d;
    cJSON_ArrayForEach (d, dec) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(d, "profile");
        if (!cJSON_IsString(p))
            continue;
        for (int q = 0; q < r->nprof; q++)
            if (!strcmp(r->prof[q].name, p->valuestring)) {
                bench_profile *pr = &r->prof[q];
                pr->peer_checked = 1;
                pr->peer_mismatch_masked = mismatch(d, "mismatch_masked");
                pr->peer_mismatch_compacted = mismatch(d, "mismatch_compacted");
                pr->peer_mismatch_b1if = mismatch(d, "mismatch_batch1-if");
                pr->ort_mismatch = mismatch(d, "mismatch_ort");
            }
    }
}

int bench_run_peer(bench_run *r)
{
    char script[1100];
    if (find_peer(script, sizeof script)) {
        snprintf(r->peer_note, sizeof r->peer_note,
                 "not run: bench/torch_peer.py not found (set ERT_TORCH_PEER)");
        return -1;
    }
    const char *py = getenv("ERT_PYTHON");
    if (!py || !*py)
        py = "/usr/bin/python3";

    char dir[] = "/tmp/exitrt-peer-XXXXXX";
    if (!mkdtemp(dir)) {
        snprintf(r->peer_note, sizeof r->peer_note, "not run: no temporary folder");
        return -1;
    }
    char xin[64], xex[64], xout[64];
    snprintf(xin, sizeof xin, "%s/inputs.npy", dir);
    snprintf(xex, sizeof xex, "%s/exits.npy", dir);
    snprintf(xout, sizeof xout, "%s/peer.json", dir);
    int rc = -1;
    char *text = NULL;
    cJSON *j = NULL;
    int32_t *ex = NULL;
    char **argv = NULL;
    char *argbuf = NULL;

    int C, H, W;
    ert_model_input_shape(r->model, &C, &H, &W);
    int64_t dims[4] = {r->n, C, H, W};
    int64_t edims[2] = {r->nprof, r->n};
    ex = malloc(sizeof *ex * (size_t)r->nprof * (size_t)r->n);
    if (!ex)
        goto done;
    for (int p = 0; p < r->nprof; p++)
        memcpy(ex + (size_t)p * (size_t)r->n, r->prof[p].exits, sizeof *ex * (size_t)r->n);
    if (bench_write_npy(xin, r->inputs, 0, dims, 4) || bench_write_npy(xex, ex, 1, edims, 2)) {
        snprintf(r->peer_note, sizeof r->peer_note, "not run: cannot write %s", dir);
        goto done;
    }

    /* argv: py script --model M --inputs X --exits E --out O --batches B
       --modes M --reps R --warmup W --rep-samples S --b1-samples B1 --threads T
       [--no-nested] --device D (--profile NAME=T1,T2)* (--ort | --no-check) */
    int nargs = 0, cap = 40 + 2 * r->nprof;
    argv = calloc((size_t)cap, sizeof *argv);
    argbuf = malloc(4096 + (size_t)r->nprof * 512);
    if (!argv || !argbuf)
        goto done;
    char *w = argbuf;
#define ARG(...)                          \
    do {                                  \
        argv[nargs++] = w;                \
        w += sprintf(w, __VA_ARGS__) + 1; \
    } while (0)
    ARG("%s", py);
    ARG("%s", script);
    ARG("--model");
    ARG("%.1000s", r->model->path);
    ARG("--inputs");
    ARG("%s", xin);
    ARG("--exits");
    ARG("%s", xex);
    ARG("--out");
    ARG("%s", xout);
    ARG("--batches");
    {
        char *b0 = w;
        for (int i = 0; i < r->nbatches; i++)
            w += sprintf(w, "%s%d", i ? "," : "", r->batches[i]);
        w++;
        argv[nargs++] = b0;
    }
    /* PyTorch's best early exit is the better of its two batched loops,
       whichever of exitrt's modes run */
    ARG("--modes");
    ARG("full%s",
        r->mode_on[ERT_MODE_MASKED] || r->mode_on[ERT_MODE_COMPACTED] ? ",masked,compacted" : "");
    ARG("--reps");
    ARG("%d", r->reps);
    ARG("--warmup");
    ARG("%d", r->warmup);
    ARG("--rep-samples");
    ARG("%d", r->rep_samples);
    ARG("--b1-samples");
    ARG("%d", r->b1_samples);
    ARG("--threads");
    ARG("%d", r->threads);
    if (r->peer_dense)
        ARG("--no-nested");
    ARG("--device");
    ARG("%s", r->backend_on[ERT_BACKEND_CPU] && r->backend_on[ERT_BACKEND_CUDA] ? "all"
              : r->backend_on[ERT_BACKEND_CUDA]                                 ? "cuda"
                                                                                : "cpu");
    for (int p = 0; p < r->nprof; p++) {
        ARG("--profile");
        char *b0 = w;
        w += sprintf(w, "%.40s=", r->prof[p].name);
        for (int x = 0; x < r->num_exits - 1; x++)
            w += sprintf(w, "%s%.9g", x ? "," : "", (double)r->prof[p].thresholds[x]);
        w++;
        argv[nargs++] = b0;
    }
#undef ARG
    argv[nargs] = NULL;

    /* Two runs of the peer, as an expert would configure Debian's PyTorch
     * (OpenMP and OpenBLAS threads side by side): OpenMP's default
     * busy-waiting, then OMP_WAIT_POLICY=PASSIVE; each cell keeps the
     * better (--peer-runs 1: the first alone). The first run also times
     * ONNX Runtime (--ort) and checks the exit decisions; the second
     * skips both (--no-check). */
    int won[2] = {0, 0};
    char ver[64] = "?", nested[128] = "";
    argv[nargs] = "--ort";
    argv[nargs + 1] = NULL;
    for (int variant = 0; variant < r->peer_runs; variant++) {
        fprintf(stderr, "exitrt bench: running the PyTorch peer (%s %s%s)\n", py, script,
                variant ? ", OMP_WAIT_POLICY=PASSIVE" : ", and ONNX Runtime");
        fflush(stderr);
        if (variant)
            argv[nargs] = "--no-check"; /* no second ONNX Runtime run nor check */
        pid_t pid = fork();
        if (pid < 0)
            goto done;
        if (pid == 0) {
            /* the peer's stdout (progress) joins our stderr; results go to --out */
            dup2(STDERR_FILENO, STDOUT_FILENO);
            if (variant)
                setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
            execvp(py, argv); /* ERT_PYTHON may be a bare name, found on PATH */
            fprintf(stderr, "exitrt bench: cannot run %s: %s\n", py, strerror(errno));
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            snprintf(r->peer_note, sizeof r->peer_note,
                     "failed: %.400s exited with status %d (see its messages above)", script,
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
            goto done;
        }
        cJSON_Delete(j);
        free(text);
        text = read_all(xout);
        j = text ? cJSON_Parse(text) : NULL;
        const cJSON *cells = j ? cJSON_GetObjectItemCaseSensitive(j, "cells") : NULL;
        if (!cJSON_IsArray(cells)) {
            snprintf(r->peer_note, sizeof r->peer_note, "failed: no cells in the peer's output");
            goto done;
        }
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "torch");
        if (cJSON_IsString(v))
            snprintf(ver, sizeof ver, "%s", v->valuestring);
        if (variant == 0) {
            const cJSON *on = cJSON_GetObjectItemCaseSensitive(j, "ort");
            snprintf(r->ort_note, sizeof r->ort_note, "%s",
                     cJSON_IsString(on) ? on->valuestring : "not run: no CPU cells");
            const cJSON *nt = cJSON_GetObjectItemCaseSensitive(j, "nested_tensors");
            if (cJSON_IsBool(nt))
                snprintf(nested, sizeof nested, "; encoders as nn.TransformerEncoder %s",
                         cJSON_IsTrue(nt) ? "(nested tensors: padded tokens skipped)"
                                          : "without nested tensors (padded tokens computed)");
            read_decisions(r, cJSON_GetObjectItemCaseSensitive(j, "decisions"));
        }
        for (int i = 0; i < r->ncells; i++) {
            bench_cell *c = &r->cells[i];
            const char *dev = ert_backend_string(c->backend);
            const char *pn = r->prof[c->profile].name;
            double t = peer_sps(cells, dev, pn, c->batch, MODE_NAMES[c->mode]);
            double a = peer_sps(cells, dev, pn, c->batch, "masked");
            double b = peer_sps(cells, dev, pn, c->batch, "compacted");
            double b1 = peer_sps(cells, dev, pn, 1, "batch1-if");
            if (c->mode != ERT_MODE_FULL && b1 > c->torch_b1if)
                c->torch_b1if = b1;
            if (t > 0 && variant == 0)
                won[0]++; /* until the second run beats it */
            if (t > c->torch_samples_per_s && variant == 1 && c->torch_samples_per_s > 0) {
                won[0]--;
                won[1]++;
            }
            if (t > c->torch_samples_per_s)
                c->torch_samples_per_s = t;
            if ((a > b ? a : b) > c->torch_best_ee)
                c->torch_best_ee = a > b ? a : b;
            if (variant == 0 && c->mode != ERT_MODE_MASKED)
                c->ort_samples_per_s =
                    peer_sps(cells, dev, pn, c->batch,
                             c->mode == ERT_MODE_FULL ? "ort-full" : "ort-pipeline");
        }
    }
    char b1[96] = "";
    if (r->b1_samples > 0)
        snprintf(b1, sizeof b1, "; batch1-if over %d samples per rep", r->b1_samples);
    if (r->peer_runs == 2)
        snprintf(r->peer_note, sizeof r->peer_note,
                 "PyTorch %s, eager fp32, %d threads, better of OpenMP's default wait (%d cells) "
                 "and OMP_WAIT_POLICY=PASSIVE (%d cells)%s%s",
                 ver, r->threads, won[0], won[1], nested, b1);
    else
        snprintf(r->peer_note, sizeof r->peer_note,
                 "PyTorch %s, eager fp32, %d threads, OpenMP's default wait only%s%s", ver,
                 r->threads, nested, b1);
    rc = 0;
done:
    if (rc && !r->peer_note[0])
        snprintf(r->peer_note, sizeof r->peer_note, "failed (out of memory?)");
    cJSON_Delete(j);
    free(text);
    free(ex);
    free(argv);
    free(argbuf);
    remove(xin);
    remove(xex);
    remove(xout);
    rmdir(dir);
    return rc;
}

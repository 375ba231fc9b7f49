/* make_model.c - writes a random test model and data for the CLI tests.
 *
 *   cli_make_model DIR KIND SEED N
 *
 * KIND is mlp, cnn, resnet, vit or bert (tests/common/model_writer.h). Writes into DIR
 * (created if missing): model.json and model.safetensors; inputs.npy, N
 * float32 samples uniform in [0, 1) (what the random models are calibrated
 * for); labels.npy, N int32 labels: the reference's prediction for the
 * sample with every 4th one changed, so accuracies are neither 0 nor 1; and
 * inputs-u8-idx (IDX ubyte) and labels-idx1.gz, the same data as bytes.
 * For a token model (bert) inputs.npy holds int32 rows [N, 2T] (ids, then
 * the mask: mw_random_tokens) and the IDX files are not written.
 * model.json also names inputs.npy and labels.npy as its sample data, so
 * `exitrt run DIR` works without --data. Prints nothing on success; exits 1
 * with a message on failure. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "exitrt.h"
#include "model_writer.h"

static int fail(const char *msg)
{
    fprintf(stderr, "cli_make_model: %s\n", msg);
    return 1;
}

/* A version 1 .npy: dict, padding to 64 bytes, data. */
static int write_npy(const char *path, const char *descr, size_t n, size_t k, const void *data,
                     size_t nbytes)
{
    char dict[160];
    int dl;
    if (k)
        dl =
            snprintf(dict, sizeof dict,
                     "{'descr': '%s', 'fortran_order': False, 'shape': (%zu, %zu), }", descr, n, k);
    else
        dl = snprintf(dict, sizeof dict,
                      "{'descr': '%s', 'fortran_order': False, 'shape': (%zu,), }", descr, n);
    size_t hlen = (size_t)dl + 1;
    hlen += (64 - (10 + hlen) % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    unsigned char pre[10] = {0x93,
                             'N',
                             'U',
                             'M',
                             'P',
                             'Y',
                             1,
                             0,
                             (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(dict, 1, (size_t)dl, f);
    for (size_t i = (size_t)dl + 1; i < hlen; i++)
        fputc(' ', f);
    fputc('\n', f);
    fwrite(data, 1, nbytes, f);
    return fclose(f) == 0 ? 0 : -1;
}

static int write_idx(const char *path, int gz, int ndim, const uint32_t *dims,
                     const unsigned char *data, size_t n)
{
    unsigned char hdr[4 + 4 * 8] = {0, 0, 0x08, (unsigned char)ndim};
    for (int i = 0; i < ndim; i++) {
        hdr[4 + 4 * i] = (unsigned char)(dims[i] >> 24);
        hdr[5 + 4 * i] = (unsigned char)(dims[i] >> 16);
        hdr[6 + 4 * i] = (unsigned char)(dims[i] >> 8);
        hdr[7 + 4 * i] = (unsigned char)dims[i];
    }
    size_t hn = 4 + 4 * (size_t)ndim;
    if (gz) {
        gzFile f = gzopen(path, "wb");
        if (!f)
            return -1;
        int ok =
            gzwrite(f, hdr, (unsigned)hn) == (int)hn && gzwrite(f, data, (unsigned)n) == (int)n;
        return gzclose(f) == Z_OK && ok ? 0 : -1;
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    fwrite(hdr, 1, hn, f);
    fwrite(data, 1, n, f);
    return fclose(f) == 0 ? 0 : -1;
}

/* Adds sample_data / sample_labels to DIR/model.json. */
static int add_sample_data(const char *dir)
{
    char path[1024];
    if (mw_path(path, sizeof path, dir, "model.json"))
        return -1;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    char *text = malloc(1 << 20);
    size_t n = text ? fread(text, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (!text)
        return -1;
    text[n] = '\0';
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j)
        return -1;
    cJSON_DeleteItemFromObject(j, "sample_data");
    cJSON_DeleteItemFromObject(j, "sample_labels");
    cJSON_AddStringToObject(j, "sample_data", "inputs.npy");
    cJSON_AddStringToObject(j, "sample_labels", "labels.npy");
    int rc = mw_write_json(path, j);
    cJSON_Delete(j);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return fail("usage: cli_make_model DIR mlp|cnn|resnet|vit|bert SEED N");
    const char *dir = argv[1];
    int kind = -1;
    for (int k = 0; k < MW_ALL_KINDS; k++)
        if (strcmp(argv[2], mw_kind_name((mw_kind)k)) == 0)
            kind = k;
    if (kind < 0)
        return fail("unknown model kind");
    uint64_t seed = strtoull(argv[3], NULL, 10);
    long n = strtol(argv[4], NULL, 10);
    if (n < 1 || n > 1000000)
        return fail("N must be in [1, 1000000]");
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return fail("cannot create the directory");
    if (mw_random_model(dir, seed, (mw_kind)kind) != 0)
        return fail("mw_random_model failed");

    ert_model *m = NULL;
    ert_error err = {{0}};
    if (ert_model_load(dir, &m, &err) != ERT_OK)
        return fail(err.msg);
    size_t per = ert_model_input_size(m);
    int K = ert_model_num_classes(m);
    int c, h, w;
    ert_model_input_shape(m, &c, &h, &w);

    float *x = malloc((size_t)n * per * sizeof *x);
    ert_sample *s = malloc((size_t)n * sizeof *s);
    int32_t *labels = malloc((size_t)n * sizeof *labels);
    unsigned char *xb = malloc((size_t)n * per);
    unsigned char *lb = malloc((size_t)n);
    if (!x || !s || !labels || !xb || !lb)
        return fail("out of memory");
    mw_model_inputs(m, x, (int)n, seed + 1);
    const int tokens = ert_model_input_tokens(m) > 0;
    if (mw_reference_infer(m, x, (int)n, s, NULL, NULL, NULL) != 0)
        return fail("mw_reference_infer failed");
    for (long i = 0; i < n; i++) {
        labels[i] = i % 4 == 3 ? (s[i].predicted + 1) % K : s[i].predicted;
        lb[i] = (unsigned char)labels[i];
    }
    for (size_t i = 0; !tokens && i < (size_t)n * per; i++) /* images: values in [0, 1) */
        xb[i] = (unsigned char)(x[i] * 256.0f);

    char path[1024];
    int rc = 0;
    if (tokens) { /* the ids and mask as int32 */
        int32_t *ids = malloc((size_t)n * per * sizeof *ids);
        if (!ids)
            return fail("out of memory");
        for (size_t i = 0; i < (size_t)n * per; i++)
            ids[i] = (int32_t)x[i];
        rc |= mw_path(path, sizeof path, dir, "inputs.npy") ||
              write_npy(path, "<i4", (size_t)n, per, ids, (size_t)n * per * sizeof *ids);
        free(ids);
    } else {
        rc |= mw_path(path, sizeof path, dir, "inputs.npy") ||
              write_npy(path, "<f4", (size_t)n, per, x, (size_t)n * per * sizeof *x);
    }
    rc |= mw_path(path, sizeof path, dir, "labels.npy") ||
          write_npy(path, "<i4", (size_t)n, 0, labels, (size_t)n * sizeof *labels);
    uint32_t dims[4] = {(uint32_t)n, (uint32_t)c, (uint32_t)h, (uint32_t)w};
    if (!tokens) {
        rc |= mw_path(path, sizeof path, dir, "inputs-u8-idx") ||
              write_idx(path, 0, 4, dims, xb, (size_t)n * per);
        rc |= mw_path(path, sizeof path, dir, "labels-idx1.gz") ||
              write_idx(path, 1, 1, dims, lb, (size_t)n);
    }
    rc |= add_sample_data(dir);
    ert_model_free(m);
    free(x);
    free(s);
    free(labels);
    free(xb);
    free(lb);
    if (rc)
        return fail("writing the data files failed");
    return 0;
}

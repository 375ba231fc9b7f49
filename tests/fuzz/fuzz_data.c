/* fuzz_data.c - libFuzzer harness for the data readers (.npy and IDX,
 * plain or gzipped).
 *
 * Input: one flags byte, then the file. Flag bit 0 gzips the rest before it
 * is written, so mutations of the headers also reach the gzip path (mutating
 * compressed bytes mostly breaks the deflate stream). The file is read both
 * as a data set and as labels.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "data.h"
#include "fuzz_common.h"

static int write_gz(const char *path, const uint8_t *data, size_t n)
{
    gzFile g = gzopen(path, "wb1");
    if (!g)
        return -1;
    if (n && gzwrite(g, data, (unsigned)n) != (int)n) {
        gzclose(g);
        return -1;
    }
    return gzclose(g) == Z_OK ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char path[600];
    if (data[0] & 1) {
        if (fuzz_write("data", "", 0, path, sizeof path) || write_gz(path, data + 1, size - 1))
            abort();
    } else if (fuzz_write("data", data + 1, size - 1, path, sizeof path)) {
        abort();
    }
    cli_dataset d;
    ert_error err = {{0}};
    if (cli_dataset_load(path, &d, &err) == ERT_OK) {
        if (d.count == 0 || d.sample_size == 0 || d.count * d.sample_size == 0)
            __builtin_trap();
        volatile float sum = 0;
        for (size_t i = 0; i < d.count * d.sample_size; i++)
            sum += d.values[i];
        (void)sum;
    } else if (!err.msg[0] || d.values) {
        __builtin_trap();
    }
    cli_dataset_free(&d);
    cli_labels l;
    err.msg[0] = '\0';
    if (cli_labels_load(path, &l, &err) == ERT_OK) {
        for (size_t i = 0; i < l.count; i++)
            if (l.values[i] < 0)
                __builtin_trap();
    } else if (!err.msg[0] || l.values) {
        __builtin_trap();
    }
    cli_labels_free(&l);
    return 0;
}

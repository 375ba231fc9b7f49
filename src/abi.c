/* abi.c - the layouts of the sized structs (abi.h). */
#include "abi.h"

#include <stdio.h>
#include <string.h>

/* The end of field f of T: the size of a layout whose last field is f. */
#define ABI_END(T, f) (offsetof(T, f) + sizeof(((T *)0)->f))

/* Each layout ends without trailing padding (exitrt.h), so that a field
 * appended later always changes the size: a field that fitted in the old
 * padding would otherwise read an old caller's padding bytes. */
#define ABI_NO_TAIL(T, f) \
    _Static_assert(sizeof(T) == ABI_END(T, f), #T " ends with padding: see exitrt.h")

/* When a field is appended to a struct, append its new size here (the
 * older entries stay, so that programs built with them keep working). */
ABI_NO_TAIL(ert_engine_config, cuda_options);
ABI_NO_TAIL(ert_result, macs_padding);
ABI_NO_TAIL(ert_device_result, logits);
ABI_NO_TAIL(ert_stream_config, deadline_ms);
ABI_NO_TAIL(ert_stream_stats, nonfinite_samples);

static const size_t engine_config_sizes[] = {ABI_END(ert_engine_config, cuda_options)};
static const size_t result_sizes[] = {ABI_END(ert_result, macs_padding)};
static const size_t device_result_sizes[] = {ABI_END(ert_device_result, logits)};
static const size_t stream_config_sizes[] = {ABI_END(ert_stream_config, deadline_ms)};
static const size_t stream_stats_sizes[] = {ABI_END(ert_stream_stats, nonfinite_samples)};

#define ABI_STRUCT(name, sizes)                            \
    {                                                      \
        name, sizes, (int)(sizeof sizes / sizeof sizes[0]) \
    }
const abi_struct abi_engine_config = ABI_STRUCT("ert_engine_config", engine_config_sizes);
const abi_struct abi_result = ABI_STRUCT("ert_result", result_sizes);
const abi_struct abi_device_result = ABI_STRUCT("ert_device_result", device_result_sizes);
const abi_struct abi_stream_config = ABI_STRUCT("ert_stream_config", stream_config_sizes);
const abi_struct abi_stream_stats = ABI_STRUCT("ert_stream_stats", stream_stats_sizes);

ert_status abi_check(const abi_struct *t, uint32_t size, const char *who, char *msg, size_t cap)
{
    const size_t ours = t->sizes[t->count - 1];
    for (int i = 0; i < t->count; i++)
        if (size == t->sizes[i])
            return ERT_OK;
    if (size == 0) {
        snprintf(msg, cap,
                 "%s: %s.struct_size is 0: start the struct from its ERT_*_INIT macro "
                 "(exitrt.h, \"Structs that grow\")",
                 who, t->name);
        return ERT_INVALID_ARGUMENT;
    }
    if (size > ours) {
        snprintf(msg, cap,
                 "%s: %s.struct_size %u is larger than this library's %zu (exitrt %s): the "
                 "program was built against a newer exitrt.h than the library it runs with",
                 who, t->name, (unsigned)size, ours, ert_version());
        return ERT_UNSUPPORTED;
    }
    snprintf(msg, cap, "%s: %s.struct_size %u is no layout of exitrt %s (its size is %zu)", who,
             t->name, (unsigned)size, ert_version(), ours);
    return ERT_INVALID_ARGUMENT;
}

void abi_read(void *dst, size_t full, const void *src, uint32_t size)
{
    memcpy(dst, src, size < full ? size : full);
    const uint32_t s = (uint32_t)full;
    memcpy(dst, &s, sizeof s); /* struct_size is every sized struct's first field */
}

/* names.c - the names of the public enums (exitrt.h's *_string functions);
 * the model file spells policies the same way (model.c parses them). */
#include "exitrt.h"

const char *ert_status_string(ert_status s)
{
    switch (s) {
    case ERT_OK: return "ok";
    case ERT_INVALID_ARGUMENT: return "invalid argument";
    case ERT_IO: return "i/o error";
    case ERT_FORMAT: return "format error";
    case ERT_UNSUPPORTED: return "unsupported";
    case ERT_OUT_OF_MEMORY: return "out of memory";
    case ERT_NO_DEVICE: return "no device";
    case ERT_CUDA: return "cuda error";
    case ERT_BUSY: return "busy";
    case ERT_INTERNAL: return "internal error";
    case ERT_QUEUE_FULL: return "queue full";
    }
    return "unknown status";
}

const char *ert_backend_string(ert_backend b)
{
    switch (b) {
    case ERT_BACKEND_AUTO: return "auto";
    case ERT_BACKEND_CPU: return "cpu";
    case ERT_BACKEND_CUDA: return "cuda";
    }
    return "unknown";
}

const char *ert_mode_string(ert_mode m)
{
    switch (m) {
    case ERT_MODE_FULL: return "full";
    case ERT_MODE_MASKED: return "masked";
    case ERT_MODE_COMPACTED: return "compacted";
    }
    return "unknown";
}

const char *ert_precision_string(ert_precision p)
{
    switch (p) {
    case ERT_PRECISION_FP32: return "fp32";
    case ERT_PRECISION_TF32: return "tf32";
    }
    return "unknown";
}

const char *ert_policy_string(ert_policy_kind p)
{
    switch (p) {
    case ERT_POLICY_NONE: return "none";
    case ERT_POLICY_ENTROPY: return "entropy";
    case ERT_POLICY_MAX_PROB: return "max_prob";
    case ERT_POLICY_MARGIN: return "margin";
    case ERT_POLICY_CONFIDENCE_HEAD: return "confidence_head";
    case ERT_POLICY_PATIENCE: return "patience";
    }
    return "unknown";
}

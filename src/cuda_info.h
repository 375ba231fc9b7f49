/* cuda_info.h - what the CUDA device and libraries are, as fields
 * (ert_cuda_info() prints them as one line; the bench writes them to its
 * JSON). No CUDA types: any part of the tree may include it. */
#ifndef ERT_CUDA_INFO_H
#define ERT_CUDA_INFO_H

typedef struct cuda_info {
    int built;       /* 1 when this build has the CUDA backend */
    int present;     /* 1 when the device could be queried */
    char error[128]; /* why not, when !present */
    char name[256];  /* e.g. "NVIDIA H200" */
    int cc_major, cc_minor, sms;
    double mem_gib;
    int driver, runtime;    /* CUDA versions as 1000 * major + 10 * minor */
    char kernel_driver[32]; /* the NVIDIA kernel module's version ("580.159.04"),
                               from /proc/driver/nvidia/version, or "" */
    int cudnn;              /* loaded cuDNN, cudnnGetVersion(): 91900 = 9.19.0 */
    int cudnn_built;        /* the cuDNN headers compiled against, same form */
    int cublas[3];          /* loaded cuBLAS major, minor, patch */
} cuda_info;

/* Fills *out for CUDA device `device` (all zero and built = 0 without the
 * CUDA backend). Returns out->present. */
int cuda_info_query(int device, cuda_info *out);

#endif /* ERT_CUDA_INFO_H */

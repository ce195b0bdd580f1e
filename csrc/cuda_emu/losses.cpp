// The CUDA loss kernels (csrc/cuda/losses.cu) compiled by the host compiler for the CPU
// emulation of csrc/cuda_emu/emulate.h: module cliptbp_kernels._C_cuda_emu, which tests the
// kernel source on machines without a GPU.
#define CLIPTBP_CUDA_EMULATE 1
#include "losses.cu"

// What the CUDA kernels of cliptbp_kernels need from the CUDA runtime, in one place.
//
// Compiled by nvcc, this is <cuda_runtime.h> plus a launch macro. Compiled by a host C++
// compiler with CLIPTBP_CUDA_EMULATE defined, it is the CPU emulation of csrc/cuda_emu/
// (every CUDA thread a fiber, blocks run one after another): the same kernel source then runs
// on CPU memory, which is how the kernels are tested on machines without a GPU.
//
// Kernels written against this header use only: __global__/__device__ functions, static
// __shared__ arrays, threadIdx/blockIdx/blockDim/gridDim, __syncthreads(), __syncwarp() with
// the full mask, atomicAdd on unsigned int, __threadfence(), 16 x 16 x 16 wmma tiles with
// float accumulators (row-major A, column-major B), and launches through
// CLIPTBP_LAUNCH(kernel_pointer, grid, block, stream)(args...).
#pragma once

#if defined(CLIPTBP_CUDA_EMULATE)
#include "cuda_emu/emulate.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define CLIPTBP_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#endif

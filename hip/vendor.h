// One vendor header: the kernels under hip/ are written once in CUDA spelling; under hipcc
// (__HIP_PLATFORM_AMD__) the runtime names, warp intrinsics and dot instructions map to HIP's.
// Only the names this backend uses are aliased (ggml's vendors/hip.h does the same for all of ggml).
#pragma once

#if defined(__HIP__) || defined(__HIP_PLATFORM_AMD__) || defined(MEDUSA_USE_HIP)
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>
#define MEDUSA_HIP 1
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaGetErrorString hipGetErrorString
#define cudaGetLastError hipGetLastError
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaGetDevice hipGetDevice
#define cudaSetDevice hipSetDevice
#define cudaDeviceProp hipDeviceProp_t
#define cudaGetDeviceProperties hipGetDeviceProperties
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaMalloc hipMalloc
#define cudaFree hipFree
#define cudaMemcpy hipMemcpy
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemcpy2DAsync hipMemcpy2DAsync
#define cudaMemset hipMemset
#define cudaMemsetAsync hipMemsetAsync
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define cudaStream_t hipStream_t
#define cudaStreamCreate hipStreamCreate
#define cudaStreamDestroy hipStreamDestroy
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaStreamBeginCapture hipStreamBeginCapture
#define cudaStreamEndCapture hipStreamEndCapture
#define cudaStreamCaptureModeGlobal hipStreamCaptureModeGlobal
#define cudaGraph_t hipGraph_t
#define cudaGraphExec_t hipGraphExec_t
#define cudaGraphInstantiate(e, g, f) hipGraphInstantiate(e, g, nullptr, nullptr, 0)
#define cudaGraphLaunch hipGraphLaunch
#define cudaGraphExecDestroy hipGraphExecDestroy
#define cudaGraphDestroy hipGraphDestroy
#define cudaEvent_t hipEvent_t
#define cudaEventCreate hipEventCreate
#define cudaEventDestroy hipEventDestroy
#define cudaEventRecord hipEventRecord
#define cudaEventSynchronize hipEventSynchronize
#define cudaEventElapsedTime hipEventElapsedTime
#define cudaFuncSetAttribute hipFuncSetAttribute
#define cudaFuncAttributeMaxDynamicSharedMemorySize hipFuncAttributeMaxDynamicSharedMemorySize
// HIP's shuffles take no mask: every lane of the wavefront takes part.
#define __shfl_xor_sync(mask, var, lane_mask, width) __shfl_xor(var, lane_mask, width)
#define __shfl_sync(mask, var, lane, width) __shfl(var, lane, width)
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define MEDUSA_CUDA 1
#endif

// Physical warp (wavefront) size as a compile-time constant: 64 on GCN/CDNA (gfx8/gfx9, e.g. gfx90a MI200),
// 32 on RDNA and NVIDIA. Reductions are templated on it; no literal 32 appears in a kernel.
#if defined(MEDUSA_HIP) && (defined(__GFX8__) || defined(__GFX9__))
#define MEDUSA_WARP_SIZE 64
#else
#define MEDUSA_WARP_SIZE 32
#endif

// Tensor-core int8 MMA (mma.sync m16n8k32) exists on NVIDIA sm_80 and newer; elsewhere the dp4a kernels run.
#if defined(MEDUSA_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MEDUSA_INT8_MMA 1
#endif

// 4-way int8 dot product with int32 accumulate: dp4a on NVIDIA, sdot4 on CDNA / RDNA2+, plain code otherwise.
static __device__ __forceinline__ int medusa_dp4a(int a, int b, int c) {
#if defined(MEDUSA_CUDA)
    return __dp4a(a, b, c);
#elif defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__) || \
    defined(__gfx1030__) || defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__)
    return __builtin_amdgcn_sdot4(a, b, c, false);
#else
    const signed char* x = (const signed char*)&a;
    const signed char* y = (const signed char*)&b;
    return c + x[0] * y[0] + x[1] * y[1] + x[2] * y[2] + x[3] * y[3];
#endif
}

// CUTLASS 3 implicit-GEMM 3-D convolution (fprop) for sm90, for benchmarks/conv3d_cutlass.py: NDHWC bf16
// activations, KTRSC bf16 filters, fp32 accumulation, NDHWC bf16 output, stride 1, the same padding on every
// side. TMA im2col loads and warp-specialised wgmma (KernelImplicitTmaWarpSpecializedSm90, the one schedule
// CUTLASS 4.2 offers for sm90 convolutions). One tile configuration per build: TILE_M, TILE_N, TILE_K.
// Build (conv3d_cutlass.py does it): nvcc -std=c++17 -O3 -DNDEBUG -arch=sm_90a --expt-relaxed-constexpr
//   -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -I CUTLASS_INCLUDE -Xcompiler -fPIC -shared -DTILE_M=.. ...
// (-DNDEBUG matters: device asserts are calls that serialise the wgmma pipeline.)
#include <cstdint>
#include <cuda_runtime.h>
#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/kernel_hardware_info.hpp"
#include "cutlass/conv/convolution.h"
#include "cutlass/conv/convnd_problem_shape.hpp"
#include "cutlass/conv/dispatch_policy.hpp"
#include "cutlass/conv/collective/collective_builder.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/conv/device/conv_universal_adapter.hpp"
#include "cutlass/conv/kernel/conv_universal.hpp"

using namespace cute;

#ifndef TILE_M
#define TILE_M 128
#endif
#ifndef TILE_N
#define TILE_N 64
#endif
#ifndef TILE_K
#define TILE_K 64
#endif

using Element = cutlass::bfloat16_t;
constexpr int Align = 8;
using LayoutNDHWC = cutlass::layout::TensorNDHWC;
using TileShape = Shape<Int<TILE_M>, Int<TILE_N>, Shape<Int<TILE_K>>>;
using ClusterShape = Shape<_1, _1, _1>;
constexpr cutlass::conv::Operator ConvOp = cutlass::conv::Operator::kFprop;

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float,
    Element, LayoutNDHWC, Align, Element, LayoutNDHWC, Align,
    cutlass::epilogue::TmaWarpSpecialized>::CollectiveOp;

using CollectiveMainloop = typename cutlass::conv::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ConvOp,
    Element, LayoutNDHWC, Align, Element, LayoutNDHWC, Align, float, TileShape, ClusterShape,
    cutlass::conv::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;

using ProblemShape = cutlass::conv::ConvProblemShape<ConvOp, CollectiveMainloop::DispatchPolicy::NumSpatialDimensions>;
using ConvKernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
using Conv = cutlass::conv::device::ConvUniversalAdapter<ConvKernel>;

// 0 on success; 1: CUTLASS cannot run this problem, 2: it would need a workspace, 3/4: initialise/run failed.
extern "C" int conv3d_fprop(const void* x, const void* w, void* y, int n, int d, int h, int wd, int c, int k,
                            int t, int r, int s, int pad, void* stream) {
  ProblemShape shape(cutlass::conv::Mode::kCrossCorrelation, {n, d, h, wd, c}, {k, t, r, s, c},
                     {pad, pad, pad}, {pad, pad, pad}, {1, 1, 1}, {1, 1, 1}, 1);
  typename Conv::ConvKernel::StrideC stride_C;
  typename Conv::ConvKernel::StrideD stride_D;
  cute::for_each(cute::make_seq<cute::rank<0>(decltype(stride_C){})>{}, [&](auto i) {
    cute::get<0, i>(stride_C) = shape.stride_C[ProblemShape::RankT - 2 - i];
  });
  cute::for_each(cute::make_seq<cute::rank<0>(decltype(stride_D){})>{}, [&](auto i) {
    cute::get<0, i>(stride_D) = shape.stride_C[ProblemShape::RankT - 2 - i];
  });
  typename Conv::Arguments args{shape,
                                {static_cast<const Element*>(x), static_cast<const Element*>(w)},
                                {{1.0f, 0.0f}, static_cast<const Element*>(y), stride_C,
                                 static_cast<Element*>(y), stride_D}};
  Conv conv;
  if (conv.can_implement(args) != cutlass::Status::kSuccess) return 1;
  if (Conv::get_workspace_size(args) != 0) return 2;
  if (conv.initialize(args, nullptr, static_cast<cudaStream_t>(stream)) != cutlass::Status::kSuccess) return 3;
  if (conv.run(static_cast<cudaStream_t>(stream)) != cutlass::Status::kSuccess) return 4;
  return 0;
}

extern "C" int pipeline_stages() { return CollectiveMainloop::DispatchPolicy::Stages; }

// libtorch's oneDNN linear over a weight reordered once into oneDNN's own blocked layout
// (`mkldnn::_reorder_linear_weight` and `mkldnn::_linear_pointwise`, what PyTorch's compiler
// runs for a frozen f32 linear on the CPU) for promptd's f32 serving passes. The plain
// `mkldnn_linear` reorders the weight on every call; at a decode step's few rows that reorder
// is most of the call. The ops are reached through the dispatcher because libtorch exposes them
// to C++ only as registered operators. Every entry point catches C++ exceptions and returns the
// message instead (freed by promptd_shim_free_error).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>

#include <string>
#include <vector>

#include "shim.h"

using promptd_shim::copy_message;
using promptd_shim::op;

extern "C" {

// `weight` [out, in] (f32, CPU) reordered into oneDNN's layout for its linear: an opaque
// oneDNN tensor that only promptd_onednn_linear reads.
at::Tensor* promptd_onednn_pack(const at::Tensor* weight, char** error) {
  try {
    at::NoGradGuard no_grad;
    static const c10::OperatorHandle reorder = op("mkldnn::_reorder_linear_weight");
    at::Tensor w = weight->detach().contiguous();
    std::vector<c10::IValue> stack{w, c10::IValue()};
    reorder.callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

// `x @ W.T` for f32 `x` [rows, in] (dense, contiguous) through the reordered weight: dense f32 out.
at::Tensor* promptd_onednn_linear(const at::Tensor* x, const at::Tensor* packed, char** error) {
  try {
    at::NoGradGuard no_grad;
    static const c10::OperatorHandle linear = op("mkldnn::_linear_pointwise");
    std::vector<c10::IValue> stack{*x,
                                   *packed,
                                   c10::IValue(),
                                   std::string("none"),
                                   c10::List<std::optional<at::Scalar>>(),
                                   c10::IValue()};
    linear.callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}
}

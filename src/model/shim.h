// Shared by promptd's C++ shims over libtorch operators that tch does not expose (int8.cpp,
// onednn.cpp): their error messages (malloc'd, freed by promptd_shim_free_error in int8.cpp)
// and operator lookup through libtorch's dispatcher.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <cstring>

namespace promptd_shim {
// A malloc'd copy of `what` for the Rust side, which frees it with promptd_shim_free_error.
inline char* copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, what, n + 1);
  return out;
}

// A registered operator by its schema name, e.g. "quantized::linear_dynamic".
inline c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}
}  // namespace promptd_shim

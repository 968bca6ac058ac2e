// XXH3 built for AVX2 (see xxh3.h). CMake compiles this file alone with
// -mavx2 and defines WARREN_XXH3_AVX2, on x86-64 only; Xxh3WithSeed calls it
// only where the CPU has AVX2. So nothing here may be shared with other
// files: xxHash's functions are static (XXH_INLINE_ALL), and no header with
// inline C++ functions is included, whose AVX2 copies the linker could pick
// for the whole program.

#if defined(WARREN_XXH3_AVX2)

#ifndef __AVX2__
#error "xxh3_avx2.cc must be compiled with -mavx2"
#endif

#include <stddef.h>
#include <stdint.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace warren::internal {

uint64_t Xxh3WithSeedAvx2Code(const void* data, size_t size, uint64_t seed) {
  return XXH3_64bits_withSeed(data, size, seed);
}

}  // namespace warren::internal

#endif  // WARREN_XXH3_AVX2

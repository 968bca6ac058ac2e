#include "xxh3.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace warren::internal {

#if defined(WARREN_XXH3_AVX2)
// Defined in xxh3_avx2.cc, the one file compiled with -mavx2.
uint64_t Xxh3WithSeedAvx2Code(const void* data, size_t size, uint64_t seed);
#endif

uint64_t Xxh3WithSeedBaseline(const void* data, size_t size, uint64_t seed) {
  return XXH3_64bits_withSeed(data, size, seed);
}

Xxh3Function Xxh3WithSeedAvx2() {
#if defined(WARREN_XXH3_AVX2)
  // libgcc and compiler-rt also check that the OS saves the AVX registers.
  if (__builtin_cpu_supports("avx2")) return &Xxh3WithSeedAvx2Code;
#endif
  return nullptr;
}

uint64_t Xxh3WithSeed(const void* data, size_t size, uint64_t seed) {
  static const Xxh3Function chosen = [] {
    const Xxh3Function avx2 = Xxh3WithSeedAvx2();
    return avx2 != nullptr ? avx2 : &Xxh3WithSeedBaseline;
  }();
  return chosen(data, size, seed);
}

}  // namespace warren::internal

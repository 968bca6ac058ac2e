// XXH3 (64 bits, seeded), the hash behind the log's record checksums,
// compiled for the target's baseline and, on x86-64, a second time for
// AVX2, which hashes a 1 KiB record about twice as fast as the baseline's
// SSE2. Xxh3WithSeed runs the AVX2 code where the CPU has it (asked once
// per process) and the baseline code elsewhere; both give the same hash,
// XXH3_64bits_withSeed's.
//
//   const uint64_t h = Xxh3WithSeed(payload.data(), payload.size(), seed);
//
// xxHash is used header-only (XXH_INLINE_ALL), so libwarren has no link
// dependency on libxxhash: only its header is needed to build.

#ifndef WARREN_SRC_XXH3_H_
#define WARREN_SRC_XXH3_H_

#include <cstddef>
#include <cstdint>

namespace warren::internal {

using Xxh3Function = uint64_t (*)(const void* data, size_t size, uint64_t seed);

// XXH3_64bits_withSeed(data, size, seed), with the fastest code this CPU
// runs. A seed of 0 gives XXH3_64bits(data, size).
uint64_t Xxh3WithSeed(const void* data, size_t size, uint64_t seed);

// The variants, for tests: the baseline build, and the AVX2 build (null
// where warren was built without it or the CPU lacks AVX2).
uint64_t Xxh3WithSeedBaseline(const void* data, size_t size, uint64_t seed);
Xxh3Function Xxh3WithSeedAvx2();

}  // namespace warren::internal

#endif  // WARREN_SRC_XXH3_H_

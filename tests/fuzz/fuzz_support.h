#pragma once
// What the split-independence fuzz targets share: a check that aborts (libFuzzer
// reports it with the input) and the chunker that cuts an input into the pieces a
// parser is fed, from a seed byte (0 = the whole input at once).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "check failed: %s (line %d)\n", #cond, __LINE__); \
      std::abort();                                                          \
    }                                                                        \
  } while (0)

namespace mailgate::fuzz {

// Mostly 1..5-byte pieces, one in eight up to 200 bytes (a linear congruential
// sequence: the same seed cuts the same input the same way).
struct Chunker {
  uint32_t state;
  size_t next(size_t left) {
    if (state == 0) return left;  // whole
    state = state * 1103515245u + 12345u;
    const uint32_t r = (state >> 16) & 0x7fff;
    const size_t n = (r % 8 == 0) ? (r % 200) + 1 : (r % 5) + 1;
    return n < left ? n : left;
  }
};

}  // namespace mailgate::fuzz

// A deterministic stand-in for libFuzzer's driver, linked with a fuzz target in the default
// (g++) build so that CI exercises every target: it runs each seed file given on the command
// line, then a fixed number of seeded mutations of them (bit flips, interesting bytes, cuts,
// duplications, splices). Same seed, same inputs, every run. Real fuzzing: -DQ3VL_FUZZ=ON.
//
//   fuzz_replay [--iterations N] [--seed S] FILE_OR_DIR...
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using Bytes = std::vector<uint8_t>;

void Run(const Bytes& input) { LLVMFuzzerTestOneInput(input.data(), input.size()); }

// One random edit of `b`; `other` is a second seed for splicing.
void Mutate(std::mt19937_64& rng, const Bytes& other, Bytes& b) {
  static constexpr uint8_t kInteresting[] = {0, 1, 0x7f, 0x80, 0xff, '"', '{', '}', '[', ']',
                                             ',', ':', '-', '9', 'e', '.', ' ', '\\'};
  auto pick = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  switch (rng() % 7) {
    case 0:  // flip one bit
      if (!b.empty()) b[pick(b.size())] ^= static_cast<uint8_t>(1u << (rng() % 8));
      break;
    case 1:  // set an interesting byte
      if (!b.empty()) b[pick(b.size())] = kInteresting[pick(sizeof(kInteresting))];
      break;
    case 2: {  // erase a range
      const size_t at = pick(b.size() + 1), n = std::min(b.size() - at, pick(16) + 1);
      b.erase(b.begin() + at, b.begin() + at + n);
      break;
    }
    case 3: {  // duplicate a range in place
      if (b.empty()) break;
      const size_t at = pick(b.size()), n = std::min(b.size() - at, pick(32) + 1);
      const Bytes piece(b.begin() + at, b.begin() + at + n);
      b.insert(b.begin() + pick(b.size() + 1), piece.begin(), piece.end());
      break;
    }
    case 4:  // truncate
      b.resize(pick(b.size() + 1));
      break;
    case 5: {  // splice a range of the other seed
      if (other.empty()) break;
      const size_t at = pick(other.size()), n = std::min(other.size() - at, pick(64) + 1);
      b.insert(b.begin() + pick(b.size() + 1), other.begin() + at, other.begin() + at + n);
      break;
    }
    default: {  // overwrite a little-endian integer (header lengths, offsets)
      if (b.size() < 8) break;
      const size_t at = pick(b.size() - 7);
      const uint64_t v = (rng() % 2) ? rng() : rng() % 4096;
      for (int i = 0; i < 8; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = 20000;
  uint64_t seed = 1;
  std::vector<Bytes> seeds;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--iterations" && i + 1 < argc) {
      iterations = std::strtol(argv[++i], nullptr, 10);
      continue;
    }
    if (arg == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
      continue;
    }
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(arg)) {
      for (const auto& e : std::filesystem::directory_iterator(arg)) files.push_back(e.path());
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(arg);
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      if (!in) {
        std::fprintf(stderr, "fuzz_replay: cannot read %s\n", f.c_str());
        return 2;
      }
      seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
  }
  if (seeds.empty()) {
    std::fprintf(stderr, "usage: fuzz_replay [--iterations N] [--seed S] FILE_OR_DIR...\n");
    return 2;
  }
  for (const Bytes& s : seeds) Run(s);
  std::mt19937_64 rng(seed);
  for (long it = 0; it < iterations; ++it) {
    Bytes b = seeds[rng() % seeds.size()];
    const Bytes& other = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) Mutate(rng, other, b);
    Run(b);
  }
  std::printf("fuzz_replay: %zu seeds + %ld mutations, no failure\n", seeds.size(), iterations);
  return 0;
}

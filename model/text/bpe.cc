#include "model/text/bpe.h"

#include <algorithm>
#include <queue>

#include "absl/hash/hash.h"

namespace q3vl::model {
namespace {

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// One symbol of the word being merged; symbols form a doubly linked list over the bytes.
struct Symbol {
  int32_t id;    // -1 once merged into its left neighbour
  int32_t prev;  // index of the previous live symbol, -1 at the start
  int32_t next;  // index of the next live symbol, -1 at the end
};

// A possible merge of the symbols at `pos` and its right neighbour.
struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t left;
  int32_t right;
  int32_t merged;
};

// Min-heap order: lowest rank first, then leftmost.
struct LaterCandidate {
  bool operator()(const Candidate& a, const Candidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  }
};

}  // namespace

BytePairEncoder::BytePairEncoder(const std::array<int32_t, 256>& byte_ids, const std::vector<Merge>& merges)
    : byte_ids_(byte_ids) {
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Merge& m = merges[rank];
    merges_[PairKey(m.left, m.right)] = {static_cast<int32_t>(rank), m.merged};
  }
}

void BytePairEncoder::Encode(absl::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  if (piece.size() == 1) {
    ids->push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (piece.size() > kMaxCachedPieceBytes) {
    MergePiece(piece, ids);
    return;
  }
  const size_t hash = absl::Hash<absl::string_view>{}(piece);
  Shard& shard = shards_[(hash >> 40) % kNumShards];
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    const auto it = shard.pieces.find(piece);
    if (it != shard.pieces.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  MergePiece(piece, ids);
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.pieces.size() >= kMaxEntriesPerShard) shard.pieces.clear();
  shard.pieces.emplace(std::string(piece), std::vector<int32_t>(ids->begin() + first, ids->end()));
}

void BytePairEncoder::MergePiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  const int32_t n = static_cast<int32_t>(piece.size());
  std::vector<Symbol> symbols(n);
  for (int32_t i = 0; i < n; ++i) {
    symbols[i] = {byte_ids_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1};
  }
  std::vector<Candidate> heap_storage;
  heap_storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, LaterCandidate> heap(LaterCandidate{},
                                                                              std::move(heap_storage));
  auto push_pair = [&](int32_t pos) {
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    const auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
    if (it == merges_.end()) return;
    heap.push({it->second.first, pos, symbols[pos].id, symbols[next].id, it->second.second});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);

  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    // Skip stale candidates: either side has since been merged into something else.
    if (left.id != top.left || left.next < 0 || symbols[left.next].id != top.right) continue;
    Symbol& right = symbols[left.next];
    left.id = top.merged;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    right.id = -1;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids->push_back(symbols[i].id);
}

}  // namespace q3vl::model

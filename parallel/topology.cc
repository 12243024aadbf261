#include "parallel/topology.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"

namespace q3vl::parallel {
namespace {

constexpr int kMaxAxis = 1 << 16;       // any single size
constexpr int64_t kMaxWorld = 1 << 20;  // ranks in one job

constexpr std::array<absl::string_view, 5> kKeys = {"vision", "pp", "tp", "ep", "dp"};

int* Field(ParallelConfig& config, absl::string_view key) {
  if (key == "vision") return &config.vision;
  if (key == "pp") return &config.pp;
  if (key == "tp") return &config.tp;
  if (key == "ep") return &config.ep;
  if (key == "dp") return &config.dp;
  return nullptr;
}

// A group key: up to three coordinates that every member shares.
using GroupKey = std::array<int, 3>;

// The key of the `name` group holding `c`, nullopt when `c` is in none; NotFound for a name
// that is not a group kind.
absl::StatusOr<std::optional<GroupKey>> KeyOf(absl::string_view name, const RankCoords& c) {
  const bool decoder = c.role == RankRole::kDecoder;
  const std::optional<GroupKey> none;
  if (name == "world") return std::optional<GroupKey>(GroupKey{0, 0, 0});
  if (name == "replica") return std::optional<GroupKey>(GroupKey{c.replica, 0, 0});
  if (name == "dp") return std::optional<GroupKey>(GroupKey{c.local_rank, 0, 0});
  if (name == "vision") {
    return decoder ? none : std::optional<GroupKey>(GroupKey{c.replica, 0, 0});
  }
  if (name == "vision_bcast") {
    const bool member = decoder ? c.stage == 0 : c.vision_rank == 0;
    return member ? std::optional<GroupKey>(GroupKey{c.replica, 0, 0}) : none;
  }
  if (name == "stage" || name == "tp" || name == "ep" || name == "etp" || name == "pp") {
    if (!decoder) return none;
    if (name == "stage") return std::optional<GroupKey>(GroupKey{c.replica, c.stage, 0});
    if (name == "tp") return std::optional<GroupKey>(GroupKey{c.replica, c.stage, c.attn_dp_rank});
    if (name == "ep") return std::optional<GroupKey>(GroupKey{c.replica, c.stage, c.etp_rank});
    if (name == "etp") return std::optional<GroupKey>(GroupKey{c.replica, c.stage, c.ep_rank});
    return std::optional<GroupKey>(GroupKey{c.replica, c.stage_rank, 0});  // pp
  }
  return absl::NotFoundError(absl::StrCat(
      "no rank group named '", name, "'; groups: ", absl::StrJoin(Topology::GroupNames(), ", ")));
}

}  // namespace

absl::StatusOr<ParallelConfig> ParallelConfig::FromString(absl::string_view mesh) {
  ParallelConfig config;
  std::map<std::string, bool> seen;
  for (absl::string_view item : absl::StrSplit(mesh, ',', absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    const std::vector<absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    const std::string key = absl::AsciiStrToLower(absl::StripAsciiWhitespace(kv[0]));
    int* field = Field(config, key);
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("mesh '", mesh, "': unknown size '", key,
                                                     "' (expected ", absl::StrJoin(kKeys, ", "),
                                                     ", as in vision=1,pp=1,tp=8,ep=8)"));
    }
    if (seen[key]) {
      return absl::InvalidArgumentError(absl::StrCat("mesh '", mesh, "': '", key, "' given twice"));
    }
    seen[key] = true;
    int value = 0;
    if (kv.size() != 2 || !absl::SimpleAtoi(absl::StripAsciiWhitespace(kv[1]), &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("mesh '", mesh, "': '", item, "' is not key=integer (e.g. tp=4)"));
    }
    *field = value;
  }
  Q3VL_RETURN_IF_ERROR(Annotate(config.Validate(), absl::StrCat("mesh '", mesh, "'")));
  return config;
}

absl::Status ParallelConfig::Validate() const {
  const std::array<std::pair<absl::string_view, int>, 5> sizes = {
      {{"vision", vision}, {"pp", pp}, {"tp", tp}, {"ep", ep}, {"dp", dp}}};
  for (const auto& [key, value] : sizes) {
    const int min = key == "vision" ? 0 : 1;
    if (value < min || value > kMaxAxis) {
      return absl::InvalidArgumentError(absl::StrCat(key, "=", value, " is out of range (", key,
                                                     " must be in [", min, ", ", kMaxAxis, "])"));
    }
  }
  const int small = std::min(tp, ep), large = std::max(tp, ep);
  if (large % small != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tp=", tp, " and ep=", ep,
                     ": the smaller of tp and ep must divide the larger (a stage has ",
                     "max(tp, ep) ranks; e.g. tp=", small, ",ep=", small, " or tp=", small,
                     ",ep=", small * (large / small + 1), ")"));
  }
  const int64_t world = int64_t{dp} * (vision + int64_t{pp} * large);
  if (world > kMaxWorld) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToString(), " needs ", world, " ranks (limit ", kMaxWorld, ")"));
  }
  return absl::OkStatus();
}

std::string ParallelConfig::ToString() const {
  return absl::StrCat("vision=", vision, ",pp=", pp, ",tp=", tp, ",ep=", ep, ",dp=", dp);
}

absl::StatusOr<Topology> Topology::Create(const ParallelConfig& config, int world_size, int rank) {
  Q3VL_RETURN_IF_ERROR(config.Validate());
  if (world_size != config.world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("mesh ", config.ToString(), " needs ", config.world_size(),
                     " ranks (dp=", config.dp, " x (vision=", config.vision, " + pp=", config.pp,
                     " x max(tp, ep)=", config.stage_size(), ")) but the job has ", world_size,
                     "; start it with mpirun -np ", config.world_size(), " or change --mesh"));
  }
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside the world of ", world_size, " ranks"));
  }
  return Topology(config, rank);
}

Topology::Topology(const ParallelConfig& config, int rank) : config_(config) {
  coords_ = CoordsOf(rank);
}

RankCoords Topology::CoordsOf(int world_rank) const {
  const int replica_size = config_.replica_size();
  const int stage_size = config_.stage_size();
  const int x = config_.expert_tp();
  RankCoords c;
  c.rank = world_rank;
  c.replica = world_rank / replica_size;
  c.local_rank = world_rank % replica_size;
  if (c.local_rank < config_.vision) {
    c.role = RankRole::kVision;
    c.vision_rank = c.local_rank;
    return c;
  }
  c.role = RankRole::kDecoder;
  const int decoder_rank = c.local_rank - config_.vision;
  c.stage = decoder_rank / stage_size;
  c.stage_rank = decoder_rank % stage_size;
  c.tp_rank = c.stage_rank % config_.tp;
  c.attn_dp_rank = c.stage_rank / config_.tp;
  c.etp_rank = c.stage_rank % x;
  c.ep_rank = c.stage_rank / x;
  return c;
}

int Topology::ReplicaLeader() const { return DecoderRank(0, 0); }

int Topology::DecoderRank(int stage, int stage_rank) const {
  return coords_.replica * config_.replica_size() + config_.vision + stage * config_.stage_size() +
         stage_rank;
}

absl::Span<const absl::string_view> Topology::GroupNames() {
  static constexpr std::array<absl::string_view, 10> kNames = {
      "world", "replica", "vision", "stage", "tp", "ep", "etp", "pp", "dp", "vision_bcast"};
  return kNames;
}

absl::StatusOr<std::vector<std::vector<int>>> Topology::Groups(absl::string_view name) const {
  std::map<GroupKey, size_t> index;
  std::vector<std::vector<int>> groups;
  for (int r = 0; r < world_size(); ++r) {
    Q3VL_ASSIGN_OR_RETURN(const std::optional<GroupKey> key, KeyOf(name, CoordsOf(r)));
    if (!key) continue;
    auto [it, inserted] = index.emplace(*key, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(r);
  }
  return groups;
}

absl::StatusOr<std::vector<int>> Topology::Group(absl::string_view name) const {
  Q3VL_ASSIGN_OR_RETURN(const int i, GroupIndex(name));
  if (i < 0) return std::vector<int>{};
  Q3VL_ASSIGN_OR_RETURN(std::vector<std::vector<int>> groups, Groups(name));
  return std::move(groups[i]);
}

absl::StatusOr<int> Topology::GroupIndex(absl::string_view name) const {
  Q3VL_ASSIGN_OR_RETURN(const std::vector<std::vector<int>> groups, Groups(name));
  for (size_t i = 0; i < groups.size(); ++i) {
    if (std::binary_search(groups[i].begin(), groups[i].end(), rank())) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace q3vl::parallel

// Topology: the named rank grid of one job, built once from a ParallelConfig (the --mesh
// string), the world size and this rank. It gives rank coordinates and hands out groups by
// name as lists of world ranks; communicators for them come from Split (comm_groups.h).
// Immutable after construction, cheap to copy, thread-safe. No globals: pass it explicitly.
//
// Rank layout. A job holds D replicas (dp) of R = V + P*S ranks, S = max(T, E):
//   world rank      = replica * R + local rank            (replica-major: dp outermost)
//   local [0, V)    : vision ranks (the vision tower, data-parallel over images/frame groups)
//   local V + p*S + s : decoder stage p (pp), stage rank s in [0, S)
// A stage is one set of S ranks seen two ways; expert parallelism is carved out of the same
// ranks as attention (as in Megatron-Core / vLLM), never a separate axis of the world:
//   attention: s = attn_dp_rank * T + tp_rank   (TP groups: T consecutive ranks)
//   MoE:       s = ep_rank * X + etp_rank,  X = S / E (expert groups: X consecutive ranks that
//              split each expert's intermediate dim; an EP group: E ranks, stride X)
#ifndef Q3VL_PARALLEL_TOPOLOGY_H_
#define Q3VL_PARALLEL_TOPOLOGY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace q3vl::parallel {

// The mesh `vision=V,pp=P,tp=T,ep=E[,dp=D]`. Omitted sizes are 1, except vision: omitted means
// 0 (the vision tower runs on stage 0's ranks), so `tp=1` is a single rank.
struct ParallelConfig {
  int vision = 0;  // V >= 0: dedicated vision ranks per replica
  int pp = 1;      // P: decoder pipeline stages
  int tp = 1;      // T: attention tensor-parallel size
  int ep = 1;      // E: expert-parallel size (expert groups per stage)
  int dp = 1;      // D: replicas in the job

  // Parses "vision=1,pp=2,tp=4,ep=4,dp=1" (any order, spaces allowed; "" = one rank) and
  // validates it.
  static absl::StatusOr<ParallelConfig> FromString(absl::string_view mesh);
  // Sizes in range; the smaller of tp and ep divides the larger.
  absl::Status Validate() const;
  std::string ToString() const;  // canonical: "vision=V,pp=P,tp=T,ep=E,dp=D"

  int stage_size() const { return tp > ep ? tp : ep; }             // S
  int expert_tp() const { return stage_size() / ep; }              // X: ranks per expert group
  int attn_dp() const { return stage_size() / tp; }                // S / T attention groups
  int replica_size() const { return vision + pp * stage_size(); }  // R
  int world_size() const { return dp * replica_size(); }
};

enum class RankRole : unsigned char { kVision, kDecoder };

// Where one world rank sits in the grid. Fields of the other role are -1.
struct RankCoords {
  int rank = 0;        // world rank
  int replica = 0;     // dp rank
  int local_rank = 0;  // rank inside the replica
  RankRole role = RankRole::kDecoder;
  int vision_rank = -1;   // [0, V)
  int stage = -1;         // pp rank, [0, P)
  int stage_rank = -1;    // s, [0, S)
  int tp_rank = -1;       // s % T
  int attn_dp_rank = -1;  // s / T
  int ep_rank = -1;       // s / X
  int etp_rank = -1;      // s % X
};

class Topology {
 public:
  // REQUIRES: config validated (checked again). Errors name the mesh, the world size it needs
  // and the world size it got.
  static absl::StatusOr<Topology> Create(const ParallelConfig& config, int world_size, int rank);

  const ParallelConfig& config() const { return config_; }
  int world_size() const { return config_.world_size(); }
  int rank() const { return coords_.rank; }
  const RankCoords& coords() const { return coords_; }
  RankCoords CoordsOf(int world_rank) const;
  bool is_vision() const { return coords_.role == RankRole::kVision; }
  // World rank of this replica's leader (stage 0, stage rank 0): it renders, tokenizes and
  // preprocesses requests.
  int ReplicaLeader() const;
  // World rank of the rank at `stage`, stage rank `stage_rank` in this replica.
  int DecoderRank(int stage, int stage_rank) const;

  // Group kinds, in the order comm_groups.h creates them:
  //   "world"        every rank of the job
  //   "replica"      the R ranks of one replica
  //   "vision"       the V vision ranks of one replica
  //   "stage"        the S ranks of one decoder stage
  //   "tp"           attention tensor-parallel group: T consecutive stage ranks
  //   "ep"           expert-parallel group: E ranks of a stage with the same etp_rank
  //   "etp"          expert tensor-parallel group: X consecutive stage ranks (one expert group)
  //   "pp"           the P ranks with the same stage rank, one per stage (pipeline send/recv)
  //   "dp"           the D ranks with the same local rank, one per replica
  //   "vision_bcast" the vision leader (vision rank 0; absent when V = 0) then every rank of
  //                  stage 0: the embeddings and DeepStack features are broadcast from rank 0
  static absl::Span<const absl::string_view> GroupNames();

  // Every group of kind `name`: disjoint lists of world ranks, ascending (the position in a
  // list is the rank in that group's communicator), ordered by first rank. NotFound for an
  // unknown name.
  absl::StatusOr<std::vector<std::vector<int>>> Groups(absl::string_view name) const;
  // The group of kind `name` that holds this rank; empty when it is in none (e.g. "tp" on a
  // vision rank).
  absl::StatusOr<std::vector<int>> Group(absl::string_view name) const;
  // Index of that group in Groups(name), or -1 (the color for Communicator::Split).
  absl::StatusOr<int> GroupIndex(absl::string_view name) const;

 private:
  Topology(const ParallelConfig& config, int rank);

  ParallelConfig config_;
  RankCoords coords_;
};

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_TOPOLOGY_H_

// CommGroups: the communicators of every named group of a Topology for this rank, made once
// at start-up by splitting the world host communicator. Each group pairs a host communicator
// (control plane) with a device one (data plane; the same object on CPU). Owns them; hand
// groups to layers by reference. Built and used by one thread at a time.
#ifndef Q3VL_PARALLEL_COMM_GROUPS_H_
#define Q3VL_PARALLEL_COMM_GROUPS_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "parallel/communicator.h"
#include "parallel/topology.h"

namespace q3vl::parallel {

struct CommGroup {
  std::vector<int> world_ranks;          // empty: this rank is in no group of this kind
  std::shared_ptr<Communicator> host;    // null when world_ranks is empty
  std::shared_ptr<Communicator> device;  // data plane; == host for CPU meshes
  int size() const { return static_cast<int>(world_ranks.size()); }
  bool member() const { return host != nullptr; }
};

// Makes the data-plane communicator of a group from its host communicator (collective over
// the group). Null factory: the host communicator is the data plane.
using DataPlaneFactory =
    std::function<absl::StatusOr<std::shared_ptr<Communicator>>(std::shared_ptr<Communicator>)>;

class CommGroups {
 public:
  // Collective over `world` (size and rank must match `topology`): one Split per group kind
  // of Topology::GroupNames(), in that order, rank in group = position in its rank list.
  static absl::StatusOr<CommGroups> Create(const Topology& topology,
                                           std::shared_ptr<Communicator> world,
                                           const DataPlaneFactory& data_plane = nullptr);

  // The group of kind `name` holding this rank. REQUIRES: `name` in Topology::GroupNames().
  const CommGroup& group(absl::string_view name) const;

 private:
  std::map<std::string, CommGroup, std::less<>> groups_;
};

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_COMM_GROUPS_H_

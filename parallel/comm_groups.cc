#include "parallel/comm_groups.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status_macros.h"

namespace q3vl::parallel {

absl::StatusOr<CommGroups> CommGroups::Create(const Topology& topology,
                                              std::shared_ptr<Communicator> world,
                                              const DataPlaneFactory& data_plane) {
  if (world->size() != topology.world_size() || world->rank() != topology.rank()) {
    return absl::InvalidArgumentError(absl::StrCat("world communicator is rank ", world->rank(),
                                                   " of ", world->size(), " but the topology (",
                                                   topology.config().ToString(), ") is rank ",
                                                   topology.rank(), " of ", topology.world_size()));
  }
  CommGroups groups;
  for (absl::string_view name : Topology::GroupNames()) {
    Q3VL_ASSIGN_OR_RETURN(const int color, topology.GroupIndex(name));
    CommGroup group;
    Q3VL_ASSIGN_OR_RETURN(group.world_ranks, topology.Group(name));
    const int key = color == kNoColor
                        ? 0
                        : static_cast<int>(std::find(group.world_ranks.begin(),
                                                     group.world_ranks.end(), topology.rank()) -
                                           group.world_ranks.begin());
    auto split = world->Split(color, key);
    if (!split.ok()) return Annotate(split.status(), absl::StrCat("creating group '", name, "'"));
    group.host = std::move(split).value();
    if (group.host != nullptr) {
      Q3VL_CHECK_EQ(group.host->size(), group.size()) << name;
      if (data_plane) {
        auto device = data_plane(group.host);
        if (!device.ok()) {
          return Annotate(device.status(), absl::StrCat("data plane of group '", name, "'"));
        }
        group.device = std::move(device).value();
      } else {
        group.device = group.host;
      }
    }
    groups.groups_.emplace(std::string(name), std::move(group));
  }
  return groups;
}

const CommGroup& CommGroups::group(absl::string_view name) const {
  auto it = groups_.find(name);
  Q3VL_CHECK(it != groups_.end()) << "no rank group named '" << name << "'";
  return it->second;
}

}  // namespace q3vl::parallel

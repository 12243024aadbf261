// Time for the engine's timings and metrics, injected so that tests control it (no sleeps).
// Now() is called from the engine loop and from submitting threads: implementations are
// thread-safe.
#ifndef Q3VL_CLUSTER_ENGINE_CLOCK_H_
#define Q3VL_CLUSTER_ENGINE_CLOCK_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace q3vl::cluster {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace q3vl::cluster

#endif  // Q3VL_CLUSTER_ENGINE_CLOCK_H_

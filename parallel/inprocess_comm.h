// The in-process communicator: N ranks as N threads of one process, meeting at a shared
// rendezvous object (one per group). For unit tests of parallel code without mpirun. Each
// returned communicator belongs to one rank and is used by that rank's thread; the shared
// state is internally synchronised and lives as long as any member communicator.
// Send is buffered (never blocks); waits time out after CommOptions::timeout.
#ifndef Q3VL_PARALLEL_INPROCESS_COMM_H_
#define Q3VL_PARALLEL_INPROCESS_COMM_H_

#include <functional>
#include <memory>
#include <vector>

#include "parallel/communicator.h"

namespace q3vl::parallel {

// The communicators of a new world of `size` ranks; element r is rank r. REQUIRES: size >= 1.
std::vector<std::unique_ptr<Communicator>> CreateInProcessWorld(int size,
                                                                const CommOptions& options = {});

// Runs `body(world)` for every rank of a new in-process world, one thread per rank (rank 0 on
// a new thread too), and returns when all have finished.
void RunInProcessRanks(int size, const CommOptions& options,
                       const std::function<void(Communicator& world)>& body);

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_INPROCESS_COMM_H_

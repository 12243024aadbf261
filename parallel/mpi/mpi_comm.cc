#include "parallel/mpi/mpi_comm.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <functional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "parallel/host_reduce.h"

namespace q3vl::parallel {
namespace {

// Busy polls before a wait starts yielding the core, and the wait after which it sleeps
// between polls (ranks are often oversubscribed on CPU machines).
constexpr int kSpinPolls = 256;
constexpr absl::Duration kYieldFor = absl::Milliseconds(2);
constexpr absl::Duration kSleep = absl::Microseconds(50);

std::string MpiErrorString(int err) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(err, text, &length) != MPI_SUCCESS) return absl::StrCat("MPI error ", err);
  return std::string(text, length);
}

absl::StatusOr<int> IntCount(int64_t n, absl::string_view op) {
  if (n > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", n, " items exceed MPI's int count"));
  }
  return static_cast<int>(n);
}

const char* Ptr(const Tensor& t) { return static_cast<const char*>(t.raw_data()); }
char* MutablePtr(const Tensor& t) { return static_cast<char*>(t.raw_data()); }

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int size, const CommOptions& options)
      : Communicator(rank, size), comm_(comm), options_(options) {}

  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    // A broken communicator may have a pending request: leak it rather than block.
    if (!finalized && broken_.ok() && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  // Wraps `comm` (owned from here on) after making its errors return codes.
  static absl::StatusOr<std::unique_ptr<Communicator>> Wrap(MPI_Comm comm,
                                                            const CommOptions& options) {
    int rank = 0, size = 0;
    if (int err = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN); err != MPI_SUCCESS) {
      return absl::InternalError(MpiErrorString(err));
    }
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    return std::unique_ptr<Communicator>(new MpiCommunicator(comm, rank, size, options));
  }

  absl::string_view backend_name() const override { return "mpi"; }
  Device device() const override { return Device::kCpu; }
  MPI_Comm handle() const { return comm_; }

 protected:
  absl::Status DoAllReduce(const CommBuffers& b) override {
    Q3VL_ASSIGN_OR_RETURN(const int n, IntCount(b.in.numel(), "AllReduce"));
    if (b.in.dtype() == DType::kF32) {
      const void* send = b.in.raw_data() == b.out.raw_data() ? MPI_IN_PLACE : b.in.raw_data();
      return Run("AllReduce", [&](MPI_Request* r) {
        return MPI_Iallreduce(send, b.out.raw_data(), n, MPI_FLOAT, MPI_SUM, comm_, r);
      });
    }
    float* acc = Scratch(n);  // bf16: sum in f32, round once
    std::fill(acc, acc + n, 0.0f);
    AccumulateF32(b.in.dtype(), b.in.raw_data(), acc, n);
    Q3VL_RETURN_IF_ERROR(Run("AllReduce", [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, acc, n, MPI_FLOAT, MPI_SUM, comm_, r);
    }));
    StoreFromF32(b.out.dtype(), acc, b.out.raw_data(), n);
    return absl::OkStatus();
  }

  absl::Status DoAllGather(const CommBuffers& b) override {
    Q3VL_ASSIGN_OR_RETURN(const int bytes, IntCount(b.in.size_bytes(), "AllGather"));
    return Run("AllGather", [&](MPI_Request* r) {
      return MPI_Iallgather(b.in.raw_data(), bytes, MPI_BYTE, b.out.raw_data(), bytes, MPI_BYTE,
                            comm_, r);
    });
  }

  absl::Status DoReduceScatter(const CommBuffers& b) override {
    Q3VL_ASSIGN_OR_RETURN(const int m, IntCount(b.out.numel(), "ReduceScatter"));
    Q3VL_RETURN_IF_ERROR(IntCount(b.in.numel(), "ReduceScatter").status());
    if (b.in.dtype() == DType::kF32) {
      return Run("ReduceScatter", [&](MPI_Request* r) {
        return MPI_Ireduce_scatter_block(b.in.raw_data(), b.out.raw_data(), m, MPI_FLOAT, MPI_SUM,
                                         comm_, r);
      });
    }
    float* in = Scratch(b.in.numel() + m);  // [in | out] in f32
    float* out = in + b.in.numel();
    std::fill(in, in + b.in.numel(), 0.0f);
    AccumulateF32(b.in.dtype(), b.in.raw_data(), in, b.in.numel());
    Q3VL_RETURN_IF_ERROR(Run("ReduceScatter", [&](MPI_Request* r) {
      return MPI_Ireduce_scatter_block(in, out, m, MPI_FLOAT, MPI_SUM, comm_, r);
    }));
    StoreFromF32(b.out.dtype(), out, b.out.raw_data(), m);
    return absl::OkStatus();
  }

  absl::Status DoAllToAll(const AllToAllParams& p) override {
    int64_t row_bytes = static_cast<int64_t>(DTypeSize(p.in.dtype()));
    for (int d = 1; d < p.in.rank(); ++d) row_bytes *= p.in.dim(d);
    if (row_bytes == 0) return Barrier();  // empty rows: nothing moves, but stay in step
    Q3VL_ASSIGN_OR_RETURN(const int row_count, IntCount(row_bytes, "AllToAll"));
    std::vector<int> send_counts(size()), send_displs(size()), recv_counts(size()),
        recv_displs(size());
    int64_t send_at = 0, recv_at = 0;
    for (int q = 0; q < size(); ++q) {
      Q3VL_ASSIGN_OR_RETURN(send_counts[q], IntCount(p.send_counts[q], "AllToAll"));
      Q3VL_ASSIGN_OR_RETURN(recv_counts[q], IntCount(p.recv_counts[q], "AllToAll"));
      Q3VL_ASSIGN_OR_RETURN(send_displs[q], IntCount(send_at, "AllToAll"));
      Q3VL_ASSIGN_OR_RETURN(recv_displs[q], IntCount(recv_at, "AllToAll"));
      send_at += p.send_counts[q];
      recv_at += p.recv_counts[q];
    }
    MPI_Datatype row;
    MPI_Type_contiguous(row_count, MPI_BYTE, &row);
    MPI_Type_commit(&row);
    absl::Status status = Run("AllToAll", [&](MPI_Request* r) {
      return MPI_Ialltoallv(p.in.raw_data(), send_counts.data(), send_displs.data(), row,
                            p.out.raw_data(), recv_counts.data(), recv_displs.data(), row, comm_,
                            r);
    });
    MPI_Type_free(&row);
    return status;
  }

  absl::Status DoBroadcast(const Tensor& data, int root) override {
    Q3VL_ASSIGN_OR_RETURN(const int bytes, IntCount(data.size_bytes(), "Broadcast"));
    return Run("Broadcast", [&](MPI_Request* r) {
      return MPI_Ibcast(data.raw_data(), bytes, MPI_BYTE, root, comm_, r);
    });
  }

  absl::Status DoSend(const Tensor& data, int peer) override {
    Q3VL_ASSIGN_OR_RETURN(const int bytes, IntCount(data.size_bytes(), "Send"));
    return Run("Send", [&](MPI_Request* r) {
      return MPI_Isend(Ptr(data), bytes, MPI_BYTE, peer, kTag, comm_, r);
    });
  }

  absl::Status DoRecv(const Tensor& data, int peer) override {
    Q3VL_ASSIGN_OR_RETURN(const int bytes, IntCount(data.size_bytes(), "Recv"));
    MPI_Status status;
    Q3VL_RETURN_IF_ERROR(Run(
        "Recv",
        [&](MPI_Request* r) {
          return MPI_Irecv(MutablePtr(data), bytes, MPI_BYTE, peer, kTag, comm_, r);
        },
        &status));
    int received = 0;
    MPI_Get_count(&status, MPI_BYTE, &received);
    if (received != bytes) {
      return absl::InvalidArgumentError(absl::StrCat("Recv: rank ", peer, " sent ", received,
                                                     " bytes, the tensor holds ", bytes));
    }
    return absl::OkStatus();
  }

  absl::Status DoBarrier() override {
    return Run("Barrier", [&](MPI_Request* r) { return MPI_Ibarrier(comm_, r); });
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override {
    // MPI_Comm_split blocks; first prove within the deadline that every rank has arrived.
    int mine[2] = {color, key};
    std::vector<int> all(2 * size());
    Q3VL_RETURN_IF_ERROR(Run("Split", [&](MPI_Request* r) {
      return MPI_Iallgather(mine, 2, MPI_INT, all.data(), 2, MPI_INT, comm_, r);
    }));
    MPI_Comm child = MPI_COMM_NULL;
    Q3VL_RETURN_IF_ERROR(Check(
        "Split", MPI_Comm_split(comm_, color == kNoColor ? MPI_UNDEFINED : color, key, &child)));
    if (child == MPI_COMM_NULL) return std::unique_ptr<Communicator>();
    return Wrap(child, options_);
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSubGroup(absl::Span<const int> ranks) override {
    // Collective over the members only, so it cannot be preceded by a world-wide liveness
    // check: it blocks while a member is missing (mpirun still ends the job if one dies).
    MPI_Group parent, members;
    MPI_Comm_group(comm_, &parent);
    MPI_Group_incl(parent, static_cast<int>(ranks.size()), ranks.data(), &members);
    const int tag = static_cast<int>(std::hash<std::string>()(absl::StrJoin(ranks, ",")) % 32000);
    MPI_Comm child = MPI_COMM_NULL;
    const int err = MPI_Comm_create_group(comm_, members, tag, &child);
    MPI_Group_free(&members);
    MPI_Group_free(&parent);
    Q3VL_RETURN_IF_ERROR(Check("SubGroup", err));
    return Wrap(child, options_);
  }

 private:
  static constexpr int kTag = 17;

  absl::Status Check(absl::string_view op, int err) {
    if (err == MPI_SUCCESS) return absl::OkStatus();
    return Broken(absl::UnavailableError(
        absl::StrCat(op, " on rank ", rank(), " of ", size(), ": ", MpiErrorString(err))));
  }

  absl::Status Broken(absl::Status status) {
    if (broken_.ok()) broken_ = status;
    return status;
  }

  // Starts a nonblocking operation and polls it to completion or to the deadline.
  absl::Status Run(absl::string_view op, const std::function<int(MPI_Request*)>& start,
                   MPI_Status* status = nullptr) {
    if (!broken_.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(op, ": communicator is broken by an earlier error: ", broken_.message()));
    }
    MPI_Request request = MPI_REQUEST_NULL;
    Q3VL_RETURN_IF_ERROR(Check(op, start(&request)));
    const absl::Time begin = absl::Now();
    const absl::Time deadline = begin + options_.timeout;
    for (int64_t polls = 0;; ++polls) {
      int done = 0;
      Q3VL_RETURN_IF_ERROR(
          Check(op, MPI_Test(&request, &done, status ? status : MPI_STATUS_IGNORE)));
      if (done) return absl::OkStatus();
      if (polls < kSpinPolls) continue;
      const absl::Time now = absl::Now();
      if (now > deadline) {
        return Broken(absl::DeadlineExceededError(
            absl::StrCat(op, " on rank ", rank(), " of ", size(), ": no completion after ",
                         absl::FormatDuration(options_.timeout), "; a peer is dead or stuck")));
      }
      if (now - begin < kYieldFor) {
        std::this_thread::yield();
      } else {
        absl::SleepFor(kSleep);
      }
    }
  }

  // f32 staging for bf16 reductions, kept across calls (no allocation per call).
  float* Scratch(int64_t n) {
    if (static_cast<int64_t>(scratch_.size()) < n) scratch_.resize(n);
    return scratch_.data();
  }

  MPI_Comm comm_;
  CommOptions options_;
  absl::Status broken_;
  std::vector<float> scratch_;
};

// Posts are MPI_Isend on a communicator of the mailbox's own (a duplicate, so no call of the
// parent's can match them); Poll is MPI_Improbe + MPI_Imrecv, whose completion is polled against
// the timeout like every other call here.
class MpiMailbox final : public Mailbox {
 public:
  MpiMailbox(MPI_Comm comm, int rank, int size, absl::Duration timeout)
      : Mailbox(rank, size), comm_(comm), timeout_(timeout) {}

  ~MpiMailbox() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    // Sends a dead peer never takes are left pending (and the communicator leaked), not waited on.
    if (broken_.ok() && Flush(absl::Seconds(5)).ok()) MPI_Comm_free(&comm_);
  }

  absl::Status Post(int peer, std::string bytes) override {
    Q3VL_RETURN_IF_ERROR(CheckPeer(peer));
    Q3VL_RETURN_IF_ERROR(broken_);
    Q3VL_ASSIGN_OR_RETURN(const int count, IntCount(static_cast<int64_t>(bytes.size()), "Mailbox::Post"));
    auto send = std::make_unique<Send>();
    send->bytes = std::move(bytes);
    Q3VL_RETURN_IF_ERROR(Check("Post", MPI_Isend(send->bytes.data(), count, MPI_BYTE, peer, kTag, comm_, &send->request)));
    sends_.push_back(std::move(send));
    return Reap();
  }

  absl::StatusOr<std::optional<MailMessage>> Poll() override {
    Q3VL_RETURN_IF_ERROR(broken_);
    Q3VL_RETURN_IF_ERROR(Reap());
    int flag = 0;
    MPI_Message message = MPI_MESSAGE_NULL;
    MPI_Status status;
    Q3VL_RETURN_IF_ERROR(Check("Poll", MPI_Improbe(MPI_ANY_SOURCE, kTag, comm_, &flag, &message, &status)));
    if (!flag) return std::optional<MailMessage>();
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    MailMessage out{.from = status.MPI_SOURCE, .bytes = std::string(count, '\0')};
    MPI_Request request = MPI_REQUEST_NULL;
    Q3VL_RETURN_IF_ERROR(Check("Poll", MPI_Imrecv(out.bytes.data(), count, MPI_BYTE, &message, &request)));
    const absl::Time deadline = absl::Now() + timeout_;
    for (int done = 0;;) {
      Q3VL_RETURN_IF_ERROR(Check("Poll", MPI_Test(&request, &done, MPI_STATUS_IGNORE)));
      if (done) return std::optional<MailMessage>(std::move(out));
      if (absl::Now() > deadline) {
        return Fail(absl::DeadlineExceededError(absl::StrCat("mailbox of rank ", rank(), ": a ", count,
                                                             "-byte message from rank ", out.from, " stalled")));
      }
      std::this_thread::yield();
    }
  }

  absl::Status Flush(absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      Q3VL_RETURN_IF_ERROR(Reap());
      if (sends_.empty()) return absl::OkStatus();
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("mailbox of rank ", rank(), ": ", sends_.size(),
                                                        " messages not taken by their peers after ",
                                                        absl::FormatDuration(timeout)));
      }
      absl::SleepFor(kSleep);
    }
  }

 private:
  static constexpr int kTag = 23;
  struct Send {
    std::string bytes;
    MPI_Request request = MPI_REQUEST_NULL;
  };

  absl::Status Fail(absl::Status status) {
    if (broken_.ok()) broken_ = status;
    return status;
  }
  absl::Status Check(absl::string_view op, int err) {
    if (err == MPI_SUCCESS) return absl::OkStatus();
    return Fail(absl::UnavailableError(absl::StrCat("mailbox ", op, " on rank ", rank(), ": ", MpiErrorString(err))));
  }
  // Frees the sends that completed.
  absl::Status Reap() {
    for (auto it = sends_.begin(); it != sends_.end();) {
      int done = 0;
      Q3VL_RETURN_IF_ERROR(Check("send", MPI_Test(&(*it)->request, &done, MPI_STATUS_IGNORE)));
      it = done ? sends_.erase(it) : std::next(it);
    }
    return absl::OkStatus();
  }

  MPI_Comm comm_;
  absl::Duration timeout_;
  absl::Status broken_;
  std::vector<std::unique_ptr<Send>> sends_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Mailbox>> CreateMpiMailbox(Communicator& comm, absl::Duration timeout) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&comm);
  if (mpi == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("a mailbox needs an MPI communicator, not ", comm.backend_name()));
  }
  MPI_Comm dup = MPI_COMM_NULL;
  if (int err = MPI_Comm_dup(mpi->handle(), &dup); err != MPI_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("MPI_Comm_dup: ", MpiErrorString(err)));
  }
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  return std::unique_ptr<Mailbox>(new MpiMailbox(dup, comm.rank(), comm.size(), timeout));
}

absl::StatusOr<std::unique_ptr<MpiRuntime>> MpiRuntime::Init(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return absl::FailedPreconditionError("MPI is already initialised");
  int provided = 0;
  if (int err = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided); err != MPI_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("MPI_Init_thread: ", MpiErrorString(err)));
  }
  if (provided < MPI_THREAD_SERIALIZED) {
    MPI_Finalize();
    return absl::UnavailableError("this MPI library lacks MPI_THREAD_SERIALIZED");
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return std::unique_ptr<MpiRuntime>(new MpiRuntime(rank, size));
}

MpiRuntime::~MpiRuntime() { MPI_Finalize(); }

void MpiRuntime::Abort(int exit_code) {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);  // MPI_Abort does not return; this is for the compiler
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiWorld(const CommOptions& options) {
  MPI_Comm world = MPI_COMM_NULL;
  if (int err = MPI_Comm_dup(MPI_COMM_WORLD, &world); err != MPI_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("MPI_Comm_dup: ", MpiErrorString(err)));
  }
  return MpiCommunicator::Wrap(world, options);
}

}  // namespace q3vl::parallel

// Conformance: the data-plane collectives (all-reduce, all-gather, reduce-scatter, uneven
// all-to-all, broadcast, send/recv, barrier) over dtypes and sizes 0, 1, 7, 1<<20.
#include <cmath>
#include <cstring>

#include "gtest/gtest.h"
#include "tests/parallel/communicator_conformance.h"
#include "tests/parallel/conformance_util.h"
#include "tests/test_util.h"

namespace q3vl::parallel::testing {
namespace {

TEST_P(CommConformanceTest, AllReduceSumsExactly) {
  RunRanks([](Communicator& world) {
    const int n_ranks = world.size(), r = world.rank();
    const double rank_sum = n_ranks * (n_ranks + 1) / 2.0;
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (int64_t n : TestSizes()) {
        for (bool in_place : {false, true}) {
          auto value = [](int64_t i) { return static_cast<double>(i % 13 - 6); };
          Tensor in = Filled(dtype, {n}, [&](int64_t i) { return (r + 1) * value(i); });
          Tensor out = in_place ? in : Tensor::Empty(dtype, {n});
          Q3VL_ASSERT_OK(world.AllReduce({.in = in, .out = out}));
          EXPECT_EQ(FirstMismatch(out, [&](int64_t i) { return rank_sum * value(i); }), -1)
              << "rank " << r << " " << DTypeName(dtype) << " n=" << n << " in_place=" << in_place;
        }
      }
    }
  });
}

TEST_P(CommConformanceTest, AllReduceBf16SumsInF32AndRoundsOnce) {
  RunRanks([](Communicator& world) {
    const int64_t n = 4096;
    auto value = [](int q, int64_t i) {
      return 1.0 + static_cast<double>((i + 37 * q) % 128) / 128;
    };
    Tensor in = Filled(DType::kBF16, {n}, [&](int64_t i) { return value(world.rank(), i); });
    Q3VL_ASSERT_OK(world.AllReduce({.in = in, .out = in}));
    auto expected = [&](int64_t i) {
      double sum = 0;  // exact: a few 8-bit mantissas
      for (int q = 0; q < world.size(); ++q) sum += value(q, i);
      return static_cast<double>(BF16ToF32(F32ToBF16(static_cast<float>(sum))));
    };
    EXPECT_EQ(FirstMismatch(in, expected), -1) << "rank " << world.rank();
  });
}

TEST_P(CommConformanceTest, AllReduceGivesIdenticalBitsOnEveryRank) {
  RunRanks([](Communicator& world) {
    const int64_t n = 100003;
    Tensor in = q3vl::testing::RandomTensor({n}, 1000 + world.rank());
    Tensor out = Tensor::Empty(DType::kF32, {n});
    Q3VL_ASSERT_OK(world.AllReduce({.in = in, .out = out}));
    Tensor all = Tensor::Empty(DType::kF32, {world.size(), n});
    Q3VL_ASSERT_OK(world.AllGather({.in = out, .out = all}));
    for (int q = 1; q < world.size(); ++q) {
      EXPECT_EQ(std::memcmp(all.Select(q).raw_data(), all.Select(0).raw_data(), n * 4), 0)
          << "rank " << q << " got different bits from rank 0";
    }
    Tensor expected = Tensor::Empty(DType::kF32, {n});
    for (int q = 0; q < world.size(); ++q) {
      Tensor x = q3vl::testing::RandomTensor({n}, 1000 + q);
      for (int64_t i = 0; i < n; ++i) expected.data<float>()[i] += x.data<float>()[i];
    }
    EXPECT_LE(q3vl::testing::MaxAbsDiff(out, expected), 1e-5f * world.size());
  });
}

TEST_P(CommConformanceTest, AllGatherConcatenatesInRankOrder) {
  RunRanks([](Communicator& world) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kI64}) {
      for (int64_t n : TestSizes()) {
        // Exact in bf16 too (< 256).
        auto value = [&](int q, int64_t i) { return static_cast<double>(q * 32 + i % 32); };
        Tensor in = Filled(dtype, {n}, [&](int64_t i) { return value(world.rank(), i); });
        Tensor out = Tensor::Empty(dtype, {world.size(), n});
        Q3VL_ASSERT_OK(world.AllGather({.in = in, .out = out}));
        EXPECT_EQ(FirstMismatch(out,
                                [&](int64_t j) {
                                  return value(j / std::max<int64_t>(n, 1),
                                               j % std::max<int64_t>(n, 1));
                                }),
                  -1)
            << "rank " << world.rank() << " " << DTypeName(dtype) << " n=" << n;
      }
    }
  });
}

TEST_P(CommConformanceTest, ReduceScatterSumsThisRanksSlice) {
  RunRanks([](Communicator& world) {
    const int n_ranks = world.size(), r = world.rank();
    const double rank_sum = n_ranks * (n_ranks + 1) / 2.0;
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (int64_t m : TestSizes()) {
        if (m == (1 << 20)) m = 1 << 18;  // the input is size x m
        auto value = [](int64_t j) { return static_cast<double>(j % 11 - 5); };
        Tensor in = Filled(dtype, {n_ranks * m}, [&](int64_t j) { return (r + 1) * value(j); });
        Tensor out = Tensor::Empty(dtype, {m});
        Q3VL_ASSERT_OK(world.ReduceScatter({.in = in, .out = out}));
        EXPECT_EQ(FirstMismatch(out, [&](int64_t i) { return rank_sum * value(r * m + i); }), -1)
            << "rank " << r << " " << DTypeName(dtype) << " m=" << m;
      }
    }
  });
}

// Rows rank `src` sends to rank `dst` under pattern `p`: uneven, with zeros.
int64_t Rows(int pattern, int src, int dst, int64_t scale) {
  if (pattern == 0) return (src + 2 * dst + 1) % 3 * scale;
  if (pattern == 1) return src == 0 ? 0 : (src + dst) % 2 * scale + 1;  // rank 0 sends nothing
  return src == dst ? 0 : scale;                                        // nothing to self
}

TEST_P(CommConformanceTest, AllToAllMovesUnevenRows) {
  RunRanks([](Communicator& world) {
    const int n_ranks = world.size(), r = world.rank();
    struct Case {
      DType dtype;
      int64_t cols;
      int64_t scale;
    };
    for (const Case c :
         {Case{DType::kF32, 3, 1}, Case{DType::kBF16, 1, 2}, Case{DType::kI32, 128, 700}}) {
      for (int pattern = 0; pattern < 3; ++pattern) {
        std::vector<int64_t> send(n_ranks), recv(n_ranks);
        for (int q = 0; q < n_ranks; ++q) {
          send[q] = Rows(pattern, r, q, c.scale);
          recv[q] = Rows(pattern, q, r, c.scale);
        }
        auto exchanged = ExchangeCounts(world, send);
        ASSERT_TRUE(exchanged.ok()) << exchanged.status();
        EXPECT_EQ(*exchanged, recv);
        // Row j to dst carries (src, dst, j) in every column; bf16 keeps small values exact.
        auto code = [&](int src, int dst, int64_t j, int64_t col) -> double {
          if (c.dtype == DType::kBF16) return (src * 4 + dst) % 64 + (j % 2);
          return ((src * 16 + dst) * 1024 + j % 1024) * 4 + col % 4;
        };
        int64_t total_send = 0, total_recv = 0;
        for (int q = 0; q < n_ranks; ++q) total_send += send[q], total_recv += recv[q];
        Tensor in = Tensor::Empty(c.dtype, {total_send, c.cols});
        for (int q = 0, row = 0; q < n_ranks; ++q) {
          for (int64_t j = 0; j < send[q]; ++j, ++row) {
            for (int64_t col = 0; col < c.cols; ++col)
              SetElement(in, row * c.cols + col, code(r, q, j, col));
          }
        }
        Tensor out = Tensor::Empty(c.dtype, {total_recv, c.cols});
        Q3VL_ASSERT_OK(
            world.AllToAll({.in = in, .send_counts = send, .out = out, .recv_counts = recv}));
        int64_t bad = 0;
        for (int q = 0, row = 0; q < n_ranks; ++q) {
          for (int64_t j = 0; j < recv[q]; ++j, ++row) {
            for (int64_t col = 0; col < c.cols; ++col)
              bad += GetElement(out, row * c.cols + col) != code(q, r, j, col);
          }
        }
        EXPECT_EQ(bad, 0) << "rank " << r << " " << DTypeName(c.dtype) << " pattern " << pattern;
      }
    }
  });
}

TEST_P(CommConformanceTest, BroadcastFromEveryRoot) {
  RunRanks([](Communicator& world) {
    for (int root = 0; root < world.size(); ++root) {
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        for (int64_t n : TestSizes()) {
          auto value = [&](int64_t i) { return static_cast<double>(i % 97 + root); };
          Tensor data =
              world.rank() == root ? Filled(dtype, {n}, value) : Tensor::Empty(dtype, {n});
          Q3VL_ASSERT_OK(world.Broadcast(data, root));
          EXPECT_EQ(FirstMismatch(data, value), -1)
              << "rank " << world.rank() << " root " << root << " n=" << n;
        }
      }
    }
  });
}

TEST_P(CommConformanceTest, SendRecvAroundARing) {
  RunRanks([](Communicator& world) {
    const int n = world.size(), r = world.rank();
    if (n == 1) return;
    const int next = (r + 1) % n, prev = (r + n - 1) % n;
    for (int64_t size : TestSizes()) {
      Tensor out = Filled(DType::kF32, {size}, [&](int64_t i) { return r * 10 + i % 10; });
      Tensor in = Tensor::Empty(DType::kF32, {size});
      // Even ranks send first, odd ranks receive first: no cycle of blocking sends.
      if (r % 2 == 0) {
        Q3VL_ASSERT_OK(world.Send(out, next));
        Q3VL_ASSERT_OK(world.Recv(in, prev));
      } else {
        Q3VL_ASSERT_OK(world.Recv(in, prev));
        Q3VL_ASSERT_OK(world.Send(out, next));
      }
      EXPECT_EQ(FirstMismatch(in, [&](int64_t i) { return prev * 10 + i % 10; }), -1)
          << "rank " << r << " size " << size;
    }
  });
}

TEST_P(CommConformanceTest, SendRecvKeepsMessageOrder) {
  RunRanks([](Communicator& world) {
    if (world.size() == 1) return;
    const int last = world.size() - 1;
    for (int k = 0; k < 3; ++k) {
      Tensor t = Filled(DType::kI64, {5}, [&](int64_t i) { return k * 100 + i; });
      if (world.rank() == 0) {
        Q3VL_ASSERT_OK(world.Send(t, last));
      } else if (world.rank() == last) {
        Tensor got = Tensor::Empty(DType::kI64, {5});
        Q3VL_ASSERT_OK(world.Recv(got, 0));
        EXPECT_EQ(FirstMismatch(got, [&](int64_t i) { return k * 100 + i; }), -1)
            << "message " << k;
      }
    }
    Q3VL_ASSERT_OK(world.Barrier());
  });
}

TEST_P(CommConformanceTest, BarrierRepeats) {
  RunRanks([](Communicator& world) {
    for (int i = 0; i < 5; ++i) Q3VL_ASSERT_OK(world.Barrier());
  });
}

}  // namespace
}  // namespace q3vl::parallel::testing

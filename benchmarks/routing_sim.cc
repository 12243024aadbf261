// routing_sim: the coordinator's routing code (cluster/coordinator/router.h: the global KV index
// and the policies, unchanged) against many simulated replicas on a simulated clock. Each
// replica runs a continuous-batching scheduler over a real kv::BlockPool (prefix cache, LRU
// eviction, the KV events that feed the index 20 ms later, as a replica's reports do), with step
// times from a model fitted to perf_model's Qwen3-VL-235B-A22B on 8xH100 predictions and the KV
// capacity q3vl plan gives that mesh. Workloads: multi-turn image chat with shared images,
// long-video QA with many questions per video, unrelated text. Prints one JSON object:
// TTFT p50/p99, throughput and KV hit rate per workload and policy, and the routing decision's
// cost. README.md ("routing_sim") has the model and its assumptions.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include <utility>  // before Boost (C++20)
#include "boost/program_options.hpp"
#include "cluster/coordinator/router.h"
#include "kv/block_pool.h"
#include "nlohmann/json.hpp"

namespace q3vl {
namespace {

namespace po = boost::program_options;
namespace co = cluster::coordinator;
using Json = nlohmann::ordered_json;

constexpr int64_t kPage = 16;

// Step time of one replica (235B, tp=8,ep=8 on 8xH100), fitted to perf_model: prefill 8,192
// tokens in 192 ms and 32,768 in 1,172 ms (linear + attention over the context), decode 11.5 ms
// at batch 1 and 44 ms at batch 64 with 8K contexts.
struct StepModel {
  double base_ms = 11.0;
  double prefill_ms_per_token = 0.0177;
  double prefill_ms_per_token_context = 1.08e-6;  // attention: chunk tokens x mean context
  double decode_ms_per_seq = 0.26;
  double decode_ms_per_seq_per_8k_context = 0.26;
  int64_t budget = 8192;        // tokens per step (--max-num-batched-tokens)
  int64_t max_seqs = 256;
  int64_t kv_tokens = 270921;   // q3vl plan / perf_model: KV pool of one replica
};

// A prompt as content segments: segment i is `length` tokens of content `id` (the same id and
// length: the same tokens). Page keys chain over (id, offset) of each token, as kv::PageKeys
// chains over token ids and media digests.
struct Segment {
  uint64_t id;
  int64_t length;
};

uint64_t Mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ULL;
  return h ^ (h >> 29);
}

std::vector<uint64_t> Keys(const std::vector<Segment>& segments) {
  std::vector<uint64_t> keys;
  uint64_t h = 0x51ed2701, page = 0;
  int64_t in_page = 0;
  for (const Segment& s : segments) {
    for (int64_t t = 0; t < s.length; ++t) {
      page = Mix(page, Mix(s.id, static_cast<uint64_t>(t)));
      if (++in_page == kPage) {
        h = Mix(h, page);
        keys.push_back(h);
        page = 0;
        in_page = 0;
      }
    }
  }
  return keys;
}

kv::PageKey PoolKey(uint64_t k) {
  kv::PageKey key;
  std::memcpy(key.bytes.data(), &k, sizeof(k));
  return key;
}

struct Request {
  double arrival = 0;
  int64_t prompt = 0, output = 0;
  std::vector<uint64_t> keys;
  int session = -1, turn = 0;  // chat: the conversation and its turn
  // outcome
  double first_token = -1, done = -1;
  int64_t cached = 0;
};

struct Seq {
  Request* r;
  int64_t routed_pending = 0;  // prefill pages the router counted at this replica
  int64_t computed = 0, generated = 0, registered = 0;
  std::vector<int32_t> pages;
};

struct Replica {
  std::unique_ptr<kv::BlockPool> pool;
  std::deque<Seq*> waiting;
  std::vector<Seq*> running;
  bool stepping = false;
  int64_t pages_in_use = 0;  // referenced by live sequences
  // The router's view.
  int64_t in_flight = 0, pending_prefill_pages = 0;
};

enum class EventKind { kArrival, kStepEnd, kKvReport };
struct Event {
  double t;
  EventKind kind;
  int64_t a;  // request index or replica
  std::vector<kv::KvEvent> kv;
  bool operator>(const Event& o) const { return t > o.t; }
};

struct Workload {
  std::string name;
  std::vector<Request> requests;  // chat: first turns only at the start; later turns appended
  // chat sessions: the content so far and the turns left
  struct Session {
    std::vector<Segment> content;
    int turns_left = 0;
  };
  std::vector<Session> sessions;
};

struct Options {
  int replicas = 1000;
  double duration = 60;
  uint64_t seed = 1;
  double load = 1.0;  // arrival rates scaled by this
  co::RouterOptions router;
};

// Zipf(s) over [0, n): popular items first.
class Zipf {
 public:
  Zipf(int n, double s) : cdf_(n) {
    double sum = 0;
    for (int i = 0; i < n; ++i) cdf_[i] = (sum += 1.0 / std::pow(i + 1, s));
    for (double& c : cdf_) c /= sum;
  }
  int operator()(std::mt19937_64& rng) {
    const double u = std::uniform_real_distribution<double>(0, 1)(rng);
    return static_cast<int>(std::lower_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin());
  }

 private:
  std::vector<double> cdf_;
};

constexpr uint64_t kSystem = 1;       // the system prompt every request shares
constexpr int64_t kSystemTokens = 256;
uint64_t g_unique = 1 << 20;          // ids of content nobody shares

Workload VideoQa(const Options& o, std::mt19937_64& rng) {
  Workload w{.name = "long_video_qa"};
  const int videos = std::max(8, o.replicas / 2);
  Zipf pick(videos, 1.0);
  std::vector<int64_t> length(videos);
  for (int64_t& l : length) l = std::uniform_int_distribution<int64_t>(48000, 96000)(rng);
  const double rate = 0.4 * o.replicas * o.load;  // questions per second
  for (double t = 0; t < o.duration;) {
    t += std::exponential_distribution<double>(rate)(rng);
    const int v = pick(rng);
    Request r{.arrival = t, .output = 64};
    const std::vector<Segment> prompt = {{kSystem, kSystemTokens}, {1000 + static_cast<uint64_t>(v), length[v]},
                                         {g_unique++, 32}};
    r.keys = Keys(prompt);
    r.prompt = kSystemTokens + length[v] + 32;
    w.requests.push_back(std::move(r));
  }
  return w;
}

Workload ImageChat(const Options& o, std::mt19937_64& rng) {
  Workload w{.name = "image_chat"};
  const int images = std::max(8, 2 * o.replicas);
  Zipf pick(images, 0.9);
  const double rate = 0.45 * o.replicas * o.load;  // new conversations per second
  for (double t = 0; t < o.duration;) {
    t += std::exponential_distribution<double>(rate)(rng);
    // 1 to 3 images from a shared pool (popular ones more often), each 1,024 to 4,096 visual
    // tokens (Qwen3-VL's processor: 1 MP is about 1,300 tokens).
    Workload::Session s;
    s.content = {{kSystem, kSystemTokens}};
    for (int n = std::uniform_int_distribution<int>(1, 3)(rng); n > 0; --n) {
      const uint64_t image = pick(rng);
      s.content.push_back({500000 + image, 1024 + static_cast<int64_t>(Mix(image, 7) % 3073)});
    }
    s.turns_left = std::uniform_int_distribution<int>(2, 6)(rng);
    w.sessions.push_back(std::move(s));
    Request r{.arrival = t, .session = static_cast<int>(w.sessions.size()) - 1};
    w.requests.push_back(std::move(r));
  }
  return w;
}

Workload Text(const Options& o, std::mt19937_64& rng) {
  Workload w{.name = "unrelated_text"};
  const double rate = 4.0 * o.replicas * o.load;
  for (double t = 0; t < o.duration;) {
    t += std::exponential_distribution<double>(rate)(rng);
    const int64_t n = std::uniform_int_distribution<int64_t>(1000, 4000)(rng);
    Request r{.arrival = t, .output = std::uniform_int_distribution<int64_t>(128, 384)(rng)};
    r.keys = Keys({{g_unique++, n}});
    r.prompt = n;
    w.requests.push_back(std::move(r));
  }
  return w;
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

Json Simulate(Workload w, co::RouterOptions router_options, const Options& o, const StepModel& m, uint64_t seed) {
  const co::RoutingPolicy policy = router_options.policy;
  std::mt19937_64 rng(seed);
  std::deque<Request> requests(w.requests.begin(), w.requests.end());  // stable addresses as chat grows
  std::vector<Replica> reps(o.replicas);
  for (Replica& r : reps) r.pool = std::make_unique<kv::BlockPool>(m.kv_tokens / kPage);
  co::KvIndex index;
  co::Router router(router_options);
  std::vector<co::ReplicaLoad> loads(o.replicas);
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  for (size_t i = 0; i < requests.size(); ++i) events.push({requests[i].arrival, EventKind::kArrival, static_cast<int64_t>(i)});
  std::vector<double> decision_us;
  std::vector<std::unique_ptr<Seq>> seqs;
  int64_t refused = 0, output_tokens = 0, prompt_tokens = 0, cached_tokens = 0;
  double last_done = 0;

  // Chat: a turn's prompt is the conversation so far and a new question; its answer joins the
  // conversation (the next prompt holds it as prompt tokens).
  auto prepare_chat = [&](Request& r) {
    Workload::Session& s = w.sessions[r.session];
    s.content.push_back({g_unique++, std::uniform_int_distribution<int64_t>(24, 96)(rng)});
    r.keys = Keys(s.content);
    r.prompt = 0;
    for (const Segment& seg : s.content) r.prompt += seg.length;
    r.output = std::uniform_int_distribution<int64_t>(96, 256)(rng);
  };

  auto start_step = [&](int rid, double now) {
    Replica& rep = reps[rid];
    if (rep.stepping) return;
    // Admit waiting requests, first come first served, while pages and the sequence cap allow.
    while (!rep.waiting.empty() && static_cast<int64_t>(rep.running.size()) < m.max_seqs) {
      Seq* s = rep.waiting.front();
      std::vector<kv::PageKey> keys;
      keys.reserve(s->r->keys.size());
      for (uint64_t k : s->r->keys) keys.push_back(PoolKey(k));
      const int64_t hit = std::min(rep.pool->CountCached(keys), (s->r->prompt - 1) / kPage);
      const int64_t total = (s->r->prompt + s->r->output + kPage - 1) / kPage;
      if (rep.pool->num_free() < total - hit + rep.pool->CountUnreferenced(keys, hit)) break;
      s->pages = rep.pool->TakeCached(keys, hit);
      const std::vector<int32_t> fresh = rep.pool->Allocate(total - hit);
      s->pages.insert(s->pages.end(), fresh.begin(), fresh.end());
      s->computed = hit * kPage;
      s->registered = hit;
      s->r->cached = hit * kPage;
      rep.pages_in_use += total;
      rep.waiting.pop_front();
      rep.running.push_back(s);
    }
    if (rep.running.empty()) return;
    int64_t budget = m.budget;
    double ms = m.base_ms;
    for (Seq* s : rep.running) {  // decodes first
      if (s->computed < s->r->prompt) continue;
      --budget;
      const double ctx = static_cast<double>(s->r->prompt + s->generated);
      ms += m.decode_ms_per_seq + m.decode_ms_per_seq_per_8k_context * ctx / 8192.0;
    }
    for (Seq* s : rep.running) {  // then prefill chunks
      if (s->computed >= s->r->prompt || budget <= 0) continue;
      const int64_t chunk = std::min(budget, s->r->prompt - s->computed);
      budget -= chunk;
      ms += m.prefill_ms_per_token * chunk +
            m.prefill_ms_per_token_context * chunk * (static_cast<double>(s->computed) + chunk / 2.0);
    }
    rep.stepping = true;
    events.push({now + ms / 1000.0, EventKind::kStepEnd, rid});
  };

  while (!events.empty()) {
    Event e = events.top();
    events.pop();
    const double now = e.t;
    if (e.kind == EventKind::kArrival) {
      Request& r = requests[e.a];
      if (r.session >= 0) prepare_chat(r);
      for (int i = 0; i < o.replicas; ++i) {
        loads[i] = {.routable = true, .max_seq_tokens = m.kv_tokens, .in_flight = reps[i].in_flight,
                    .pending_prefill_pages = reps[i].pending_prefill_pages, .kv_pages_used = reps[i].pages_in_use};
      }
      const auto t0 = std::chrono::steady_clock::now();
      auto d = router.Choose({.keys = r.keys, .prompt_pages = (r.prompt + kPage - 1) / kPage,
                              .need_tokens = r.prompt + r.output}, loads, index);
      decision_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      if (!d.ok()) {
        ++refused;
        continue;
      }
      Replica& rep = reps[d->replica];
      ++rep.in_flight;
      const int64_t pending = (r.prompt + kPage - 1) / kPage - d->cached_pages;
      rep.pending_prefill_pages += pending;
      seqs.push_back(std::make_unique<Seq>(Seq{.r = &r, .routed_pending = pending}));
      rep.waiting.push_back(seqs.back().get());
      start_step(d->replica, now);
    } else if (e.kind == EventKind::kStepEnd) {
      Replica& rep = reps[e.a];
      rep.stepping = false;
      int64_t budget = m.budget;
      std::vector<Seq*> still;
      for (Seq* s : rep.running) {
        if (s->computed >= s->r->prompt) {  // a decode token
          --budget;
          ++s->generated;
          ++output_tokens;
          if (s->generated >= s->r->output) {
            s->r->done = now;
            last_done = std::max(last_done, now);
            rep.pool->Release(s->pages);
            rep.pages_in_use -= static_cast<int64_t>(s->pages.size());
            --rep.in_flight;
            if (s->r->session >= 0) {  // the conversation goes on after a pause
              Workload::Session& ses = w.sessions[s->r->session];
              ses.content.push_back({g_unique++, s->r->output});
              if (--ses.turns_left > 0 && now < o.duration) {
                requests.push_back({.arrival = now + std::exponential_distribution<double>(0.2)(rng),
                                    .session = s->r->session, .turn = s->r->turn + 1});
                events.push({requests.back().arrival, EventKind::kArrival, static_cast<int64_t>(requests.size()) - 1});
              }
            }
            continue;
          }
        }
        still.push_back(s);
      }
      for (Seq* s : still) {  // prefill chunks, in the order the step ran them
        if (s->computed >= s->r->prompt || budget <= 0) continue;
        const int64_t chunk = std::min(budget, s->r->prompt - s->computed);
        budget -= chunk;
        s->computed += chunk;
        const int64_t full = std::min<int64_t>(s->computed / kPage, static_cast<int64_t>(s->r->keys.size()));
        for (; s->registered < full; ++s->registered) rep.pool->Register(s->pages[s->registered], PoolKey(s->r->keys[s->registered]));
        if (s->computed >= s->r->prompt) {  // the prompt is done: its first token
          s->r->first_token = now;
          rep.pending_prefill_pages -= s->routed_pending;
          prompt_tokens += s->r->prompt;
          cached_tokens += s->r->cached;
        }
      }
      rep.running = std::move(still);
      std::vector<kv::KvEvent> kv = rep.pool->TakeEvents();
      if (!kv.empty()) events.push({now + 0.020, EventKind::kKvReport, e.a, std::move(kv)});
      start_step(static_cast<int>(e.a), now);
    } else {  // the replica's report reaches the coordinator's index
      for (const kv::KvEvent& k : e.kv) {
        uint64_t key;
        std::memcpy(&key, k.key.bytes.data(), sizeof(key));
        if (k.stored) {
          index.Store(static_cast<int>(e.a), {&key, 1});
        } else {
          index.Remove(static_cast<int>(e.a), {&key, 1});
        }
      }
    }
  }
  std::vector<double> ttft;
  int64_t done = 0;
  for (const Request& r : requests) {
    if (r.first_token >= 0) ttft.push_back(r.first_token - r.arrival);
    done += r.done >= 0;
  }
  return {{"workload", w.name},
          {"policy", co::RoutingPolicyName(policy)},
          {"requests", requests.size()},
          {"completed", done},
          {"refused", refused},
          {"ttft_p50_s", Quantile(ttft, 0.5)},
          {"ttft_p99_s", Quantile(ttft, 0.99)},
          {"output_tokens_per_s", last_done > 0 ? output_tokens / last_done : 0.0},
          {"kv_hit_rate", prompt_tokens > 0 ? static_cast<double>(cached_tokens) / prompt_tokens : 0.0},
          {"decision_us_mean", decision_us.empty() ? 0.0 : std::accumulate(decision_us.begin(), decision_us.end(), 0.0) / decision_us.size()},
          {"decision_us_p99", Quantile(decision_us, 0.99)},
          {"simulated_seconds", last_done}};
}

}  // namespace
}  // namespace q3vl

int main(int argc, char** argv) {
  using namespace q3vl;
  Options o;
  std::string policies = "kv,least-load,round-robin";
  std::string workloads = "image_chat,long_video_qa,unrelated_text";
  po::options_description desc(
      "routing_sim: the coordinator's routing code against simulated replicas on a simulated clock; prints one JSON "
      "object\n\noptions");
  desc.add_options()("help,h", "this help")
      ("replicas", po::value<int>(&o.replicas)->default_value(1000), "simulated replicas (each 235B on 8xH100)")
      ("duration", po::value<double>(&o.duration)->default_value(60), "seconds of arrivals (then the queue drains)")
      ("load", po::value<double>(&o.load)->default_value(1.0), "arrival rates x this")
      ("overlap-weight", po::value<double>(&o.router.overlap_weight)->default_value(o.router.overlap_weight), "kv routing: weight of prefill pages")
      ("decode-weight", po::value<double>(&o.router.decode_weight)->default_value(o.router.decode_weight), "kv routing: weight of KV pages in use")
      ("seed", po::value<uint64_t>(&o.seed)->default_value(1), "random seed (workloads are the same for every policy)")
      ("policies", po::value<std::string>(&policies)->default_value(policies), "comma-separated routing policies")
      ("workloads", po::value<std::string>(&workloads)->default_value(workloads), "comma-separated workloads");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "routing_sim: " << e.what() << "\n" << desc;
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  if (o.replicas < 1 || o.replicas > 65535 || !(o.duration > 0) || !(o.load > 0)) {
    std::cerr << "routing_sim: --replicas in [1, 65535], --duration and --load > 0\n";
    return 2;
  }
  StepModel model;
  Json runs = Json::array();
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    size_t at = 0;
    while (at <= s.size()) {
      const size_t comma = std::min(s.find(',', at), s.size());
      if (comma > at) out.push_back(s.substr(at, comma - at));
      at = comma + 1;
    }
    return out;
  };
  for (const std::string& name : split(workloads)) {
    std::mt19937_64 rng(o.seed);
    Workload w;
    if (name == "image_chat") {
      w = ImageChat(o, rng);
    } else if (name == "long_video_qa") {
      w = VideoQa(o, rng);
    } else if (name == "unrelated_text") {
      w = Text(o, rng);
    } else {
      std::cerr << "routing_sim: unknown workload " << name << "\n";
      return 2;
    }
    for (const std::string& p : split(policies)) {
      auto policy = cluster::coordinator::ParseRoutingPolicy(p);
      if (!policy.ok()) {
        std::cerr << "routing_sim: " << policy.status().message() << "\n";
        return 2;
      }
      const auto t0 = std::chrono::steady_clock::now();
      co::RouterOptions ro = o.router;
      ro.policy = *policy;
      Json r = Simulate(w, ro, o, model, o.seed + 7);
      r["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::cerr << "routing_sim: " << name << " " << p << ": ttft p50 " << r["ttft_p50_s"].get<double>() << " s, hit rate "
                << r["kv_hit_rate"].get<double>() << ", " << r["wall_seconds"].get<double>() << " s of wall time\n";
      runs.push_back(std::move(r));
    }
  }
  Json out = {{"benchmark", "routing_sim"},
              {"replicas", o.replicas},
              {"duration_s", o.duration},
              {"load", o.load},
              {"seed", o.seed},
              {"router", {{"overlap_weight", o.router.overlap_weight}, {"decode_weight", o.router.decode_weight},
                          {"imbalance_ratio", o.router.imbalance_ratio}, {"imbalance_slack", o.router.imbalance_slack}}},
              {"step_model", {{"base_ms", model.base_ms},
                              {"prefill_ms_per_token", model.prefill_ms_per_token},
                              {"prefill_ms_per_token_context", model.prefill_ms_per_token_context},
                              {"decode_ms_per_seq", model.decode_ms_per_seq},
                              {"decode_ms_per_seq_per_8k_context", model.decode_ms_per_seq_per_8k_context},
                              {"budget_tokens", model.budget},
                              {"kv_tokens_per_replica", model.kv_tokens}}},
              {"runs", runs}};
  // kv against least-load per workload: p50 TTFT ratio (least-load / kv).
  Json ratios = Json::object();
  for (const Json& a : runs) {
    if (a["policy"] != "kv") continue;
    for (const Json& b : runs) {
      if (b["policy"] == "least-load" && b["workload"] == a["workload"]) {
        ratios[a["workload"].get<std::string>()] = b["ttft_p50_s"].get<double>() / std::max(1e-9, a["ttft_p50_s"].get<double>());
      }
    }
  }
  out["p50_ttft_least_load_over_kv"] = ratios;
  std::cout << out.dump(2) << std::endl;
  return 0;
}

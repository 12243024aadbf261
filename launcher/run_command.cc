// q3vl run: a batch job over an OpenAI batch file (JSONL), resumable, on one rank or a mesh.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cluster/batch/batch_io.h"
#include "cluster/batch/batch_job.h"
#include "core/status_macros.h"
#include "launcher/mesh.h"
#include "launcher/options.h"
#include "launcher/replica.h"
#include "model/processor.h"
#include "parallel/mpi/mpi_comm.h"

namespace q3vl::launcher {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};

void OnSignal(int signo) {
  if (g_stop.exchange(true)) {  // a second Ctrl-C: leave now (results so far are on disk)
    signal(signo, SIG_DFL);
    raise(signo);
  }
  g_signal = signo;
}

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

// Progress on stderr: a bar redrawn in place on a terminal, else a line every 10 seconds.
class ProgressPrinter {
 public:
  // `mode`: "bar", "lines", "none", or "auto" (a bar when stderr is a terminal).
  explicit ProgressPrinter(const std::string& mode)
      : bar_(mode == "bar" || (mode == "auto" && isatty(STDERR_FILENO) == 1)), none_(mode == "none"),
        last_(bar_ ? absl::InfinitePast() : absl::Now()) {}

  void Update(const cluster::batch::BatchProgress& p) {
    const absl::Time now = absl::Now();
    if (none_ || (!bar_ && now - last_ < absl::Seconds(10)) || (bar_ && now - last_ < absl::Milliseconds(100) &&
                                                                p.finished() < p.total)) {
      return;
    }
    last_ = now;
    const double rate = p.seconds > 0 ? p.completion_tokens / p.seconds : 0.0;
    const double per_request = p.finished() > 0 ? p.seconds / p.finished() : NAN;
    const std::string eta = Duration(per_request * (p.total - p.finished()));
    const std::string text = absl::StrFormat("%d/%d requests, %d errors, %.1f output tok/s, %s elapsed, ETA %s",
                                             p.finished(), p.total, p.failed, rate, Duration(p.seconds), eta);
    if (bar_) {
      constexpr int kWidth = 24;
      const int filled = p.total > 0 ? static_cast<int>(kWidth * p.finished() / p.total) : kWidth;
      std::fprintf(stderr, "\r\033[K[%s%s] %s", std::string(filled, '#').c_str(),
                   std::string(kWidth - filled, '.').c_str(), text.c_str());
    } else {
      std::fprintf(stderr, "q3vl run: %s\n", text.c_str());
    }
    std::fflush(stderr);
  }
  void End() {
    if (bar_) std::fprintf(stderr, "\n");
  }

 private:
  bool bar_;
  bool none_;
  absl::Time last_;
};

nlohmann::ordered_json SummaryJson(const cluster::batch::BatchProgress& p, int64_t skipped, int64_t input_lines) {
  return {{"input_lines", input_lines}, {"skipped_already_done", skipped}, {"run", p.total},
          {"succeeded", p.succeeded}, {"failed", p.failed}, {"abandoned", p.abandoned},
          {"not_started", p.total - p.finished() - p.abandoned}, {"stopped", p.stopped},
          {"prompt_tokens", p.prompt_tokens}, {"completion_tokens", p.completion_tokens},
          {"wall_seconds", p.seconds}, {"per_replica", p.per_replica},
          {"requests_per_second", p.seconds > 0 ? p.finished() / p.seconds : 0.0},
          {"output_tokens_per_second", p.seconds > 0 ? p.completion_tokens / p.seconds : 0.0}};
}

// What the job leader checks before any model is loaded.
struct Checked {
  std::unique_ptr<cluster::batch::ResultWriter> writer;  // the output, locked
  std::vector<cluster::batch::InputLine> todo;
  int64_t input_lines = 0;
  int64_t skipped = 0;
};

absl::StatusOr<Checked> CheckFiles(const po::variables_map& vm) {
  const std::string input = vm["input"].as<std::string>(), output = vm["output"].as<std::string>();
  Q3VL_ASSIGN_OR_RETURN(std::vector<cluster::batch::InputLine> lines, cluster::batch::ReadInput(input));
  Q3VL_RETURN_IF_ERROR(Annotate(cluster::batch::CheckWritable(output), "--output"));
  if (vm.count("summary")) Q3VL_RETURN_IF_ERROR(Annotate(cluster::batch::CheckWritable(vm["summary"].as<std::string>()), "--summary"));
  std::error_code ec;
  if (std::filesystem::exists(output) && std::filesystem::equivalent(input, output, ec)) {
    return absl::InvalidArgumentError("--output is the input file");
  }
  // Locked before it is read: a lingering job on the same output is refused, not raced.
  Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<cluster::batch::ResultWriter> writer, cluster::batch::ResultWriter::Open(output));
  Q3VL_ASSIGN_OR_RETURN(cluster::batch::ExistingOutput existing,
                        cluster::batch::RecoverOutput(output, vm["retry-failed"].as<bool>()));
  if (existing.dropped_failed > 0) Q3VL_RETURN_IF_ERROR(writer->Reopen());  // the file was replaced
  if (existing.torn_bytes > 0) {
    std::cerr << "q3vl run: " << output << ": cut a partial last line (" << existing.torn_bytes
              << " bytes) left by an interrupted run" << std::endl;
  }
  if (existing.dropped_failed > 0) {
    std::cerr << "q3vl run: --retry-failed: " << existing.dropped_failed << " failed results removed; they run again"
              << std::endl;
  }
  Checked c{.writer = std::move(writer), .input_lines = static_cast<int64_t>(lines.size())};
  for (cluster::batch::InputLine& l : lines) {
    if (existing.done.contains(l.Key())) {
      ++c.skipped;
    } else {
      c.todo.push_back(std::move(l));
    }
  }
  return c;
}

}  // namespace

int RunCommand(const Args& args) {
  constexpr char kName[] = "run";
  po::options_description options("options");
  options.add_options()
      ("model", po::value<std::string>()->required(), "model directory (HF layout)")
      ("input", po::value<std::string>()->required(), "requests, one per line, in the OpenAI batch format: {\"custom_id\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\" or \"/v1/completions\", \"body\"}")
      ("output", po::value<std::string>()->required(), "results, one line per request as vllm run-batch writes them, appended as requests finish; rerunning with the same file skips the requests it already holds")
      ("max-concurrency", po::value<int>()->default_value(64), "requests in flight per replica")
      ("retry-failed", po::bool_switch(), "also rerun the requests whose result in --output is an error")
      ("allowed-media-dir", po::value<std::vector<std::string>>()->composing(), "directory local images and videos may be read from (repeatable; default: the input file's directory); relative paths resolve against the input file's directory")
      ("served-model-name", po::value<std::vector<std::string>>()->composing(), "model name(s) a request's \"model\" may give (default: --model as given and its directory name); the first is reported in responses")
      ("summary", po::value<std::string>(), "also write the final summary to this file as JSON")
      ("progress", po::value<std::string>()->default_value("auto"), "progress on stderr: bar (redrawn in place), lines (one every 10 s), none, or auto (a bar on a terminal, else lines)")
      ("drain-timeout", po::value<double>()->default_value(30.0), "seconds requests in flight get to finish after SIGINT/SIGTERM before they are abandoned")
      ("backend", po::value<std::string>()->default_value("cpu"), "compute backend: cpu or cuda")
      ("mesh", po::value<std::string>(), "parallel mesh vision=V,pp=P,tp=T,ep=E,dp=D (run under mpirun -np D*(V+P*max(T,E))); under mpirun without it, each rank is a replica (dp = ranks)");
  EngineOptions::AddTo(options);
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--model DIR --input requests.jsonl --output results.jsonl [options]", options,
                          positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  if (vm["max-concurrency"].as<int>() < 1) return UsageError(kName, "--max-concurrency must be >= 1");
  if (!(vm["drain-timeout"].as<double>() >= 0)) return UsageError(kName, "--drain-timeout must be >= 0");
  if (const std::string p = vm["progress"].as<std::string>(); p != "auto" && p != "bar" && p != "lines" && p != "none") {
    return UsageError(kName, "--progress must be auto, bar, lines or none, got " + p);
  }
  auto engine_options = EngineOptions::From(vm);
  if (!engine_options.ok()) return UsageError(kName, std::string(engine_options.status().message()));
  auto kind = ParseBackendKind(vm["backend"].as<std::string>());
  if (!kind.ok()) return UsageError(kName, std::string(kind.status().message()));
  if (engine_options->kv_dtype == DType::kF8E4M3 && *kind == BackendKind::kCuda) {
    return UsageError(kName, "--kv-dtype fp8 runs on the CPU backend only for now; use bf16 with --backend cuda");
  }
  const std::string model_dir = vm["model"].as<std::string>();
  const int max_concurrency = vm["max-concurrency"].as<int>();

  // Under mpirun without --mesh every rank is a replica of its own.
  std::string mesh_spec = vm.count("mesh") ? vm["mesh"].as<std::string>() : DefaultMeshUnderMpirun(kName);
  const int threads = engine_options->ApplyToProcess();
  std::unique_ptr<MeshRun> mesh;
  if (!mesh_spec.empty()) {
    auto started = MeshRun::Start(mesh_spec, *kind);
    if (!started.ok()) {  // every rank finds the same mesh error: the first alone says it
      return FirstRankOfJob() ? UsageError(kName, std::string(started.status().message())) : 2;
    }
    mesh = *std::move(started);
  }
  const bool leader = !mesh || mesh->leader();
  const bool replica_leader = !mesh || mesh->topology().ReplicaLeader() == mesh->rank();
  auto agree = [&](const absl::Status& s) { return mesh ? mesh->Agree(s) : s; };
  const auto fail = [&](const absl::Status& s) { return leader ? Fail(kName, s) : 1; };

  // Files first: a bad input or output path is refused before the model loads.
  Checked checked;
  {
    absl::Status s;
    if (leader) {
      auto c = CheckFiles(vm);
      if (c.ok()) checked = *std::move(c);
      s = c.status();
    }
    if (absl::Status all = agree(s); !all.ok()) return leader && !s.ok() ? UsageError(kName, std::string(s.message())) : 1;
  }
  if (leader && checked.todo.empty()) {
    std::cerr << "q3vl run: all " << checked.input_lines << " requests already have results in "
              << vm["output"].as<std::string>() << "; nothing to do" << std::endl;
  }

  std::optional<model::Processor> processor;
  if (replica_leader) {
    auto loaded = model::Processor::Load(model_dir);
    if (loaded.ok()) processor.emplace(*std::move(loaded));
    if (absl::Status s = agree(loaded.status()); !s.ok()) return fail(s);
  } else if (absl::Status s = agree(absl::OkStatus()); !s.ok()) {
    return fail(s);
  }

  auto loaded = LoadCommandModel(kName, model_dir, mesh.get(), *kind, mesh_spec, threads);
  if (!loaded.ok()) return fail(loaded.status());
  const std::unique_ptr<model::Qwen3VL>& model = loaded->model;

  // The leaders of the replicas exchange work and results through a mailbox.
  std::unique_ptr<parallel::Communicator> leaders;
  std::unique_ptr<parallel::Mailbox> mailbox;
  if (mesh && mesh->num_replicas() > 1) {
    auto split = mesh->world().Split(replica_leader ? 0 : parallel::kNoColor, mesh->replica());
    absl::Status s = split.status();
    if (s.ok() && replica_leader) {
      leaders = *std::move(split);
      auto box = parallel::CreateMpiMailbox(*leaders);
      s = box.status();
      if (box.ok()) mailbox = *std::move(box);
    }
    if (absl::Status all = agree(s); !all.ok()) return fail(all);
  }

  const model::ModelConfig& config = model->config();
  const int64_t page = engine_options->page_size;
  auto pages = engine_options->PlanKvPages(
      "run", config, mesh.get(), model->backend());
  if (!pages.ok()) return fail(pages.status());

  cluster::batch::BatchJobOptions job{.max_concurrency = max_concurrency,
                                      .drain_timeout = absl::Seconds(vm["drain-timeout"].as<double>())};
  if (vm.count("served-model-name")) {
    job.served_names = vm["served-model-name"].as<std::vector<std::string>>();
  } else {
    job.served_names = {model_dir, std::filesystem::path(model_dir).lexically_normal().filename().string()};
    if (job.served_names[1].empty()) job.served_names[1] = std::filesystem::path(model_dir).parent_path().filename().string();
  }
  job.model_name = job.served_names[0];
  const std::filesystem::path input_dir =
      std::filesystem::absolute(vm["input"].as<std::string>()).parent_path();
  job.prepare = {.processor = processor ? &*processor : nullptr,
                 .process = {.media_root = input_dir.string(),
                             .allowed_media_dirs = vm.count("allowed-media-dir")
                                                       ? vm["allowed-media-dir"].as<std::vector<std::string>>()
                                                       : std::vector<std::string>{input_dir.string()}},
                 .max_model_len = config.text.max_position_embeddings,
                 .max_seq_tokens = *pages * page};

  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  ReplicaHost host(*model, mesh.get(), *engine_options, *pages, processor ? &processor->tokenizer() : nullptr);
  absl::Status ran;
  std::optional<cluster::batch::BatchProgress> progress;
  if (!host.leader()) {
    ran = host.Follow();
  } else if (leader) {
    std::cerr << "q3vl run: " << checked.todo.size() << " requests to run";
    if (checked.skipped > 0) std::cerr << " (" << checked.skipped << " already done)";
    std::cerr << ", " << (mesh ? mesh->num_replicas() : 1) << " replica(s), up to " << max_concurrency
              << " in flight each" << std::endl;
    ProgressPrinter printer(vm["progress"].as<std::string>());
    auto p = cluster::batch::RunBatchLeader(host.engine(), processor->tokenizer(), std::move(checked.todo),
                                            *checked.writer, mailbox.get(), job, g_stop,
                                            [&](const cluster::batch::BatchProgress& p) { printer.Update(p); });
    printer.End();
    ran = p.status();
    if (p.ok()) progress = *p;
    if (absl::Status s = checked.writer->Close(); ran.ok()) ran = s;
    if (absl::Status s = host.Finish(); ran.ok()) ran = s;
  } else {
    ran = cluster::batch::RunBatchReplica(host.engine(), processor->tokenizer(), *mailbox, job, g_stop);
    if (absl::Status s = host.Finish(); ran.ok()) ran = s;
  }
  mailbox.reset();
  if (absl::Status s = agree(ran); !s.ok()) return fail(s);
  if (!leader || !progress) return 0;

  const nlohmann::ordered_json summary = SummaryJson(*progress, checked.skipped, checked.input_lines);
  std::cerr << absl::StrFormat(
                   "q3vl run: %s: %d succeeded, %d failed, %d abandoned, %d not started, %d skipped (already done); "
                   "%d prompt + %d completion tokens in %s (%.2f requests/s, %.1f output tok/s) -> %s",
                   progress->stopped ? "stopped" : "done", progress->succeeded, progress->failed, progress->abandoned,
                   summary["not_started"].get<int64_t>(), checked.skipped, progress->prompt_tokens,
                   progress->completion_tokens, Duration(progress->seconds),
                   summary["requests_per_second"].get<double>(), summary["output_tokens_per_second"].get<double>(),
                   vm["output"].as<std::string>())
            << std::endl;
  if (vm.count("summary")) {
    std::ofstream out(vm["summary"].as<std::string>());
    out << summary.dump(2) << "\n";
    if (!out) return Fail(kName, absl::InternalError(absl::StrCat(vm["summary"].as<std::string>(), ": cannot write")));
  }
  return progress->stopped ? 128 + g_signal.load() : 0;
}

}  // namespace q3vl::launcher

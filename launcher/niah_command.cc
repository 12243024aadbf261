// q3vl niah: long-video needle-in-a-haystack through the serving path. For each length x depth
// x needle it composes the cell's video (cluster/niah/compose.h), sends it with each question
// to an OpenAI endpoint (q3vl serve or q3vl coordinator) as a video data URL with the cell's
// mm_processor_kwargs, scores the answer (matched, and the reference answer's teacher-forced
// log-probability from a second request with prompt_logprobs), reads the server's vision
// seconds from /metrics around it, and appends one JSON line per question to
// OUT/results.jsonl (--resume continues after any kill). Cells are ordered for the prefix
// cache: every cell's video is the same haystack frames up to its needle (coded causally, so
// they decode alike), so lengths rise and, within one, depths fall: the first cell's haystack
// runs to its needle at the end and each later cell finds its frames before the needle
// cached. At the end: OUT/summary.json, OUT/heatmap.png and OUT/report.html.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

extern "C" {
#include <libavutil/log.h>
}

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "cluster/niah/client.h"
#include "cluster/niah/compose.h"
#include "cluster/niah/eval.h"
#include "cluster/niah/plan.h"
#include "cluster/niah/report.h"
#include "core/file_io.h"
#include "launcher/options.h"
#include "model/media/video_decode.h"
#include "parallel/topology.h"

namespace q3vl::launcher {
namespace {

constexpr char kName[] = "niah";
namespace niah = cluster::niah;
using Json = nlohmann::ordered_json;

// `q3vl serve` for --model: a child process on loopback (under mpirun for a mesh of several
// ranks), stopped with SIGTERM when this ends (and by the kernel if this dies).
class ChildServer {
 public:
  static absl::StatusOr<std::unique_ptr<ChildServer>> Start(const std::vector<std::string>& argv) {
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) return absl::UnavailableError("pipe");
    const pid_t pid = ::fork();
    if (pid < 0) return absl::UnavailableError("fork");
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      ::dup2(pipefd[1], 2);
      std::vector<char*> cargv;
      for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
      cargv.push_back(nullptr);
      ::execvp(cargv[0], cargv.data());
      std::fprintf(stderr, "cannot run %s\n", cargv[0]);
      ::_exit(127);
    }
    ::close(pipefd[1]);
    auto child = std::unique_ptr<ChildServer>(new ChildServer(pid, pipefd[0]));
    // Its log until the serving line, which names the port.
    static const std::regex serving(R"(serving \S+ on (http://[0-9.]+:\d+))");
    std::string line;
    char c;
    while (::read(child->fd_, &c, 1) == 1) {
      if (c != '\n') {
        line += c;
        continue;
      }
      child->log_ += line + "\n";
      std::smatch m;
      if (std::regex_search(line, m, serving)) {
        child->url_ = m[1].str();
        break;
      }
      line.clear();
    }
    if (child->url_.empty()) {
      return absl::UnavailableError(absl::StrCat("q3vl serve did not start:\n", child->log_));
    }
    // Keep reading its log, or a full pipe would stop it.
    child->drain_ = std::thread([fd = child->fd_] {
      char buf[4096];
      while (::read(fd, buf, sizeof buf) > 0) {
      }
    });
    return child;
  }
  ~ChildServer() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    if (drain_.joinable()) drain_.join();
    ::close(fd_);
  }
  const std::string& url() const { return url_; }

 private:
  ChildServer(pid_t pid, int fd) : pid_(pid), fd_(fd) {}
  pid_t pid_;
  int fd_;
  std::string url_, log_;
  std::thread drain_;
};

// usage.prompt_tokens and usage.prompt_tokens_details.cached_tokens of a reply (0 if absent).
std::pair<int64_t, int64_t> UsageTokens(const Json& body) {
  if (!body.is_object() || !body.contains("usage") || !body["usage"].is_object()) return {0, 0};
  const Json& usage = body["usage"];
  const int64_t cached = usage.contains("prompt_tokens_details") && usage["prompt_tokens_details"].is_object()
                             ? usage["prompt_tokens_details"].value("cached_tokens", int64_t{0})
                             : 0;
  return {usage.value("prompt_tokens", int64_t{0}), cached};
}

// The sum of prompt_logprobs from position `start` on (the reference answer's tokens) and
// their count, from a scoring reply; an error naming what the server said otherwise.
absl::StatusOr<std::pair<double, int64_t>> AnswerLogprob(const niah::HttpReply& reply, int64_t start) {
  if (reply.status != 200 || !reply.body.is_object() || !reply.body.contains("prompt_logprobs") ||
      !reply.body["prompt_logprobs"].is_array()) {
    const std::string message = reply.body.is_object() && reply.body.contains("error") && reply.body["error"].is_object()
                                    ? reply.body["error"].value("message", reply.text)
                                    : reply.text.substr(0, 200);
    return absl::UnavailableError(absl::StrCat("scoring answered ", reply.status, ": ", message));
  }
  const Json& lp = reply.body["prompt_logprobs"];
  double sum = 0;
  int64_t n = 0;
  for (size_t t = static_cast<size_t>(start); t < lp.size(); ++t) {
    if (!lp[t].is_object() || lp[t].empty()) return absl::UnavailableError(absl::StrCat("no log-probability at ", t));
    sum += lp[t].begin()->value("logprob", 0.0);
    ++n;
  }
  if (n == 0) return absl::UnavailableError("the reference answer has no tokens after the prompt");
  return std::make_pair(sum, n);
}

std::string Duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "?";
  const int64_t s = std::llround(seconds);
  return s >= 3600 ? absl::StrFormat("%dh%02dm", s / 3600, s / 60 % 60) : absl::StrFormat("%dm%02ds", s / 60, s % 60);
}

}  // namespace

int NiahCommand(const Args& args) {
  po::options_description options("options");
  options.add_options()
      ("endpoint", po::value<std::string>(), "the OpenAI API to evaluate: http://HOST:PORT of q3vl serve or q3vl coordinator")
      ("model", po::value<std::string>(), "instead of --endpoint: a model directory, served here by q3vl serve on loopback for the run")
      ("mesh", po::value<std::string>(), "with --model: its mesh (q3vl serve under mpirun -np <ranks>)")
      ("threads", po::value<int>(), "with --model: compute threads per rank (q3vl serve --threads)")
      ("api-key-file", po::value<std::string>(), "its API keys file (the first key is sent; else $Q3VL_API_KEY)")
      ("haystack", po::value<std::string>()->required(), "the haystack video (looped or trimmed to each length)")
      ("needles", po::value<std::string>(), "needles.json (default: three built-in colour needles, a what and a when question each)")
      ("lengths", po::value<std::string>()->default_value("8k,32k"), "video lengths in visual tokens, e.g. 8k,32k,128k,256k")
      ("depths", po::value<std::string>()->default_value("0:1:0.25"), "needle depths: START:END:STEP or a list, in [0, 1]")
      ("out", po::value<std::string>()->required(), "output directory: results.jsonl, summary.json, heatmap.png, report.html, videos/")
      ("fps", po::value<int>()->default_value(2), "frames per second of the composed videos (all sampled)")
      ("max-pixels", po::value<int64_t>()->default_value(448 * 448), "pixels per frame at most (448x448: 196 tokens per frame group)")
      ("served-model-name", po::value<std::string>(), "the model name to request (default: the endpoint's first, from /v1/models)")
      ("max-tokens", po::value<int>()->default_value(16), "answer length")
      ("no-logprobs", po::bool_switch(), "do not score each reference answer by its teacher-forced log-probability "
                                         "(a second request per question with prompt_logprobs: a server without it answers 400)")
      ("timeout", po::value<double>()->default_value(1800), "seconds to wait for one answer")
      ("resume", po::bool_switch(), "continue OUT/results.jsonl, skipping the questions it holds")
      ("keep-videos", po::bool_switch(), "keep each cell's video under OUT/videos (default: removed once its questions are done)");
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "(--endpoint URL | --model DIR [--mesh M]) --haystack VIDEO --out DIR [--lengths 8k,32k] [--depths 0:1:0.25] [options]",
                          options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  // FFmpeg's informational lines (libx264 prints its settings at every cell's video) would
  // drown the progress lines; its warnings and errors still show.
  av_log_set_level(AV_LOG_WARNING);

  if (vm.count("endpoint") == vm.count("model")) return UsageError(kName, "give one of --endpoint and --model");
  if (vm.count("mesh") && !vm.count("model")) return UsageError(kName, "--mesh goes with --model");
  std::vector<std::string> serve_argv;
  if (vm.count("model")) {
    // q3vl serve, as a user would run it: on loopback, any free port, no API key.
    serve_argv = {SelfExecutable(), "serve", "--model", vm["model"].as<std::string>(), "--host", "127.0.0.1", "--port", "0"};
    if (vm.count("threads")) serve_argv.insert(serve_argv.end(), {"--threads", std::to_string(vm["threads"].as<int>())});
    if (vm.count("mesh")) {
      auto mesh = parallel::ParallelConfig::FromString(vm["mesh"].as<std::string>());
      if (!mesh.ok()) return UsageError(kName, absl::StrCat("--mesh: ", mesh.status().message()));
      serve_argv.insert(serve_argv.end(), {"--mesh", vm["mesh"].as<std::string>()});
      if (mesh->world_size() > 1) {
        std::vector<std::string> mpirun = {"mpirun", "-np", std::to_string(mesh->world_size()), "--oversubscribe"};
        if (::geteuid() == 0) mpirun.push_back("--allow-run-as-root");
        serve_argv.insert(serve_argv.begin(), mpirun.begin(), mpirun.end());
      }
    }
  }
  auto lengths = niah::ParseLengths(vm["lengths"].as<std::string>());
  if (!lengths.ok()) return UsageError(kName, absl::StrCat("--lengths: ", lengths.status().message()));
  auto depths = niah::ParseDepths(vm["depths"].as<std::string>());
  if (!depths.ok()) return UsageError(kName, absl::StrCat("--depths: ", depths.status().message()));
  const int fps = vm["fps"].as<int>();
  if (fps < 1 || fps > 30) return UsageError(kName, "--fps must be in [1, 30]");
  const int64_t max_pixels = vm["max-pixels"].as<int64_t>();
  const int max_tokens = vm["max-tokens"].as<int>();
  if (max_tokens < 1) return UsageError(kName, "--max-tokens must be >= 1");
  const absl::Duration timeout = absl::Seconds(vm["timeout"].as<double>());
  auto keys = ApiKeys(vm);
  if (!keys.ok()) return UsageError(kName, std::string(keys.status().message()));
  const std::string key = keys->empty() ? "" : keys->front();

  std::vector<niah::Needle> needles;
  if (vm.count("needles")) {
    auto loaded = niah::LoadNeedles(vm["needles"].as<std::string>());
    if (!loaded.ok()) return UsageError(kName, std::string(loaded.status().message()));
    needles = *std::move(loaded);
  } else {
    needles = niah::DefaultNeedles();
  }
  const std::string haystack = vm["haystack"].as<std::string>();
  model::VideoInfo info;
  {
    auto reader = model::VideoReader::Open(haystack);
    if (!reader.ok()) return UsageError(kName, absl::StrCat("--haystack: ", reader.status().message()));
    info = (*reader)->info();
  }
  const model::VisionProcessorConfig video = model::VisionProcessorConfig::VideoDefaults();
  auto geometry = niah::FitGeometry(info.width, info.height, max_pixels / (video.factor() * video.factor()), fps, video);
  if (!geometry.ok()) return UsageError(kName, absl::StrCat("--max-pixels: ", geometry.status().message()));

  std::unique_ptr<ChildServer> child;
  if (!serve_argv.empty()) {
    std::cerr << "q3vl niah: starting q3vl serve for " << vm["model"].as<std::string>() << "..." << std::endl;
    auto started = ChildServer::Start(serve_argv);
    if (!started.ok()) return Fail(kName, started.status());
    child = *std::move(started);
  }
  const std::string endpoint_url = child ? child->url() : vm["endpoint"].as<std::string>();
  auto endpoint = niah::Endpoint::Parse(endpoint_url);
  if (!endpoint.ok()) return UsageError(kName, std::string(endpoint.status().message()));

  const std::filesystem::path out = vm["out"].as<std::string>();
  const std::string results = (out / "results.jsonl").string();
  std::error_code ec;
  std::filesystem::create_directories(out / "videos", ec);
  if (ec) return Fail(kName, absl::UnavailableError(absl::StrCat("cannot create ", out.string(), ": ", ec.message())));
  if (std::filesystem::exists(results) && !vm["resume"].as<bool>()) {
    return UsageError(kName, absl::StrCat(results, " exists: add --resume to continue it, or choose another --out"));
  }
  auto done = niah::RecoverResults(results);
  if (!done.ok()) return Fail(kName, done.status());

  std::string model_name = vm.count("served-model-name") ? vm["served-model-name"].as<std::string>() : "";
  if (model_name.empty()) {
    auto models = niah::GetJson(*endpoint, "/v1/models", key, absl::Seconds(30));
    if (!models.ok()) return Fail(kName, models.status());
    if (models->status != 200 || !models->body.is_object() || !models->body.contains("data") ||
        models->body["data"].empty()) {
      return Fail(kName, absl::UnavailableError(absl::StrCat("GET /v1/models answered ", models->status, ": ", models->text)));
    }
    model_name = models->body["data"][0].value("id", "");
  }

  // The questions in order: lengths rising, depths falling, the needles, then a needle's
  // questions (the header says why).
  struct Item {
    int64_t length;
    double depth;
    const niah::Needle* needle;
    int question;
  };
  std::vector<Item> items;
  std::vector<int64_t> by_length = *lengths;
  std::sort(by_length.begin(), by_length.end());
  std::vector<double> by_depth = *depths;
  std::sort(by_depth.begin(), by_depth.end(), std::greater<>());
  for (int64_t length : by_length) {
    for (double d : by_depth) {
      for (const niah::Needle& n : needles) {
        for (int q = 0; q < static_cast<int>(n.questions.size()); ++q) items.push_back({length, d, &n, q});
      }
    }
  }
  const bool score = !vm["no-logprobs"].as<bool>();
  // The server's cumulative vision seconds (q3vl serve's /metrics); nullopt where it has none.
  auto vision_seconds = [&]() -> std::optional<double> {
    auto r = niah::GetJson(*endpoint, "/metrics", key, absl::Seconds(30));
    if (!r.ok() || r->status != 200) return std::nullopt;
    return niah::PrometheusValue(r->text, "q3vl:vision_encode_seconds_total");
  };
  int64_t todo = 0;
  for (const Item& it : items) {
    todo += done->count(niah::CellKey{it.length, it.depth, it.needle->id, it.question}.ToString()) ? 0 : 1;
  }
  std::cerr << "q3vl niah: " << items.size() << " questions (" << lengths->size() << " lengths x " << depths->size()
            << " depths x " << needles.size() << " needles)" << (todo < static_cast<int64_t>(items.size())
                                                                      ? absl::StrCat(", ", items.size() - todo, " already in ", results)
                                                                      : "")
            << "; frames " << geometry->width << "x" << geometry->height << " at " << fps << " fps, "
            << geometry->tokens_per_group() << " tokens per frame group; model " << model_name << " at "
            << endpoint_url << std::endl;

  const auto start = std::chrono::steady_clock::now();
  int64_t answered = 0, correct = 0, errors = 0;
  std::string cached_video_path, cached_data_url;
  for (size_t i = 0; i < items.size(); ++i) {
    const Item& it = items[i];
    const niah::CellKey cell_key{it.length, it.depth, it.needle->id, it.question};
    if (done->count(cell_key.ToString())) continue;
    auto cell = niah::PlanCell(*geometry, it.length, it.depth);
    if (!cell.ok()) return Fail(kName, cell.status());
    const std::string video_path = (out / "videos" / absl::StrFormat("%d-%.4f-%s.mp4", it.length, it.depth, it.needle->id)).string();
    if (cached_video_path != video_path) {
      if (!cached_video_path.empty() && !vm["keep-videos"].as<bool>()) std::filesystem::remove(cached_video_path, ec);
      if (absl::Status st = niah::ComposeCellVideo(haystack, it.needle->image, *geometry, *cell, video_path); !st.ok()) {
        return Fail(kName, st);
      }
      cached_video_path = video_path;
      auto bytes = ReadFile(video_path);
      if (!bytes.ok()) return Fail(kName, bytes.status());
      cached_data_url = absl::StrCat("data:video/mp4;base64,", absl::Base64Escape(*bytes));
    }
    const niah::Question& q = it.needle->questions[it.question];
    Json body = {{"model", model_name},
                 {"messages", Json::array({{{"role", "user"},
                                            {"content", Json::array({{{"type", "video_url"}, {"video_url", {{"url", cached_data_url}}}},
                                                                     {{"type", "text"}, {"text", q.text}}})}}})},
                 {"max_tokens", max_tokens},
                 {"temperature", 0},
                 {"mm_processor_kwargs",
                  {{"fps", cell->kwargs_fps}, {"max_frames", cell->kwargs_max_frames},
                   {"min_pixels", cell->kwargs_min_pixels}, {"max_pixels", cell->kwargs_max_pixels}}}};
    const std::optional<double> vision_before = vision_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    auto reply = niah::PostJson(*endpoint, "/v1/chat/completions", body, key, timeout);
    const double latency = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!reply.ok()) return Fail(kName, reply.status());  // unreachable server: stop; --resume continues
    // The needle group's time, as its timestamp says.
    const double needle_time = (static_cast<double>(cell->needle_first_frame) +
                                static_cast<double>(cell->needle_first_frame + video.temporal_patch_size - 1)) /
                               (2.0 * fps);
    Json line = {{"key", cell_key.ToString()},
                 {"length", it.length},
                 {"depth", it.depth},
                 {"needle", it.needle->id},
                 {"question", it.question},
                 {"kind", q.kind == niah::QuestionKind::kWhen ? "when" : "what"},
                 {"visual_tokens", cell->visual_tokens},
                 {"frame_groups", cell->groups},
                 {"needle_group", cell->needle_group},
                 {"needle_timestamp", cell->needle_timestamp},
                 {"needle_time_s", needle_time},
                 {"latency_s", latency}};
    std::string verdict;
    if (reply->status == 200 && reply->body.is_object() && reply->body.contains("choices")) {
      const std::string answer = reply->body["choices"][0]["message"].value("content", "");
      const bool right = q.kind == niah::QuestionKind::kWhen
                             ? niah::TimeMatches(answer, needle_time, video.temporal_patch_size / static_cast<double>(fps))
                             : niah::AnswerMatches(answer, q.answers);
      line["answer"] = answer;
      line["correct"] = right;
      const auto [prompt_tokens, cached_tokens] = UsageTokens(reply->body);
      line["prompt_tokens"] = prompt_tokens;
      line["cached_tokens"] = cached_tokens;
      if (score && prompt_tokens > 0) {
        // The reference answer as the assistant's open turn; its tokens start where the asked
        // prompt ended, and the positions before come from the prefix cache.
        // A "when" answer is the needle group's timestamp as the prompt spells it ("4.2 seconds").
        const std::string reference =
            q.kind == niah::QuestionKind::kWhen
                ? std::string(absl::StripSuffix(absl::StripPrefix(cell->needle_timestamp, "<"), ">"))
                : q.answers.front();
        Json scoring = body;
        scoring["messages"].push_back({{"role", "assistant"}, {"content", reference}});
        scoring["add_generation_prompt"] = false;
        scoring["continue_final_message"] = true;
        scoring["max_tokens"] = 1;
        scoring["prompt_logprobs"] = 0;
        scoring["prompt_logprobs_start"] = prompt_tokens;
        auto scored = niah::PostJson(*endpoint, "/v1/chat/completions", scoring, key, timeout);
        if (!scored.ok()) return Fail(kName, scored.status());
        line["reference"] = reference;
        if (auto logprob = AnswerLogprob(*scored, prompt_tokens); logprob.ok()) {
          line["answer_logprob"] = logprob->first;
          line["answer_tokens"] = logprob->second;
          const auto [score_prompt, score_cached] = UsageTokens(scored->body);
          line["score_prompt_tokens"] = score_prompt;
          line["score_cached_tokens"] = score_cached;
        } else {
          line["score_error"] = std::string(logprob.status().message());
        }
      }
      ++answered;
      correct += right ? 1 : 0;
      verdict = right ? "right" : "wrong";
    } else {
      // The cell could not be served (too long for the context, say): recorded, not retried.
      line["error"] = {{"status", reply->status},
                       {"message", reply->body.is_object() && reply->body.contains("error")
                                       ? reply->body["error"].value("message", reply->text)
                                       : reply->text}};
      ++errors;
      verdict = absl::StrCat("error ", reply->status);
    }
    if (const std::optional<double> vision_after = vision_seconds(); vision_before && vision_after) {
      line["vision_s"] = *vision_after - *vision_before;
    }
    if (absl::Status st = niah::AppendResult(results, line); !st.ok()) return Fail(kName, st);
    const int64_t finished = answered + errors;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (line.contains("answer_logprob")) {
      absl::StrAppend(&verdict, absl::StrFormat(", log p %.2f", line["answer_logprob"].get<double>()));
    }
    std::cerr << absl::StrFormat("q3vl niah: [%d/%d] %.0f%%  %dk depth %.2f %s %s: %s (%.1f s)  ETA %s\n",
                                 finished, todo, 100.0 * finished / std::max<int64_t>(1, todo), it.length / 1024, it.depth,
                                 it.needle->id, q.kind == niah::QuestionKind::kWhen ? "when" : "what", verdict, latency,
                                 Duration(elapsed / finished * static_cast<double>(todo - finished)))
              << std::flush;
  }
  if (!cached_video_path.empty() && !vm["keep-videos"].as<bool>()) std::filesystem::remove(cached_video_path, ec);

  // The summary and report over the whole results file (earlier runs included).
  std::vector<Json> rows;
  int64_t prompt_total = 0, cached_total = 0, score_prompt_total = 0, score_cached_total = 0;
  std::ifstream in(results);
  for (std::string row; std::getline(in, row);) {
    Json j = Json::parse(row, nullptr, false);
    if (j.is_discarded() || !j.contains("length")) continue;
    prompt_total += j.value("prompt_tokens", 0);
    cached_total += j.value("cached_tokens", 0);
    score_prompt_total += j.value("score_prompt_tokens", 0);
    score_cached_total += j.value("score_cached_tokens", 0);
    rows.push_back(std::move(j));
  }
  // What the prefix cache saved: the share of the questions' prompt tokens prefilled, against
  // every question prefilled cold (the scoring requests are counted apart: each repeats its
  // question's prompt and prefills only the answer).
  const double prefilled = prompt_total > 0 ? static_cast<double>(prompt_total - cached_total) / prompt_total : 1.0;
  Json summary = {{"endpoint", child ? absl::StrCat("q3vl serve --model ", vm["model"].as<std::string>()) : endpoint_url},
                  {"model", model_name},
                  {"prompt_tokens", prompt_total},
                  {"cached_tokens", cached_total},
                  {"prefilled_fraction", prefilled},
                  {"scoring_prompt_tokens", score_prompt_total},
                  {"scoring_cached_tokens", score_cached_total},
                  {"cells", Json::array()}};
  for (const niah::CellSummary& c : niah::SummarizeCells(rows)) {
    Json cell = {{"length", c.length}, {"depth", c.depth}, {"accuracy", c.accuracy()}, {"questions", c.asked},
                 {"errors", c.errors}, {"scored", c.scored},
                 {"mean_answer_logprob", c.scored > 0 ? Json(c.mean_logprob()) : Json(nullptr)},
                 {"vision_s", c.timed > 0 ? Json(c.vision_s) : Json(nullptr)}};
    summary["cells"].push_back(std::move(cell));
  }
  std::ofstream((out / "summary.json").string()) << summary.dump(2) << "\n";
  auto report = niah::WriteReport(rows, needles, out.string(), absl::StrCat("q3vl niah: ", model_name));
  if (!report.ok()) return Fail(kName, report.status());
  std::cerr << absl::StrFormat("q3vl niah: prefilled %d of %d prompt tokens (%.0f%%; the prefix cache held the rest)",
                               prompt_total - cached_total, prompt_total, 100.0 * prefilled);
  if (score_prompt_total > 0) {
    std::cerr << absl::StrFormat("; scoring prefilled %d of %d", score_prompt_total - score_cached_total, score_prompt_total);
  }
  std::cerr << "\n";
  std::cerr << "q3vl niah: " << answered << " answered this run (" << correct << " right), " << errors
            << " errors; results in " << results << ", accuracy per cell in " << (out / "summary.json").string()
            << ", report " << report->html << " (heat map " << report->heatmap_png << ")" << std::endl;
  return 0;
}

}  // namespace q3vl::launcher

// q3vl run as its users run it: the demo batch file on one rank and on a 2-replica mpirun job
// (identical greedy results, both replicas busy), bad lines as error lines while the job goes
// on, bad arguments refused before the model loads, resuming (skip what is done, cut a torn
// line, --retry-failed), and kill -9 of a rank and of a whole job at a random moment followed
// by a rerun: exactly one line per request, the same bodies as a clean run.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl {
namespace {

using Json = nlohmann::json;
using testing::CommandResult;
namespace fs = std::filesystem;

const std::string kMpirun = std::string(Q3VL_MPIEXEC) + " --allow-run-as-root --oversubscribe -np 2 ";

CommandResult RunQ3vl(const std::string& args, const std::string& prefix = "") {
  return testing::RunCommand(prefix + Q3VL_BINARY + " " + args + " 2>&1");
}

// The demo checkpoint, named as the demo file's requests name it.
const std::string& Model() {
  static const std::string dir = [] {
    const std::string d = testing::ScratchDir() + "/demo-model";
    const CommandResult r = RunQ3vl("make-model --out " + d + " --seed 0");
    EXPECT_EQ(r.code, 0) << r.output;
    return d;
  }();
  return dir;
}

std::vector<Json> ReadLines(const std::string& path) {
  std::vector<Json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    out.push_back(Json::parse(line, nullptr, false));
    EXPECT_FALSE(out.back().is_discarded()) << "not JSON: " << line;
  }
  return out;
}

// Result lines by custom_id; fails on a repeated one.
std::map<std::string, Json> ByCustomId(const std::vector<Json>& lines) {
  std::map<std::string, Json> out;
  for (const Json& l : lines) {
    const std::string key = l["custom_id"].is_string() ? l["custom_id"].get<std::string>() : l["id"].get<std::string>();
    EXPECT_TRUE(out.emplace(key, l).second) << "two result lines for " << key;
  }
  return out;
}

// What must not differ between two runs of a greedy request: the choices (their logprobs'
// tokens; the values may differ in the last bits with another thread count) and the usage
// (its token counts).
Json Stable(const Json& line) {
  if (line["response"]["body"].is_null()) return line["error"];
  Json choices = line["response"]["body"]["choices"];
  for (Json& c : choices) {
    if (c["logprobs"].is_null()) continue;
    Json tokens = Json::array();
    for (const Json& t : c["logprobs"]["content"]) tokens.push_back(t["token"]);
    c["logprobs"] = tokens;
  }
  // The prefix cache's share depends on which replica ran what before: not part of the answer.
  Json usage = line["response"]["body"]["usage"];
  usage.erase("prompt_tokens_details");
  return Json{{"choices", choices}, {"usage", usage}};
}

std::string RunArgs(const std::string& input, const std::string& output, const std::string& extra = "") {
  return "run --model " + Model() + " --input " + input + " --output " + output + " " + extra;
}

TEST(BatchRunTest, DemoFileOnOneRankAndTwoReplicas) {
  const std::string input = testing::TestDataDir() + "/batch_demo.jsonl";
  const std::string one = testing::ScratchDir() + "/demo1.jsonl", two = testing::ScratchDir() + "/demo2.jsonl";
  const std::string summary = testing::ScratchDir() + "/summary.json";
  CommandResult r = RunQ3vl(RunArgs(input, one));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("12 succeeded, 0 failed"), std::string::npos) << r.output;
  const auto single = ByCustomId(ReadLines(one));
  ASSERT_EQ(single.size(), 12u);
  for (const auto& [id, line] : single) {
    EXPECT_EQ(line["response"]["status_code"], 200) << line.dump();
    const Json& body = line["response"]["body"];
    EXPECT_EQ(body["model"], Model());  // --model as given, as vLLM names it
    EXPECT_GT(body["usage"]["completion_tokens"].get<int64_t>(), 0);
    EXPECT_EQ(body["object"], id == "completion" ? "text_completion" : "chat.completion");
  }
  EXPECT_EQ(single.at("with-logprobs")["response"]["body"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 3u);

  // The same greedy request through generate gives the same text.
  r = RunQ3vl("generate --model " + Model() + " --prompt 'Write a haiku about the sea.' --max-new-tokens 20 --json");
  ASSERT_EQ(r.code, 0) << r.output;
  const Json generated = Json::parse(r.output.substr(r.output.find('{')));
  EXPECT_EQ(single.at("haiku")["response"]["body"]["choices"][0]["message"]["content"], generated["text"]);

  // Two replicas under mpirun (no --mesh: one replica per rank): identical greedy bodies.
  r = RunQ3vl(RunArgs(input, two, "--max-concurrency 2 --summary " + summary), kMpirun);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("running 2 single-rank replicas"), std::string::npos) << r.output;
  const auto dual = ByCustomId(ReadLines(two));
  ASSERT_EQ(dual.size(), 12u);
  for (const auto& [id, line] : single) {
    if (id == "sampled-story") continue;  // sampled: seeded per request, but not a greedy contract
    EXPECT_EQ(Stable(dual.at(id)), Stable(line)) << id;
  }
  std::ifstream in(summary);
  const Json s = Json::parse(in);
  EXPECT_EQ(s["succeeded"], 12);
  ASSERT_EQ(s["per_replica"].size(), 2u);
  EXPECT_GT(s["per_replica"][0].get<int64_t>(), 0) << s.dump();
  EXPECT_GT(s["per_replica"][1].get<int64_t>(), 0) << s.dump();
}

TEST(BatchRunTest, BadLinesBecomeErrorLinesAndTheJobGoesOn) {
  const std::string dir = testing::ScratchDir() + "/bad";
  fs::create_directories(dir);
  fs::copy_file(testing::TestDataDir() + "/media/shapes_333x517.jpg", dir + "/ok.jpg");
  std::ofstream(dir + "/broken.png") << "\x89PNG\r\n\x1a\nnot really";
  fs::copy_file(testing::TestDataDir() + "/media/testsrc2_320x240_4s.mp4", dir + "/clip.mp4");
  auto chat = [](const std::string& id, Json content, Json extra = Json::object()) {
    Json body = {{"messages", {{{"role", "user"}, {"content", content}}}}, {"max_tokens", 4}, {"temperature", 0}};
    for (auto it = extra.begin(); it != extra.end(); ++it) body[it.key()] = *it;
    return Json{{"custom_id", id}, {"method", "POST"}, {"url", "/v1/chat/completions"}, {"body", body}}.dump();
  };
  auto image = [](const std::string& url) {
    return Json::array({{{"type", "image_url"}, {"image_url", {{"url", url}}}}, {{"type", "text"}, {"text", "?"}}});
  };
  const std::string outside = testing::TestDataDir() + "/media/shapes_333x517.jpg";
  const std::vector<std::string> lines = {
      chat("good", "hello"),
      "this is not json",
      R"({"method": "POST", "url": "/v1/chat/completions", "body": {}})",
      Json{{"custom_id", "bad-url"}, {"method", "POST"}, {"url", "/v1/embeddings"}, {"body", Json::object()}}.dump(),
      chat("streaming", "hi", {{"stream", true}}),
      chat("broken-image", image("broken.png")),
      chat("missing-image", image("nowhere.jpg")),
      chat("outside", image(outside)),
      chat("too-long", "hi", {{"max_tokens", 10000000}}),
      chat("wrong-model", "hi", {{"model", "gpt-4o"}}),
      chat("unknown-param", "hi", {{"frobnicate", 1}}),
      chat("mp4-as-image", image("clip.mp4")),
      chat("good-image", image("ok.jpg")),
  };
  std::ofstream in(dir + "/in.jsonl");
  for (const std::string& l : lines) in << l << "\n";
  in.close();
  const CommandResult r = RunQ3vl(RunArgs(dir + "/in.jsonl", dir + "/out.jsonl"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto out = ByCustomId(ReadLines(dir + "/out.jsonl"));
  ASSERT_EQ(out.size(), lines.size());
  EXPECT_EQ(out.at("good")["response"]["status_code"], 200);
  EXPECT_EQ(out.at("good-image")["response"]["status_code"], 200);
  const struct { const char* key; int status; const char* says; } errors[] = {
      {"line-2", 400, "not valid JSON"},
      {"line-3", 400, "custom_id"},
      {"bad-url", 400, "/v1/embeddings"},
      {"streaming", 400, "stream"},
      {"broken-image", 400, "image 1"},
      {"missing-image", 400, "nowhere.jpg"},
      {"outside", 400, "outside the allowed"},
      {"too-long", 400, "context length"},
      {"wrong-model", 404, "gpt-4o"},
      {"unknown-param", 400, "frobnicate"},
      {"mp4-as-image", 400, "MP4"},
  };
  for (const auto& e : errors) {
    const Json& line = out.at(e.key);
    EXPECT_EQ(line["response"]["status_code"], e.status) << line.dump();
    EXPECT_TRUE(line["response"]["body"].is_null());
    EXPECT_NE(line["error"]["message"].get<std::string>().find(e.says), std::string::npos) << line.dump();
  }
  EXPECT_NE(r.output.find("2 succeeded, 11 failed"), std::string::npos) << r.output;
}

TEST(BatchRunTest, BadArgumentsAreRefusedBeforeTheModelLoads) {
  const std::string dir = testing::ScratchDir() + "/args";
  fs::create_directories(dir);
  std::ofstream(dir + "/dup.jsonl") << R"({"custom_id": "x"})" << "\n" << R"({"custom_id": "y"})" << "\n"
                                    << R"({"custom_id": "x"})" << "\n";
  CommandResult r = RunQ3vl(RunArgs(dir + "/dup.jsonl", dir + "/out.jsonl"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("duplicate custom_id: \"x\" (lines 1 and 3)"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("loading"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/out.jsonl"));

  r = RunQ3vl(RunArgs(testing::TestDataDir() + "/batch_demo.jsonl", dir + "/no/such/dir/out.jsonl"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("loading"), std::string::npos) << r.output;

  r = RunQ3vl(RunArgs(dir + "/absent.jsonl", dir + "/out.jsonl"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("absent.jsonl"), std::string::npos) << r.output;
  r = RunQ3vl(RunArgs(testing::TestDataDir() + "/batch_demo.jsonl", dir + "/out.jsonl", "--max-concurrency 0"));
  EXPECT_EQ(r.code, 2) << r.output;
}

// A workload long enough to be killed in the middle of: greedy text requests.
std::string KillWorkload(const std::string& dir, int n) {
  std::ofstream in(dir + "/in.jsonl");
  for (int i = 0; i < n; ++i) {
    in << Json{{"custom_id", "req-" + std::to_string(i)}, {"method", "POST"}, {"url", "/v1/chat/completions"},
               {"body", {{"messages", {{{"role", "user"}, {"content", "Count to " + std::to_string(i) + "."}}}},
                         {"max_tokens", 24 + i % 17}, {"temperature", 0}, {"ignore_eos", true}}}}
              .dump()
       << "\n";
  }
  return dir + "/in.jsonl";
}

int64_t CountLines(const std::string& path) {
  std::ifstream in(path);
  return std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n');
}

// Starts `command` (the shell execs it) in a process group of its own, its output to `log`;
// returns its pid, which is also the group's.
pid_t Spawn(const std::string& command, const std::string& log = "/dev/null") {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", ("exec " + command + " >" + log + " 2>&1").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  return pid;
}

// Waits until `path` has at least `lines` lines (or `timeout`).
bool WaitForLines(const std::string& path, int64_t lines, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (CountLines(path) >= lines) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

TEST(BatchRunTest, KilledAtAnyMomentAResumeLosesAndRepeatsNothing) {
  const std::string dir = testing::ScratchDir() + "/kill";
  fs::create_directories(dir);
  const int n = 60;
  const std::string input = KillWorkload(dir, n);
  const std::string clean = dir + "/clean.jsonl", out = dir + "/out.jsonl";
  CommandResult r = RunQ3vl(RunArgs(input, clean, "--max-concurrency 8"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto reference = ByCustomId(ReadLines(clean));
  ASSERT_EQ(reference.size(), static_cast<size_t>(n));

  // 1. A 2-replica job: one rank is killed outright once some results are in.
  pid_t job = Spawn(kMpirun + Q3VL_BINARY + " " + RunArgs(input, out, "--max-concurrency 4"));
  ASSERT_TRUE(WaitForLines(out, 5, absl::Seconds(60)));
  const CommandResult ranks = testing::RunCommand("pgrep -f -- '^" + std::string(Q3VL_BINARY) + " run .*" + out + "'");
  std::vector<pid_t> pids;
  std::istringstream ps(ranks.output);
  for (pid_t p; ps >> p;) pids.push_back(p);
  ASSERT_EQ(pids.size(), 2u) << ranks.output;
  kill(pids[1], SIGKILL);
  int status = 0;
  waitpid(job, &status, 0);
  EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the job survived a killed rank";
  kill(-job, SIGKILL);  // anything left of the group
  const int64_t after_first = CountLines(out);
  EXPECT_LT(after_first, n) << "the job finished before the kill; make the workload longer";

  // 2. The same job again, this time mpirun itself killed: its ranks must not linger (they
  // would race the rerun; the output's lock would refuse it).
  job = Spawn(kMpirun + Q3VL_BINARY + " " + RunArgs(input, out, "--max-concurrency 2"));
  ASSERT_TRUE(WaitForLines(out, after_first + 2, absl::Seconds(60)));
  kill(job, SIGKILL);
  waitpid(job, &status, 0);
  bool gone = false;
  for (int i = 0; i < 300 && !gone; ++i) {
    gone = testing::RunCommand("pgrep -f -- '^" + std::string(Q3VL_BINARY) + " run .*" + out + "'").output.empty();
    if (!gone) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(gone) << "ranks outlived a killed mpirun by 30 s";
  kill(-job, SIGKILL);
  const int64_t after_second = CountLines(out);

  // 3. A single-rank run of the rest, killed (SIGKILL, no goodbye) once it has made progress.
  job = Spawn(std::string(Q3VL_BINARY) + " " + RunArgs(input, out, "--max-concurrency 4"));
  ASSERT_TRUE(WaitForLines(out, after_second + 3, absl::Seconds(60)));
  kill(-job, SIGKILL);
  waitpid(job, &status, 0);
  // A torn last line, as a kill mid-write would leave.
  std::ofstream(out, std::ios::app) << R"({"id": "batch-x", "custom_id": "req-)";

  // 4. The rerun finishes the job.
  r = RunQ3vl(RunArgs(input, out, "--max-concurrency 8"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("cut a partial last line"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("already done"), std::string::npos) << r.output;
  const auto resumed = ByCustomId(ReadLines(out));
  ASSERT_EQ(resumed.size(), static_cast<size_t>(n));
  for (const auto& [id, line] : reference) EXPECT_EQ(Stable(resumed.at(id)), Stable(line)) << id;

  // 5. Nothing left: a rerun adds nothing.
  r = RunQ3vl(RunArgs(input, out));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("nothing to do"), std::string::npos) << r.output;
  EXPECT_EQ(CountLines(out), n);
}

TEST(BatchRunTest, SigtermStopsCleanlyAndARerunFinishes) {
  const std::string dir = testing::ScratchDir() + "/sigterm";
  fs::create_directories(dir);
  const int n = 30;
  const std::string input = KillWorkload(dir, n), out = dir + "/out.jsonl", log = dir + "/log";
  const pid_t job = Spawn(std::string(Q3VL_BINARY) + " " + RunArgs(input, out, "--max-concurrency 4 --drain-timeout 0.5"), log);
  ASSERT_TRUE(WaitForLines(out, 3, absl::Seconds(60)));
  const absl::Time sent = absl::Now();
  kill(job, SIGTERM);
  int status = 0;
  waitpid(job, &status, 0);
  const double seconds = absl::ToDoubleSeconds(absl::Now() - sent);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(WIFEXITED(status)) << text;
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM) << text;
  EXPECT_LT(seconds, 10.0) << "the drain is bounded by --drain-timeout";
  EXPECT_NE(text.find("q3vl run: stopped: "), std::string::npos) << text;
  const int64_t written = static_cast<int64_t>(ByCustomId(ReadLines(out)).size());  // whole lines, no repeats
  EXPECT_LT(written, n);
  const CommandResult r = RunQ3vl(RunArgs(input, out));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(ByCustomId(ReadLines(out)).size(), static_cast<size_t>(n));
}

TEST(BatchRunTest, RetryFailedRunsOnlyTheFailedAgain) {
  const std::string dir = testing::ScratchDir() + "/retry";
  fs::create_directories(dir);
  std::ofstream(dir + "/in.jsonl")
      << Json{{"custom_id", "ok"}, {"url", "/v1/completions"}, {"body", {{"prompt", "hi"}, {"max_tokens", 3}}}}.dump() << "\n"
      << Json{{"custom_id", "img"}, {"url", "/v1/chat/completions"},
              {"body", {{"max_tokens", 3}, {"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", {{"url", "later.jpg"}}}}}}}}}}}}.dump()
      << "\n";
  CommandResult r = RunQ3vl(RunArgs(dir + "/in.jsonl", dir + "/out.jsonl"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(ByCustomId(ReadLines(dir + "/out.jsonl")).at("img")["response"]["status_code"], 400);
  const Json first_ok = ByCustomId(ReadLines(dir + "/out.jsonl")).at("ok");
  fs::copy_file(testing::TestDataDir() + "/media/shapes_333x517.jpg", dir + "/later.jpg");  // the missing file appears
  r = RunQ3vl(RunArgs(dir + "/in.jsonl", dir + "/out.jsonl"));
  EXPECT_NE(r.output.find("nothing to do"), std::string::npos) << r.output;
  r = RunQ3vl(RunArgs(dir + "/in.jsonl", dir + "/out.jsonl", "--retry-failed"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto out = ByCustomId(ReadLines(dir + "/out.jsonl"));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out.at("img")["response"]["status_code"], 200);
  EXPECT_EQ(out.at("ok"), first_ok);  // untouched
}

}  // namespace
}  // namespace q3vl

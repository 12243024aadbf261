// q3vl make-model --out DIR: a random-weight demo checkpoint in the Hugging Face layout.
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "launcher/options.h"
#include "model/demo_model.h"

namespace q3vl::launcher {

int MakeModelCommand(const Args& args) {
  constexpr char kName[] = "make-model";
  po::options_description options("options");
  options.add_options()
      ("out", po::value<std::string>()->required(), "directory to write (created; an existing non-empty one only with --force)")
      ("force", po::bool_switch(), "write into --out even when it is not empty (its checkpoint files are replaced)")
      ("config", po::value<std::string>(), "config.json to use instead of the built-in demo config")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed of the weights")
      ("shards", po::value<int>()->default_value(1), "number of safetensors shards (>1 writes an index)")
      ("per-expert", po::bool_switch(), "write experts.N.{gate,up,down}_proj.weight instead of the fused layout")
      ("tokenizer-dir", po::value<std::string>()->default_value(Q3VL_DEFAULT_TOKENIZER_DIR),
       "copy tokenizer.json and tokenizer_config.json (with the chat template) from here; \"\" for none");
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--out DIR [options]", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  model::ModelConfig config = model::DemoConfig();
  if (vm.count("config")) {
    auto loaded = model::ModelConfig::FromFile(vm["config"].as<std::string>());
    if (!loaded.ok()) return Fail(kName, loaded.status());
    config = *loaded;
  }
  if (vm["shards"].as<int>() < 1) return UsageError(kName, "--shards must be >= 1");
  const std::string out = vm["out"].as<std::string>();
  std::error_code ec;
  if (std::filesystem::exists(out, ec) && !vm["force"].as<bool>()) {
    if (!std::filesystem::is_directory(out, ec)) return UsageError(kName, absl::StrCat(out, " exists and is not a directory"));
    if (!std::filesystem::is_empty(out, ec)) {
      return UsageError(kName, absl::StrCat(out, " is not empty (", std::filesystem::exists(std::filesystem::path(out) / "config.json")
                                                                   ? "it holds a checkpoint"
                                                                   : "it holds files",
                                            "); choose another --out, or pass --force to overwrite"));
    }
  }
  std::cerr << "make-model: writing a random-weight checkpoint to " << out << "..." << std::endl;
  absl::Status s = model::WriteRandomCheckpoint(config, {.dir = out, .seed = vm["seed"].as<uint64_t>(),
                                                         .num_shards = vm["shards"].as<int>(),
                                                         .per_expert_layout = vm["per-expert"].as<bool>()});
  if (!s.ok()) return Fail(kName, s);
  const std::string tokenizer_dir = vm["tokenizer-dir"].as<std::string>();
  if (!tokenizer_dir.empty()) {
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
      std::error_code error;
      std::filesystem::copy_file(std::filesystem::path(tokenizer_dir) / file, std::filesystem::path(out) / file,
                                 std::filesystem::copy_options::overwrite_existing, error);
      if (error) {
        return Fail(kName, absl::NotFoundError(absl::StrCat(tokenizer_dir, "/", file, ": cannot copy (",
                                                            error.message(), "); --tokenizer-dir \"\" skips it")));
      }
    }
  }
  std::cerr << "make-model: wrote " << out << std::endl;
  return 0;
}

}  // namespace q3vl::launcher

#include "launcher/options.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace q3vl::launcher {

int Fail(const char* command, const absl::Status& status) {
  std::cerr << "q3vl " << command << ": " << status.message() << std::endl;
  return 1;
}

int UsageError(const char* command, const std::string& message) {
  std::cerr << "q3vl " << command << ": " << message << " (see q3vl " << command << " --help)" << std::endl;
  return 2;
}

std::variant<po::variables_map, int> ParseArgs(const char* command, const char* synopsis,
                                               const po::options_description& options,
                                               const po::positional_options_description& positional,
                                               const Args& args) {
  po::options_description all(options);
  all.add_options()("help,h", "show this help");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(positional).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: q3vl " << command << " " << synopsis << "\n\n" << all << std::endl;
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    return UsageError(command, e.what());
  }
  return vm;
}

absl::StatusOr<std::vector<std::string>> ApiKeys(const po::variables_map& vm) {
  std::vector<std::string> keys;
  if (vm.count("api-key-file")) {
    const std::string path = vm["api-key-file"].as<std::string>();
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("--api-key-file ", path, ": cannot open"));
    for (std::string line; std::getline(in, line);) {
      const absl::string_view key = absl::StripAsciiWhitespace(line);
      if (!key.empty() && key[0] != '#') keys.emplace_back(key);
    }
    if (keys.empty()) return absl::InvalidArgumentError(absl::StrCat("--api-key-file ", path, ": no keys in it"));
  } else if (const char* env = std::getenv("Q3VL_API_KEY"); env != nullptr && *env != '\0') {
    keys.emplace_back(absl::StripAsciiWhitespace(env));
  }
  return keys;
}

std::string SelfExecutable() {
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : "q3vl";
}

}  // namespace q3vl::launcher

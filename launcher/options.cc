#include "launcher/options.h"

#include <iostream>

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

}  // namespace q3vl::launcher

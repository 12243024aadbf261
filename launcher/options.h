// Command-line parsing shared by the subcommands (Boost.Program_options underneath): parses
// Args against a description, handles --help, and turns parse errors into usage errors.
#ifndef Q3VL_LAUNCHER_OPTIONS_H_
#define Q3VL_LAUNCHER_OPTIONS_H_

#include <utility>  // Boost 1.74 under C++20 needs it before its headers

#include <boost/program_options.hpp>
#include <variant>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "launcher/commands.h"

namespace q3vl::launcher {

namespace po = boost::program_options;

// Parses `args`. Returns the variables, or an exit code when the command should stop (help
// printed: 0, usage error: 2). `positional` names options that may be given positionally.
std::variant<po::variables_map, int> ParseArgs(const char* command, const char* synopsis,
                                               const po::options_description& options,
                                               const po::positional_options_description& positional,
                                               const Args& args);

// API keys: one per line of --api-key-file (blank lines and # comments skipped), else the
// Q3VL_API_KEY variable, else none. Never a flag: `ps` shows flags to every user.
absl::StatusOr<std::vector<std::string>> ApiKeys(const po::variables_map& vm);

// This q3vl binary's absolute path (to start it again: ranks, a child server).
std::string SelfExecutable();

}  // namespace q3vl::launcher

#endif  // Q3VL_LAUNCHER_OPTIONS_H_

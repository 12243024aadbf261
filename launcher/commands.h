// The q3vl subcommands. Each takes the arguments after its name, prints its own --help, and
// returns the process exit code (0 ok, 1 failure with one line on stderr, 2 usage error).
#ifndef Q3VL_LAUNCHER_COMMANDS_H_
#define Q3VL_LAUNCHER_COMMANDS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace q3vl::launcher {

using Args = std::vector<std::string>;

int ChatTemplateCommand(const Args& args);
int CoordinatorCommand(const Args& args);
int EvalCaseCommand(const Args& args);
int GenerateCommand(const Args& args);
int GroupCommand(const Args& args);
int MakeModelCommand(const Args& args);
int NiahCommand(const Args& args);
int PlanCommand(const Args& args);
int PreprocessCommand(const Args& args);
int RunCommand(const Args& args);
int ServeCommand(const Args& args);
int TokenizeCommand(const Args& args);

// Prints "q3vl <command>: <message>" to stderr and returns 1 (or 2 for InvalidArgument
// raised by argument parsing, see UsageError).
int Fail(const char* command, const absl::Status& status);
int UsageError(const char* command, const std::string& message);

}  // namespace q3vl::launcher

#endif  // Q3VL_LAUNCHER_COMMANDS_H_

// q3vl: the single binary; dispatches to subcommands.
#include <cstdio>
#include <cstring>
#include <iostream>

#include "launcher/commands.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const q3vl::launcher::Args&);
};

constexpr Command kCommands[] = {
    {"run", "a batch job: OpenAI batch JSONL in, results out (vllm run-batch's format), resumable; under mpirun on a mesh",
     q3vl::launcher::RunCommand},
    {"serve", "an OpenAI-compatible HTTP server (chat and completions, streaming, /health, /metrics)",
     q3vl::launcher::ServeCommand},
    {"coordinator", "the OpenAI endpoint over many replicas: routes by cached KV (image-aware) and load; replicas join over gRPC",
     q3vl::launcher::CoordinatorCommand},
    {"group", "one replica over the pods of a LeaderWorkerSet group: the leader runs mpirun over ssh, the workers serve ssh",
     q3vl::launcher::GroupCommand},
    {"niah", "long-video needle-in-a-haystack over an OpenAI endpoint: length x depth cells, scored, resumable JSONL",
     q3vl::launcher::NiahCommand},
    {"generate", "generation from a chat prompt (text, images, videos), a messages file or token ids, streamed",
     q3vl::launcher::GenerateCommand},
    {"eval-case", "run a golden reference case and write logits, positions and greedy tokens",
     q3vl::launcher::EvalCaseCommand},
    {"plan", "memory per rank for a model on a mesh: weights, workspace, KV pool, concurrent 32K/128K/256K sequences",
     q3vl::launcher::PlanCommand},
    {"make-model", "write a random-weight Qwen3-VL-MoE checkpoint in the Hugging Face layout",
     q3vl::launcher::MakeModelCommand},
    {"chat-template", "render chat messages with the chat template: {messages, kwargs} JSON in, {text, ids} out",
     q3vl::launcher::ChatTemplateCommand},
    {"preprocess", "one image or video through the vision processors: pixel_values, grid_thw (.npy)",
     q3vl::launcher::PreprocessCommand},
    {"tokenize", "text to token ids (or ids to text) with a tokenizer.json, JSON lines on stdin/stdout",
     q3vl::launcher::TokenizeCommand},
};

void PrintUsage(FILE* out) {
  std::fprintf(out,
               "q3vl: a runtime for Qwen3-VL Mixture-of-Experts models\n\n"
               "usage: q3vl <command> [options]   (q3vl <command> --help for its options; q3vl --version)\n\ncommands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-14s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  if (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version")) {
    std::printf("q3vl %s\n", Q3VL_VERSION);
    return 0;
  }
  if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    PrintUsage(stdout);
    return 0;
  }
  for (const Command& c : kCommands) {
    if (!std::strcmp(argv[1], c.name)) return c.run(q3vl::launcher::Args(argv + 2, argv + argc));
  }
  std::fprintf(stderr, "q3vl: unknown command \"%s\"\n\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}

// Synthetic media for vision_preprocess_bench: JPEGs encoded in memory (libjpeg), short MPEG-4
// Part 2 MP4s written with FFmpeg's libraries, and long H.264 MP4s encoded by the ffmpeg CLI
// (testsrc2). Stateless functions; files go where the caller says and are the caller's to delete.
#ifndef Q3VL_BENCHMARKS_BENCH_MEDIA_H_
#define Q3VL_BENCHMARKS_BENCH_MEDIA_H_

#include <string>

namespace q3vl::bench {

// Gradients plus a hashed texture (realistic entropy), quality 90, 4:2:0.
std::string SyntheticJpeg(int width, int height);

struct VideoSpec {
  int seconds = 0;
  int width = 0;
  int height = 0;
};
inline constexpr int kSyntheticFps = 30;

// MPEG-4 Part 2 at 30 fps, GOP 30, 2 B-frames, moving gradients. False on failure.
bool WriteMpeg4Video(const std::string& path, const VideoSpec& spec);

// True when an `ffmpeg` executable is on PATH.
bool HaveFfmpegCli();

// The ffmpeg command line that EncodeH264WithFfmpegCli runs.
std::string FfmpegH264Command(const std::string& path, const VideoSpec& spec);

// testsrc2 at 30 fps through libx264 (preset superfast: CABAC, B-frames, GOP 60), yuv420p MP4.
// Returns "" on success, else what went wrong.
std::string EncodeH264WithFfmpegCli(const std::string& path, const VideoSpec& spec);

// A path in the temp directory unique to this process: "<dir>/vision_preprocess_bench_<pid>_<name>".
std::string TempPath(const std::string& name);

}  // namespace q3vl::bench

#endif  // Q3VL_BENCHMARKS_BENCH_MEDIA_H_

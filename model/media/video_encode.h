// VideoWriter: RGB frames to an H.264 MP4 with FFmpeg's libraries (libx264, yuv420p, BT.601
// limited range, constant frame rate), for videos made here: the long-video NIAH cells, test
// fixtures. One writer per file; not synchronised.
#ifndef Q3VL_MODEL_MEDIA_VIDEO_ENCODE_H_
#define Q3VL_MODEL_MEDIA_VIDEO_ENCODE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/media/image.h"

namespace q3vl::model {

struct VideoWriterOptions {
  int64_t width = 0;   // even
  int64_t height = 0;  // even
  int fps = 2;         // frames per second (the stream's time base is 1 / fps)
  int crf = 18;        // libx264 quality: 0 lossless in luma, 18 visually lossless, 51 worst
  const char* preset = "veryfast";
  int threads = 0;     // 0: the encoder chooses
  // Each frame coded from itself and earlier frames only (no B-frames, no lookahead, no scene
  // cuts: keyframes every 4 s): two videos whose first N frames are equal decode those frames
  // alike, which is what lets requests about them share prefix-cache pages (the NIAH cells).
  bool causal = false;
};

class VideoWriter {
 public:
  // Creates `path` (MP4) and its H.264 stream. InvalidArgument for bad sizes or rates,
  // Unavailable when the encoder or the file cannot be opened.
  static absl::StatusOr<std::unique_ptr<VideoWriter>> Open(const std::string& path, const VideoWriterOptions& options);
  ~VideoWriter();  // Finish()es if the caller did not (errors then go unreported)
  VideoWriter(const VideoWriter&) = delete;
  VideoWriter& operator=(const VideoWriter&) = delete;

  // Appends one frame of the writer's size.
  absl::Status Write(const Image& frame);
  // Flushes the encoder and writes the trailer (the frame count MP4 readers see). Idempotent.
  absl::Status Finish();

  int64_t frames_written() const;

 private:
  struct Impl;
  explicit VideoWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_VIDEO_ENCODE_H_

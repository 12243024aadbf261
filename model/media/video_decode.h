// Frame-accurate video decoding with FFmpeg: frame i is the i-th in presentation order, as RGB24
// with swscale's defaults (PyAV's to_ndarray("rgb24")). Only requested frames are converted; the
// reader seeks to keyframes, decodes forward and lets the decoder drop unrequested non-reference
// frames, holding one frame plus a packet index. One VideoReader per thread, but its const methods
// (info, Reopen, KeyframeOf) may be shared. Bad or truncated files give a Status naming the file.
#ifndef Q3VL_MODEL_MEDIA_VIDEO_DECODE_H_
#define Q3VL_MODEL_MEDIA_VIDEO_DECODE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/media/image.h"

namespace q3vl::model {

struct VideoInfo {
  // As transformers' PyAV reader counts them: the container's frame count when it has one
  // (MP4), else the number of packets (WebM/Matroska have no count in the header).
  int64_t num_frames = 0;
  double fps = 0.0;  // average frame rate; 0 when the container does not say
  int64_t height = 0;
  int64_t width = 0;
  std::string codec;  // decoder name, e.g. "h264", "vp9"
};

struct VideoReaderOptions {
  int num_threads = 0;                     // decoder threads; 0 lets FFmpeg choose
  int64_t max_frame_pixels = 8192 * 8192;  // larger frames are rejected when opening
  bool sequential = false;                 // decode every frame from the start, never seek
  // Packets of frames that are not requested go to the decoder with AVDISCARD_NONREF: a frame no
  // other frame references is then not decoded at all. Frames that are decoded are unchanged (bit
  // for bit), since nothing depends on the dropped ones. Only with seeking (not `sequential`).
  bool skip_unrequested_nonref = true;
};

// Work done by the last ReadFrames call (for tests and benchmarks).
struct VideoReadStats {
  int64_t seeks = 0;
  int64_t packets_decoded = 0;   // packets sent to the decoder
  int64_t frames_decoded = 0;    // frames out of the decoder (dropped non-reference frames are not)
  int64_t frames_converted = 0;
};

class VideoReader {
 public:
  // Opens `path` and indexes its video packets (demuxing only, no decoding). NotFound for a
  // missing file; InvalidArgument for no video stream or an unsupported codec; DataLoss for a
  // file that holds fewer frames than its header promises (truncated).
  static absl::StatusOr<std::unique_ptr<VideoReader>> Open(const std::string& path,
                                                           const VideoReaderOptions& options = {});
  ~VideoReader();
  VideoReader(const VideoReader&) = delete;
  VideoReader& operator=(const VideoReader&) = delete;

  const VideoInfo& info() const;

  // Another reader of the same file with its own demuxer and decoder (opened with `options`) and
  // this one's packet index (no second demuxing pass), for reading parts of a video in parallel.
  absl::StatusOr<std::unique_ptr<VideoReader>> Reopen(const VideoReaderOptions& options) const;

  // The keyframe (counted in decode order) that decoding frame `index` starts from. Frames with
  // different keyframes share no decoding work, so separate readers may take them. 0 for every
  // frame when the reader cannot seek (sequential). REQUIRES: 0 <= index < num_frames.
  int64_t KeyframeOf(int64_t index) const;

  // Decodes the frames at `indices` (presentation order, non-decreasing, each < num_frames) and
  // calls on_frame(position in indices, frame) for each, in order. An error from on_frame stops
  // the read and is returned.
  absl::Status ReadFrames(absl::Span<const int64_t> indices,
                          absl::FunctionRef<absl::Status(size_t, const Image&)> on_frame);

  const VideoReadStats& last_read_stats() const;

 private:
  struct Impl;
  explicit VideoReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_VIDEO_DECODE_H_

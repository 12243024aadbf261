#include "model/media/video_decode.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status_macros.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

namespace q3vl::model {
namespace {

std::string AvError(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(err, buf, sizeof(buf));
  return buf;
}

struct FormatCloser {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
struct CodecFreer {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameFreer {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketFreer {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsFreer {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};

// Status of DecodeForward when the target went by without appearing (try an earlier keyframe).
absl::Status Missed() { return absl::OutOfRangeError("frame not reached"); }

}  // namespace

struct VideoReader::Impl {
  std::string path;
  VideoReaderOptions options;
  std::unique_ptr<AVFormatContext, FormatCloser> format;
  std::unique_ptr<AVCodecContext, CodecFreer> codec;
  std::unique_ptr<AVFrame, FrameFreer> frame, rgb;
  std::unique_ptr<AVPacket, PacketFreer> packet;
  std::unique_ptr<SwsContext, SwsFreer> sws;
  int stream = -1;
  VideoInfo info;
  std::vector<int64_t> frame_pts;  // [num packets] sorted: presentation order
  std::vector<int64_t> keyframes;  // pts of the keyframes in decode order
  std::unordered_map<int64_t, int64_t> keyframe_by_pts;
  std::vector<int64_t> requested_pts;  // sorted: pts of the frames the current ReadFrames wants
  bool by_pts = true;  // every frame has a distinct pts: seek and match by pts
  // Decoder position: the last keyframe fed since the last seek (-1: none), and whether the
  // decoder has been drained (it must be flushed by a seek before reuse).
  int64_t fed_keyframe = -1;
  int64_t last_output_pts = INT64_MIN;  // of the last frame out of the decoder since the seek
  bool drained = true;
  int64_t sequential_next = 0;  // sequential mode: presentation index of the next output frame
  VideoReadStats stats;

  absl::Status Error(absl::StatusCode code, absl::string_view what) const {
    return absl::Status(code, absl::StrCat("video '", path, "': ", what));
  }
  absl::Status OpenDecoder();
  absl::Status IndexPackets();
  absl::Status CheckCoversDuration() const;
  absl::Status Seek(int64_t keyframe);
  absl::Status SeekToStart();
  // Decodes forward until the frame with pts `target` (by_pts) or presentation index `target`
  // (sequential) comes out, and converts it into `out`. Missed() when it went by or the stream ended.
  absl::Status DecodeForward(int64_t target, Image* out);
  absl::Status DecodeByPts(int64_t index, Image* out);
  // The last keyframe (decode order) whose pts is at or before frame `index`'s.
  int64_t KeyframeOf(int64_t index) const {
    if (!by_pts) return 0;
    int64_t best = 0;
    for (size_t k = 0; k < keyframes.size(); ++k) {
      if (keyframes[k] <= frame_pts[index]) best = static_cast<int64_t>(k);
    }
    return best;
  }
  absl::Status Convert(const AVFrame& src, Image* out);
};

absl::Status VideoReader::Impl::OpenDecoder() {
  AVFormatContext* raw = nullptr;
  int err = avformat_open_input(&raw, path.c_str(), nullptr, nullptr);
  if (err < 0) {
    if (err == AVERROR(ENOENT)) return Error(absl::StatusCode::kNotFound, "file not found");
    return Error(absl::StatusCode::kInvalidArgument, absl::StrCat("cannot open: ", AvError(err)));
  }
  format.reset(raw);
  if ((err = avformat_find_stream_info(raw, nullptr)) < 0) {
    return Error(absl::StatusCode::kInvalidArgument, absl::StrCat("cannot read stream info: ", AvError(err)));
  }
  const AVCodec* decoder = nullptr;
  stream = av_find_best_stream(raw, AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0);
  if (stream == AVERROR_DECODER_NOT_FOUND) {
    const AVCodecDescriptor* d = nullptr;
    for (unsigned i = 0; i < raw->nb_streams && d == nullptr; ++i) {
      if (raw->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO) {
        d = avcodec_descriptor_get(raw->streams[i]->codecpar->codec_id);
      }
    }
    return Error(absl::StatusCode::kInvalidArgument,
                 absl::StrCat("no decoder for codec ", d != nullptr ? d->name : "(unknown)"));
  }
  if (stream < 0) return Error(absl::StatusCode::kInvalidArgument, "no video stream");
  for (unsigned i = 0; i < raw->nb_streams; ++i) {
    if (static_cast<int>(i) != stream) raw->streams[i]->discard = AVDISCARD_ALL;
  }
  const AVStream* st = raw->streams[stream];
  codec.reset(avcodec_alloc_context3(decoder));
  frame.reset(av_frame_alloc());
  rgb.reset(av_frame_alloc());
  packet.reset(av_packet_alloc());
  if (!codec || !frame || !rgb || !packet)
    return Error(absl::StatusCode::kResourceExhausted, "out of memory");
  if ((err = avcodec_parameters_to_context(codec.get(), st->codecpar)) < 0) {
    return Error(absl::StatusCode::kInvalidArgument, absl::StrCat("bad codec parameters: ", AvError(err)));
  }
  codec->thread_count = options.num_threads;
  if ((err = avcodec_open2(codec.get(), decoder, nullptr)) < 0) {
    return Error(absl::StatusCode::kInvalidArgument, absl::StrCat("cannot open the decoder: ", AvError(err)));
  }
  info.width = st->codecpar->width;
  info.height = st->codecpar->height;
  info.codec = decoder->name;
  AVRational rate = st->avg_frame_rate;
  if (rate.num <= 0 || rate.den <= 0) rate = st->r_frame_rate;
  info.fps = rate.num > 0 && rate.den > 0 ? av_q2d(rate) : 0.0;
  if (info.width < 1 || info.height < 1) return Error(absl::StatusCode::kInvalidArgument, "no frame size");
  if (info.width * info.height > options.max_frame_pixels) {
    return Error(absl::StatusCode::kInvalidArgument,
                 absl::StrCat(info.width, "x", info.height, " frames exceed the limit of ",
                              options.max_frame_pixels, " pixels"));
  }
  return absl::OkStatus();
}

absl::Status VideoReader::Impl::IndexPackets() {
  bool corrupt = false;
  int err;
  while ((err = av_read_frame(format.get(), packet.get())) >= 0) {
    const AVPacket& p = *packet;
    if (p.stream_index == stream && (p.flags & AV_PKT_FLAG_DISCARD) == 0) {
      corrupt |= (p.flags & AV_PKT_FLAG_CORRUPT) != 0;
      if (p.pts == AV_NOPTS_VALUE) by_pts = false;
      frame_pts.push_back(p.pts);
      if ((p.flags & AV_PKT_FLAG_KEY) != 0) keyframes.push_back(p.pts);
    }
    av_packet_unref(packet.get());
  }
  if (err != AVERROR_EOF) {
    return Error(absl::StatusCode::kDataLoss,
                 absl::StrCat("read error after ", frame_pts.size(), " frames: ", AvError(err)));
  }
  if (corrupt) return Error(absl::StatusCode::kDataLoss, "truncated or corrupt packet");
  const int64_t packets = static_cast<int64_t>(frame_pts.size());
  const int64_t header = format->streams[stream]->nb_frames;
  if (header > packets) {
    return Error(absl::StatusCode::kDataLoss,
                 absl::StrCat("truncated: the header lists ", header, " frames, the file holds ", packets));
  }
  info.num_frames = header > 0 ? header : packets;
  if (info.num_frames == 0) return Error(absl::StatusCode::kInvalidArgument, "no video frames");
  std::sort(frame_pts.begin(), frame_pts.end());
  if (header <= 0 && by_pts) Q3VL_RETURN_IF_ERROR(CheckCoversDuration());
  if (std::adjacent_find(frame_pts.begin(), frame_pts.end()) != frame_pts.end()) by_pts = false;
  if (keyframes.empty() || options.sequential) by_pts = false;
  for (size_t k = 0; k < keyframes.size(); ++k) keyframe_by_pts.emplace(keyframes[k], k);
  return absl::OkStatus();
}

// Without a frame count in the header (Matroska), a cut file shows as frames that stop well
// short of the duration the header gives (for the video stream, or the file if it has no other).
absl::Status VideoReader::Impl::CheckCoversDuration() const {
  const AVStream* st = format->streams[stream];
  double expected_s = -1;
  if (st->duration != AV_NOPTS_VALUE && st->duration > 0) {
    expected_s = static_cast<double>(st->duration) * av_q2d(st->time_base);
  } else if (format->nb_streams == 1 && format->duration != AV_NOPTS_VALUE && format->duration > 0) {
    expected_s = static_cast<double>(format->duration) / AV_TIME_BASE;
  }
  if (expected_s <= 0 || info.fps <= 0) return absl::OkStatus();
  const double frame_s = 1.0 / info.fps;
  const double covered_s =
      static_cast<double>(frame_pts.back() - frame_pts.front()) * av_q2d(st->time_base) + frame_s;
  if (covered_s >= 0.9 * expected_s - 2 * frame_s) return absl::OkStatus();
  return Error(absl::StatusCode::kDataLoss, absl::StrCat("truncated: the frames cover ", covered_s,
                                                         " s of the ", expected_s, " s the header gives"));
}

absl::Status VideoReader::Impl::Seek(int64_t keyframe) {
  // MP4 and Matroska seek by presentation time to the last keyframe at or before it; should a
  // demuxer land after the keyframe instead, DecodeByPts sees the target go by and goes earlier.
  const int err = av_seek_frame(format.get(), stream, keyframes[keyframe], AVSEEK_FLAG_BACKWARD);
  if (err < 0) return Error(absl::StatusCode::kDataLoss, absl::StrCat("seek failed: ", AvError(err)));
  avcodec_flush_buffers(codec.get());
  fed_keyframe = -1;
  last_output_pts = INT64_MIN;
  drained = false;
  ++stats.seeks;
  return absl::OkStatus();
}

absl::Status VideoReader::Impl::SeekToStart() {
  const int64_t start = format->start_time == AV_NOPTS_VALUE ? 0 : format->start_time;
  int err = avformat_seek_file(format.get(), -1, INT64_MIN, start, start, 0);
  if (err < 0) err = av_seek_frame(format.get(), stream, 0, AVSEEK_FLAG_BYTE | AVSEEK_FLAG_BACKWARD);
  if (err < 0) return Error(absl::StatusCode::kDataLoss, absl::StrCat("cannot rewind: ", AvError(err)));
  avcodec_flush_buffers(codec.get());
  fed_keyframe = -1;
  drained = false;
  sequential_next = 0;
  ++stats.seeks;
  return absl::OkStatus();
}

absl::Status VideoReader::Impl::DecodeForward(int64_t target, Image* out) {
  while (true) {
    int err = avcodec_receive_frame(codec.get(), frame.get());
    if (err == 0) {
      ++stats.frames_decoded;
      const int64_t position = by_pts ? frame->best_effort_timestamp : sequential_next++;
      if (position != AV_NOPTS_VALUE) last_output_pts = position;
      if (position == target) {
        absl::Status s = Convert(*frame, out);
        av_frame_unref(frame.get());
        return s;
      }
      av_frame_unref(frame.get());
      if (position != AV_NOPTS_VALUE && position > target) return Missed();
      continue;
    }
    if (err == AVERROR_EOF) {
      drained = true;
      return Missed();
    }
    if (err != AVERROR(EAGAIN))
      return Error(absl::StatusCode::kDataLoss, absl::StrCat("decode error: ", AvError(err)));
    // The decoder needs input: the next packet of our stream, or the end-of-stream flush.
    while ((err = av_read_frame(format.get(), packet.get())) >= 0 && packet->stream_index != stream) {
      av_packet_unref(packet.get());
    }
    if (err == AVERROR_EOF) {
      avcodec_send_packet(codec.get(), nullptr);
      continue;
    }
    if (err < 0) return Error(absl::StatusCode::kDataLoss, absl::StrCat("read error: ", AvError(err)));
    if ((packet->flags & AV_PKT_FLAG_KEY) != 0) {
      const auto it = keyframe_by_pts.find(packet->pts);
      if (it != keyframe_by_pts.end()) fed_keyframe = it->second;
    }
    // The decoder reads skip_frame per packet (frame threads copy it when the packet is queued).
    const bool requested = !by_pts || !options.skip_unrequested_nonref || packet->pts == AV_NOPTS_VALUE ||
                           std::binary_search(requested_pts.begin(), requested_pts.end(), packet->pts);
    codec->skip_frame = requested ? AVDISCARD_DEFAULT : AVDISCARD_NONREF;
    err = avcodec_send_packet(codec.get(), packet.get());
    av_packet_unref(packet.get());
    ++stats.packets_decoded;
    if (err < 0 && err != AVERROR(EAGAIN)) {
      return Error(absl::StatusCode::kDataLoss, absl::StrCat("corrupt video data: ", AvError(err)));
    }
  }
}

// Starts from the last keyframe (decode order) at or before the target, or carries on from the
// current position when that keyframe has already been fed and the target is still ahead. If
// the frame goes by anyway (an unusual GOP structure), retries from earlier keyframes and
// finally from the first one.
absl::Status VideoReader::Impl::DecodeByPts(int64_t index, Image* out) {
  const int64_t target = frame_pts[index];
  const int64_t best = KeyframeOf(index);
  absl::Status s = Missed();
  if (!drained && fed_keyframe >= best && last_output_pts < target) s = DecodeForward(target, out);
  std::vector<int64_t> starts = {best};
  for (int64_t k = best - 1; k >= 0 && k >= best - 2; --k) starts.push_back(k);
  if (best > 2) starts.push_back(0);
  for (int64_t k : starts) {
    if (!absl::IsOutOfRange(s)) break;
    Q3VL_RETURN_IF_ERROR(Seek(k));
    s = DecodeForward(target, out);
  }
  if (absl::IsOutOfRange(s)) {
    return Error(absl::StatusCode::kDataLoss, absl::StrCat("frame ", index, " could not be decoded"));
  }
  return s;
}

absl::Status VideoReader::Impl::Convert(const AVFrame& src, Image* out) {
  const int w = src.width, h = src.height;
  if (static_cast<int64_t>(w) * h > options.max_frame_pixels || w < 1 || h < 1) {
    return Error(absl::StatusCode::kInvalidArgument, absl::StrCat("bad frame size ", w, "x", h));
  }
  const auto fmt = static_cast<AVPixelFormat>(src.format);
  sws.reset(sws_getCachedContext(sws.release(), w, h, fmt, w, h, AV_PIX_FMT_RGB24, SWS_BILINEAR, nullptr,
                                 nullptr, nullptr));
  if (!sws) {
    return Error(absl::StatusCode::kInvalidArgument,
                 absl::StrCat("cannot convert pixel format ",
                              av_get_pix_fmt_name(fmt) != nullptr ? av_get_pix_fmt_name(fmt) : "(unknown)",
                              " to RGB"));
  }
  // Untagged streams keep swscale's defaults (BT.601, limited range), exactly as the reference;
  // tagged ones use their own matrix and range.
  if (src.colorspace != AVCOL_SPC_UNSPECIFIED || src.color_range == AVCOL_RANGE_JPEG) {
    int* inv_table = nullptr;
    int* table = nullptr;
    int src_range = 0, dst_range = 0, brightness = 0, contrast = 0, saturation = 0;
    if (sws_getColorspaceDetails(sws.get(), &inv_table, &src_range, &table, &dst_range, &brightness,
                                 &contrast, &saturation) >= 0) {
      sws_setColorspaceDetails(sws.get(), sws_getCoefficients(src.colorspace),
                               src.color_range == AVCOL_RANGE_JPEG ? 1 : src_range, table, dst_range,
                               brightness, contrast, saturation);
    }
  }
  if (rgb->width != w || rgb->height != h) {
    av_frame_unref(rgb.get());
    rgb->width = w;
    rgb->height = h;
    rgb->format = AV_PIX_FMT_RGB24;
    if (av_frame_get_buffer(rgb.get(), 0) < 0)
      return Error(absl::StatusCode::kResourceExhausted, "out of memory");
  }
  sws_scale(sws.get(), src.data, src.linesize, 0, h, rgb->data, rgb->linesize);
  if (out->height != h || out->width != w) *out = Image::Blank(h, w);
  for (int y = 0; y < h; ++y) std::memcpy(out->row(y), rgb->data[0] + y * rgb->linesize[0], size_t{3} * w);
  ++stats.frames_converted;
  return absl::OkStatus();
}

VideoReader::VideoReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VideoReader::~VideoReader() = default;

absl::StatusOr<std::unique_ptr<VideoReader>> VideoReader::Open(const std::string& path,
                                                               const VideoReaderOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->options = options;
  Q3VL_RETURN_IF_ERROR(impl->OpenDecoder());
  Q3VL_RETURN_IF_ERROR(impl->IndexPackets());
  return std::unique_ptr<VideoReader>(new VideoReader(std::move(impl)));
}

const VideoInfo& VideoReader::info() const { return impl_->info; }

absl::StatusOr<std::unique_ptr<VideoReader>> VideoReader::Reopen(const VideoReaderOptions& options) const {
  auto impl = std::make_unique<Impl>();
  impl->path = impl_->path;
  impl->options = options;
  Q3VL_RETURN_IF_ERROR(impl->OpenDecoder());
  impl->info = impl_->info;
  impl->frame_pts = impl_->frame_pts;
  impl->keyframes = impl_->keyframes;
  impl->keyframe_by_pts = impl_->keyframe_by_pts;
  impl->by_pts = impl_->by_pts && !options.sequential;
  return std::unique_ptr<VideoReader>(new VideoReader(std::move(impl)));
}

int64_t VideoReader::KeyframeOf(int64_t index) const {
  Q3VL_CHECK(index >= 0 && index < static_cast<int64_t>(impl_->frame_pts.size())) << index;
  return impl_->KeyframeOf(index);
}

const VideoReadStats& VideoReader::last_read_stats() const { return impl_->stats; }

absl::Status VideoReader::ReadFrames(absl::Span<const int64_t> indices,
                                     absl::FunctionRef<absl::Status(size_t, const Image&)> on_frame) {
  Impl& m = *impl_;
  m.stats = {};
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] < 0 || indices[i] >= m.info.num_frames || (i > 0 && indices[i] < indices[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat("video '", m.path,
                                                     "': frame indices must be non-decreasing in [0, ",
                                                     m.info.num_frames, "), got ", indices[i], " at ", i));
    }
  }
  // Sequential mode always starts from the beginning of the stream.
  if (!m.by_pts) Q3VL_RETURN_IF_ERROR(m.SeekToStart());
  m.requested_pts.clear();
  if (m.by_pts) {
    for (int64_t index : indices) m.requested_pts.push_back(m.frame_pts[index]);  // sorted, as indices are
  }
  Image image;
  int64_t current = -1;
  for (size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] != current) {
      if (m.by_pts) {
        Q3VL_RETURN_IF_ERROR(m.DecodeByPts(indices[i], &image));
      } else {
        absl::Status s = m.DecodeForward(indices[i], &image);
        if (absl::IsOutOfRange(s)) {
          return m.Error(absl::StatusCode::kDataLoss, absl::StrCat("frame ", indices[i], " is past the end"));
        }
        Q3VL_RETURN_IF_ERROR(s);
      }
      current = indices[i];
    }
    Q3VL_RETURN_IF_ERROR(on_frame(i, image));
  }
  return absl::OkStatus();
}

}  // namespace q3vl::model

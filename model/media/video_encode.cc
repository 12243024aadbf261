#include "model/media/video_encode.h"

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}

#include <cstring>

#include "absl/strings/str_cat.h"

namespace q3vl::model {
namespace {

std::string AvError(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(err, buf, sizeof buf);
  return buf;
}

}  // namespace

struct VideoWriter::Impl {
  VideoWriterOptions options;
  std::string path;
  AVFormatContext* format = nullptr;
  AVCodecContext* codec = nullptr;
  AVStream* stream = nullptr;
  AVFrame* frame = nullptr;
  AVPacket* packet = nullptr;
  SwsContext* sws = nullptr;
  int64_t written = 0;
  bool header_written = false;
  bool finished = false;

  ~Impl() {
    sws_freeContext(sws);
    av_packet_free(&packet);
    av_frame_free(&frame);
    avcodec_free_context(&codec);
    if (format != nullptr) {
      if (format->pb != nullptr) avio_closep(&format->pb);
      avformat_free_context(format);
    }
  }

  // Sends `f` (null: flush) and writes every packet the encoder has ready.
  absl::Status Encode(AVFrame* f) {
    if (int err = avcodec_send_frame(codec, f); err < 0) {
      return absl::InternalError(absl::StrCat("encoding ", path, ": ", AvError(err)));
    }
    for (;;) {
      const int err = avcodec_receive_packet(codec, packet);
      if (err == AVERROR(EAGAIN) || err == AVERROR_EOF) return absl::OkStatus();
      if (err < 0) return absl::InternalError(absl::StrCat("encoding ", path, ": ", AvError(err)));
      av_packet_rescale_ts(packet, codec->time_base, stream->time_base);
      packet->stream_index = stream->index;
      const int w = av_interleaved_write_frame(format, packet);
      av_packet_unref(packet);
      if (w < 0) return absl::UnavailableError(absl::StrCat("writing ", path, ": ", AvError(w)));
    }
  }
};

VideoWriter::VideoWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

VideoWriter::~VideoWriter() {
  if (impl_ && impl_->header_written && !impl_->finished) (void)Finish();
}

int64_t VideoWriter::frames_written() const { return impl_->written; }

absl::StatusOr<std::unique_ptr<VideoWriter>> VideoWriter::Open(const std::string& path,
                                                               const VideoWriterOptions& options) {
  if (options.width < 2 || options.height < 2 || options.width % 2 || options.height % 2) {
    return absl::InvalidArgumentError(absl::StrCat("video frames must have even sides, got ", options.width, "x",
                                                   options.height));
  }
  if (options.fps < 1 || options.fps > 240) return absl::InvalidArgumentError(absl::StrCat("fps ", options.fps));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->path = path;
  if (int err = avformat_alloc_output_context2(&impl->format, nullptr, "mp4", path.c_str()); err < 0) {
    return absl::UnavailableError(absl::StrCat("cannot create ", path, ": ", AvError(err)));
  }
  const AVCodec* encoder = avcodec_find_encoder_by_name("libx264");
  if (encoder == nullptr) return absl::UnavailableError("FFmpeg has no libx264 encoder");
  impl->stream = avformat_new_stream(impl->format, nullptr);
  impl->codec = avcodec_alloc_context3(encoder);
  impl->frame = av_frame_alloc();
  impl->packet = av_packet_alloc();
  if (impl->stream == nullptr || impl->codec == nullptr || impl->frame == nullptr || impl->packet == nullptr) {
    return absl::ResourceExhaustedError("out of memory opening the video encoder");
  }
  AVCodecContext* c = impl->codec;
  c->width = static_cast<int>(options.width);
  c->height = static_cast<int>(options.height);
  c->pix_fmt = AV_PIX_FMT_YUV420P;
  c->time_base = AVRational{1, options.fps};
  c->framerate = AVRational{options.fps, 1};
  c->gop_size = 4 * options.fps;  // a keyframe every 4 s: cheap seeks for the samplers
  c->color_range = AVCOL_RANGE_MPEG;
  c->colorspace = AVCOL_SPC_SMPTE170M;
  c->color_primaries = AVCOL_PRI_SMPTE170M;
  c->color_trc = AVCOL_TRC_SMPTE170M;
  c->thread_count = options.threads;
  if (impl->format->oformat->flags & AVFMT_GLOBALHEADER) c->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  av_opt_set(c->priv_data, "preset", options.preset, 0);
  av_opt_set_int(c->priv_data, "crf", options.crf, 0);
  // log=-1: no statistics on stderr at close.
  av_opt_set(c->priv_data, "x264-params",
             options.causal ? "log=-1:bframes=0:rc-lookahead=0:sync-lookahead=0:mbtree=0:scenecut=0" : "log=-1", 0);
  if (int err = avcodec_open2(c, encoder, nullptr); err < 0) {
    return absl::UnavailableError(absl::StrCat("cannot open libx264: ", AvError(err)));
  }
  if (int err = avcodec_parameters_from_context(impl->stream->codecpar, c); err < 0) {
    return absl::InternalError(AvError(err));
  }
  impl->stream->time_base = c->time_base;
  impl->stream->avg_frame_rate = c->framerate;
  if (int err = avio_open(&impl->format->pb, path.c_str(), AVIO_FLAG_WRITE); err < 0) {
    return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", AvError(err)));
  }
  if (int err = avformat_write_header(impl->format, nullptr); err < 0) {
    return absl::UnavailableError(absl::StrCat("writing ", path, ": ", AvError(err)));
  }
  impl->header_written = true;
  impl->frame->format = c->pix_fmt;
  impl->frame->width = c->width;
  impl->frame->height = c->height;
  if (int err = av_frame_get_buffer(impl->frame, 0); err < 0) return absl::ResourceExhaustedError(AvError(err));
  impl->sws = sws_getContext(c->width, c->height, AV_PIX_FMT_RGB24, c->width, c->height, AV_PIX_FMT_YUV420P,
                             SWS_BICUBIC, nullptr, nullptr, nullptr);
  if (impl->sws == nullptr) return absl::InternalError("no RGB to YUV converter");
  const int* bt601 = sws_getCoefficients(SWS_CS_ITU601);
  sws_setColorspaceDetails(impl->sws, bt601, /*srcRange=*/1, bt601, /*dstRange=*/0, 0, 1 << 16, 1 << 16);
  return std::unique_ptr<VideoWriter>(new VideoWriter(std::move(impl)));
}

absl::Status VideoWriter::Write(const Image& image) {
  Impl& d = *impl_;
  if (d.finished) return absl::FailedPreconditionError(absl::StrCat(d.path, " is finished"));
  if (image.width != d.options.width || image.height != d.options.height) {
    return absl::InvalidArgumentError(absl::StrCat("frame of ", image.width, "x", image.height, " for a ",
                                                   d.options.width, "x", d.options.height, " video"));
  }
  if (int err = av_frame_make_writable(d.frame); err < 0) return absl::InternalError(AvError(err));
  const uint8_t* src[1] = {image.rgb.data()};
  const int stride[1] = {static_cast<int>(image.width * 3)};
  sws_scale(d.sws, src, stride, 0, static_cast<int>(image.height), d.frame->data, d.frame->linesize);
  d.frame->pts = d.written++;
  return d.Encode(d.frame);
}

absl::Status VideoWriter::Finish() {
  Impl& d = *impl_;
  if (d.finished) return absl::OkStatus();
  d.finished = true;
  if (absl::Status st = d.Encode(nullptr); !st.ok()) return st;
  if (int err = av_write_trailer(d.format); err < 0) {
    return absl::UnavailableError(absl::StrCat("writing ", d.path, ": ", AvError(err)));
  }
  if (int err = avio_closep(&d.format->pb); err < 0) {
    return absl::UnavailableError(absl::StrCat("closing ", d.path, ": ", AvError(err)));
  }
  return absl::OkStatus();
}

}  // namespace q3vl::model

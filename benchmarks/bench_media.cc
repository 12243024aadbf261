#include "benchmarks/bench_media.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

// clang-format off
#include <jpeglib.h>
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
}
// clang-format on

namespace q3vl::bench {

std::string SyntheticJpeg(int width, int height) {
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  uint32_t state = 12345;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      state = state * 1664525u + 1013904223u;
      uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(x * 255 / width);
      p[1] = static_cast<uint8_t>(y * 255 / height);
      p[2] = static_cast<uint8_t>(((x / 16 + y / 16) % 2) * 128 + (state >> 27));
    }
  }
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 90, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = &rgb[static_cast<size_t>(cinfo.next_scanline) * width * 3];
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buffer), size);
  free(buffer);
  return out;
}

bool WriteMpeg4Video(const std::string& path, const VideoSpec& c) {
  const int kWidth = c.width, kHeight = c.height;
  constexpr int kFps = kSyntheticFps;
  const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
  AVFormatContext* fmt = nullptr;
  if (codec == nullptr || avformat_alloc_output_context2(&fmt, nullptr, "mp4", path.c_str()) < 0) return false;
  AVStream* st = avformat_new_stream(fmt, nullptr);
  AVCodecContext* enc = avcodec_alloc_context3(codec);
  enc->width = kWidth;
  enc->height = kHeight;
  enc->pix_fmt = AV_PIX_FMT_YUV420P;
  enc->time_base = {1, kFps};
  enc->framerate = {kFps, 1};
  enc->gop_size = 30;
  enc->max_b_frames = 2;
  enc->bit_rate = 1500000;
  if (fmt->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  bool ok =
      avcodec_open2(enc, codec, nullptr) >= 0 && avcodec_parameters_from_context(st->codecpar, enc) >= 0;
  st->time_base = enc->time_base;
  st->avg_frame_rate = enc->framerate;
  ok = ok && avio_open(&fmt->pb, path.c_str(), AVIO_FLAG_WRITE) >= 0 &&
       avformat_write_header(fmt, nullptr) >= 0;
  AVFrame* frame = av_frame_alloc();
  AVPacket* pkt = av_packet_alloc();
  frame->width = kWidth;
  frame->height = kHeight;
  frame->format = AV_PIX_FMT_YUV420P;
  ok = ok && av_frame_get_buffer(frame, 0) >= 0;
  auto drain = [&]() {
    while (avcodec_receive_packet(enc, pkt) >= 0) {
      av_packet_rescale_ts(pkt, enc->time_base, st->time_base);
      pkt->stream_index = st->index;
      av_interleaved_write_frame(fmt, pkt);
    }
  };
  for (int i = 0; ok && i < c.seconds * kFps; ++i) {
    ok = av_frame_make_writable(frame) >= 0;
    for (int y = 0; y < kHeight; ++y) {
      for (int x = 0; x < kWidth; ++x)
        frame->data[0][y * frame->linesize[0] + x] = static_cast<uint8_t>(x + y + 3 * i);
    }
    for (int y = 0; y < kHeight / 2; ++y) {
      for (int x = 0; x < kWidth / 2; ++x) {
        frame->data[1][y * frame->linesize[1] + x] = static_cast<uint8_t>(128 + y - i);
        frame->data[2][y * frame->linesize[2] + x] = static_cast<uint8_t>(64 + x + i);
      }
    }
    frame->pts = i;
    ok = ok && avcodec_send_frame(enc, frame) >= 0;
    drain();
  }
  avcodec_send_frame(enc, nullptr);
  drain();
  if (ok) av_write_trailer(fmt);
  av_packet_free(&pkt);
  av_frame_free(&frame);
  avcodec_free_context(&enc);
  avio_closep(&fmt->pb);
  avformat_free_context(fmt);
  return ok;
}

bool HaveFfmpegCli() { return std::system("command -v ffmpeg > /dev/null 2>&1") == 0; }

std::string FfmpegH264Command(const std::string& path, const VideoSpec& spec) {
  return "ffmpeg -hide_banner -loglevel error -nostdin -y -f lavfi -i testsrc2=size=" + std::to_string(spec.width) +
         "x" + std::to_string(spec.height) + ":rate=" + std::to_string(kSyntheticFps) + " -t " +
         std::to_string(spec.seconds) + " -c:v libx264 -preset superfast -g 60 -pix_fmt yuv420p '" + path + "'";
}

std::string EncodeH264WithFfmpegCli(const std::string& path, const VideoSpec& spec) {
  if (!HaveFfmpegCli()) return "no ffmpeg executable on PATH (scripts/setup.sh installs it)";
  const int status = std::system(FfmpegH264Command(path, spec).c_str());
  if (status != 0 || !std::filesystem::exists(path)) {
    std::error_code ignored;
    std::filesystem::remove(path, ignored);  // a partial file would be taken for the video next time
    return "ffmpeg failed (exit status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")";
  }
  return "";
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("vision_preprocess_bench_" + std::to_string(getpid()) + "_" + name))
      .string();
}

}  // namespace q3vl::bench

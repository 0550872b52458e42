// io/video.cpp: MP4 output and frame counting through FFmpeg's libav.
//
// Writer: frames are copied into an even-sized RGB24 buffer (gray expanded,
// odd sizes padded by repeating the last column / row), converted to yuv420p
// (BT.709, limited range) by libswscale, encoded by libx264 (crf 18) or, when
// libavcodec lacks it, the native MPEG-4 part 2 encoder (qscale 3), and muxed
// into MP4 (moov atom first) at a temp path beside the target that close()
// renames into place (AtomicOutput). Timestamps: codec time base 1/fps, frame
// pts = frame index, packets rescaled to the stream's time base.
//
// libav logs through a callback that prints nothing (library code never
// prints) and keeps the calling thread's last error line for Error's why.
#include "magnets/video.h"

#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets_config.h"

#include <string>
#include <utility>

#if MAGNETS_HAVE_LIBAV

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avutil.h>
#include <libswscale/swscale.h>
}

#include <algorithm>
#include <cstddef>
#include <cstdarg>
#include <mutex>

namespace magnets {
namespace {

thread_local std::string last_av_error;

void av_log_quiet(void* avcl, int level, const char* fmt, va_list vl) {
    if (level > AV_LOG_ERROR) return;
    char line[1024];
    int print_prefix = 0; // no "[mov,mp4,... @ 0x...]" context prefix
    va_list copy;
    va_copy(copy, vl);
    av_log_format_line2(avcl, level, fmt, copy, line, sizeof line, &print_prefix);
    va_end(copy);
    std::string s(line);
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    if (!s.empty()) last_av_error = s;
}

void init_av() {
    static std::once_flag once;
    std::call_once(once, [] { av_log_set_callback(av_log_quiet); });
}

// "Invalid data found when processing input" (+ libav's last logged error).
std::string av_why(int err) {
    char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(err, buf, sizeof buf);
    std::string why = buf;
    if (!last_av_error.empty()) {
        why += " (" + last_av_error + ")";
        last_av_error.clear();
    }
    return why;
}

constexpr const char* write_hint = "check free space and permissions of the output directory";

} // namespace

bool video_supported() { return true; }

struct VideoWriter::Impl {
    std::string path;
    AtomicOutput out;
    int width, height, fps;
    int enc_w, enc_h; // even
    std::string codec_name;
    AVFormatContext* fmt = nullptr;
    AVCodecContext* enc = nullptr;
    AVStream* stream = nullptr;
    AVFrame* frame = nullptr;
    AVPacket* packet = nullptr;
    SwsContext* sws = nullptr;
    AVFrame* rgb = nullptr; // enc_w x enc_h RGB24, padded as swscale's SIMD reads expect
    int64_t count = 0;
    bool io_open = false, closed = false;
    bool broken = false; // a libav call failed: the writer can only be destroyed

    Impl(const std::string& p, int w, int h, int f)
        : path(p), out(p), width(w), height(h), fps(f), enc_w(w + (w & 1)), enc_h(h + (h & 1)) {}

    ~Impl() { release(); }

    void release() {
        if (sws) sws_freeContext(sws);
        sws = nullptr;
        av_frame_free(&frame);
        av_frame_free(&rgb);
        av_packet_free(&packet);
        avcodec_free_context(&enc);
        if (fmt) {
            if (io_open) avio_closep(&fmt->pb);
            io_open = false;
            avformat_free_context(fmt);
            fmt = nullptr;
        }
    }

    [[noreturn]] void fail(const std::string& what, int err, const char* hint = write_hint) {
        broken = true;
        throw Error(what, path, av_why(err), hint);
    }

    void open() {
        // The temp name does not end in .mp4: name the muxer.
        int err = avformat_alloc_output_context2(&fmt, nullptr, "mp4", out.temp_path().c_str());
        if (err < 0 || !fmt) fail("cannot create MP4 muxer", err < 0 ? err : AVERROR(ENOMEM));

        const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
        if (!codec) codec = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
        if (!codec)
            throw Error("cannot write video", path, "libavcodec has neither the libx264 nor the MPEG-4 encoder",
                        "install a full libavcodec (Debian: libavcodec59 / libavcodec-extra) and rebuild");
        codec_name = codec->name;

        stream = avformat_new_stream(fmt, nullptr);
        enc = avcodec_alloc_context3(codec);
        frame = av_frame_alloc();
        rgb = av_frame_alloc();
        packet = av_packet_alloc();
        if (!stream || !enc || !frame || !rgb || !packet) fail("cannot write video", AVERROR(ENOMEM));

        enc->width = enc_w;
        enc->height = enc_h;
        enc->pix_fmt = AV_PIX_FMT_YUV420P;
        enc->time_base = AVRational{1, fps};
        enc->framerate = AVRational{fps, 1};
        enc->sample_aspect_ratio = AVRational{1, 1};
        enc->gop_size = std::max(1, std::min(fps, 250)); // a key frame every second: seekable, small
        enc->color_range = AVCOL_RANGE_MPEG;
        enc->colorspace = AVCOL_SPC_BT709;
        enc->color_primaries = AVCOL_PRI_BT709;
        enc->color_trc = AVCOL_TRC_BT709;
        if (fmt->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;

        AVDictionary* opts = nullptr;
        if (codec_name == "libx264") {
            av_dict_set(&opts, "crf", "18", 0);
            av_dict_set(&opts, "preset", "medium", 0);
        } else {
            enc->flags |= AV_CODEC_FLAG_QSCALE;
            enc->global_quality = FF_QP2LAMBDA * 3;
            enc->max_b_frames = 2;
        }
        err = avcodec_open2(enc, codec, &opts);
        av_dict_free(&opts);
        if (err < 0) fail("cannot open the " + codec_name + " encoder", err, "");

        err = avcodec_parameters_from_context(stream->codecpar, enc);
        if (err < 0) fail("cannot write video", err);
        stream->time_base = enc->time_base; // a hint; the muxer picks its own in write_header
        stream->avg_frame_rate = enc->framerate;
        stream->r_frame_rate = enc->framerate;
        stream->sample_aspect_ratio = enc->sample_aspect_ratio;

        err = avio_open(&fmt->pb, out.temp_path().c_str(), AVIO_FLAG_WRITE);
        if (err < 0) fail("cannot write video", err);
        io_open = true;

        AVDictionary* mux_opts = nullptr;
        av_dict_set(&mux_opts, "movflags", "+faststart", 0);
        err = avformat_write_header(fmt, &mux_opts);
        av_dict_free(&mux_opts);
        if (err < 0) fail("cannot write MP4 header", err);

        frame->format = enc->pix_fmt;
        frame->width = enc_w;
        frame->height = enc_h;
        err = av_frame_get_buffer(frame, 0);
        if (err < 0) fail("cannot write video", err);
        rgb->format = AV_PIX_FMT_RGB24;
        rgb->width = enc_w;
        rgb->height = enc_h;
        err = av_frame_get_buffer(rgb, 0);
        if (err < 0) fail("cannot write video", err);

        sws = sws_getContext(enc_w, enc_h, AV_PIX_FMT_RGB24, enc_w, enc_h, AV_PIX_FMT_YUV420P,
                             SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr, nullptr, nullptr);
        if (!sws) fail("cannot write video", AVERROR(ENOSYS));
        // sRGB in (full range) -> BT.709 limited-range YUV, as tagged above.
        sws_setColorspaceDetails(sws, sws_getCoefficients(SWS_CS_ITU709), 1, sws_getCoefficients(SWS_CS_ITU709), 0,
                                 0, 1 << 16, 1 << 16);
    }

    // Sends `f` (nullptr: flush) and writes every packet the encoder returns.
    void encode(AVFrame* f) {
        int err = avcodec_send_frame(enc, f);
        if (err < 0) fail("cannot encode video frame", err, "");
        for (;;) {
            err = avcodec_receive_packet(enc, packet);
            if (err == AVERROR(EAGAIN) || err == AVERROR_EOF) return;
            if (err < 0) fail("cannot encode video frame", err, "");
            if (packet->duration <= 0) packet->duration = 1; // constant frame rate: one tick of 1/fps
            av_packet_rescale_ts(packet, enc->time_base, stream->time_base);
            packet->stream_index = stream->index;
            err = av_interleaved_write_frame(fmt, packet); // takes the packet's reference
            if (err < 0) fail("cannot write video", err);
        }
    }

    void check_usable(const char* what) const {
        if (closed) throw Error(what, path, "the writer is closed already");
        if (broken) throw Error(what, path, "an earlier write of this video failed");
    }

    void add(const Image& img) {
        check_usable("cannot add a video frame");
        if (img.channels != 1 && img.channels != 3)
            throw Error("cannot add a video frame", path,
                        "the frame has " + std::to_string(img.channels) + " channels",
                        "video frames are gray (1 channel) or RGB (3 channels)");
        if (img.width != width || img.height != height)
            throw Error("cannot add a video frame", path,
                        "the frame is " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                            ", the video " + std::to_string(width) + "x" + std::to_string(height),
                        "every frame of a video has the size given to VideoWriter");
        if (img.pixels.size() != static_cast<size_t>(img.width * img.height * img.channels))
            throw Error("cannot add a video frame", path, "the image's pixel buffer does not match its size");

        // Into the even-sized RGB24 buffer; the padding repeats the last column / row.
        const int c = static_cast<int>(img.channels);
        for (int y = 0; y < enc_h; ++y) {
            const uint8_t* src = img.pixels.data() + static_cast<size_t>(std::min(y, height - 1)) * width * c;
            uint8_t* dst = rgb->data[0] + static_cast<ptrdiff_t>(y) * rgb->linesize[0];
            for (int x = 0; x < enc_w; ++x) {
                const uint8_t* p = src + static_cast<size_t>(std::min(x, width - 1)) * c;
                dst[3 * x + 0] = p[0];
                dst[3 * x + 1] = p[c == 3 ? 1 : 0];
                dst[3 * x + 2] = p[c == 3 ? 2 : 0];
            }
        }

        int err = av_frame_make_writable(frame); // the encoder may still hold the previous buffer
        if (err < 0) fail("cannot encode video frame", err, "");
        sws_scale(sws, rgb->data, rgb->linesize, 0, enc_h, frame->data, frame->linesize);
        frame->pts = count;
        encode(frame);
        ++count;
    }

    void finish() {
        if (closed) return;
        check_usable("cannot write video");
        if (count == 0)
            throw Error("cannot write video", path, "no frames were added", "add at least one frame before close()");
        encode(nullptr);
        const int err = av_write_trailer(fmt);
        if (err < 0) fail("cannot write MP4 trailer", err);
        if (io_open) {
            const int cerr = avio_closep(&fmt->pb);
            io_open = false;
            if (cerr < 0) fail("cannot write video", cerr);
        }
        release();
        broken = true; // until the rename succeeds: nothing is left to retry
        out.commit();
        broken = false;
        closed = true;
    }
};

VideoWriter::VideoWriter(const std::string& path, int width, int height, int fps) {
    init_av();
    check(width >= 1 && width <= 16384 && height >= 1 && height <= 16384, "invalid video size",
          std::to_string(width) + "x" + std::to_string(height), "width and height are 1..16384");
    check(fps >= 1 && fps <= 1000, "invalid video frame rate", std::to_string(fps) + " fps", "use 1..1000 fps");
    impl_ = std::make_unique<Impl>(path, width, height, fps); // AtomicOutput checks the path is writable
    impl_->open();
}

VideoWriter::~VideoWriter() = default;
VideoWriter::VideoWriter(VideoWriter&&) noexcept = default;
VideoWriter& VideoWriter::operator=(VideoWriter&&) noexcept = default;

void VideoWriter::add_frame(const Image& rgb) {
    check(impl_ != nullptr, "VideoWriter used after a move");
    impl_->add(rgb);
}

void VideoWriter::close() {
    check(impl_ != nullptr, "VideoWriter used after a move");
    try {
        impl_->finish();
    } catch (...) {
        // A failed write is final; ~AtomicOutput removes the temp file.
        if (impl_->broken) impl_->release();
        throw;
    }
}

int64_t VideoWriter::frames() const { return impl_ ? impl_->count : 0; }

std::string VideoWriter::codec() const { return impl_ ? impl_->codec_name : std::string(); }

VideoInfo read_video_info(const std::string& path) {
    init_av();
    struct Ctx {
        AVFormatContext* fmt = nullptr;
        AVCodecContext* dec = nullptr;
        AVPacket* packet = nullptr;
        AVFrame* frame = nullptr;
        ~Ctx() {
            av_frame_free(&frame);
            av_packet_free(&packet);
            avcodec_free_context(&dec);
            avformat_close_input(&fmt);
        }
    } c;
    const char* hint = "check that the file exists and is a video (MP4, ...)";

    int err = avformat_open_input(&c.fmt, path.c_str(), nullptr, nullptr);
    if (err < 0) throw Error("cannot open video", path, av_why(err), hint);
    err = avformat_find_stream_info(c.fmt, nullptr);
    if (err < 0) throw Error("cannot read video", path, av_why(err), hint);
    const AVCodec* codec = nullptr;
    const int si = av_find_best_stream(c.fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (si < 0) throw Error("cannot read video", path, "the file has no video stream", hint);
    if (!codec)
        throw Error("cannot read video", path,
                    std::string("libavcodec has no decoder for ") +
                        avcodec_get_name(c.fmt->streams[si]->codecpar->codec_id));
    AVStream* st = c.fmt->streams[si];

    c.dec = avcodec_alloc_context3(codec);
    c.packet = av_packet_alloc();
    c.frame = av_frame_alloc();
    if (!c.dec || !c.packet || !c.frame) throw Error("cannot read video", path, "out of memory");
    err = avcodec_parameters_to_context(c.dec, st->codecpar);
    if (err >= 0) err = avcodec_open2(c.dec, codec, nullptr);
    if (err < 0) throw Error("cannot open video decoder", path, av_why(err));

    VideoInfo info;
    info.width = st->codecpar->width;
    info.height = st->codecpar->height;
    info.codec = avcodec_get_name(st->codecpar->codec_id);
    AVRational rate = st->avg_frame_rate;
    if (rate.num <= 0 || rate.den <= 0) rate = st->r_frame_rate;
    info.fps = (rate.num > 0 && rate.den > 0) ? av_q2d(rate) : 0.0;

    auto drain = [&] {
        for (;;) {
            const int r = avcodec_receive_frame(c.dec, c.frame);
            if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
            if (r < 0) throw Error("cannot decode video", path, av_why(r), hint);
            ++info.frames;
            av_frame_unref(c.frame);
        }
    };
    for (;;) {
        err = av_read_frame(c.fmt, c.packet);
        if (err == AVERROR_EOF) break;
        if (err < 0) throw Error("cannot read video", path, av_why(err), hint);
        if (c.packet->stream_index == si) {
            const int s = avcodec_send_packet(c.dec, c.packet);
            av_packet_unref(c.packet);
            if (s < 0 && s != AVERROR(EAGAIN)) throw Error("cannot decode video", path, av_why(s), hint);
            drain();
        } else {
            av_packet_unref(c.packet);
        }
    }
    err = avcodec_send_packet(c.dec, nullptr); // flush the decoder's delayed frames
    if (err < 0 && err != AVERROR_EOF) throw Error("cannot decode video", path, av_why(err), hint);
    drain();
    return info;
}

} // namespace magnets

#else // !MAGNETS_HAVE_LIBAV

namespace magnets {
namespace {

[[noreturn]] void no_libav(const std::string& path) {
    throw Error("MP4 output needs libav", path, "magnets was built without FFmpeg's libav",
                "install libavformat-dev libavcodec-dev libswscale-dev and rebuild (meson setup -Dlibav=enabled)");
}

} // namespace

bool video_supported() { return false; }

struct VideoWriter::Impl {};

VideoWriter::VideoWriter(const std::string& path, int, int, int) { no_libav(path); }
VideoWriter::~VideoWriter() = default;
VideoWriter::VideoWriter(VideoWriter&&) noexcept = default;
VideoWriter& VideoWriter::operator=(VideoWriter&&) noexcept = default;
void VideoWriter::add_frame(const Image&) { no_libav({}); }
void VideoWriter::close() { no_libav({}); }
int64_t VideoWriter::frames() const { return 0; }
std::string VideoWriter::codec() const { return {}; }
VideoInfo read_video_info(const std::string& path) { no_libav(path); }

} // namespace magnets

#endif

// magnets/video.h: MP4 video files through FFmpeg's libav (for animations of
// the decoding process), and a reader that counts a video's frames.
//
// Frames are 8-bit gray or RGB images of one size; they are encoded as H.264
// (libx264, crf 18) when libavcodec has that encoder, else as MPEG-4 part 2
// (qscale 3), in yuv420p, at a constant frame rate. Odd widths and heights are
// padded to even ones by repeating the last column / row. The file is written
// to a temporary name beside the target and renamed into place by close(); a
// writer destroyed before close() leaves nothing behind.
//
//   magnets::VideoWriter video("decode.mp4", 256, 256, 8);
//   for (const auto& frame : frames) video.add_frame(frame);
//   video.close();
//   auto info = magnets::read_video_info("decode.mp4"); // info.frames == frames.size()
//
// Without libav (-Dlibav=disabled or the dev packages missing) every call
// throws Error and video_supported() is false.
#pragma once
#include "magnets/image.h"

#include <cstdint>
#include <memory>
#include <string>

namespace magnets {

// True when built with libav.
bool video_supported();

// RGB or gray frames -> MP4. Not copyable; movable.
class VideoWriter {
public:
    // width x height of every frame (1..16384 each), fps 1..1000. Throws Error
    // (with a hint) when built without libav or when the path is unwritable.
    VideoWriter(const std::string& path, int width, int height, int fps);
    ~VideoWriter(); // an unfinished writer removes its temp file
    VideoWriter(VideoWriter&&) noexcept;
    VideoWriter& operator=(VideoWriter&&) noexcept;
    VideoWriter(const VideoWriter&) = delete;
    VideoWriter& operator=(const VideoWriter&) = delete;

    // One frame: channels 1 (gray) or 3 (RGB), the size given to the
    // constructor. Throws Error on a mismatch or after close().
    void add_frame(const Image& rgb);
    // Flushes the encoder, writes the trailer and renames the file into place.
    // Throws Error when no frame was added or the write fails (the temp file is
    // then removed). A second call does nothing.
    void close();
    // Frames added so far.
    int64_t frames() const;
    // Encoder in use: "libx264" or "mpeg4".
    std::string codec() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

struct VideoInfo {
    int64_t frames = 0;    // frames decoded
    int width = 0, height = 0; // coded size (odd sizes written by VideoWriter come back padded to even)
    double fps = 0;        // average frame rate of the stream
    std::string codec;     // ffprobe's codec_name: "h264", "mpeg4", ...
};
// Opens a video with libavformat and counts the frames of its first video
// stream by decoding every packet (not trusting the container's nb_frames).
// Throws Error for a missing or unreadable file, or without libav.
VideoInfo read_video_info(const std::string& path);

} // namespace magnets

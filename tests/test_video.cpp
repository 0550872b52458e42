// MP4 output through libav: frame counts read back by decoding, sizes (odd
// ones padded to even), frame rate, gray frames, errors, atomic writes.
// Skipped when magnets was built without libav.
#include <doctest.h>

#include "test_util.h"

#include "magnets/error.h"
#include "magnets/image.h"
#include "magnets/video.h"

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

using namespace magnets;

namespace {

// A moving gradient with a square, so consecutive frames differ.
Image test_frame(int w, int h, int channels, int t) {
    Image img;
    img.width = w;
    img.height = h;
    img.channels = channels;
    img.pixels.resize(static_cast<size_t>(w) * h * channels);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            const bool square = x >= 2 * t && x < 2 * t + 10 && y >= t && y < t + 10;
            for (int c = 0; c < channels; ++c) {
                const int v = square ? 255 : (x * 4 + y * 2 + c * 60 + t * 7) % 256;
                img.pixels[(static_cast<size_t>(y) * w + x) * channels + c] = static_cast<uint8_t>(v);
            }
        }
    return img;
}

} // namespace

TEST_CASE("video: 13 RGB frames read back with size and frame rate") {
    if (!video_supported()) {
        MESSAGE("built without libav: video tests skipped");
        CHECK_THROWS_AS(VideoWriter("x.mp4", 60, 44, 10), Error);
        return;
    }
    test::TempDir dir;
    const std::string path = dir / "anim.mp4";
    VideoWriter v(path, 60, 44, 10);
    MESSAGE("encoder: " << v.codec());
    CHECK((v.codec() == "libx264" || v.codec() == "mpeg4"));
    for (int t = 0; t < 13; ++t) v.add_frame(test_frame(60, 44, 3, t));
    CHECK(v.frames() == 13);
    CHECK_FALSE(std::filesystem::exists(path)); // only the temp file exists before close()
    v.close();
    CHECK(dir.entries() == std::vector<std::string>{"anim.mp4"}); // no temp file left
    CHECK(std::filesystem::file_size(path) > 0);
    v.close(); // a second close does nothing
    CHECK_THROWS_AS(v.add_frame(test_frame(60, 44, 3, 0)), Error);

    const VideoInfo info = read_video_info(path);
    CHECK(info.frames == 13);
    CHECK(info.width == 60);
    CHECK(info.height == 44);
    CHECK(info.fps == doctest::Approx(10.0));
    CHECK(info.codec == (v.codec() == "libx264" ? "h264" : "mpeg4"));
}

TEST_CASE("video: odd sizes are padded to even") {
    if (!video_supported()) return;
    test::TempDir dir;
    const std::string path = dir / "odd.mp4";
    VideoWriter v(path, 61, 45, 24);
    for (int t = 0; t < 13; ++t) v.add_frame(test_frame(61, 45, 3, t));
    v.close();
    const VideoInfo info = read_video_info(path);
    CHECK(info.frames == 13);
    CHECK(info.width == 62);
    CHECK(info.height == 46);
    CHECK(info.fps == doctest::Approx(24.0));
}

TEST_CASE("video: gray frames") {
    if (!video_supported()) return;
    test::TempDir dir;
    const std::string path = dir / "gray.mp4";
    VideoWriter v(path, 28, 28, 5);
    for (int t = 0; t < 7; ++t) v.add_frame(test_frame(28, 28, 1, t));
    v.close();
    const VideoInfo info = read_video_info(path);
    CHECK(info.frames == 7);
    CHECK(info.width == 28);
    CHECK(info.height == 28);
    CHECK(info.fps == doctest::Approx(5.0));
}

TEST_CASE("video: one frame is a valid video") {
    if (!video_supported()) return;
    test::TempDir dir;
    const std::string path = dir / "one.mp4";
    VideoWriter v(path, 16, 16, 1);
    v.add_frame(test_frame(16, 16, 3, 0));
    v.close();
    CHECK(read_video_info(path).frames == 1);
}

TEST_CASE("video: frame mismatches throw and the writer goes on") {
    if (!video_supported()) return;
    test::TempDir dir;
    const std::string path = dir / "mismatch.mp4";
    VideoWriter v(path, 60, 44, 10);
    v.add_frame(test_frame(60, 44, 3, 0));
    CHECK_THROWS_AS(v.add_frame(test_frame(61, 44, 3, 1)), Error);
    CHECK_THROWS_AS(v.add_frame(test_frame(60, 45, 3, 1)), Error);
    CHECK_THROWS_AS(v.add_frame(test_frame(60, 44, 4, 1)), Error);
    CHECK_THROWS_AS(v.add_frame(test_frame(60, 44, 2, 1)), Error);
    try {
        v.add_frame(test_frame(30, 22, 3, 1));
        FAIL("no error for a frame of the wrong size");
    } catch (const Error& e) {
        CHECK(std::string(e.what()).find("30x22") != std::string::npos);
        CHECK(!e.hint().empty());
    }
    v.add_frame(test_frame(60, 44, 1, 1)); // gray frames mix with RGB ones
    CHECK(v.frames() == 2);
    v.close();
    CHECK(read_video_info(path).frames == 2);
}

TEST_CASE("video: a writer destroyed without close leaves no file") {
    if (!video_supported()) return;
    test::TempDir dir;
    {
        VideoWriter v(dir / "unfinished.mp4", 60, 44, 10);
        for (int t = 0; t < 5; ++t) v.add_frame(test_frame(60, 44, 3, t));
        CHECK(dir.entries().size() == 1); // the temp file
    }
    CHECK(dir.entries().empty());
    {
        VideoWriter v(dir / "empty.mp4", 60, 44, 10);
        CHECK_THROWS_AS(v.close(), Error); // no frames
    }
    CHECK(dir.entries().empty());
}

TEST_CASE("video: invalid arguments and paths throw with a hint") {
    if (!video_supported()) return;
    test::TempDir dir;
    CHECK_THROWS_AS(VideoWriter(dir / "a.mp4", 0, 44, 10), Error);
    CHECK_THROWS_AS(VideoWriter(dir / "a.mp4", 60, 44, 0), Error);
    try {
        VideoWriter v(dir / "no-such-dir/a.mp4", 60, 44, 10);
        FAIL("no error for a missing directory");
    } catch (const Error& e) {
        CHECK(!e.hint().empty());
    }
    CHECK(dir.entries().empty());
}

TEST_CASE("video: read_video_info errors") {
    if (!video_supported()) return;
    test::TempDir dir;
    CHECK_THROWS_AS(read_video_info(dir / "missing.mp4"), Error);
    const std::string junk = dir / "junk.mp4";
    {
        FILE* f = std::fopen(junk.c_str(), "wb");
        REQUIRE(f != nullptr);
        std::fputs("this is not a video, just some text in a file", f);
        std::fclose(f);
    }
    CHECK_THROWS_AS(read_video_info(junk), Error);
}

// Filmstrips and MP4s of decoded video clips (see clip_output.h).
#include "clip_output.h"

#include "magnets/error.h"
#include "magnets/video.h"

namespace magnets::cli {

std::vector<Clip> clips_from_float(const float* y, int64_t n, int64_t frames, int64_t channels, int64_t size) {
    const int64_t per = channels * size * size;
    std::vector<Clip> clips(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
        for (int64_t t = 0; t < frames; ++t)
            clips[static_cast<size_t>(i)].push_back(image_from_float(y + (i * frames + t) * per, channels, size, size));
    return clips;
}

Image filmstrip(const Clip& clip, int64_t pad) {
    check(!clip.empty(), "filmstrip", "a clip without frames");
    return make_grid(clip, static_cast<int64_t>(clip.size()), pad);
}

namespace {
void add_upscaled(VideoWriter& w, const Image& im, int64_t scale) { w.add_frame(scale > 1 ? upscale(im, scale) : im); }
} // namespace

bool write_clip_mp4(const std::string& path, const Clip& clip, int64_t scale, int fps) {
    if (!video_supported()) return false;
    check(!clip.empty(), "write_clip_mp4", "a clip without frames");
    VideoWriter w(path, static_cast<int>(clip[0].width * scale), static_cast<int>(clip[0].height * scale), fps);
    for (const Image& im : clip) add_upscaled(w, im, scale);
    w.close();
    return true;
}

bool write_clip_grid_mp4(const std::string& path, const std::vector<Clip>& clips, int64_t cols, int64_t scale,
                         int fps) {
    if (!video_supported()) return false;
    check(!clips.empty() && !clips[0].empty(), "write_clip_grid_mp4", "no clips");
    const size_t frames = clips[0].size();
    auto grid_at = [&](size_t t) {
        std::vector<Image> tiles;
        for (const Clip& c : clips) tiles.push_back(c[t]);
        Image g = make_grid(tiles, cols);
        return scale > 1 ? upscale(g, scale) : g;
    };
    Image g = grid_at(0);
    VideoWriter w(path, static_cast<int>(g.width), static_cast<int>(g.height), fps);
    w.add_frame(g);
    for (size_t t = 1; t < frames; ++t) w.add_frame(grid_at(t));
    w.close();
    return true;
}

} // namespace magnets::cli

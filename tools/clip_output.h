// tools/clip_output.h: how the tools show decoded video clips: a filmstrip PNG
// per clip (its frames in one row), an MP4 per clip, and a grid MP4 whose
// frame t tiles every clip's frame t.
//
// A video tokenizer decodes grid_t slots per clip into [n, T, c, S, S] floats
// (the slots' stacked frames are the clip's frames in order), so
//
//   tok.decode(ids, n * cfg.grid_t(), y.data());
//   auto clips = clips_from_float(y.data(), n, cfg.clip_frames, cfg.channels, cfg.image_size);
#pragma once
#include "magnets/image.h"

#include <cstdint>
#include <string>
#include <vector>

namespace magnets::cli {

using Clip = std::vector<Image>; // frames

constexpr int clip_fps = 8;

std::vector<Clip> clips_from_float(const float* y, int64_t n, int64_t frames, int64_t channels, int64_t size);
// The frames side by side, `pad` white pixels between them.
Image filmstrip(const Clip& clip, int64_t pad = 2);
// One MP4 of the clip, each frame upscaled by `scale` (nothing written and
// false returned when the build has no libav).
bool write_clip_mp4(const std::string& path, const Clip& clip, int64_t scale, int fps = clip_fps);
// One MP4 whose frame t is make_grid(frame t of every clip, cols), upscaled.
bool write_clip_grid_mp4(const std::string& path, const std::vector<Clip>& clips, int64_t cols, int64_t scale,
                         int fps = clip_fps);

} // namespace magnets::cli

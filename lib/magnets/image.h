// magnets/image.h: 8-bit images, grids and PNG files with text chunks.
//
// PNGs carry their generation parameters in tEXt chunks (key -> value) that
// read_png_text() reads back.
//
//   auto img = magnets::image_from_float(chw, 1, 32, 32);
//   magnets::write_png("out.png", img, {{"seed", "42"}});
//   auto grid = magnets::make_grid(images, 8);
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace magnets {

struct Image {
    int64_t width = 0, height = 0, channels = 0; // channels 1, 3 or 4
    std::vector<uint8_t> pixels;                 // [height, width, channels]
};

// [c, h, w] floats in [0, 1] (clamped) -> Image (HWC, rounded).
Image image_from_float(const float* chw, int64_t c, int64_t h, int64_t w);
// Images of equal size in a grid of `cols` columns with `pad` pixels of
// `background` between and around them.
Image make_grid(const std::vector<Image>& images, int64_t cols, int64_t pad = 2,
                uint8_t background = 255);
// Nearest-neighbour upscale by an integer factor (for viewing small images).
Image upscale(const Image& img, int64_t factor);

// Atomic PNG write with tEXt chunks; throws Error when the path is unwritable.
void write_png(const std::string& path, const Image& img,
               const std::map<std::string, std::string>& text = {});
// Decodes a PNG or JPEG file (stb_image). Throws Error for a missing or non-image file.
Image read_image(const std::string& path);
// tEXt chunks of a PNG file. Throws Error when the file is not a PNG.
std::map<std::string, std::string> read_png_text(const std::string& path);

} // namespace magnets

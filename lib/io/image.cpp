// io/image.cpp: 8-bit images, grids, PNG files with text chunks.
//
// PNG encoding is stb_image_write's; the text chunks are spliced in before
// IEND (tEXt for Latin-1-safe ASCII values, iTXt for UTF-8), each with its
// zlib crc32. Reading accepts tEXt, zTXt and iTXt.
#include "magnets/error.h"
#include "magnets/formats.h"
#include "magnets/image.h"

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace magnets {
namespace {

constexpr unsigned char png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

void put_u32be(std::vector<uint8_t>& out, uint32_t v) {
    out.push_back(static_cast<uint8_t>(v >> 24));
    out.push_back(static_cast<uint8_t>(v >> 16));
    out.push_back(static_cast<uint8_t>(v >> 8));
    out.push_back(static_cast<uint8_t>(v));
}

uint32_t get_u32be(const uint8_t* p) {
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

bool is_ascii(const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// PNG keywords: 1-79 printable Latin-1 characters, no leading/trailing or double spaces.
void check_keyword(const std::string& key, const std::string& path) {
    bool ok = !key.empty() && key.size() <= 79 && key.front() != ' ' && key.back() != ' ' &&
              key.find("  ") == std::string::npos;
    for (unsigned char c : key) ok = ok && ((c >= 32 && c <= 126) || c >= 161);
    if (!ok)
        throw Error("cannot write PNG", path, "invalid text key '" + key + "'",
                    "keys are 1-79 printable ASCII characters");
}

// One chunk: length, type, data, crc32(type + data).
void put_chunk(std::vector<uint8_t>& out, const char type[4], const std::vector<uint8_t>& data) {
    put_u32be(out, static_cast<uint32_t>(data.size()));
    const size_t type_at = out.size();
    out.insert(out.end(), type, type + 4);
    out.insert(out.end(), data.begin(), data.end());
    const uLong crc = crc32(0L, out.data() + type_at, static_cast<uInt>(4 + data.size()));
    put_u32be(out, static_cast<uint32_t>(crc));
}

std::vector<uint8_t> text_chunk_data(const std::string& key, const std::string& value, bool international) {
    std::vector<uint8_t> d(key.begin(), key.end());
    d.push_back(0);
    if (international) {
        // compression flag 0, method 0, empty language tag, empty translated keyword
        d.insert(d.end(), {0, 0, 0, 0});
    }
    d.insert(d.end(), value.begin(), value.end());
    return d;
}

void stb_append(void* context, void* data, int size) {
    auto* out = static_cast<std::vector<uint8_t>*>(context);
    const auto* p = static_cast<const uint8_t*>(data);
    out->insert(out->end(), p, p + size);
}

std::vector<uint8_t> read_file(const std::string& path, const std::string& what) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw Error(what, path, "no such file");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(what, path, std::string("cannot open it: ") + std::strerror(errno));
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string inflate_text(const uint8_t* p, size_t n, const std::string& path) {
    z_stream zs{};
    if (inflateInit(&zs) != Z_OK) throw Error("cannot read PNG text", path, "zlib initialisation failed");
    zs.next_in = const_cast<Bytef*>(p);
    zs.avail_in = static_cast<uInt>(n);
    std::string out;
    char buf[4096];
    int r = Z_OK;
    while (r == Z_OK) {
        zs.next_out = reinterpret_cast<Bytef*>(buf);
        zs.avail_out = sizeof buf;
        r = inflate(&zs, Z_NO_FLUSH);
        out.append(buf, sizeof buf - zs.avail_out);
        if (r == Z_BUF_ERROR && zs.avail_in == 0) break;
    }
    inflateEnd(&zs);
    if (r != Z_STREAM_END) throw Error("damaged PNG file", path, "a compressed text chunk does not inflate");
    return out;
}

} // namespace

Image image_from_float(const float* chw, int64_t c, int64_t h, int64_t w) {
    check(c == 1 || c == 3 || c == 4, "image_from_float: channels must be 1, 3 or 4",
          "got " + std::to_string(c));
    check(h > 0 && w > 0, "image_from_float: empty image");
    Image img;
    img.channels = c;
    img.height = h;
    img.width = w;
    img.pixels.resize(static_cast<size_t>(c * h * w));
    for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t y = 0; y < h; ++y)
            for (int64_t x = 0; x < w; ++x) {
                float v = chw[(ch * h + y) * w + x];
                v = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f; // also maps NaN to 0
                img.pixels[(y * w + x) * c + ch] = static_cast<uint8_t>(std::lround(v * 255.0f));
            }
    return img;
}

Image make_grid(const std::vector<Image>& images, int64_t cols, int64_t pad, uint8_t background) {
    check(!images.empty(), "make_grid: no images");
    check(cols >= 1, "make_grid: cols must be >= 1");
    check(pad >= 0, "make_grid: pad must be >= 0");
    const Image& first = images[0];
    for (const Image& im : images)
        check(im.width == first.width && im.height == first.height && im.channels == first.channels,
              "make_grid: images differ in size",
              std::to_string(im.width) + "x" + std::to_string(im.height) + "x" + std::to_string(im.channels) +
                  " vs " + std::to_string(first.width) + "x" + std::to_string(first.height) + "x" +
                  std::to_string(first.channels));
    const int64_t n = static_cast<int64_t>(images.size());
    const int64_t c = first.channels, w = first.width, h = first.height;
    const int64_t ncols = std::min(cols, n), nrows = (n + cols - 1) / cols;
    Image grid;
    grid.channels = c;
    grid.width = ncols * w + (ncols + 1) * pad;
    grid.height = nrows * h + (nrows + 1) * pad;
    grid.pixels.assign(static_cast<size_t>(grid.width * grid.height * c), background);
    if (c == 4) // padding is opaque whatever the background value
        for (size_t i = 3; i < grid.pixels.size(); i += 4) grid.pixels[i] = 255;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t x0 = pad + (i % cols) * (w + pad), y0 = pad + (i / cols) * (h + pad);
        for (int64_t y = 0; y < h; ++y)
            std::memcpy(&grid.pixels[((y0 + y) * grid.width + x0) * c], &images[i].pixels[y * w * c],
                        static_cast<size_t>(w * c));
    }
    return grid;
}

Image upscale(const Image& img, int64_t factor) {
    check(factor >= 1, "upscale: factor must be >= 1");
    if (factor == 1) return img;
    Image out;
    out.channels = img.channels;
    out.width = img.width * factor;
    out.height = img.height * factor;
    out.pixels.resize(static_cast<size_t>(out.width * out.height * out.channels));
    const int64_t c = img.channels;
    for (int64_t y = 0; y < out.height; ++y)
        for (int64_t x = 0; x < out.width; ++x)
            std::memcpy(&out.pixels[(y * out.width + x) * c],
                        &img.pixels[((y / factor) * img.width + x / factor) * c], static_cast<size_t>(c));
    return out;
}

void write_png(const std::string& path, const Image& img, const std::map<std::string, std::string>& text) {
    check(img.channels == 1 || img.channels == 3 || img.channels == 4, "write_png: channels must be 1, 3 or 4");
    check(img.width > 0 && img.height > 0 &&
              img.pixels.size() == static_cast<size_t>(img.width * img.height * img.channels),
          "write_png: pixel buffer does not match the image size");
    for (const auto& [k, v] : text) check_keyword(k, path);

    std::vector<uint8_t> png;
    if (!stbi_write_png_to_func(stb_append, &png, static_cast<int>(img.width), static_cast<int>(img.height),
                                static_cast<int>(img.channels), img.pixels.data(),
                                static_cast<int>(img.width * img.channels)) ||
        png.size() < 8 + 12)
        throw Error("cannot write PNG", path, "PNG encoding failed");

    // stb ends the stream with a 12-byte IEND chunk: splice the text in before it.
    std::vector<uint8_t> out(png.begin(), png.end() - 12);
    for (const auto& [k, v] : text) {
        const bool international = !is_ascii(v);
        put_chunk(out, international ? "iTXt" : "tEXt", text_chunk_data(k, v, international));
    }
    out.insert(out.end(), png.end() - 12, png.end());

    AtomicOutput atomic(path);
    FILE* f = std::fopen(atomic.temp_path().c_str(), "wb");
    if (!f) throw Error("cannot write PNG", path, std::strerror(errno));
    const bool ok = std::fwrite(out.data(), 1, out.size(), f) == out.size();
    const bool closed = std::fclose(f) == 0;
    if (!ok || !closed) throw Error("cannot write PNG", path, "write failed", "check free space on the device");
    atomic.commit();
}

Image read_image(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw Error("cannot read image", path, "no such file");
    int w = 0, h = 0, n = 0;
    unsigned char* data = stbi_load(path.c_str(), &w, &h, &n, 0);
    if (!data) {
        const char* why = stbi_failure_reason();
        throw Error("cannot read image", path, std::string("not a decodable image: ") + (why ? why : "unknown"),
                    "supported: PNG and JPEG (8 or 16 bits per channel)");
    }
    Image img;
    img.width = w;
    img.height = h;
    const size_t count = static_cast<size_t>(w) * h;
    if (n == 2) { // gray + alpha -> RGBA (Image has no 2-channel form)
        img.channels = 4;
        img.pixels.resize(count * 4);
        for (size_t i = 0; i < count; ++i) {
            img.pixels[4 * i] = img.pixels[4 * i + 1] = img.pixels[4 * i + 2] = data[2 * i];
            img.pixels[4 * i + 3] = data[2 * i + 1];
        }
    } else {
        img.channels = n;
        img.pixels.assign(data, data + count * n);
    }
    stbi_image_free(data);
    return img;
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
    const std::vector<uint8_t> buf = read_file(path, "cannot read PNG");
    if (buf.size() < 8 || std::memcmp(buf.data(), png_signature, 8) != 0)
        throw Error("not a PNG file", path, "the PNG signature is missing");
    std::map<std::string, std::string> out;
    size_t pos = 8;
    while (true) {
        if (pos + 12 > buf.size()) throw Error("damaged PNG file", path, "it ends before the IEND chunk");
        const uint32_t len = get_u32be(&buf[pos]);
        if (len > buf.size() - pos - 12) throw Error("damaged PNG file", path, "a chunk runs past the end of the file");
        const std::string type(reinterpret_cast<const char*>(&buf[pos + 4]), 4);
        const uint8_t* data = &buf[pos + 8];
        if (type == "IEND") break;
        if (type == "tEXt" || type == "zTXt" || type == "iTXt") {
            const uint32_t crc = get_u32be(data + len);
            if (crc32(crc32(0L, Z_NULL, 0), &buf[pos + 4], len + 4) != crc)
                throw Error("damaged PNG file", path, "CRC mismatch in a " + type + " chunk");
            const uint8_t* end = data + len;
            const uint8_t* nul = std::find(data, end, uint8_t(0));
            if (nul == end) throw Error("damaged PNG file", path, "a " + type + " chunk has no keyword terminator");
            const std::string key(data, nul);
            const uint8_t* p = nul + 1;
            if (type == "tEXt") {
                out[key] = std::string(p, end);
            } else if (type == "zTXt") {
                if (p >= end) throw Error("damaged PNG file", path, "a zTXt chunk is truncated");
                out[key] = inflate_text(p + 1, static_cast<size_t>(end - p - 1), path);
            } else { // iTXt: flag, method, language\0, translated keyword\0, text
                if (end - p < 2) throw Error("damaged PNG file", path, "an iTXt chunk is truncated");
                const bool compressed = p[0] != 0;
                p += 2;
                for (int skip = 0; skip < 2; ++skip) {
                    p = std::find(p, end, uint8_t(0));
                    if (p == end) throw Error("damaged PNG file", path, "an iTXt chunk is truncated");
                    ++p;
                }
                out[key] = compressed ? inflate_text(p, static_cast<size_t>(end - p), path) : std::string(p, end);
            }
        }
        pos += 12 + len;
    }
    return out;
}

} // namespace magnets

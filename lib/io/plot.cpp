// io/plot.cpp: line and scatter charts drawn in software (magnets/plot.h).
//
// Layout: margins sized from the text (title, tick labels, axis labels), then
// a plot area with grid lines at nice ticks, the series (anti-aliased strokes
// accumulated per series into a coverage buffer, so a dense curve does not
// darken where its segments overlap), the frame, labels, and a legend in the
// corner of the plot area that covers the least series ink. The PNG goes out
// through write_png (atomic).
#include "magnets/plot.h"

#include "magnets/error.h"
#include "magnets/image.h"
#include "magnets/version.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <map>

namespace magnets {
namespace {

// 5x7 ASCII font (the classic public-domain LCD font), characters 32..126:
// five column bytes per glyph, bit 0 = top row; g j p q y are redrawn with a
// descender in row 7 (bit 7), below the 7-row text box.
constexpr uint8_t font5x7[95][5] = {
    {0x00, 0x00, 0x00, 0x00, 0x00}, // ' '
    {0x00, 0x00, 0x5F, 0x00, 0x00}, // !
    {0x00, 0x07, 0x00, 0x07, 0x00}, // "
    {0x14, 0x7F, 0x14, 0x7F, 0x14}, // #
    {0x24, 0x2A, 0x7F, 0x2A, 0x12}, // $
    {0x23, 0x13, 0x08, 0x64, 0x62}, // %
    {0x36, 0x49, 0x55, 0x22, 0x50}, // &
    {0x00, 0x05, 0x03, 0x00, 0x00}, // '
    {0x00, 0x1C, 0x22, 0x41, 0x00}, // (
    {0x00, 0x41, 0x22, 0x1C, 0x00}, // )
    {0x14, 0x08, 0x3E, 0x08, 0x14}, // *
    {0x08, 0x08, 0x3E, 0x08, 0x08}, // +
    {0x00, 0x50, 0x30, 0x00, 0x00}, // ,
    {0x08, 0x08, 0x08, 0x08, 0x08}, // -
    {0x00, 0x60, 0x60, 0x00, 0x00}, // .
    {0x20, 0x10, 0x08, 0x04, 0x02}, // /
    {0x3E, 0x51, 0x49, 0x45, 0x3E}, // 0
    {0x00, 0x42, 0x7F, 0x40, 0x00}, // 1
    {0x42, 0x61, 0x51, 0x49, 0x46}, // 2
    {0x21, 0x41, 0x45, 0x4B, 0x31}, // 3
    {0x18, 0x14, 0x12, 0x7F, 0x10}, // 4
    {0x27, 0x45, 0x45, 0x45, 0x39}, // 5
    {0x3C, 0x4A, 0x49, 0x49, 0x30}, // 6
    {0x01, 0x71, 0x09, 0x05, 0x03}, // 7
    {0x36, 0x49, 0x49, 0x49, 0x36}, // 8
    {0x06, 0x49, 0x49, 0x29, 0x1E}, // 9
    {0x00, 0x36, 0x36, 0x00, 0x00}, // :
    {0x00, 0x56, 0x36, 0x00, 0x00}, // ;
    {0x08, 0x14, 0x22, 0x41, 0x00}, // <
    {0x14, 0x14, 0x14, 0x14, 0x14}, // =
    {0x00, 0x41, 0x22, 0x14, 0x08}, // >
    {0x02, 0x01, 0x51, 0x09, 0x06}, // ?
    {0x32, 0x49, 0x79, 0x41, 0x3E}, // @
    {0x7E, 0x11, 0x11, 0x11, 0x7E}, // A
    {0x7F, 0x49, 0x49, 0x49, 0x36}, // B
    {0x3E, 0x41, 0x41, 0x41, 0x22}, // C
    {0x7F, 0x41, 0x41, 0x22, 0x1C}, // D
    {0x7F, 0x49, 0x49, 0x49, 0x41}, // E
    {0x7F, 0x09, 0x09, 0x09, 0x01}, // F
    {0x3E, 0x41, 0x49, 0x49, 0x7A}, // G
    {0x7F, 0x08, 0x08, 0x08, 0x7F}, // H
    {0x00, 0x41, 0x7F, 0x41, 0x00}, // I
    {0x20, 0x40, 0x41, 0x3F, 0x01}, // J
    {0x7F, 0x08, 0x14, 0x22, 0x41}, // K
    {0x7F, 0x40, 0x40, 0x40, 0x40}, // L
    {0x7F, 0x02, 0x0C, 0x02, 0x7F}, // M
    {0x7F, 0x04, 0x08, 0x10, 0x7F}, // N
    {0x3E, 0x41, 0x41, 0x41, 0x3E}, // O
    {0x7F, 0x09, 0x09, 0x09, 0x06}, // P
    {0x3E, 0x41, 0x51, 0x21, 0x5E}, // Q
    {0x7F, 0x09, 0x19, 0x29, 0x46}, // R
    {0x46, 0x49, 0x49, 0x49, 0x31}, // S
    {0x01, 0x01, 0x7F, 0x01, 0x01}, // T
    {0x3F, 0x40, 0x40, 0x40, 0x3F}, // U
    {0x1F, 0x20, 0x40, 0x20, 0x1F}, // V
    {0x3F, 0x40, 0x38, 0x40, 0x3F}, // W
    {0x63, 0x14, 0x08, 0x14, 0x63}, // X
    {0x07, 0x08, 0x70, 0x08, 0x07}, // Y
    {0x61, 0x51, 0x49, 0x45, 0x43}, // Z
    {0x00, 0x7F, 0x41, 0x41, 0x00}, // [
    {0x02, 0x04, 0x08, 0x10, 0x20}, // backslash
    {0x00, 0x41, 0x41, 0x7F, 0x00}, // ]
    {0x04, 0x02, 0x01, 0x02, 0x04}, // ^
    {0x40, 0x40, 0x40, 0x40, 0x40}, // _
    {0x00, 0x01, 0x02, 0x04, 0x00}, // `
    {0x20, 0x54, 0x54, 0x54, 0x78}, // a
    {0x7F, 0x48, 0x44, 0x44, 0x38}, // b
    {0x38, 0x44, 0x44, 0x44, 0x20}, // c
    {0x38, 0x44, 0x44, 0x48, 0x7F}, // d
    {0x38, 0x54, 0x54, 0x54, 0x18}, // e
    {0x08, 0x7E, 0x09, 0x01, 0x02}, // f
    {0x18, 0xA4, 0xA4, 0xA4, 0x7C}, // g
    {0x7F, 0x08, 0x04, 0x04, 0x78}, // h
    {0x00, 0x44, 0x7D, 0x40, 0x00}, // i
    {0x40, 0x80, 0x80, 0x7D, 0x00}, // j
    {0x7F, 0x10, 0x28, 0x44, 0x00}, // k
    {0x00, 0x41, 0x7F, 0x40, 0x00}, // l
    {0x7C, 0x04, 0x18, 0x04, 0x78}, // m
    {0x7C, 0x08, 0x04, 0x04, 0x78}, // n
    {0x38, 0x44, 0x44, 0x44, 0x38}, // o
    {0xFC, 0x24, 0x24, 0x24, 0x18}, // p
    {0x18, 0x24, 0x24, 0x24, 0xFC}, // q
    {0x7C, 0x08, 0x04, 0x04, 0x08}, // r
    {0x48, 0x54, 0x54, 0x54, 0x20}, // s
    {0x04, 0x3F, 0x44, 0x40, 0x20}, // t
    {0x3C, 0x40, 0x40, 0x20, 0x7C}, // u
    {0x1C, 0x20, 0x40, 0x20, 0x1C}, // v
    {0x3C, 0x40, 0x30, 0x40, 0x3C}, // w
    {0x44, 0x28, 0x10, 0x28, 0x44}, // x
    {0x1C, 0xA0, 0xA0, 0xA0, 0x7C}, // y
    {0x44, 0x64, 0x54, 0x4C, 0x44}, // z
    {0x00, 0x08, 0x36, 0x41, 0x00}, // {
    {0x00, 0x00, 0x7F, 0x00, 0x00}, // |
    {0x00, 0x41, 0x36, 0x08, 0x00}, // }
    {0x08, 0x04, 0x08, 0x10, 0x08}, // ~
};

using RGB = std::array<uint8_t, 3>;

// matplotlib's "tab10".
constexpr RGB palette[10] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},   {214, 39, 40},  {148, 103, 189},
                             {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
constexpr RGB text_ink{30, 30, 30}, frame_ink{70, 70, 70}, grid_ink{222, 222, 222}, minor_ink{240, 240, 240},
    legend_border{175, 175, 175}, white{255, 255, 255};

constexpr int min_width = 160, min_height = 120, max_side = 8192;
constexpr double line_radius = 1.0;   // stroke thickness 2
constexpr double marker_radius = 3.5; // markers of 7 pixels across
constexpr int pad = 10;               // outer margin
constexpr int tick_len = 5;

// ---- canvas and text ----------------------------------------------------------

struct Canvas {
    int w, h;
    std::vector<uint8_t> px; // RGB, rows top to bottom
    Canvas(int w_, int h_) : w(w_), h(h_), px(static_cast<size_t>(w_) * h_ * 3, 255) {}
    void set(int x, int y, RGB c) {
        if (x < 0 || y < 0 || x >= w || y >= h) return;
        uint8_t* p = &px[(static_cast<size_t>(y) * w + x) * 3];
        p[0] = c[0]; p[1] = c[1]; p[2] = c[2];
    }
    void blend(int x, int y, RGB c, double a) {
        if (x < 0 || y < 0 || x >= w || y >= h || a <= 0) return;
        if (a >= 1) return set(x, y, c);
        uint8_t* p = &px[(static_cast<size_t>(y) * w + x) * 3];
        for (int k = 0; k < 3; ++k) p[k] = static_cast<uint8_t>(std::lround(p[k] + (c[k] - p[k]) * a));
    }
    // [x0, x1) x [y0, y1), clipped
    void fill(int x0, int y0, int x1, int y1, RGB c) {
        x0 = std::max(x0, 0); y0 = std::max(y0, 0); x1 = std::min(x1, w); y1 = std::min(y1, h);
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) set(x, y, c);
    }
    void rect_outline(int x0, int y0, int x1, int y1, RGB c) { // inclusive corners
        fill(x0, y0, x1 + 1, y0 + 1, c);
        fill(x0, y1, x1 + 1, y1 + 1, c);
        fill(x0, y0, x0 + 1, y1 + 1, c);
        fill(x1, y0, x1 + 1, y1 + 1, c);
    }
};

// Printable ASCII only: other bytes become '?', one per UTF-8 sequence.
std::string to_ascii(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == '\t' || c == '\n' || c == '\r') out += ' ';
        else if (c >= 32 && c <= 126) out += static_cast<char>(c);
        else if (c >= 0x80 && c < 0xC0) continue; // UTF-8 continuation byte
        else out += '?';
    }
    return out;
}

int text_width(const std::string& s, int scale) {
    return s.empty() ? 0 : static_cast<int>(s.size()) * 6 * scale - scale;
}
int text_height(int scale) { return 7 * scale; }

// Horizontal text with its top-left at (x, y). Vertical text reads bottom to
// top, with the bottom-left corner of its box at (x, y).
void draw_text(Canvas& cv, int x, int y, const std::string& s, int scale, RGB c, bool vertical = false) {
    for (size_t i = 0; i < s.size(); ++i) {
        const unsigned char ch = static_cast<unsigned char>(s[i]);
        const uint8_t* g = font5x7[(ch >= 32 && ch <= 126 ? ch : '?') - 32];
        for (int col = 0; col < 5; ++col)
            for (int row = 0; row < 8; ++row) {
                if (!(g[col] >> row & 1)) continue;
                const int along = static_cast<int>(i) * 6 + col;
                if (vertical)
                    cv.fill(x + row * scale, y - (along + 1) * scale, x + (row + 1) * scale, y - along * scale, c);
                else
                    cv.fill(x + along * scale, y + row * scale, x + (along + 1) * scale, y + (row + 1) * scale, c);
            }
    }
}

// The largest scale (<= max_scale) at which s fits in `room` pixels; at scale 1
// a text that still does not fit is cut and ends in "..".
std::string fit_text(std::string s, int room, int max_scale, int* scale) {
    *scale = max_scale;
    while (*scale > 1 && text_width(s, *scale) > room) --*scale;
    if (text_width(s, *scale) > room) {
        const int keep = std::max(0, (room + 1) / 6 - 2);
        s = s.substr(0, static_cast<size_t>(keep)) + "..";
    }
    return s;
}

// ---- numbers and ticks --------------------------------------------------------

std::string fixed(double v, int decimals) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    std::string s = buf;
    if (s.find('.') != std::string::npos) {
        while (s.back() == '0') s.pop_back();
        if (s.back() == '.') s.pop_back();
    }
    return s;
}

// A compact label for tick value v on a grid of spacing `step`: 0.5, 12, 2.5k,
// 3M, 1e-4, 2.5e-5 (enough digits to tell neighbouring ticks apart).
std::string format_tick(double v, double step) {
    const double a = std::fabs(v);
    if (a < std::fabs(step) * 1e-6) return "0";
    const std::string sign = v < 0 ? "-" : "";
    const int kstep = static_cast<int>(std::floor(std::log10(std::fabs(step)) + 1e-9));
    if (a >= 1e-3 && a < 1e3) return sign + fixed(a, std::clamp(-kstep, 0, 9));
    if (a >= 1e3 && a < 1e12) {
        const int e3 = a >= 1e9 ? 9 : a >= 1e6 ? 6 : 3;
        const char* suffix = e3 == 9 ? "G" : e3 == 6 ? "M" : "k";
        return sign + fixed(a / std::pow(10.0, e3), std::clamp(e3 - kstep, 0, 9)) + suffix;
    }
    int e = static_cast<int>(std::floor(std::log10(a)));
    double m = a / std::pow(10.0, e);
    if (m < 1) { m *= 10; --e; }
    std::string ms = fixed(m, std::clamp(e - kstep, 0, 3));
    if (ms == "10") { ms = "1"; ++e; }
    return sign + ms + "e" + std::to_string(e);
}

struct Tick {
    double value;      // data value
    std::string label; // empty for minor ticks
};

// Ticks at multiples of a 1/2/5 x 10^k step, about `target` of them in [lo, hi].
std::vector<Tick> linear_ticks(double lo, double hi, int target) {
    const double raw = (hi - lo) / target;
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double f = raw / mag;
    const double step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
    std::vector<Tick> out;
    const double i0 = std::ceil(lo / step - 1e-9), i1 = std::floor(hi / step + 1e-9);
    for (double i = i0; i <= i1 && i - i0 < 200; ++i) {
        const double v = i * step;
        if (v >= lo && v <= hi) out.push_back({v, format_tick(v, step)});
    }
    return out;
}

// Minor ticks at m x 10^k (m in 2..9, except those in `skip`) within [lo, hi] (log10 units).
void log_minor(double lo, double hi, std::initializer_list<int> skip, std::vector<Tick>* minor) {
    for (int k = static_cast<int>(std::floor(lo)); k <= static_cast<int>(std::ceil(hi)); ++k)
        for (int m = 2; m <= 9; ++m) {
            if (std::find(skip.begin(), skip.end(), m) != skip.end()) continue;
            const double v = m * std::pow(10.0, k), t = std::log10(v);
            if (t >= lo && t <= hi) minor->push_back({v, {}});
        }
}

// Log axis ([lo, hi] in log10 units): decades (every `stride`-th one over wide
// ranges) over three or more decades, else 1/2/5 x 10^k when the room allows,
// else decades, else linear ticks; minor grid lines at the other 2..9 x 10^k.
std::vector<Tick> log_ticks(double lo, double hi, int target, std::vector<Tick>* minor) {
    std::vector<Tick> out;
    minor->clear();
    const int k0 = static_cast<int>(std::ceil(lo - 1e-9)), k1 = static_cast<int>(std::floor(hi + 1e-9));
    const int decades = k1 - k0 + 1;
    auto decade_ticks = [&](int stride) {
        for (int k = k0; k <= k1; ++k) {
            if (k % stride != 0) continue;
            const double v = std::pow(10.0, k);
            out.push_back({v, format_tick(v, v)});
        }
        if (stride == 1) log_minor(lo, hi, {}, minor);
    };
    if (decades >= 3 || (decades == 2 && target < 4)) {
        decade_ticks(std::max(1, (decades + target - 1) / target));
        if (out.size() >= 2) return out;
        out.clear();
        minor->clear();
    }
    if (target >= 4) {
        for (int k = static_cast<int>(std::floor(lo)) - 1; k <= static_cast<int>(std::ceil(hi)); ++k)
            for (int m : {1, 2, 5}) {
                const double v = m * std::pow(10.0, k), t = std::log10(v);
                if (t >= lo - 1e-9 && t <= hi + 1e-9) out.push_back({v, format_tick(v, std::pow(10.0, k))});
            }
        if (out.size() >= 3) {
            log_minor(lo, hi, {2, 5}, minor);
            return out;
        }
        out.clear();
    }
    if (decades >= 2) {
        decade_ticks(1);
        return out;
    }
    for (const Tick& t : linear_ticks(std::pow(10.0, lo), std::pow(10.0, hi), target))
        if (t.value > 0) out.push_back(t);
    return out;
}

struct Axis {
    bool log = false;
    double lo = 0, hi = 1; // data range, in log10 units on a log axis
    double t(double v) const { return log ? std::log10(v) : v; }
    double frac(double v) const { return (t(v) - lo) / (hi - lo); }

    std::vector<Tick> ticks(int target, std::vector<Tick>* minor) const {
        if (log) return log_ticks(lo, hi, target, minor);
        minor->clear();
        return linear_ticks(lo, hi, target);
    }
};

// ---- input checks and ranges --------------------------------------------------

std::string series_name(const PlotSeries& s, size_t i) {
    return "series " + std::to_string(i) + (s.label.empty() ? "" : " ('" + s.label + "')");
}

void check_input(const std::vector<PlotSeries>& series, const PlotOptions& opt, const std::string& path) {
    if (series.empty()) throw Error("cannot plot", path, "no series given", "pass at least one series with data");
    if (opt.width < min_width || opt.width > max_side || opt.height < min_height || opt.height > max_side)
        throw Error("cannot plot", path,
                    "size " + std::to_string(opt.width) + "x" + std::to_string(opt.height) + " is out of range",
                    "use a width of " + std::to_string(min_width) + " to " + std::to_string(max_side) +
                        " and a height of " + std::to_string(min_height) + " to " + std::to_string(max_side));
    for (size_t i = 0; i < series.size(); ++i) {
        const PlotSeries& s = series[i];
        if (s.x.size() != s.y.size())
            throw Error("cannot plot", path,
                        series_name(s, i) + " has " + std::to_string(s.x.size()) + " x values but " +
                            std::to_string(s.y.size()) + " y values",
                        "give exactly one y per x");
        if (s.x.empty())
            throw Error("cannot plot", path, series_name(s, i) + " has no points", "leave empty series out");
        bool any = false;
        for (size_t j = 0; j < s.x.size(); ++j) {
            const double x = s.x[j], y = s.y[j];
            for (int a = 0; a < 2; ++a) {
                const double v = a ? y : x;
                if ((a ? opt.log_y : opt.log_x) && std::isfinite(v) && v <= 0) {
                    char buf[64];
                    std::snprintf(buf, sizeof buf, "%g", v);
                    throw Error("cannot plot", path,
                                series_name(s, i) + " has " + (a ? "y" : "x") + " = " + buf + " at index " +
                                    std::to_string(j) + " but the " + (a ? "y" : "x") + " axis is logarithmic",
                                "log axes need values > 0: drop those points or use a linear axis");
                }
            }
            any = any || (std::isfinite(x) && std::isfinite(y));
        }
        if (!any)
            throw Error("cannot plot", path,
                        series_name(s, i) + " has no point with finite x and y (all NaN or infinite)",
                        "leave such series out");
    }
}

// Range of the data with a 5% margin each side (a fixed span around a single value).
Axis make_axis(const std::vector<PlotSeries>& series, bool use_y, bool log, const std::string& path) {
    Axis ax;
    ax.log = log;
    double mn = INFINITY, mx = -INFINITY;
    for (const PlotSeries& s : series)
        for (size_t j = 0; j < s.x.size(); ++j) {
            if (!std::isfinite(s.x[j]) || !std::isfinite(s.y[j])) continue;
            const double t = ax.t(use_y ? s.y[j] : s.x[j]);
            mn = std::min(mn, t);
            mx = std::max(mx, t);
        }
    const double span = mx - mn;
    if (!std::isfinite(span))
        throw Error("cannot plot", path, std::string("the ") + (use_y ? "y" : "x") + " values span too wide a range",
                    "use a log axis");
    if (span <= 1e-12 * std::max(std::fabs(mn), std::fabs(mx))) {
        const double d = log ? 0.5 : (mn == 0 ? 1.0 : 0.1 * std::fabs(mn));
        ax.lo = mn - d;
        ax.hi = mx + d;
        if (!(ax.hi > ax.lo)) { ax.lo = mn - 1; ax.hi = mx + 1; }
    } else {
        ax.lo = mn - 0.05 * span;
        ax.hi = mx + 0.05 * span;
    }
    if (!std::isfinite(ax.hi - ax.lo))
        throw Error("cannot plot", path, std::string("the ") + (use_y ? "y" : "x") + " values span too wide a range",
                    "use a log axis");
    return ax;
}

// ---- strokes ------------------------------------------------------------------

// Per-series coverage in [0, 1], clipped to the plot area; composited once per
// series so overlapping segments of one curve do not build up.
struct Coverage {
    int w, x0, y0, x1, y1; // clip box, inclusive
    std::vector<float> c;
    int bx0, by0, bx1, by1; // touched box
    Coverage(int w_, int h_, int cx0, int cy0, int cx1, int cy1)
        : w(w_), x0(cx0), y0(cy0), x1(cx1), y1(cy1), c(static_cast<size_t>(w_) * h_, 0.0f) { reset_box(); }
    void reset_box() { bx0 = x1 + 1; by0 = y1 + 1; bx1 = x0 - 1; by1 = y0 - 1; }
    void put(int x, int y, double v) {
        if (v <= 0) return;
        float& p = c[static_cast<size_t>(y) * w + x];
        p = std::max(p, static_cast<float>(std::min(v, 1.0)));
        bx0 = std::min(bx0, x); by0 = std::min(by0, y); bx1 = std::max(bx1, x); by1 = std::max(by1, y);
    }
    // Distance-based anti-aliased capsule from a to b of radius r (pixel centres at integers).
    void segment(double ax, double ay, double bx, double by, double r) {
        const int xa = std::max(x0, static_cast<int>(std::floor(std::min(ax, bx) - r - 1)));
        const int xb = std::min(x1, static_cast<int>(std::ceil(std::max(ax, bx) + r + 1)));
        const int ya = std::max(y0, static_cast<int>(std::floor(std::min(ay, by) - r - 1)));
        const int yb = std::min(y1, static_cast<int>(std::ceil(std::max(ay, by) + r + 1)));
        const double dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
        for (int y = ya; y <= yb; ++y)
            for (int x = xa; x <= xb; ++x) {
                double t = len2 > 0 ? ((x - ax) * dx + (y - ay) * dy) / len2 : 0.0;
                t = std::clamp(t, 0.0, 1.0);
                const double ex = ax + t * dx - x, ey = ay + t * dy - y;
                put(x, y, r + 0.5 - std::sqrt(ex * ex + ey * ey));
            }
    }
    void disc(double cx, double cy, double r) { segment(cx, cy, cx, cy, r); }
};

// Anti-aliased filled disc straight onto the canvas (legend markers).
void draw_disc(Canvas& cv, double cx, double cy, double r, RGB col) {
    for (int y = static_cast<int>(std::floor(cy - r - 1)); y <= static_cast<int>(std::ceil(cy + r + 1)); ++y)
        for (int x = static_cast<int>(std::floor(cx - r - 1)); x <= static_cast<int>(std::ceil(cx + r + 1)); ++x)
            cv.blend(x, y, col, std::clamp(r + 0.5 - std::hypot(x - cx, y - cy), 0.0, 1.0));
}

// ---- the chart ----------------------------------------------------------------

std::vector<uint8_t> render(const std::vector<PlotSeries>& series, const PlotOptions& opt, const std::string& path) {
    check_input(series, opt, path);
    const int W = opt.width, H = opt.height;
    Canvas cv(W, H);
    const int s = (W >= 480 && H >= 300) ? 2 : 1; // text scale
    const int th = text_height(s);

    const Axis xa = make_axis(series, false, opt.log_x, path);
    const Axis ya = make_axis(series, true, opt.log_y, path);

    // Vertical layout: title, plot area, tick labels, x label.
    int title_scale = 1, xl_scale = 1, yl_scale = 1;
    const std::string title = fit_text(to_ascii(opt.title), W - 2 * pad, s, &title_scale);
    const int top = title.empty() ? pad + th / 2 : pad + text_height(title_scale) + pad;
    const std::string x_label_raw = to_ascii(opt.x_label), y_label_raw = to_ascii(opt.y_label);
    const int xl_h = x_label_raw.empty() ? 0 : 6 + text_height(s);
    const int bottom = pad + tick_len + 4 + th + xl_h;
    const int py0 = top, py1 = H - 1 - bottom; // frame rows
    if (py1 - py0 < 40)
        throw Error("cannot plot", path, "the image is too small for the plot area", "use a larger height");
    const std::string y_label = fit_text(y_label_raw, py1 - py0, s, &yl_scale);

    // Y ticks: as many as fit at two text heights apart.
    std::vector<Tick> yt, ytm;
    for (int target = 6; target >= 2; --target) {
        yt = ya.ticks(target, &ytm);
        if (yt.size() <= 1 || (py1 - py0) / static_cast<double>(yt.size() - 1) >= 2.0 * th) break;
    }
    int ytw = 0;
    for (const Tick& t : yt) ytw = std::max(ytw, text_width(t.label, s));

    const int left = pad + (y_label.empty() ? 0 : text_height(yl_scale) + 8) + ytw + 4 + tick_len;
    const int right = pad + 9 * s; // room for half of a 3-character last tick label
    const int px0 = left, px1 = W - 1 - right;
    if (px1 - px0 < 40)
        throw Error("cannot plot", path, "the image is too narrow for the plot area", "use a larger width");
    const std::string x_label = fit_text(x_label_raw, px1 - px0, s, &xl_scale);

    auto X = [&](double v) { return px0 + xa.frac(v) * (px1 - px0); };
    auto Y = [&](double v) { return py1 - ya.frac(v) * (py1 - py0); };

    // X ticks: labels at least two characters apart.
    std::vector<Tick> xt, xtm;
    for (int target = 6; target >= 2; --target) {
        xt = xa.ticks(target, &xtm);
        bool fits = true;
        for (size_t i = 1; i < xt.size(); ++i)
            fits = fits && X(xt[i].value) - X(xt[i - 1].value) >=
                               (text_width(xt[i].label, s) + text_width(xt[i - 1].label, s)) / 2.0 + 12 * s;
        if (fits) break;
    }

    // Grid (minor lines first, so major ones win where they meet).
    auto vline = [&](double v, RGB c) {
        const int x = static_cast<int>(std::lround(X(v)));
        cv.fill(x, py0, x + 1, py1, c);
    };
    auto hline = [&](double v, RGB c) {
        const int y = static_cast<int>(std::lround(Y(v)));
        cv.fill(px0, y, px1, y + 1, c);
    };
    for (const Tick& t : xtm) vline(t.value, minor_ink);
    for (const Tick& t : ytm) hline(t.value, minor_ink);
    for (const Tick& t : xt) vline(t.value, grid_ink);
    for (const Tick& t : yt) hline(t.value, grid_ink);

    // Series, in order (later ones on top).
    Coverage cov(W, H, px0 + 1, py0 + 1, px1 - 1, py1 - 1);
    std::vector<uint8_t> ink(static_cast<size_t>(W) * H, 0); // series pixels, for the legend placement
    for (size_t si = 0; si < series.size(); ++si) {
        const PlotSeries& sr = series[si];
        const bool markers = sr.points || !sr.lines;
        const size_t n = sr.x.size();
        auto ok = [&](size_t j) { return std::isfinite(sr.x[j]) && std::isfinite(sr.y[j]); };
        for (size_t j = 0; j < n; ++j) {
            if (!ok(j)) continue;
            const double x = X(sr.x[j]), y = Y(sr.y[j]);
            const bool prev = j > 0 && ok(j - 1), next = j + 1 < n && ok(j + 1);
            if (sr.lines && next) cov.segment(x, y, X(sr.x[j + 1]), Y(sr.y[j + 1]), line_radius);
            if (markers) cov.disc(x, y, marker_radius);
            else if (!prev && !next) cov.disc(x, y, marker_radius - 1); // an isolated point of a line
        }
        const RGB col = plot_series_colour(si);
        for (int y = cov.by0; y <= cov.by1; ++y)
            for (int x = cov.bx0; x <= cov.bx1; ++x) {
                float& c = cov.c[static_cast<size_t>(y) * W + x];
                if (c <= 0) continue;
                cv.blend(x, y, col, c);
                if (c > 0.3f) ink[static_cast<size_t>(y) * W + x] = 1;
                c = 0;
            }
        cov.reset_box();
    }

    // Frame, tick marks, tick labels.
    cv.rect_outline(px0, py0, px1, py1, frame_ink);
    for (const Tick& t : xt) {
        const int x = static_cast<int>(std::lround(X(t.value)));
        cv.fill(x, py1 + 1, x + 1, py1 + 1 + tick_len, frame_ink);
        const int w = text_width(t.label, s);
        const int lx = std::clamp(x - w / 2, 0, W - w);
        draw_text(cv, lx, py1 + 1 + tick_len + 4, t.label, s, text_ink);
    }
    for (const Tick& t : yt) {
        const int y = static_cast<int>(std::lround(Y(t.value)));
        cv.fill(px0 - tick_len, y, px0, y + 1, frame_ink);
        const int w = text_width(t.label, s);
        const int ly = std::clamp(y - th / 2, 0, H - th);
        draw_text(cv, px0 - tick_len - 4 - w, ly, t.label, s, text_ink);
    }

    // Title and axis labels.
    if (!title.empty())
        draw_text(cv, std::max(0, (W - text_width(title, title_scale)) / 2), pad, title, title_scale, text_ink);
    if (!x_label.empty())
        draw_text(cv, px0 + (px1 - px0 - text_width(x_label, xl_scale)) / 2, H - pad - text_height(xl_scale), x_label,
                  xl_scale, text_ink);
    if (!y_label.empty())
        draw_text(cv, pad, py0 + (py1 - py0 + text_width(y_label, yl_scale)) / 2, y_label, yl_scale, text_ink, true);

    // Legend: in the corner of the plot area with the least series ink.
    std::vector<std::pair<size_t, std::string>> entries;
    for (size_t si = 0; si < series.size(); ++si)
        if (!series[si].label.empty()) entries.push_back({si, to_ascii(series[si].label)});
    if (!entries.empty()) {
        int ls = s, bw = 0, bh = 0, row = 0, sample = 0, lpad = 0;
        for (;; --ls) {
            row = 10 * ls;
            sample = 12 * ls;
            lpad = 4 * ls;
            int lw = 0;
            for (const auto& e : entries) lw = std::max(lw, text_width(e.second, ls));
            bw = 2 * lpad + sample + 4 * ls + lw;
            bh = 2 * lpad + static_cast<int>(entries.size()) * row - 3 * ls;
            if (ls == 1 || (bw <= px1 - px0 - 12 && bh <= py1 - py0 - 12)) break;
        }
        const int inset = 6;
        const int cx[2] = {px1 - inset - bw, px0 + inset}, cy[2] = {py0 + inset, py1 - inset - bh};
        int best_x = cx[0], best_y = cy[0];
        long best = -1;
        for (int yi = 0; yi < 2; ++yi)
            for (int xi = 0; xi < 2; ++xi) {
                long count = 0;
                for (int y = std::max(cy[yi], 0); y < std::min(cy[yi] + bh, H); ++y)
                    for (int x = std::max(cx[xi], 0); x < std::min(cx[xi] + bw, W); ++x)
                        count += ink[static_cast<size_t>(y) * W + x];
                if (best < 0 || count < best) { best = count; best_x = cx[xi]; best_y = cy[yi]; }
            }
        cv.fill(best_x, best_y, best_x + bw, best_y + bh, white);
        cv.rect_outline(best_x, best_y, best_x + bw - 1, best_y + bh - 1, legend_border);
        for (size_t i = 0; i < entries.size(); ++i) {
            const PlotSeries& sr = series[entries[i].first];
            const RGB col = plot_series_colour(entries[i].first);
            const int ty = best_y + lpad + static_cast<int>(i) * row;
            const int lt = ty + (text_height(ls) - 2) / 2; // 2-row sample line, centred on the text
            const int sx = best_x + lpad;
            if (sr.lines) cv.fill(sx, lt, sx + sample, lt + 2, col);
            if (sr.points || !sr.lines) draw_disc(cv, sx + sample / 2.0 - 0.5, lt + 0.5, marker_radius, col);
            draw_text(cv, sx + sample + 4 * ls, ty, entries[i].second, ls, text_ink);
        }
    }
    return std::move(cv.px);
}

} // namespace

std::array<uint8_t, 3> plot_series_colour(size_t index) { return palette[index % 10]; }

std::vector<uint8_t> render_plot(const std::vector<PlotSeries>& series, const PlotOptions& opt) {
    return render(series, opt, {});
}

int draw_text(Image& img, int x, int y, const std::string& text, std::array<uint8_t, 3> colour, int scale) {
    check(img.channels == 3, "draw_text", "needs an RGB image");
    const std::string s = to_ascii(text);
    for (size_t i = 0; i < s.size(); ++i) {
        const unsigned char ch = static_cast<unsigned char>(s[i]);
        const uint8_t* g = font5x7[ch - 32];
        for (int col = 0; col < 5; ++col)
            for (int row = 0; row < 8; ++row) {
                if (!(g[col] >> row & 1)) continue;
                for (int dy = 0; dy < scale; ++dy)
                    for (int dx = 0; dx < scale; ++dx) {
                        const int px = x + (static_cast<int>(i) * 6 + col) * scale + dx, py = y + row * scale + dy;
                        if (px < 0 || py < 0 || px >= img.width || py >= img.height) continue;
                        uint8_t* p = &img.pixels[(static_cast<size_t>(py) * static_cast<size_t>(img.width) + static_cast<size_t>(px)) * 3];
                        p[0] = colour[0]; p[1] = colour[1]; p[2] = colour[2];
                    }
            }
    }
    return text_width(s, scale);
}

void write_plot_png(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& opt) {
    Image img;
    img.width = opt.width;
    img.height = opt.height;
    img.channels = 3;
    img.pixels = render(series, opt, path);
    std::map<std::string, std::string> text{{"Software", std::string("magnets ") + version_string}};
    if (!opt.title.empty()) text["Title"] = opt.title;
    write_png(path, img, text);
}

} // namespace magnets

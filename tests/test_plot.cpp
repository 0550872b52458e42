// Plots: rendering into a buffer (size, background, series colours and
// direction), the PNG file, edge cases that must still draw, and input errors.
#include <doctest.h>

#include "test_util.h"

#include "magnets/error.h"
#include "magnets/image.h"
#include "magnets/plot.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

using namespace magnets;
using magnets::test::TempDir;

namespace {

struct Pixels {
    const std::vector<uint8_t>& px;
    int w, h;
    bool is(int x, int y, std::array<uint8_t, 3> c) const {
        const uint8_t* p = &px[(static_cast<size_t>(y) * w + x) * 3];
        return p[0] == c[0] && p[1] == c[1] && p[2] == c[2];
    }
    // Pixels of exactly colour c within columns [x0, x1).
    int count(std::array<uint8_t, 3> c, int x0, int x1) const {
        int n = 0;
        for (int y = 0; y < h; ++y)
            for (int x = x0; x < x1; ++x) n += is(x, y, c);
        return n;
    }
    // Mean row of colour c within columns [x0, x1); -1 when absent.
    double mean_row(std::array<uint8_t, 3> c, int x0, int x1) const {
        double sum = 0;
        int n = 0;
        for (int y = 0; y < h; ++y)
            for (int x = x0; x < x1; ++x)
                if (is(x, y, c)) { sum += y; ++n; }
        return n ? sum / n : -1;
    }
};

std::vector<PlotSeries> two_series(const std::string& a, const std::string& b) {
    PlotSeries up{a, {}, {}}, down{b, {}, {}, true};
    for (int i = 0; i <= 40; ++i) {
        up.x.push_back(i);
        up.y.push_back(0.5 + 0.1 * i);
        down.x.push_back(i);
        down.y.push_back(4.0 - 0.08 * i);
    }
    return {up, down};
}

} // namespace

TEST_CASE("render_plot: size, background and both series inside the plot") {
    PlotOptions opt;
    opt.title = "two series";
    opt.x_label = "step";
    opt.y_label = "value";
    const std::vector<uint8_t> px = render_plot(two_series("rising", "falling"), opt);
    REQUIRE(px.size() == static_cast<size_t>(opt.width) * opt.height * 3);
    const Pixels p{px, opt.width, opt.height};
    CHECK(p.is(0, 0, {255, 255, 255}));
    CHECK(p.is(opt.width - 1, opt.height - 1, {255, 255, 255}));
    CHECK(plot_series_colour(0) != plot_series_colour(1));
    // The middle half of the columns lies inside the plot area, away from the legend's corners.
    CHECK(p.count(plot_series_colour(0), opt.width / 4, 3 * opt.width / 4) > 50);
    CHECK(p.count(plot_series_colour(1), opt.width / 4, 3 * opt.width / 4) > 50);
    CHECK(p.count(plot_series_colour(2), 0, opt.width) == 0);
}

TEST_CASE("render_plot: a rising series is drawn higher at the right") {
    PlotOptions opt;
    std::vector<PlotSeries> s = two_series("", ""); // no labels: no legend to confuse the count
    const std::vector<uint8_t> px = render_plot(s, opt);
    const Pixels p{px, opt.width, opt.height};
    for (int k = 0; k < 2; ++k) {
        const auto c = plot_series_colour(static_cast<size_t>(k));
        int x0 = opt.width, x1 = -1; // the series' horizontal extent
        for (int y = 0; y < opt.height; ++y)
            for (int x = 0; x < opt.width; ++x)
                if (p.is(x, y, c)) { x0 = std::min(x0, x); x1 = std::max(x1, x); }
        REQUIRE(x1 - x0 > opt.width / 2);
        const int band = (x1 - x0) / 10;
        const double left = p.mean_row(c, x0, x0 + band), right = p.mean_row(c, x1 - band, x1 + 1);
        REQUIRE(left >= 0);
        REQUIRE(right >= 0);
        if (k == 0) CHECK(right < left - 100); // rising: smaller rows at the right
        else CHECK(right > left + 100);
    }
}

TEST_CASE("render_plot: edge cases still draw") {
    PlotOptions opt;
    opt.title = std::string(300, 'T'); // cut to fit
    opt.y_label = "a long y label that does not fit at the large text scale at all, really";
    const double nan = std::nan("");
    std::vector<PlotSeries> s(4);
    s[0] = {"single point", {3}, {7}};
    s[1] = {"constant with gaps", {1, 2, nan, 4, 5}, {7, 7, 7, INFINITY, 7}};
    s[2] = {"scatter", {1, 2, 3}, {6, 8, 7}, true, false};
    s[3] = {"\xc3\xa9t\xc3\xa9", {0, 1}, {6.5, 7.5}}; // UTF-8 shown as '?'
    CHECK(render_plot(s, opt).size() == 800u * 500 * 3);

    PlotOptions lg;
    lg.log_x = lg.log_y = true;
    PlotSeries wide{"decades", {1, 10, 1e3, 1e6}, {1e-5, 1e-3, 0.5, 2e4}};
    CHECK_NOTHROW(render_plot({wide}, lg));
    PlotSeries narrow{"within a decade", {2, 3, 4}, {0.21, 0.25, 0.3}};
    CHECK_NOTHROW(render_plot({narrow}, lg));
    PlotOptions tiny;
    tiny.width = 160;
    tiny.height = 120;
    tiny.title = "tiny";
    CHECK_NOTHROW(render_plot(two_series("a", "b"), tiny));
}

TEST_CASE("write_plot_png: a PNG file with the title, written atomically") {
    TempDir dir;
    const std::string path = dir / "loss.png";
    PlotOptions opt;
    opt.title = "loss";
    opt.width = 320;
    opt.height = 200;
    write_plot_png(path, two_series("a", "b"), opt);
    std::ifstream in(path, std::ios::binary);
    char sig[8] = {};
    in.read(sig, 8);
    CHECK(std::string(sig, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
    const Image img = read_image(path);
    CHECK(img.width == 320);
    CHECK(img.height == 200);
    CHECK(img.channels == 3);
    CHECK(read_png_text(path).at("Title") == "loss");
    CHECK(dir.entries() == std::vector<std::string>{"loss.png"});
    CHECK_THROWS_AS(write_plot_png(dir / "no-such-dir/x.png", two_series("a", "b"), opt), Error);
}

TEST_CASE("render_plot: bad input throws Error with a hint") {
    PlotOptions opt;
    auto throws = [&](const std::vector<PlotSeries>& s, const PlotOptions& o, const char* why_part) {
        try {
            render_plot(s, o);
            FAIL("no error for: " << why_part);
        } catch (const Error& e) {
            CHECK_MESSAGE(e.why().find(why_part) != std::string::npos, e.why());
            CHECK(!e.hint().empty());
        }
    };
    throws({}, opt, "no series");
    throws({{"a", {1, 2, 3}, {1, 2}}}, opt, "3 x values but 2 y values");
    throws({{"a", {}, {}}}, opt, "no points");
    const double nan = std::nan("");
    throws({{"a", {1, 2}, {nan, nan}}}, opt, "no point with finite x and y");
    PlotOptions lg = opt;
    lg.log_y = true;
    throws({{"a", {1, 2, 3}, {1, 0, 2}}}, lg, "y axis is logarithmic");
    PlotOptions lx = opt;
    lx.log_x = true;
    throws({{"a", {-1, 2}, {1, 2}}}, lx, "x axis is logarithmic");
    PlotOptions small = opt;
    small.width = 10;
    throws(two_series("a", "b"), small, "out of range");
}

// magnets/plot.h: line and scatter charts as PNG files, without Python.
//
// One chart per call: white background, a framed plot area with grid lines at
// about five "nice" ticks (1/2/5 x 10^k; decades on log axes), compact tick
// labels (0.5, 2.5k, 1e-3), a title, axis labels, one colour per series and a
// legend in the corner with the least data. Text uses a built-in 5x7 bitmap
// font (printable ASCII; other characters show as '?'). Non-finite points are
// skipped and break the line.
//
//   magnets::PlotSeries loss{"train", steps, losses};
//   magnets::PlotSeries val{"val", val_steps, val_losses, /*points=*/true};
//   magnets::PlotOptions opt;
//   opt.title = "tiny run"; opt.x_label = "step"; opt.y_label = "loss"; opt.log_y = true;
//   magnets::write_plot_png("loss.png", {loss, val}, opt);
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace magnets {

struct PlotSeries {
    std::string label;       // legend text; series with an empty label are left out of the legend
    std::vector<double> x, y;// equal sizes; NaN or infinite entries are gaps
    bool points = false;     // draw a marker at each point
    bool lines = true;       // join consecutive points; false: markers only (a scatter plot)
};

struct PlotOptions {
    std::string title, x_label, y_label;
    bool log_x = false, log_y = false; // log axes need every finite value > 0
    int width = 800, height = 500;     // pixels, 160..8192 x 120..8192
};

// Renders the chart and writes it as an RGB PNG (atomically, with Title and
// Software text chunks). Throws Error for no series, a series without finite
// points, x/y of different sizes, values <= 0 on a log axis, or a bad size;
// and when the file cannot be written.
void write_plot_png(const std::string& path, const std::vector<PlotSeries>& series, const PlotOptions& opt);

// The same chart as width * height * 3 bytes (RGB, rows top to bottom).
std::vector<uint8_t> render_plot(const std::vector<PlotSeries>& series, const PlotOptions& opt);

// The RGB colour of series `index` (a 10-colour palette, repeating).
std::array<uint8_t, 3> plot_series_colour(size_t index);

struct Image;
// Draws text with the built-in 5x7 font onto an RGB image (channels 3), top-left
// at (x, y), clipped; returns the text's width in pixels. For captions on frames.
int draw_text(Image& rgb, int x, int y, const std::string& text, std::array<uint8_t, 3> colour, int scale = 1);

} // namespace magnets

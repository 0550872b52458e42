#include "magnets/log.h"

#include <cstdarg>
#include <cstdio>
#include <unistd.h>

namespace magnets {

static LogLevel g_level = LogLevel::info;

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

static void vlog(LogLevel level, const char* prefix, const char* fmt, va_list ap) {
    if (static_cast<int>(level) > static_cast<int>(g_level)) return;
    if (prefix) std::fputs(prefix, stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
}

#define MAGNETS_DEFINE_LOG(fn, lvl, prefix)                                                        \
    void fn(const char* fmt, ...) {                                                                \
        va_list ap;                                                                                \
        va_start(ap, fmt);                                                                         \
        vlog(lvl, prefix, fmt, ap);                                                                \
        va_end(ap);                                                                                \
    }
MAGNETS_DEFINE_LOG(log_error, LogLevel::error, "error: ")
MAGNETS_DEFINE_LOG(log_warn, LogLevel::warn, "warning: ")
MAGNETS_DEFINE_LOG(log_info, LogLevel::info, nullptr)
MAGNETS_DEFINE_LOG(log_debug, LogLevel::debug, "debug: ")
#undef MAGNETS_DEFINE_LOG

double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

Progress::Progress(std::string label, int64_t total, double plain_interval_s)
    : label_(std::move(label)), total_(total), interval_(plain_interval_s),
      tty_(isatty(STDERR_FILENO) != 0), start_(std::chrono::steady_clock::now()), last_(start_) {}

Progress::~Progress() {
    if (!finished_ && tty_ && g_level >= LogLevel::info) std::fputc('\n', stderr);
}

static std::string format_eta(double s) {
    char buf[32];
    if (s < 0 || s > 1e7) return "?";
    int t = static_cast<int>(s + 0.5);
    if (t >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, (t / 60) % 60);
    else std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
    return buf;
}

void Progress::update(int64_t done, const std::string& extra) {
    if (g_level < LogLevel::info || finished_) return;
    auto now = std::chrono::steady_clock::now();
    double since_last = std::chrono::duration<double>(now - last_).count();
    double elapsed = std::chrono::duration<double>(now - start_).count();
    double frac = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 0.0;
    double eta = frac > 0 ? elapsed * (1.0 - frac) / frac : -1.0;
    if (tty_) {
        if (since_last < 0.1 && done < total_) return;
        const int width = 30;
        int filled = static_cast<int>(frac * width + 0.5);
        std::string bar(static_cast<size_t>(filled), '#');
        bar.resize(width, '.');
        std::fprintf(stderr, "\r%s [%s] %lld/%lld %3.0f%% eta %s %s\033[K", label_.c_str(), bar.c_str(),
                     static_cast<long long>(done), static_cast<long long>(total_), frac * 100.0,
                     format_eta(eta).c_str(), extra.c_str());
    } else {
        if (since_last < interval_) return;
        std::fprintf(stderr, "%s: %lld/%lld (%.0f%%) eta %s %s\n", label_.c_str(), static_cast<long long>(done),
                     static_cast<long long>(total_), frac * 100.0, format_eta(eta).c_str(), extra.c_str());
    }
    std::fflush(stderr);
    last_ = now;
}

void Progress::finish(const std::string& extra) {
    if (finished_) return;
    finished_ = true;
    if (g_level < LogLevel::info) return;
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "%s%s: %lld/%lld done in %.1f s %s%s\n", tty_ ? "\r" : "", label_.c_str(),
                 static_cast<long long>(total_), static_cast<long long>(total_), elapsed, extra.c_str(),
                 tty_ ? "\033[K" : "");
    std::fflush(stderr);
}

} // namespace magnets

// magnets/log.h: leveled logging to stderr and a progress display.
//
// stdout carries data; everything here goes to stderr. The level is global
// (set once by the tool from -q/-v).
//
//   magnets::set_log_level(magnets::LogLevel::info);
//   magnets::log_info("training %d steps", n);
//   magnets::Progress bar("encode", total);
//   for (...) bar.update(done);
//   bar.finish();
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace magnets {

enum class LogLevel { quiet = 0, error = 1, warn = 2, info = 3, debug = 4 };
void set_log_level(LogLevel level);
LogLevel log_level();

void log_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Progress for long work: a redrawn bar when stderr is a TTY, otherwise a plain
// line at most every `plain_interval_s` seconds. Silent below LogLevel::info.
class Progress {
public:
    Progress(std::string label, int64_t total, double plain_interval_s = 10.0);
    ~Progress();
    void update(int64_t done, const std::string& extra = {});
    void finish(const std::string& extra = {});

private:
    std::string label_;
    int64_t total_;
    double interval_;
    bool tty_, finished_ = false;
    std::chrono::steady_clock::time_point start_, last_;
};

// Seconds since an arbitrary fixed point (steady clock).
double now_seconds();

} // namespace magnets

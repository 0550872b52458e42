// bench_backend: times matmul and conv2d on every built CPU backend, side by
// side in one run (these machines are noisy, so only ratios from one run
// compare), and prints one row per case: median, mean and deviation of the
// repeats, GFLOP/s, % of the f32 peak, and the ref / <backend> time ratio.
//
//   bench_backend                      # table, about a minute
//   bench_backend --threads 1 --csv    # CSV for scripts
//
// Peak = the measured FMA rate of one core (bench/cpu_peak.h: the widest
// vectors the CPU has, at the clock it runs) x cores used; --peak-gflops
// overrides it.
#include "cpu_peak.h"
#include "magnets/backend.h"
#include "magnets/error.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace magnets;

namespace {

// ---- options: declared once; --help is printed from this table ----------------

struct Options {
    int threads = 0;     // 0 = OpenMP default
    int repeats = 0;     // 0 = auto (time budget per case)
    bool csv = false;
    double peak_gflops = 0; // 0 = from /proc/cpuinfo
    std::string only;       // run cases whose name contains this
};

// Whole-string numbers only ("4x" and "" are rejected).
bool parse_int(const char* s, int& out) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 0 || v > 1000000) return false;
    out = int(v);
    return true;
}
bool parse_double(const char* s, double& out) {
    char* end = nullptr;
    out = std::strtod(s, &end);
    return end != s && *end == '\0' && out >= 0;
}

struct OptionSpec {
    const char* name;
    const char* arg; // nullptr for a flag
    const char* help;
    std::function<bool(Options&, const char*)> set; // false: invalid value
};

const std::vector<OptionSpec>& option_table() {
    static const std::vector<OptionSpec> t = {
        {"--threads", "N", "OpenMP threads for every backend (default: OpenMP's default)",
         [](Options& o, const char* v) { return parse_int(v, o.threads); }},
        {"--repeats", "N",
         "timed calls per case and backend after one warm-up call (default: auto, 3-30 within "
         "about 0.4 s)",
         [](Options& o, const char* v) { return parse_int(v, o.repeats); }},
        {"--csv", nullptr, "print CSV instead of a table",
         [](Options& o, const char*) { return o.csv = true; }},
        {"--peak-gflops", "X", "f32 peak used for % of peak (default: measured per core x cores)",
         [](Options& o, const char* v) { return parse_double(v, o.peak_gflops); }},
        {"--only", "TEXT", "run only the cases whose name contains TEXT",
         [](Options& o, const char* v) {
             o.only = v;
             return true;
         }},
    };
    return t;
}

void print_help(FILE* f) {
    std::fprintf(f, "usage: bench_backend [options]\n\n"
                    "Times matmul and conv2d on every built CPU backend, side by side.\n"
                    "The table goes to stdout; lines starting with '#' state the setup.\n\n"
                    "options:\n");
    for (const OptionSpec& o : option_table()) {
        const std::string head = std::string(o.name) + (o.arg ? std::string(" ") + o.arg : "");
        std::fprintf(f, "  %-20s %s\n", head.c_str(), o.help);
    }
    std::fprintf(f, "  %-20s %s\n", "-h, --help", "show this help");
}

// Returns -1 to continue, else the exit code.
int parse_args(int argc, char** argv, Options& opt) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            print_help(stdout);
            return 0;
        }
        const OptionSpec* spec = nullptr;
        for (const OptionSpec& o : option_table())
            if (a == o.name) spec = &o;
        if (!spec) {
            std::fprintf(stderr, "bench_backend: error: unknown option '%s'\nhint: see --help\n", a.c_str());
            return 2;
        }
        if (spec->arg && i + 1 >= argc) {
            std::fprintf(stderr, "bench_backend: error: %s needs a value (%s)\n", spec->name, spec->arg);
            return 2;
        }
        const char* value = spec->arg ? argv[++i] : nullptr;
        if (!spec->set(opt, value)) {
            std::fprintf(stderr, "bench_backend: error: invalid value '%s' for %s\nhint: expected a non-negative number\n",
                         value, spec->name);
            return 2;
        }
    }
    return -1;
}

// ---- machine ------------------------------------------------------------------

// First "cpu MHz" line of /proc/cpuinfo, or 0.
double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- cases ----------------------------------------------------------------------

std::vector<float> random_vec(size_t n, uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = u(gen);
    return v;
}

// A backend buffer initialised from the host.
class Buffer {
public:
    Buffer(Backend& be, const std::vector<float>& host) : be_(be) {
        p_ = be_.alloc(host.size());
        be_.upload(p_, host.data(), host.size());
    }
    ~Buffer() { be_.free(p_); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    float* get() { return p_; }

private:
    Backend& be_;
    float* p_;
};

// One benchmark case: `prepare` allocates its buffers on a backend and returns
// the call to time (the buffers live as long as the returned closure).
struct Case {
    std::string name;
    double flop;
    std::function<std::function<void()>(Backend&)> prepare;
};

// C [m, n] (ld ldc) = op(A) * op(B) where the operands are leading blocks of
// parent buffers [rows, ld]: a prefix slice when ld > cols.
Case matmul_case(std::string name, int64_t m, int64_t n, int64_t k, bool ta, bool tb,
                 int64_t lda = 0, int64_t ldb = 0, int64_t ldc = 0) {
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    lda = std::max(lda, ac), ldb = std::max(ldb, bc), ldc = std::max(ldc, n);
    return {std::move(name), 2.0 * m * n * k, [=](Backend& be) -> std::function<void()> {
                auto a = std::make_shared<Buffer>(be, random_vec(size_t(ar * lda), 1));
                auto b = std::make_shared<Buffer>(be, random_vec(size_t(br * ldb), 2));
                auto c = std::make_shared<Buffer>(be, random_vec(size_t(m * ldc), 3));
                Backend* pb = &be;
                return [=] {
                    pb->matmul(ConstMat(a->get(), ar, ac, lda), ta, ConstMat(b->get(), br, bc, ldb), tb,
                               Mat{c->get(), m, n, ldc});
                };
            }};
}

// C [m, n] = A [m, k] W[n, k]^T + bias through the row-stable (batch-invariant)
// kernel the sampler uses, optionally with the GELU epilogue.
Case rowstable_case(std::string name, int64_t m, int64_t n, int64_t k, bool gelu = false) {
    return {std::move(name), 2.0 * m * n * k, [=](Backend& be) -> std::function<void()> {
                auto a = std::make_shared<Buffer>(be, random_vec(size_t(m * k), 1));
                auto w = std::make_shared<Buffer>(be, random_vec(size_t(n * k), 2));
                auto bias = std::make_shared<Buffer>(be, random_vec(size_t(n), 3));
                auto c = std::make_shared<Buffer>(be, random_vec(size_t(m * n), 4));
                Backend* pb = &be;
                return [=] {
                    pb->matmul_rowstable(ConstMat(a->get(), m, k, k), ConstMat(w->get(), n, k, k), bias->get(),
                                         Mat{c->get(), m, n, n}, gelu ? Backend::Act::gelu : Backend::Act::none);
                };
            }};
}

Case conv_case(const std::string& label, Op op, int64_t n, int64_t c_in, int64_t hw, int64_t c_out,
               int64_t k, int64_t stride, int64_t pad) {
    Conv2dShape s;
    s.n = n, s.c_in = c_in, s.h = s.w = hw, s.c_out = c_out, s.kh = s.kw = k, s.stride = stride, s.pad = pad;
    const char* tag = op == Op::conv2d_forward ? "fwd" : op == Op::conv2d_backward_data ? "bwd-data" : "bwd-wt";
    const double flop = 2.0 * n * c_out * s.out_h() * s.out_w() * c_in * k * k;
    return {"conv " + std::string(tag) + " " + label, flop, [=](Backend& be) -> std::function<void()> {
                const size_t xs = size_t(n * c_in * hw * hw), ws = size_t(c_out * c_in * k * k),
                             ys = size_t(n * c_out * s.out_h() * s.out_w());
                auto x = std::make_shared<Buffer>(be, random_vec(xs, 1));
                auto w = std::make_shared<Buffer>(be, random_vec(ws, 2));
                auto bias = std::make_shared<Buffer>(be, random_vec(size_t(c_out), 3));
                auto y = std::make_shared<Buffer>(be, random_vec(ys, 4));
                Backend* pb = &be;
                switch (op) {
                case Op::conv2d_forward:
                    return [=] { pb->conv2d_forward(s, x->get(), w->get(), bias->get(), y->get()); };
                case Op::conv2d_backward_data:
                    return [=] { pb->conv2d_backward_data(s, y->get(), w->get(), x->get()); };
                default:
                    return [=] { pb->conv2d_backward_weights(s, x->get(), y->get(), w->get(), bias->get()); };
                }
            }};
}

std::vector<Case> all_cases() {
    std::vector<Case> c;
    // Linear layers store W [out, in]: Y [tokens, out] = X [tokens, in] * W^T.
    c.push_back(matmul_case("matmul 4096x768 * W[768,768]^T", 4096, 768, 768, false, true));
    c.push_back(matmul_case("matmul 4096x768 * W[3072,768]^T", 4096, 3072, 768, false, true));
    // Weight gradient dW [768, 768] = dY^T [768, 4096] * X [4096, 768].
    c.push_back(matmul_case("matmul dW 768x768, k=4096 (A^T)", 768, 768, 4096, true, false));
    c.push_back(matmul_case("matmul small 64x256 * 256x256", 64, 256, 256, false, false));
    // Nested sub-model: X [4096, 384] of [4096, 768], W [768, 384] of [3072, 768],
    // Y [4096, 768] of [4096, 3072]; no copies.
    c.push_back(matmul_case("matmul slice 4096x384 * W[768,384]^T", 4096, 768, 384, false, true, 768, 768, 3072));
    // The sampler's products at the small shape (D=256, batch 64 with CFG: 128
    // sequences of 65 rows): QKV, output projection, MLP in (GELU) and out, head.
    c.push_back(rowstable_case("rowstable 8320x256 * W[768,256]^T", 8320, 768, 256));
    c.push_back(rowstable_case("rowstable 8320x256 * W[256,256]^T", 8320, 256, 256));
    c.push_back(rowstable_case("rowstable 8320x256 * W[1024,256]^T gelu", 8320, 1024, 256, true));
    c.push_back(rowstable_case("rowstable 8320x256 * W[1024,256]^T", 8320, 1024, 256));
    c.push_back(rowstable_case("rowstable 8320x1024 * W[256,1024]^T", 8320, 256, 1024));
    c.push_back(rowstable_case("rowstable 8192x256 * W[512,256]^T", 8192, 512, 256));
    struct S {
        const char* label;
        int64_t n, c_in, hw, c_out, k, stride, pad;
    };
    const S shapes[] = {{"64x32x32x32 3x3 ->32", 64, 32, 32, 32, 3, 1, 1},
                        {"64x64x16x16 3x3 ->64", 64, 64, 16, 64, 3, 1, 1},
                        {"64x64x8x8 3x3 ->64", 64, 64, 8, 64, 3, 1, 1},
                        {"64x32x32x32 4x4/2 ->64", 64, 32, 32, 64, 4, 2, 1}};
    for (Op op : {Op::conv2d_forward, Op::conv2d_backward_data, Op::conv2d_backward_weights})
        for (const S& s : shapes) c.push_back(conv_case(s.label, op, s.n, s.c_in, s.hw, s.c_out, s.k, s.stride, s.pad));
    return c;
}

// ---- timing ---------------------------------------------------------------------

struct Stats {
    int repeats = 0;
    double median = 0, mean = 0, sd = 0; // seconds
};

// One warm-up call (creates cached plans, touches memory), then `repeats`
// timed calls, or with repeats = 0 between 3 and 30 calls within ~0.4 s.
Stats time_calls(Backend& be, const std::function<void()>& call, int repeats) {
    call();
    be.synchronize();
    std::vector<double> t;
    const double start = now_s();
    for (;;) {
        const double t0 = now_s();
        call();
        be.synchronize();
        t.push_back(now_s() - t0);
        const int done = int(t.size());
        if (repeats > 0 ? done >= repeats : (done >= 30 || (done >= 3 && now_s() - start > 0.4))) break;
    }
    Stats s;
    s.repeats = int(t.size());
    std::sort(t.begin(), t.end());
    const size_t n = t.size();
    s.median = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    for (double x : t) s.mean += x / double(n);
    for (double x : t) s.sd += (x - s.mean) * (x - s.mean);
    s.sd = n > 1 ? std::sqrt(s.sd / double(n - 1)) : 0.0;
    return s;
}

} // namespace

int main(int argc, char** argv) {
    Options opt;
    if (int rc = parse_args(argc, argv, opt); rc >= 0) return rc;
    try {
        if (opt.threads > 0) set_num_threads(opt.threads);
        const int threads = num_threads();
        const int hw_cores = int(std::max(1u, std::thread::hardware_concurrency()));
        const int cores = std::min(threads, hw_cores);
        const bench::CpuPeak measured = opt.peak_gflops > 0 ? bench::CpuPeak{} : bench::measure_cpu_peak();
        const double peak = opt.peak_gflops > 0 ? opt.peak_gflops : measured.gflops_per_core * cores;

        std::vector<std::string> names;
        for (const std::string& n : available_backends())
            if (n == "ref" || n == "onednn") names.push_back(n);
        std::vector<std::unique_ptr<Backend>> backends;
        for (const std::string& n : names) backends.push_back(make_backend(n));

        std::string cmd;
        for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
        std::printf("# %s\n# backends: ", cmd.c_str());
        for (size_t i = 0; i < names.size(); ++i) std::printf("%s%s", i ? ", " : "", names[i].c_str());
        std::printf("; threads %d (OpenMP)\n", threads);
        if (opt.peak_gflops > 0)
            std::printf("# peak %.1f GFLOP/s (--peak-gflops)\n", peak);
        else
            std::printf("# peak %.1f GFLOP/s = %.1f per core measured (%s FMA chains, bench/cpu_peak.h) x %d core%s "
                        "(override with --peak-gflops)\n",
                        peak, measured.gflops_per_core, measured.isa.c_str(), cores, cores == 1 ? "" : "s");
        std::printf("# times: median of the repeats after one warm-up call, mean +- sd in "
                    "ms; ratio = ref time / backend time\n");

        if (opt.csv) {
            std::printf("case,gflop");
            for (const std::string& n : names)
                std::printf(",%s_repeats,%s_median_ms,%s_mean_ms,%s_sd_ms,%s_gflops,%s_pct_peak", n.c_str(),
                            n.c_str(), n.c_str(), n.c_str(), n.c_str(), n.c_str());
            for (size_t i = 1; i < names.size(); ++i) std::printf(",ratio_ref_%s", names[i].c_str());
            std::printf("\n");
        } else {
            std::printf("%-40s %7s", "case", "GFLOP");
            for (const std::string& n : names)
                std::printf(" | %-8s %9s %15s %7s %5s", n.c_str(), "median", "mean +- sd", "GFLOP/s", "%peak");
            for (size_t i = 1; i < names.size(); ++i) std::printf(" | %9s", ("ref/" + names[i]).c_str());
            std::printf("\n");
        }
        std::fflush(stdout);

        for (const Case& c : all_cases()) {
            if (!opt.only.empty() && c.name.find(opt.only) == std::string::npos) continue;
            std::vector<Stats> st;
            for (auto& be : backends) st.push_back(time_calls(*be, c.prepare(*be), opt.repeats));
            const double gflop = c.flop * 1e-9;
            if (opt.csv) {
                std::printf("\"%s\",%.4f", c.name.c_str(), gflop);
                for (const Stats& s : st)
                    std::printf(",%d,%.4f,%.4f,%.4f,%.2f,%.2f", s.repeats, s.median * 1e3, s.mean * 1e3,
                                s.sd * 1e3, gflop / s.median, 100.0 * gflop / s.median / peak);
                for (size_t i = 1; i < st.size(); ++i) std::printf(",%.2f", st[0].median / st[i].median);
            } else {
                std::printf("%-40s %7.3f", c.name.c_str(), gflop);
                for (const Stats& s : st) {
                    char spread[32];
                    std::snprintf(spread, sizeof spread, "%.2f+-%.2f", s.mean * 1e3, s.sd * 1e3);
                    std::printf(" | %-8s %9.2f %15s %7.1f %5.1f", (std::to_string(s.repeats) + "x").c_str(),
                                s.median * 1e3, spread, gflop / s.median, 100.0 * gflop / s.median / peak);
                }
                for (size_t i = 1; i < st.size(); ++i) std::printf(" | %8.1fx", st[0].median / st[i].median);
            }
            std::printf("\n");
            std::fflush(stdout);
        }
    } catch (const Error& e) {
        std::fprintf(stderr, "bench_backend: error: %s\n", e.what());
        if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
        return 1;
    }
    return 0;
}

// tools/cli.cpp: option tables, help, parsing, exit codes and signal
// handling shared by the magnets tools (see cli.h).
#include "cli.h"

#include "magnets/dist.h"
#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/version.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <sstream>

namespace magnets::cli {

std::string long_name(const OptionSpec& o) {
    std::string n = o.names;
    auto comma = n.find(',');
    return comma == std::string::npos ? n : n.substr(comma + 1);
}
std::string short_name(const OptionSpec& o) {
    std::string n = o.names;
    auto comma = n.find(',');
    return comma == std::string::npos ? std::string() : n.substr(0, comma);
}

const std::vector<OptionSpec> global_options = {
    {"h,help", ArgKind::flag, nullptr, "print this help to stdout and exit"},
    {"version", ArgKind::flag, nullptr, "print the version and exit"},
    {"q,quiet", ArgKind::flag, nullptr, "print only errors"},
    {"v,verbose", ArgKind::flag, nullptr, "print debug messages"},
    {"threads", ArgKind::integer, "N", "CPU threads (0 = OMP_NUM_THREADS or all cores)", "0"},
    {"backend", ArgKind::text, "NAME", "compute backend: auto, ref, onednn or cuda", "auto"},
    {"device", ArgKind::text, "DEV", "cpu or cuda: shorthand for --backend auto or --backend cuda"},
};

int64_t Args::positive(const std::string& name, bool allow_zero) const {
    int64_t v = integer(name);
    if (v < 0 || (v == 0 && !allow_zero))
        throw UsageError("--" + name + " must be " + (allow_zero ? "zero or positive" : "positive") + " (got " +
                         std::to_string(v) + ")");
    return v;
}

double Args::nonnegative(const std::string& name, bool strict) const {
    const double v = real(name);
    if (!std::isfinite(v) || v < 0 || (strict && v == 0))
        throw UsageError("--" + name + " must be " + (strict ? "positive" : "zero or positive") + " (got " +
                         std::to_string(v) + ")");
    return v;
}

// ---- help ------------------------------------------------------------------

namespace {

std::string option_label(const OptionSpec& o) {
    std::string s = short_name(o).empty() ? "    " : "-" + short_name(o) + ", ";
    s += "--" + long_name(o);
    if (o.arg) s += std::string(" ") + o.arg;
    return s;
}

void print_option_table(const std::vector<OptionSpec>& table) {
    size_t width = 0;
    for (const auto& o : table) width = std::max(width, option_label(o).size());
    for (const auto& o : table) {
        std::string help = o.help;
        if (o.required) help += " (required)";
        if (o.default_value) help += std::string(" (default: ") + o.default_value + ")";
        if (o.from_preset) help += " (default: from --preset)";
        std::printf("  %-*s  %s\n", static_cast<int>(width), option_label(o).c_str(), help.c_str());
    }
}

bool single(const Tool& t) { return t.commands.size() == 1 && t.commands[0].name[0] == '\0'; }

void print_main_help(const Tool& t) {
    std::printf("%s: %s\n\n", t.prog, t.description);
    std::printf("usage: %s <command> [options]\n       %s --help | --version\n\ncommands:\n", t.prog, t.prog);
    for (const auto& c : t.commands) std::printf("  %-8s %s\n", c.name, c.summary);
    std::printf("\noptions of every command:\n");
    print_option_table(global_options);
    std::printf("\nRun '%s <command> --help' for a command's options; see %s(1).\n", t.prog, t.prog);
}

void print_command_help(const Tool& t, const CommandSpec& c) {
    if (single(t))
        std::printf("%s: %s\n\nusage: %s [options]%s%s\n\noptions:\n", t.prog, t.description, t.prog,
                    c.operands ? " " : "", c.operands ? c.operands : "");
    else
        std::printf("usage: %s %s [options]%s%s\n\n%s.\n\noptions:\n", t.prog, c.name, c.operands ? " " : "",
                    c.operands ? c.operands : "", c.summary);
    print_option_table(*c.options);
    if (c.more_help) c.more_help();
    std::printf("\n%s:\n", single(t) ? "common options" : "options of every command");
    print_option_table(global_options);
    if (single(t)) std::printf("\nSee %s(1).\n", t.prog);
}

// ---- parsing ---------------------------------------------------------------

void add_to(cxxopts::Options& parser, const std::vector<OptionSpec>& table) {
    auto adder = parser.add_options();
    for (const auto& o : table) {
        std::shared_ptr<cxxopts::Value> v;
        switch (o.kind) {
        case ArgKind::flag: v = cxxopts::value<bool>(); break;
        case ArgKind::integer: v = cxxopts::value<int64_t>(); break;
        case ArgKind::real: v = cxxopts::value<double>(); break;
        case ArgKind::text: v = cxxopts::value<std::string>(); break;
        case ArgKind::texts: v = cxxopts::value<std::vector<std::string>>(); break;
        }
        if (o.default_value) v->default_value(o.default_value);
        adder(o.names, o.help, v);
    }
}

Args parse_command(const Tool& t, const CommandSpec& c, int argc, char** argv) {
    cxxopts::Options parser(std::string(t.prog) + (c.name[0] ? std::string(" ") + c.name : std::string()));
    add_to(parser, *c.options);
    add_to(parser, global_options);
    std::vector<std::string> operands;
    try {
        cxxopts::ParseResult r = parser.parse(argc, argv);
        operands = r.unmatched();
        if (!c.operands && !operands.empty()) throw UsageError("unexpected argument '" + operands.front() + "'");
        return Args(std::move(r), std::move(operands));
    } catch (const cxxopts::exceptions::exception& e) {
        throw UsageError(e.what());
    }
}

void check_required(const CommandSpec& c, const Args& a) {
    for (const auto& o : *c.options)
        if (o.required && !a.has(long_name(o))) throw UsageError("missing required option --" + long_name(o));
}

int usage_error(const Tool& t, const std::string& msg, const char* command) {
    std::fprintf(stderr, "%s: usage error: %s\n", t.prog, msg.c_str());
    if (command && command[0]) std::fprintf(stderr, "try '%s %s --help'\n", t.prog, command);
    else std::fprintf(stderr, "try '%s --help'\n", t.prog);
    return 2;
}

} // namespace

namespace {
// " (rank 3)" in a data-parallel run, so a message says which process wrote it.
std::string rank_tag() {
    const int r = dist::group_rank();
    return r < 0 ? std::string() : " (rank " + std::to_string(r) + ")";
}
} // namespace

int run_tool(const Tool& tool, int argc, char** argv) {
    const CommandSpec* cmd = nullptr;
    int skip = 0; // argv entries before the command's options
    if (single(tool)) {
        cmd = &tool.commands[0];
    } else {
        std::string names;
        for (const auto& c : tool.commands) names += (names.empty() ? "" : ", ") + std::string(c.name);
        if (argc < 2) return usage_error(tool, "missing command (" + names + ")", nullptr);
        const std::string first = argv[1];
        if (first == "-h" || first == "--help") {
            print_main_help(tool);
            return 0;
        }
        if (first == "--version") {
            std::printf("%s %s\n", tool.prog, version_string);
            return 0;
        }
        for (const auto& c : tool.commands)
            if (first == c.name) cmd = &c;
        if (!cmd) {
            if (!first.empty() && first[0] == '-')
                return usage_error(tool, "expected a command before '" + first + "'", nullptr);
            return usage_error(tool, "unknown command '" + first + "'", nullptr);
        }
        skip = 1;
    }
    try {
        Args args = parse_command(tool, *cmd, argc - skip, argv + skip);
        if (args.flag("help")) {
            print_command_help(tool, *cmd);
            return 0;
        }
        if (args.flag("version")) {
            std::printf("%s %s\n", tool.prog, version_string);
            return 0;
        }
        check_required(*cmd, args);
        return cmd->run(args);
    } catch (const UsageError& e) {
        const int rc = usage_error(tool, e.what(), cmd->name);
        dist::abort_group_on_error(rc);
        return rc;
    } catch (const Error& e) {
        std::fprintf(stderr, "%s%s: error: %s\n", tool.prog, rank_tag().c_str(), e.what());
        if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
        dist::abort_group_on_error(1); // data-parallel training: the other ranks would wait for this one
        return 1;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "%s%s: error: out of memory\nhint: use a smaller --batch-size or --limit\n", tool.prog,
                     rank_tag().c_str());
        dist::abort_group_on_error(1);
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s%s: error: %s\n", tool.prog, rank_tag().c_str(), e.what());
        dist::abort_group_on_error(1);
        return 1;
    }
}

std::string apply_global(const Args& a) {
    if (a.flag("quiet") && a.flag("verbose")) throw UsageError("--quiet and --verbose exclude each other");
    if (a.flag("quiet")) set_log_level(LogLevel::error);
    if (a.flag("verbose")) set_log_level(LogLevel::debug);
    set_num_threads(static_cast<int>(a.positive("threads", true)));
    std::string backend = a.text("backend");
    static const std::set<std::string> known = {"auto", "ref", "onednn", "cuda"};
    if (!known.count(backend)) throw UsageError("unknown backend '" + backend + "' (choose auto, ref, onednn or cuda)");
    if (a.has("device")) {
        const std::string d = a.text("device");
        if (d != "cpu" && d != "cuda") throw UsageError("unknown device '" + d + "' (choose cpu or cuda)");
        if (a.has("backend") && (d == "cuda") != (backend == "cuda"))
            throw UsageError("--device " + d + " and --backend " + backend + " disagree (give one of them)");
        if (!a.has("backend")) backend = d == "cuda" ? "cuda" : "auto";
    }
    return backend;
}

std::shared_ptr<Backend> backend_for(const std::string& name) {
    // Every tool's models run on any backend, the cuda one (device memory)
    // included: the transformer (nn::Decoder, Transformer::Impl), the
    // tokenizer and the evaluation networks (nn::DTensor activations).
    // make_backend says clearly when a backend is not built or no GPU is there.
    return std::shared_ptr<Backend>(make_backend(name));
}

void print_table(const std::vector<std::pair<std::string, std::string>>& rows) {
    int w = 0;
    for (const auto& kv : rows) w = std::max(w, static_cast<int>(kv.first.size()));
    for (const auto& [k, v] : rows) log_info("  %-*s  %s", w, k.c_str(), v.c_str());
}

// ---- JSON ------------------------------------------------------------------

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (unsigned char ch : s) {
        switch (ch) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (ch < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", ch);
                out += buf;
            } else {
                out += static_cast<char>(ch);
            }
        }
    }
    return out + "\"";
}

// JSON has no NaN/inf: those become null.
std::string json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.10g", v);
    return buf;
}

std::string json_attr(const AttrValue& v) {
    if (auto i = std::get_if<int64_t>(&v)) return std::to_string(*i);
    if (auto d = std::get_if<double>(&v)) return json_number(*d);
    return json_string(std::get<std::string>(v));
}

std::string json_attrs(const Attrs& attrs) {
    std::string s = "{";
    for (const auto& [k, v] : attrs) s += (s.size() > 1 ? "," : "") + json_string(k) + ":" + json_attr(v);
    return s + "}";
}

// ---- signals ---------------------------------------------------------------

std::atomic<bool> stop_requested{false};
volatile std::sig_atomic_t stop_signal = 0;

extern "C" void magnets_cli_on_stop_signal(int sig) {
    stop_signal = sig;
    stop_requested.store(true);
}

void install_stop_handlers(bool repeatable) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = magnets_cli_on_stop_signal;
    sa.sa_flags = (repeatable ? 0 : SA_RESETHAND) | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, nullptr);
}

int exit_status_after_stop() { return stop_signal ? 128 + static_cast<int>(stop_signal) : 0; }

std::string attr_differences(const Attrs& want, const Attrs& have) {
    std::string out;
    for (const auto& [k, v] : want) {
        auto it = have.find(k);
        const std::string h = it == have.end() ? "(none)" : attr_to_string(it->second);
        if (it == have.end() || !(it->second == v))
            out += (out.empty() ? "" : "; ") + k + ": requested " + attr_to_string(v) + ", checkpoint " + h;
    }
    return out;
}

std::vector<std::string> split_lines(const std::string& s) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string line;
    while (std::getline(ss, line)) out.push_back(line);
    return out;
}

} // namespace magnets::cli

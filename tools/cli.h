// tools/cli.h: the command-line layer shared by the magnets tools.
//
// Every option is declared once, in a table (OptionSpec); --help is generated
// from the tables and the man pages follow them. A tool is a list of commands
// (magnets-tokenize: train, encode, ...) or a single unnamed command
// (magnets-train). run_tool() parses, applies the global options, dispatches
// and maps failures to exit codes:
//
//   0 success, 1 runtime failure (magnets::Error, printed with its hint),
//   2 usage error (with a pointer to --help), 128 + signal number when a run
//   was interrupted by SIGINT/SIGTERM after writing its checkpoint.
#pragma once
#include "magnets/backend.h"
#include "magnets/formats.h"

// Vector options are repeated, never split: paths may contain commas.
#define CXXOPTS_VECTOR_DELIMITER '\0'
#include <cxxopts.hpp>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace magnets::cli {

// A bad command line: exit 2 with a pointer to --help.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class ArgKind { flag, integer, real, text, texts };

struct OptionSpec {
    const char* names;                   // cxxopts spelling: "o,output" or "steps"
    ArgKind kind;
    const char* arg;                     // value placeholder in --help ("N", "FILE")
    const char* help;
    const char* default_value = nullptr; // applied when absent, shown in --help
    bool required = false;
    bool from_preset = false;            // default comes from --preset
};
std::string long_name(const OptionSpec& o);
std::string short_name(const OptionSpec& o);

// Accepted by every command: --help --version --quiet --verbose --threads --backend.
extern const std::vector<OptionSpec> global_options;

class Args {
public:
    Args(cxxopts::ParseResult r, std::vector<std::string> operands)
        : r_(std::move(r)), operands_(std::move(operands)) {}
    // Given on the command line (defaults do not count).
    bool has(const std::string& name) const { return r_.count(name) > 0; }
    bool flag(const std::string& name) const { return r_.count(name) > 0 && r_[name].as<bool>(); }
    std::string text(const std::string& name) const { return r_[name].as<std::string>(); }
    int64_t integer(const std::string& name) const { return r_[name].as<int64_t>(); }
    double real(const std::string& name) const { return r_[name].as<double>(); }
    std::vector<std::string> texts(const std::string& name) const {
        return has(name) ? r_[name].as<std::vector<std::string>>() : std::vector<std::string>{};
    }
    const std::vector<std::string>& operands() const { return operands_; }

    // Integer option that must be > 0 (or >= 0 with allow_zero).
    int64_t positive(const std::string& name, bool allow_zero = false) const;
    // Real option that must be >= 0 (or > 0 with strict).
    double nonnegative(const std::string& name, bool strict = false) const;
    // --limit N, or -1 when absent.
    int64_t limit() const { return has("limit") ? positive("limit") : -1; }

private:
    cxxopts::ParseResult r_;
    std::vector<std::string> operands_;
};

struct CommandSpec {
    const char* name;     // "" for a single-command tool
    const char* summary;
    const char* operands; // positional operands in the usage line, or nullptr
    const std::vector<OptionSpec>* options;
    int (*run)(const Args&);
    void (*more_help)() = nullptr; // printed after the options
};

struct Tool {
    const char* prog;        // "magnets-train"
    const char* description; // one line for --help
    std::vector<CommandSpec> commands;
};

// Parses argv, handles --help/--version, runs the command, maps errors to exit codes.
int run_tool(const Tool& tool, int argc, char** argv);

// Applies the global options (log level, threads); returns the backend name.
std::string apply_global(const Args& a);
// The backend to compute on (make_backend, shared by the tool's models).
std::shared_ptr<Backend> backend_for(const std::string& name);

// "  key   value" rows at info level (the resolved-config table).
void print_table(const std::vector<std::pair<std::string, std::string>>& rows);

// JSON helpers for machine-readable logs (NaN/inf become null).
// Lines of a newline-joined string attribute (class_names).
std::vector<std::string> split_lines(const std::string& s);

std::string json_string(const std::string& s);
std::string json_number(double v);
std::string json_attr(const AttrValue& v);
std::string json_attrs(const Attrs& attrs);

// Long runs watch stop_requested: they checkpoint and return.
extern std::atomic<bool> stop_requested;
extern volatile std::sig_atomic_t stop_signal;
// SIGINT, SIGTERM and SIGUSR1 set stop_requested (checkpoint, then stop).
// A second SIGINT/SIGTERM kills at once, unless `repeatable`: an MPI rank can
// get one signal from the terminal and another from mpirun, and mpirun itself
// escalates to SIGKILL. SIGUSR1 is what Open MPI's mpirun forwards to every
// rank without ending the job (and what SLURM's --signal=USR1@T sends).
void install_stop_handlers(bool repeatable = false);
// Exit status after a run that stopped: 128 + signal, or 0 when no signal came.
int exit_status_after_stop();

// "name: requested X, checkpoint Y" for every attribute that differs.
std::string attr_differences(const Attrs& want, const Attrs& have);

} // namespace magnets::cli

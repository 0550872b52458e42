// magnets/formats.h: the toolkit's files, version 1, in HDF5.
//
// Every file is self-describing: root attributes `format`, `format_version`,
// `creator`, `creator_version` and every hyperparameter. Readers check format
// and version first and throw Error with a hint. Writes are atomic: a
// temporary file beside the target, then rename(), so a killed process never
// leaves a truncated file under the final name. Layouts: magnets-formats(5).
//
//   magnets::TokenFile tf;  ... fill ...
//   magnets::write_token_file("train.h5", tf, "magnets-tokenize");
//   auto back = magnets::read_token_file("train.h5");
//
//   magnets::Checkpoint ck = magnets::read_checkpoint("tok.h5", "magnets-tokenizer", 1);
#pragma once
#include "magnets/tensor.h"

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace magnets {

// An HDF5 attribute value: 64-bit integer, double or UTF-8 string.
using AttrValue = std::variant<int64_t, double, std::string>;
using Attrs = std::map<std::string, AttrValue>;

std::string attr_to_string(const AttrValue& v);
// Typed lookups; throw Error naming the attribute (and path) when missing or of the wrong type.
int64_t attr_int(const Attrs& a, const std::string& key, const std::string& path = {});
double attr_double(const Attrs& a, const std::string& key, const std::string& path = {}); // accepts ints
std::string attr_string(const Attrs& a, const std::string& key, const std::string& path = {});

// ---- token file: format "magnets-tokens", version 1 ----------------------
inline constexpr const char* token_format = "magnets-tokens";
inline constexpr int64_t token_format_version = 1;

struct TokenFile {
    int64_t grid_t = 1, grid_h = 0, grid_w = 0; // tokens per item: t * h * w (t = 1 for images)
    int64_t codebook_size = 0;                  // every token < codebook_size
    std::string split;                          // "train", "test", "generated", ...
    std::string tokenizer_hash;                 // Tokenizer::hash() of the tokenizer used
    std::string source;                         // dataset name or path
    std::vector<std::string> class_names;       // may be empty
    std::vector<uint16_t> tokens;               // [count, t, h, w] row-major
    std::vector<int32_t> labels;                // [count]; -1 = unlabelled
    Attrs extra;                                // more root attributes (e.g. sampling parameters)
    // More 1-D float32 datasets, written (not read back) under their names,
    // e.g. "sampling/step_gflops" (a '/' makes groups).
    std::map<std::string, std::vector<float>> extra_datasets;

    int64_t tokens_per_item() const { return grid_t * grid_h * grid_w; }
    int64_t count() const { return static_cast<int64_t>(labels.size()); }
};

// Writes atomically; validates sizes and token range first.
void write_token_file(const std::string& path, const TokenFile& tf, const std::string& creator);
// Reads and validates (format, version, shapes, token range).
TokenFile read_token_file(const std::string& path);
// Appends items of `more` (same grid, codebook size and tokenizer hash) to an
// existing token file; atomic (copy, extend, rename).
void append_token_file(const std::string& path, const TokenFile& more);

// ---- checkpoints: weights and training state as separate groups -----------
// /weights/<name>      f32 tensors (the model)
// /ema/<name>          f32 tensors, exponential moving average of the weights, optional
// /train_state/<name>  f32 tensors (optimizer moments, ...), optional
// root attributes      format, format_version, creator, creator_version, hyperparameters
// /train_state attrs   step, data position, seeds, ... (state_attrs)
struct Checkpoint {
    std::string format;
    int64_t format_version = 1;
    Attrs attrs;
    std::map<std::string, Tensor> weights;
    std::map<std::string, Tensor> ema; // /ema/<name>: EMA of the weights (optional; what samplers use)
    std::map<std::string, Tensor> state;
    Attrs state_attrs;
    bool has_state() const { return !state.empty() || !state_attrs.empty(); }
};

void write_checkpoint(const std::string& path, const Checkpoint& ck, const std::string& creator);
// Checks `format` == expected_format and format_version <= max_version; loads
// /train_state only when load_state is true.
Checkpoint read_checkpoint(const std::string& path, const std::string& expected_format,
                           int64_t max_version, bool load_state = true);
// 16 hex digits identifying the weights (FNV-1a 64 over names, shapes and values).
std::string weights_hash(const std::map<std::string, Tensor>& weights);

// ---- any magnets file -------------------------------------------------------
struct FileSummary {
    Attrs root_attrs;
    // (HDF5 path, "uint16 [10000, 8, 8]") for every dataset, in file order.
    std::vector<std::pair<std::string, std::string>> datasets;
};
// Describes any HDF5 file (used by `info`); throws Error if it is not HDF5.
FileSummary describe_file(const std::string& path);

// Atomic-write helpers usable for any output: temp name beside `path`, then
// commit() renames it over `path`; the destructor removes an uncommitted temp.
class AtomicOutput {
public:
    explicit AtomicOutput(std::string path);
    ~AtomicOutput();
    const std::string& temp_path() const { return temp_; }
    void commit(); // fsync + rename; throws Error on failure
private:
    std::string path_, temp_;
    bool committed_ = false;
};
// Throws Error with a hint when `path`'s directory is not writable.
void check_writable(const std::string& path);

} // namespace magnets

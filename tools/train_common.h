// tools/train_common.h: what magnets-train and magnets-distill share: the
// training options, token file loading, the resolved-config table, per-step
// log lines (stderr and JSON lines), the run itself with interrupt handling,
// and the loss-curve plot.
#pragma once
#include "cli.h"

#include "magnets/transformer.h"

#include <memory>
#include <string>
#include <vector>

namespace magnets::cli {

// Options of the optimisation shared by both tools (defaults from --preset
// for magnets-train, from the source checkpoint for magnets-distill).
const std::vector<OptionSpec>& train_loop_options();

// Applies the train_loop_options given on the command line to `t`.
void apply_train_overrides(const Args& a, TransformerTrainConfig& t);

struct TokenData {
    TokenFile train;
    TokenFile val;
    bool has_val = false;
};
// Reads --tokens (first --limit items) and --val; checks they come from the same tokenizer.
TokenData load_token_data(const Args& a);
// K, C and the grid from a token file (C = class names, or the largest label + 1).
void model_shape_from_tokens(const TokenFile& tf, TransformerConfig& m);

struct RunSpec {
    const char* prog = "";
    std::string resume_command; // printed after an interrupt, e.g. "magnets-train --resume -o X ..."
    std::vector<std::pair<std::string, std::string>> header_rows; // shown before the hyperparameters
};

// The data-parallel group this run belongs to (magnets/dist.h): MPI's world
// under mpirun/srun, else one process. Ranks other than 0 log warnings and
// errors only. Call first, so that only rank 0 reports.
std::shared_ptr<dist::Comm> join_training_group();

// Runs train_transformer with the log callbacks, the config table and signal
// handling; returns the exit status (0, or 128 + signal after an interrupt).
// *final_val receives the last validation (empty without --val).
int run_training(const Args& a, const RunSpec& spec, Transformer& model, const TokenData& data,
                 const TransformerTrainOptions& opt, std::vector<SubModelStats>* first_val,
                 std::vector<SubModelStats>* final_val);

// Loss curves (training loss per sub-model, validation CE and accuracy) from a
// JSON-lines log written by --log, as a PNG.
void plot_training_log(const std::string& log_path, const std::string& png_path, const std::string& title);

std::string format_subs(const std::vector<SubModelStats>& subs, bool validation);

} // namespace magnets::cli

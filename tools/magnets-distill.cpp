// magnets-distill: continue a nested transformer with progressive distillation.
//
// The full model keeps learning from the ground truth; every smaller
// sub-model m_i learns from alpha * CE(ground truth) + (1 - alpha) *
// H(stopgrad(m_{i+1}), m_i), alpha decaying linearly from 1 to 0 over
// --alpha-span steps (METHOD section 5). The paper's comparison modes are
// --objective ground-truth (joint training continued) and distill-only
// (alpha = 0 throughout), which is expected to degrade: the tool measures the
// sub-models before and after and reports it. Exit status as in tools/cli.h.
#include "cli.h"
#include "train_common.h"

#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/transformer.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using namespace magnets::cli;
constexpr const char* prog = "magnets-distill";

std::vector<OptionSpec> distill_options() {
    std::vector<OptionSpec> t = {
        {"from", ArgKind::text, "FILE", "magnets-train checkpoint to continue from (its model configuration)", nullptr,
         true},
        {"tokens", ArgKind::text, "FILE", "training token file", nullptr, true},
        {"val", ArgKind::text, "FILE", "held-out token file: sub-models are validated before and after"},
        {"o,output", ArgKind::text, "FILE", "checkpoint to write", nullptr, true},
        {"objective", ArgKind::text, "NAME", "progressive, ground-truth or distill-only", "progressive"},
        {"alpha-span", ArgKind::integer, "N", "steps over which alpha decays from 1 to 0 (default: --steps)"},
        {"from-ema", ArgKind::flag, nullptr, "start from the EMA weights of --from instead of its raw weights"},
        {"resume", ArgKind::flag, nullptr, "continue the distillation saved in --output (bit-identical)"},
    };
    for (OptionSpec o : train_loop_options()) {
        o.from_preset = false; // defaults come from --from (see print_defaults)
        t.push_back(o);
    }
    return t;
}
const std::vector<OptionSpec> options = distill_options();

void print_defaults() {
    std::printf("\nTraining options not given on the command line come from --from's training\n"
                "configuration, except: --steps 1000, --warmup 50, --lr half of the original peak.\n"
                "With --resume they come from --output's (only --steps may change).\n");
}

int run(const Args& a) {
    const std::string backend_name = apply_global(a);
    join_training_group(); // under mpirun: one rank of a data-parallel run
    const std::string output = a.text("output"), from = a.text("from");
    const bool resume = a.flag("resume");
    if (from == output) throw UsageError("--output must differ from --from (the source checkpoint is kept)");
    magnets::check_writable(output);
    if (a.has("log")) magnets::check_writable(a.text("log"));

    magnets::Checkpoint src = magnets::read_checkpoint(from, magnets::transformer_format,
                                                       magnets::transformer_format_version, false);
    const magnets::TransformerConfig model = magnets::TransformerConfig::from_attrs(src.attrs, from);
    magnets::TransformerTrainConfig train = magnets::TransformerTrainConfig::from_attrs(src.attrs, from);
    train.steps = 1000;
    train.warmup = 50;
    train.lr *= 0.5;
    try {
        train.objective = magnets::parse_objective(a.text("objective"));
    } catch (const magnets::Error& e) {
        throw UsageError(std::string(e.what()) + " (" + e.hint() + ")");
    }
    apply_train_overrides(a, train);
    train.alpha_span = a.has("alpha-span") ? a.positive("alpha-span") : train.steps;
    if (train.objective != magnets::Objective::ground_truth && model.factors.size() < 2)
        throw UsageError("--from has a single sub-model (factors " + magnets::factors_to_string(model.factors) +
                         "): there is no larger neighbour to distill from");
    if (resume) {
        magnets::Checkpoint ck = magnets::read_checkpoint(output, magnets::transformer_format,
                                                          magnets::transformer_format_version, false);
        const magnets::TransformerTrainConfig saved = magnets::TransformerTrainConfig::from_attrs(ck.attrs, output);
        if (saved.objective != train.objective || saved.seed != train.seed || saved.batch_size != train.batch_size)
            throw UsageError("--resume: objective, seed or batch size differ from the interrupted run (" +
                             std::string(magnets::objective_name(saved.objective)) + ", seed " +
                             std::to_string(saved.seed) + ", batch " + std::to_string(saved.batch_size) + ")");
        const int64_t steps = a.has("steps") ? train.steps : saved.steps;
        train = saved;
        train.steps = steps;
    }

    TokenData data = load_token_data(a);
    magnets::check_tokens_fit(model, data.train, data.train.source);
    auto be = backend_for(backend_name);
    magnets::Transformer m(model, be);
    const bool ema = a.flag("from-ema");
    if (ema && src.ema.empty()) throw magnets::Error("no EMA weights", from, "the checkpoint has no /ema group", "omit --from-ema");
    for (const std::string& n : m.param_names()) {
        const auto& group = ema ? src.ema : src.weights;
        auto it = group.find(n);
        if (it == group.end() || it->second.shape() != m.param(n).shape())
            throw magnets::Error("cannot load transformer", from, "weight '" + n + "' is missing or has another shape",
                                 "the file is damaged or was written by an incompatible version");
        m.param(n) = it->second.clone();
    }

    magnets::TransformerTrainOptions opt;
    opt.train = train;
    opt.output = output;
    opt.resume = resume;
    opt.creator = prog;
    opt.init_from = from + (ema ? " (EMA)" : "") + " hash " + m.hash();
    if (a.has("stop-after")) opt.stop_after = a.positive("stop-after", true);

    RunSpec spec;
    spec.prog = prog;
    spec.resume_command = std::string(prog) + " --resume --from " + from + " --tokens " + a.text("tokens") + " -o " +
                          output + " --objective " + magnets::objective_name(train.objective);
    if (a.has("val")) spec.resume_command += " --val " + a.text("val");
    if (a.has("limit")) spec.resume_command += " --limit " + std::to_string(a.integer("limit"));
    if (a.has("log")) spec.resume_command += " --log " + a.text("log");
    if (a.has("seed")) spec.resume_command += " --seed " + std::to_string(a.integer("seed"));
    if (a.has("batch-size")) spec.resume_command += " --batch-size " + std::to_string(a.integer("batch-size"));
    if (ema) spec.resume_command += " --from-ema";
    spec.header_rows = {{"from", from + (ema ? " (EMA weights)" : "")},
                        {"objective", magnets::objective_name(train.objective)},
                        {"alpha", train.objective == magnets::Objective::progressive
                                      ? "1 -> 0 over " + std::to_string(train.alpha_span) + " steps"
                                      : (train.objective == magnets::Objective::ground_truth ? "1" : "0")}};
    std::vector<magnets::SubModelStats> before, after;
    int rc = 0;
    try {
        rc = run_training(a, spec, m, data, opt, &before, &after);
    } catch (const magnets::Error& e) {
        if (train.objective == magnets::Objective::distill_only &&
            std::string(e.what()).find("diverged") != std::string::npos)
            magnets::log_error("distillation-only training diverged, as the paper predicts for alpha = 0 throughout; "
                               "use --objective progressive");
        throw;
    }
    if (rc != 0 || before.empty() || after.empty() || resume) return rc;

    // Before/after per sub-model, and a verdict on degradation.
    magnets::log_info("validation before -> after (%s):", magnets::objective_name(train.objective));
    std::vector<std::string> degraded;
    for (size_t k = 0; k < after.size(); ++k) {
        const auto& b = before[k];
        const auto& f = after[k];
        magnets::log_info("  m%-2" PRId64 " ce %.4f -> %.4f  acc %5.2f%% -> %5.2f%%", f.p, b.ce, f.ce, 100 * b.accuracy,
                          100 * f.accuracy);
        if (f.ce > b.ce * 1.02 || !std::isfinite(f.ce)) degraded.push_back("m" + std::to_string(f.p));
    }
    if (!degraded.empty()) {
        std::string list;
        for (auto& d : degraded) list += (list.empty() ? "" : ", ") + d;
        magnets::log_warn("degraded: %s got worse on validation (CE up more than 2%%)%s", list.c_str(),
                          train.objective == magnets::Objective::distill_only
                              ? "; expected for distill-only (no ground truth for the small models)"
                              : "");
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    const Tool tool{prog, "continue a nested transformer with progressive distillation (or the comparison modes)",
                    {{"", "progressive distillation", nullptr, &options, run, print_defaults}}};
    return run_tool(tool, argc, argv);
}

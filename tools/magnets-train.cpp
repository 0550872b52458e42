// magnets-train: train the nested masked transformer on a token file.
//
// Every sub-model m_p (p in --factors) runs on the same masked batch each
// step and their losses are summed (METHOD sections 3-4). A thin program over
// magnets/transformer.h; options are declared once, in the tables below, and
// --help and magnets-train(1) follow them. Exit status as in tools/cli.h.
#include "cli.h"
#include "train_common.h"

#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/transformer.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using namespace magnets::cli;
constexpr const char* prog = "magnets-train";

std::vector<OptionSpec> train_options() {
    std::vector<OptionSpec> t = {
        {"tokens", ArgKind::text, "FILE", "training token file (magnets-tokenize encode)", nullptr, true},
        {"val", ArgKind::text, "FILE", "held-out token file for validation (same tokenizer)"},
        {"o,output", ArgKind::text, "FILE", "checkpoint to write (weights, EMA weights, training state)", nullptr, true},
        {"preset", ArgKind::text, "NAME", "tiny, demo, small, maskgit-s, maskgit-b or maskgit-l: every default below",
         "demo"},
        {"resume", ArgKind::flag, nullptr, "continue the run saved in --output (bit-identical)"},
        {"width", ArgKind::integer, "D", "model width", nullptr, false, true},
        {"heads", ArgKind::integer, "H", "attention heads (head dim D/H)", nullptr, false, true},
        {"layers", ArgKind::integer, "L", "transformer blocks", nullptr, false, true},
        {"mlp-ratio", ArgKind::integer, "N", "MLP width as a multiple of D", nullptr, false, true},
        {"nesting", ArgKind::text, "MODE", "width (D/p everywhere), mone (attention kept full) or mlp (MLP only)",
         "width"},
        {"factors", ArgKind::text, "P,..", "nested sub-models m_p sharing the weights; 1 = the full model",
         "8,4,2,1"},
    };
    t.insert(t.end(), train_loop_options().begin(), train_loop_options().end());
    return t;
}
const std::vector<OptionSpec> options = train_options();

void print_presets() {
    std::printf("\npresets:\n");
    for (const auto& name : magnets::transformer_preset_names()) {
        const magnets::TransformerPreset p = magnets::transformer_preset(name);
        std::printf("  %-10s %s (D=%" PRId64 ", %" PRId64 " heads, %" PRId64 " layers; %" PRId64 " steps, batch %" PRId64
                    ")\n",
                    name.c_str(), p.description.c_str(), p.model.width, p.model.heads, p.model.layers, p.train.steps,
                    p.train.batch_size);
    }
}

// Options that may change on --resume; every other option given must agree with the checkpoint.
const std::vector<std::string> changeable = {"steps", "log-every", "checkpoint-every", "val-every", "val-items",
                                             "loss-limit"};

int run(const Args& a) {
    const std::string backend_name = apply_global(a);
    join_training_group(); // under mpirun: one rank of a data-parallel run
    const std::string output = a.text("output");
    const bool resume = a.flag("resume");
    const std::string preset_name = a.text("preset");
    const auto names = magnets::transformer_preset_names();
    if (std::find(names.begin(), names.end(), preset_name) == names.end()) {
        std::string list;
        for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
        throw UsageError("unknown preset '" + preset_name + "' (choose " + list + ")");
    }
    magnets::TransformerPreset preset = magnets::transformer_preset(preset_name);
    magnets::TransformerConfig model = preset.model;
    magnets::TransformerTrainConfig train = preset.train;
    if (a.has("width")) model.width = a.positive("width");
    if (a.has("heads")) model.heads = a.positive("heads");
    if (a.has("layers")) model.layers = a.positive("layers");
    if (a.has("mlp-ratio")) model.mlp_ratio = a.positive("mlp-ratio");
    try {
        model.nesting = magnets::parse_nesting(a.text("nesting"));
        model.factors = magnets::parse_factors(a.text("factors"));
    } catch (const magnets::Error& e) {
        throw UsageError(std::string(e.what()) + (e.hint().empty() ? "" : " (" + e.hint() + ")"));
    }
    apply_train_overrides(a, train);
    magnets::check_writable(output);
    if (a.has("log")) magnets::check_writable(a.text("log"));
    if (a.has("plot")) {
        if (!a.has("log")) throw UsageError("--plot draws the --log file: give --log FILE too");
        magnets::check_writable(a.text("plot"));
    }

    TokenData data = load_token_data(a);
    model_shape_from_tokens(data.train, model);

    if (resume) {
        magnets::Checkpoint ck = magnets::read_checkpoint(output, magnets::transformer_format,
                                                          magnets::transformer_format_version, false);
        const magnets::TransformerConfig saved_model = magnets::TransformerConfig::from_attrs(ck.attrs, output);
        magnets::TransformerTrainConfig saved = magnets::TransformerTrainConfig::from_attrs(ck.attrs, output);
        bool given = false;
        for (const auto& o : options) {
            const std::string n = long_name(o);
            if (a.has(n) && n != "tokens" && n != "val" && n != "output" && n != "resume" && n != "log" && n != "plot" &&
                n != "stop-after" && n != "limit" &&
                std::find(changeable.begin(), changeable.end(), n) == changeable.end())
                given = true;
        }
        if (given) {
            magnets::TransformerTrainConfig want = train;
            for (auto* t : {&want}) {
                t->steps = saved.steps; t->log_every = saved.log_every; t->checkpoint_every = saved.checkpoint_every;
                t->val_every = saved.val_every; t->val_items = saved.val_items; t->loss_limit = saved.loss_limit;
            }
            magnets::Attrs w, h;
            model.to_attrs(w);
            want.to_attrs(w);
            saved_model.to_attrs(h);
            saved.to_attrs(h);
            const std::string diff = attr_differences(w, h);
            if (!diff.empty())
                throw UsageError("--resume: the options differ from the checkpoint's (" + diff +
                                 "); give the original options, or only --tokens, -o and --resume");
        }
        if (a.has("steps")) saved.steps = train.steps;
        if (a.has("log-every")) saved.log_every = train.log_every;
        if (a.has("checkpoint-every")) saved.checkpoint_every = train.checkpoint_every;
        if (a.has("val-every")) saved.val_every = train.val_every;
        if (a.has("val-items")) saved.val_items = train.val_items;
        if (a.has("loss-limit")) saved.loss_limit = train.loss_limit;
        model = saved_model;
        train = saved;
    }
    try {
        model.validate();
    } catch (const magnets::Error& e) {
        throw UsageError(std::string("inconsistent model options: ") + e.what() +
                         (e.hint().empty() ? "" : " (" + e.hint() + ")"));
    }
    if (!train.loss_weights.empty() && train.loss_weights.size() != model.factors.size())
        throw UsageError("--loss-weights: " + std::to_string(train.loss_weights.size()) + " weights for " +
                         std::to_string(model.factors.size()) + " sub-models (" +
                         magnets::factors_to_string(model.factors) + ")");
    magnets::check_tokens_fit(model, data.train, data.train.source);

    auto be = backend_for(backend_name);
    magnets::Transformer m(model, be);
    if (!resume) m.init(train.seed);

    magnets::TransformerTrainOptions opt;
    opt.train = train;
    opt.output = output;
    opt.resume = resume;
    opt.creator = prog;
    if (a.has("stop-after")) opt.stop_after = a.positive("stop-after", true);

    RunSpec spec;
    spec.prog = prog;
    spec.resume_command = std::string(prog) + " --resume --tokens " + a.text("tokens") + " -o " + output;
    if (a.has("val")) spec.resume_command += " --val " + a.text("val");
    if (a.has("limit")) spec.resume_command += " --limit " + std::to_string(a.integer("limit"));
    if (a.has("log")) spec.resume_command += " --log " + a.text("log");
    spec.header_rows = {{"preset", resume ? "(from checkpoint)" : preset_name}};
    return run_training(a, spec, m, data, opt, nullptr, nullptr);
}

} // namespace

int main(int argc, char** argv) {
    const Tool tool{prog, "train the nested masked transformer (all sub-models jointly) on a token file",
                    {{"", "train the nested masked transformer", nullptr, &options, run, print_presets}}};
    return run_tool(tool, argc, argv);
}

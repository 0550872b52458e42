// tools/train_common.cpp: shared parts of magnets-train and magnets-distill.
#include "train_common.h"

#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/plot.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>

namespace magnets::cli {

const std::vector<OptionSpec>& train_loop_options() {
    static const std::vector<OptionSpec> table = {
    {"steps", ArgKind::integer, "N", "optimizer steps", nullptr, false, true},
    {"batch-size", ArgKind::integer, "N", "sequences per step (every sub-model sees the same batch)", nullptr, false, true},
    {"lr", ArgKind::real, "X", "AdamW peak learning rate (linear warm-up, cosine decay)", nullptr, false, true},
    {"warmup", ArgKind::integer, "N", "warm-up steps", nullptr, false, true},
    {"lr-min-ratio", ArgKind::real, "X", "final learning rate as a fraction of the peak", nullptr, false, true},
    {"weight-decay", ArgKind::real, "X", "AdamW decoupled weight decay (matrices and embeddings)", nullptr, false, true},
    {"beta2", ArgKind::real, "X", "AdamW beta2 (beta1 is 0.9)", nullptr, false, true},
    {"clip-norm", ArgKind::real, "X", "global gradient-norm clip (0 = off)", nullptr, false, true},
    {"ema-decay", ArgKind::real, "X", "decay of the EMA weights that sampling uses", nullptr, false, true},
    {"label-smoothing", ArgKind::real, "X", "label smoothing of the ground-truth cross-entropy", nullptr, false, true},
    {"class-dropout", ArgKind::real, "X", "probability of replacing the class by NULL (for guidance)", nullptr, false, true},
    {"loss-weights", ArgKind::text, "W,..", "loss weight per sub-model, smallest model first (factors in decreasing order, e.g. m8,m4,m2,m1); default all 1"},
    {"seed", ArgKind::integer, "N", "seed of every random draw (init, data order, masks)", nullptr, false, true},
    {"limit", ArgKind::integer, "N", "train on the first N items of --tokens only"},
    {"val-items", ArgKind::integer, "N", "validation items (fixed masks, per sub-model CE and accuracy)", nullptr, false, true},
    {"val-every", ArgKind::integer, "N", "validate every N steps (0 = only at the end)", nullptr, false, true},
    {"checkpoint-every", ArgKind::integer, "N", "write a checkpoint every N steps (0 = only at the end)", nullptr, false, true},
    {"log-every", ArgKind::integer, "N", "print a log line every N steps", nullptr, false, true},
    {"loss-limit", ArgKind::real, "X", "stop as diverged when the mean loss per sub-model exceeds X or is not finite (0 = 3 ln K)", nullptr, false, true},
    {"log", ArgKind::text, "FILE", "also write every log line to FILE as JSON lines (appended on --resume)"},
    {"plot", ArgKind::text, "FILE.png", "after the run, plot the --log file: losses to FILE.png, accuracy to FILE-accuracy.png"},
    {"stop-after", ArgKind::integer, "N", "testing aid: stop as if interrupted after step N (exit 0)"},
    };
    return table;
}

void apply_train_overrides(const Args& a, TransformerTrainConfig& t) {
    if (a.has("steps")) t.steps = a.positive("steps");
    if (a.has("batch-size")) t.batch_size = a.positive("batch-size");
    if (a.has("lr")) t.lr = a.nonnegative("lr", true);
    if (a.has("warmup")) t.warmup = a.positive("warmup", true);
    if (a.has("lr-min-ratio")) t.lr_min_ratio = a.nonnegative("lr-min-ratio");
    if (a.has("weight-decay")) t.weight_decay = a.nonnegative("weight-decay");
    if (a.has("beta2")) t.beta2 = a.nonnegative("beta2");
    if (a.has("clip-norm")) t.clip_norm = a.nonnegative("clip-norm");
    if (a.has("ema-decay")) t.ema_decay = a.nonnegative("ema-decay");
    if (a.has("label-smoothing")) t.label_smoothing = a.nonnegative("label-smoothing");
    if (a.has("class-dropout")) t.class_dropout = a.nonnegative("class-dropout");
    if (a.has("seed")) t.seed = static_cast<uint64_t>(a.positive("seed", true));
    if (a.has("val-items")) t.val_items = a.positive("val-items");
    if (a.has("val-every")) t.val_every = a.positive("val-every", true);
    if (a.has("checkpoint-every")) t.checkpoint_every = a.positive("checkpoint-every", true);
    if (a.has("log-every")) t.log_every = a.positive("log-every");
    if (a.has("loss-limit")) t.loss_limit = a.nonnegative("loss-limit");
    if (a.has("loss-weights")) {
        t.loss_weights.clear();
        const std::string s = a.text("loss-weights");
        size_t pos = 0;
        while (true) {
            const size_t e = s.find(',', pos);
            const std::string item = s.substr(pos, e == std::string::npos ? std::string::npos : e - pos);
            char* end = nullptr;
            const double w = std::strtod(item.c_str(), &end);
            if (item.empty() || *end != '\0' || !std::isfinite(w) || w < 0)
                throw UsageError("--loss-weights: '" + item + "' is not a non-negative number");
            t.loss_weights.push_back(w);
            if (e == std::string::npos) break;
            pos = e + 1;
        }
    }
    if (t.ema_decay >= 1.0) throw UsageError("--ema-decay must be below 1");
    if (t.beta2 >= 1.0) throw UsageError("--beta2 must be below 1");
    if (t.class_dropout > 1.0) throw UsageError("--class-dropout is a probability (0..1)");
    if (t.label_smoothing >= 1.0) throw UsageError("--label-smoothing must be below 1");
}

TokenData load_token_data(const Args& a) {
    TokenData d;
    const std::string tp = a.text("tokens");
    d.train = read_token_file(tp);
    if (d.train.source.empty()) d.train.source = tp;
    const int64_t limit = a.limit();
    if (limit >= 0 && limit < d.train.count()) {
        d.train.labels.resize(static_cast<size_t>(limit));
        d.train.tokens.resize(static_cast<size_t>(limit * d.train.tokens_per_item()));
    }
    if (d.train.count() == 0) throw Error("no training items", tp, "the token file is empty", "encode a dataset first");
    if (a.has("val")) {
        const std::string vp = a.text("val");
        d.val = read_token_file(vp);
        if (d.val.source.empty()) d.val.source = vp;
        if (d.val.tokenizer_hash != d.train.tokenizer_hash)
            throw Error("validation tokens do not match the training tokens", vp,
                        "made by tokenizer " + d.val.tokenizer_hash + ", the training tokens by " +
                            d.train.tokenizer_hash,
                        "encode the validation split with the same tokenizer");
        d.has_val = true;
    }
    return d;
}

void model_shape_from_tokens(const TokenFile& tf, TransformerConfig& m) {
    m.codebook_size = tf.codebook_size;
    m.grid_t = tf.grid_t; m.grid_h = tf.grid_h; m.grid_w = tf.grid_w;
    int64_t c = static_cast<int64_t>(tf.class_names.size());
    for (int32_t y : tf.labels) c = std::max<int64_t>(c, y + 1);
    m.num_classes = c;
}

std::string format_subs(const std::vector<SubModelStats>& subs, bool validation) {
    std::string s;
    char buf[96];
    for (const auto& st : subs) {
        if (validation)
            std::snprintf(buf, sizeof buf, "  m%-2" PRId64 " ce %.4f acc %5.2f%%", st.p, st.ce, 100.0 * st.accuracy);
        else
            std::snprintf(buf, sizeof buf, "  m%" PRId64 " %.3f/%4.1f%%", st.p, st.loss, 100.0 * st.accuracy);
        s += buf;
    }
    return s;
}

namespace {

std::string subs_json(const std::vector<SubModelStats>& subs) {
    std::string s = "[";
    for (size_t i = 0; i < subs.size(); ++i) {
        const auto& st = subs[i];
        s += (i ? "," : "") + std::string("{\"p\":") + std::to_string(st.p) + ",\"loss\":" + json_number(st.loss) +
             ",\"ce\":" + json_number(st.ce) + ",\"accuracy\":" + json_number(st.accuracy) + "}";
    }
    return s + "]";
}

std::string human_count(double v) {
    char buf[32];
    if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
    else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
    else std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
}

} // namespace

std::shared_ptr<dist::Comm> join_training_group() {
    std::shared_ptr<dist::Comm> comm = dist::world();
    if (!comm->root() && log_level() > LogLevel::warn) set_log_level(LogLevel::warn); // rank 0 reports
    return comm;
}

int run_training(const Args& a, const RunSpec& spec, Transformer& model, const TokenData& data,
                 const TransformerTrainOptions& opt, std::vector<SubModelStats>* first_val,
                 std::vector<SubModelStats>* final_val) {
    const TransformerConfig& cfg = model.config();
    const TransformerTrainConfig& tc = opt.train;
    const std::shared_ptr<dist::Comm> comm = join_training_group();
    const bool root = comm->root();
    log_info("%s: resolved configuration", spec.prog);
    std::vector<std::pair<std::string, std::string>> rows = spec.header_rows;
    rows.emplace_back("train tokens", data.train.source + " (" + std::to_string(data.train.count()) + " items, " +
                                          std::to_string(cfg.tokens()) + " tokens each (" +
                                          (cfg.grid_t > 1 ? std::to_string(cfg.grid_t) + "x" : std::string()) +
                                          std::to_string(cfg.grid_h) + "x" + std::to_string(cfg.grid_w) + "), tokenizer " +
                                          data.train.tokenizer_hash + ")");
    rows.emplace_back("val tokens", data.has_val ? data.val.source + " (" + std::to_string(data.val.count()) + " items)"
                                                 : std::string("none (no validation)"));
    rows.emplace_back("output", opt.output);
    rows.emplace_back("resume", opt.resume ? "yes" : "no");
    rows.emplace_back("backend", model.backend().name());
    rows.emplace_back("threads", std::to_string(num_threads()) + (comm->size() > 1 ? " per rank" : ""));
    if (comm->size() > 1) {
        const auto [lo, hi] = dist::split_range(tc.batch_size, 0, comm->size());
        const auto [lo1, hi1] = dist::split_range(tc.batch_size, comm->size() - 1, comm->size());
        const int64_t most = hi - lo, least = hi1 - lo1;
        rows.emplace_back("data parallel", comm->describe() + "; each step's batch of " + std::to_string(tc.batch_size) +
                                               " split " + std::to_string(most) +
                                               (least != most ? "-" + std::to_string(least) : std::string()) +
                                               " per rank, gradients summed by MPI_Allreduce");
    }
    rows.emplace_back("parameters", human_count(static_cast<double>(cfg.num_params())));
    std::string flops;
    for (int64_t p : cfg.factors) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%sm%" PRId64 " %.2f", flops.empty() ? "" : ", ", p, cfg.forward_flops(p) / 1e6);
        flops += buf;
    }
    rows.emplace_back("MFLOP/seq fwd", flops);
    Attrs hp;
    cfg.to_attrs(hp);
    tc.to_attrs(hp);
    for (const auto& [k, v] : hp) rows.emplace_back(k, attr_to_string(v));
    if (a.has("log")) rows.emplace_back("log", a.text("log"));
    print_table(rows);

    std::FILE* log_file = nullptr;
    if (a.has("log") && root) {
        log_file = std::fopen(a.text("log").c_str(), opt.resume ? "a" : "w");
        if (!log_file)
            throw Error("cannot open log file", a.text("log"), std::strerror(errno),
                        "check that the folder exists and is writable");
    }
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> log_guard(log_file, [](std::FILE* f) { return f ? std::fclose(f) : 0; });

    bool first_seen = false;
    auto on_log = [&](const TransformerLog& l) {
        if (l.validation) {
            log_info("val  %6" PRId64 "/%" PRId64 "%s", l.step, l.steps, format_subs(l.subs, true).c_str());
            if (first_val && !first_seen) *first_val = l.subs;
            first_seen = true;
            if (final_val) *final_val = l.subs;
        } else {
            log_info("step %6" PRId64 "/%" PRId64 "  loss %.4f |%s | gn %.2f lr %.2e a %.2f | %s tok/s", l.step, l.steps,
                     l.loss, format_subs(l.subs, false).c_str(), l.grad_norm, l.lr, l.alpha,
                     human_count(l.tokens_per_s).c_str());
        }
        if (log_file) {
            if (l.validation)
                std::fprintf(log_file, "{\"validation\":true,\"step\":%" PRId64 ",\"steps\":%" PRId64 ",\"subs\":%s}\n",
                             l.step, l.steps, subs_json(l.subs).c_str());
            else
                std::fprintf(log_file,
                             "{\"step\":%" PRId64 ",\"steps\":%" PRId64 ",\"loss\":%s,\"grad_norm\":%s,\"lr\":%s,"
                             "\"alpha\":%s,\"tokens_per_s\":%s,\"subs\":%s}\n",
                             l.step, l.steps, json_number(l.loss).c_str(), json_number(l.grad_norm).c_str(),
                             json_number(l.lr).c_str(), json_number(l.alpha).c_str(), json_number(l.tokens_per_s).c_str(),
                             subs_json(l.subs).c_str());
            std::fflush(log_file);
        }
    };

    TransformerTrainOptions o = opt;
    o.stop = &stop_requested;
    o.comm = comm;
    install_stop_handlers(comm->size() > 1);
    const double t0 = now_seconds();
    const int64_t last = train_transformer(model, data.train, data.has_val ? &data.val : nullptr, o, on_log);
    const double elapsed = now_seconds() - t0;
    if (last < tc.steps) {
        if (!root) return exit_status_after_stop(); // rank 0 reports
        const int sig = stop_signal;
        log_warn("stopped at step %" PRId64 " of %" PRId64 "%s; checkpoint saved to %s", last, tc.steps,
                 sig ? (std::string(" by ") + strsignal(sig)).c_str() : "", opt.output.c_str());
        std::string cmd = (comm->size() > 1 ? "mpirun -n " + std::to_string(comm->size()) + " " : std::string()) +
                          spec.resume_command;
        // oneDNN sums in a thread-dependent order: same threads and backend for a bit-identical run.
        if (a.has("threads")) cmd += " --threads " + std::to_string(a.integer("threads"));
        if (a.has("backend")) cmd += " --backend " + a.text("backend");
        log_info("resume with: %s", cmd.c_str());
        return exit_status_after_stop();
    }
    log_info("reached step %" PRId64 " in %.1f s; wrote %s (weights hash %s)", last, elapsed, opt.output.c_str(),
             model.hash().c_str());
    if (a.has("plot") && root) {
        if (!a.has("log")) throw UsageError("--plot draws the --log file: give --log FILE too");
        std::fflush(log_file);
        plot_training_log(a.text("log"), a.text("plot"), std::string(spec.prog) + ": " + opt.output);
    }
    return 0;
}

// ---- plot ------------------------------------------------------------------------

namespace {

// Reads a number after "key": in a JSON line we wrote ourselves.
bool json_field(const std::string& line, const std::string& key, size_t from, double* out, size_t* at = nullptr) {
    const size_t k = line.find("\"" + key + "\":", from);
    if (k == std::string::npos) return false;
    const char* s = line.c_str() + k + key.size() + 3;
    if (std::strncmp(s, "null", 4) == 0) *out = NAN;
    else *out = std::strtod(s, nullptr);
    if (at) *at = k + key.size() + 3;
    return true;
}

} // namespace

void plot_training_log(const std::string& log_path, const std::string& png_path, const std::string& title) {
    std::ifstream in(log_path);
    if (!in) throw Error("cannot read log", log_path, std::strerror(errno), "pass the file given to --log");
    std::map<int64_t, PlotSeries> train_loss, val_ce, val_acc;
    std::string line;
    while (std::getline(in, line)) {
        double step = 0;
        if (!json_field(line, "step", 0, &step)) continue;
        const bool val = line.find("\"validation\":true") != std::string::npos;
        size_t pos = line.find("\"subs\":[");
        while (pos != std::string::npos) {
            double p = 0, loss = 0, ce = 0, acc = 0;
            size_t at = 0;
            if (!json_field(line, "p", pos, &p, &at)) break;
            json_field(line, "loss", at, &loss);
            json_field(line, "ce", at, &ce);
            json_field(line, "accuracy", at, &acc);
            const int64_t key = static_cast<int64_t>(p);
            const std::string label = "m" + std::to_string(key);
            if (val) {
                auto& c = val_ce[key];
                c.label = label + " val CE";
                c.points = true;
                c.x.push_back(step);
                c.y.push_back(ce);
                auto& ac = val_acc[key];
                ac.label = label + " val";
                ac.points = true;
                ac.x.push_back(step);
                ac.y.push_back(100.0 * acc);
            } else {
                auto& t = train_loss[key];
                t.label = label + " train";
                t.x.push_back(step);
                t.y.push_back(loss);
            }
            pos = at;
        }
    }
    std::vector<PlotSeries> losses, accs;
    for (auto it = train_loss.rbegin(); it != train_loss.rend(); ++it) losses.push_back(it->second);
    for (auto it = val_ce.rbegin(); it != val_ce.rend(); ++it) losses.push_back(it->second);
    for (auto it = val_acc.rbegin(); it != val_acc.rend(); ++it) accs.push_back(it->second);
    if (losses.empty()) throw Error("nothing to plot", log_path, "no training records in the log", "pass a --log file of a run");
    PlotOptions po;
    po.title = title;
    po.x_label = "step";
    po.y_label = "loss (train: objective; val: CE)";
    write_plot_png(png_path, losses, po);
    log_info("wrote loss curves to %s", png_path.c_str());
    if (!accs.empty()) {
        std::string acc_path = png_path;
        const size_t dot = acc_path.rfind(".png");
        acc_path = (dot == std::string::npos ? acc_path : acc_path.substr(0, dot)) + "-accuracy.png";
        po.y_label = "validation masked-token accuracy (%)";
        write_plot_png(acc_path, accs, po);
        log_info("wrote validation accuracy to %s", acc_path.c_str());
    }
}

} // namespace magnets::cli

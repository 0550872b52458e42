// Transformer presets, masking, the joint training / distillation loop,
// validation and checkpoints.
#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/rng.h"
#include "nn/data_order.h"
#include "nn/optim.h"
#include "nn/transformer_impl.h"
#include "nn/transformer_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <numeric>

namespace magnets {

void transformer_load_weights(Transformer& m, const std::map<std::string, Tensor>& src, const std::string& path,
                              const char* group);

const char* objective_name(Objective o) {
    switch (o) {
    case Objective::ground_truth: return "ground-truth";
    case Objective::progressive: return "progressive";
    case Objective::distill_only: return "distill-only";
    }
    return "?";
}

Objective parse_objective(const std::string& s) {
    if (s == "ground-truth" || s == "gt") return Objective::ground_truth;
    if (s == "progressive") return Objective::progressive;
    if (s == "distill-only") return Objective::distill_only;
    throw Error("unknown objective '" + s + "'", {}, {}, "choose one of: progressive, ground-truth, distill-only");
}

double TransformerTrainConfig::alpha_at(int64_t step) const {
    switch (objective) {
    case Objective::ground_truth: return 1.0;
    case Objective::distill_only: return 0.0;
    case Objective::progressive: {
        const int64_t span = alpha_span > 0 ? alpha_span : steps;
        return std::max(0.0, 1.0 - static_cast<double>(step) / static_cast<double>(std::max<int64_t>(span, 1)));
    }
    }
    return 1.0;
}

void TransformerTrainConfig::to_attrs(Attrs& a) const {
    a["train_steps"] = steps; a["train_batch_size"] = batch_size; a["train_lr"] = lr;
    a["train_lr_min_ratio"] = lr_min_ratio; a["train_warmup"] = warmup;
    a["train_beta1"] = beta1; a["train_beta2"] = beta2; a["train_weight_decay"] = weight_decay;
    a["train_clip_norm"] = clip_norm; a["train_ema_decay"] = ema_decay;
    a["train_label_smoothing"] = label_smoothing; a["train_class_dropout"] = class_dropout;
    std::string w;
    for (double x : loss_weights) w += (w.empty() ? "" : ",") + std::to_string(x);
    a["train_loss_weights"] = w.empty() ? std::string("1") : w;
    a["train_objective"] = std::string(objective_name(objective));
    a["train_alpha_span"] = alpha_span;
    a["train_seed"] = static_cast<int64_t>(seed);
    a["train_log_every"] = log_every; a["train_checkpoint_every"] = checkpoint_every;
    a["train_val_every"] = val_every; a["train_val_items"] = val_items; a["train_loss_limit"] = loss_limit;
}

TransformerTrainConfig TransformerTrainConfig::from_attrs(const Attrs& a, const std::string& path) {
    TransformerTrainConfig t;
    t.steps = attr_int(a, "train_steps", path); t.batch_size = attr_int(a, "train_batch_size", path);
    t.lr = attr_double(a, "train_lr", path); t.lr_min_ratio = attr_double(a, "train_lr_min_ratio", path);
    t.warmup = attr_int(a, "train_warmup", path);
    t.beta1 = attr_double(a, "train_beta1", path); t.beta2 = attr_double(a, "train_beta2", path);
    t.weight_decay = attr_double(a, "train_weight_decay", path); t.clip_norm = attr_double(a, "train_clip_norm", path);
    t.ema_decay = attr_double(a, "train_ema_decay", path);
    t.label_smoothing = attr_double(a, "train_label_smoothing", path);
    t.class_dropout = attr_double(a, "train_class_dropout", path);
    const std::string w = attr_string(a, "train_loss_weights", path);
    if (w != "1") {
        size_t pos = 0;
        while (pos <= w.size()) {
            const size_t e = w.find(',', pos);
            t.loss_weights.push_back(std::stod(w.substr(pos, e == std::string::npos ? std::string::npos : e - pos)));
            if (e == std::string::npos) break;
            pos = e + 1;
        }
    }
    t.objective = parse_objective(attr_string(a, "train_objective", path));
    t.alpha_span = attr_int(a, "train_alpha_span", path);
    t.seed = static_cast<uint64_t>(attr_int(a, "train_seed", path));
    t.log_every = attr_int(a, "train_log_every", path); t.checkpoint_every = attr_int(a, "train_checkpoint_every", path);
    t.val_every = attr_int(a, "train_val_every", path); t.val_items = attr_int(a, "train_val_items", path);
    t.loss_limit = attr_double(a, "train_loss_limit", path);
    return t;
}

std::vector<std::string> transformer_preset_names() {
    return {"tiny", "demo", "small", "maskgit-s", "maskgit-b", "maskgit-l"};
}

TransformerPreset transformer_preset(const std::string& name) {
    TransformerPreset p;
    p.name = name;
    TransformerConfig& m = p.model;
    TransformerTrainConfig& t = p.train;
    if (name == "tiny") {
        p.description = "seconds; for tests and smoke runs";
        m.width = 32; m.heads = 8; m.layers = 2;
        t.steps = 30; t.batch_size = 16; t.lr = 1e-3; t.warmup = 5; t.log_every = 5;
        t.checkpoint_every = 0; t.val_every = 0; t.val_items = 64;
    } else if (name == "demo") {
        p.description = "about 10 minutes on 2 cores; Fashion-MNIST 8x8 tokens";
        m.width = 128; m.heads = 8; m.layers = 4;
        t.steps = 1400; t.batch_size = 64; t.lr = 2e-3; t.warmup = 100; t.log_every = 50;
        t.checkpoint_every = 200; t.val_every = 200; t.val_items = 2000; t.ema_decay = 0.998;
    } else if (name == "small") {
        // Sized to the 2-core machine: D=256 x 8 layers at batch 128 runs 1.7k tokens/s there,
        // so 20,000 steps would take ~38 h. Four layers at batch 64 run ~2.9k tokens/s: 2,500
        // steps (10.4M tokens, 1.8x the demo's steps on a 3.5x larger model) take about an hour.
        p.description = "a real quality run: about an hour on 2 cores";
        m.width = 256; m.heads = 8; m.layers = 4;
        t.steps = 2500; t.batch_size = 64; t.lr = 1.5e-3; t.warmup = 150; t.log_every = 50;
        t.checkpoint_every = 250; t.val_every = 500; t.val_items = 2000; t.ema_decay = 0.999;
    } else if (name == "maskgit-s") {
        p.description = "our S shape (12 layers, D=512, 8 heads); for GPUs";
        m.width = 512; m.heads = 8; m.layers = 12;
        t.steps = 100000; t.batch_size = 256; t.lr = 4e-4; t.warmup = 5000; t.log_every = 100;
        t.checkpoint_every = 2000; t.val_every = 2000; t.val_items = 10000; t.ema_decay = 0.9999;
    } else if (name == "maskgit-b") {
        p.description = "the paper's MaskGIT-B shape (24 layers, D=768, 16 heads); for GPUs";
        m.width = 768; m.heads = 16; m.layers = 24;
        t.steps = 100000; t.batch_size = 256; t.lr = 4e-4; t.warmup = 5000; t.log_every = 100;
        t.checkpoint_every = 2000; t.val_every = 2000; t.val_items = 10000; t.ema_decay = 0.9999;
    } else if (name == "maskgit-l") {
        p.description = "our L shape (24 layers, D=1024, 16 heads); for GPUs";
        m.width = 1024; m.heads = 16; m.layers = 24;
        t.steps = 100000; t.batch_size = 256; t.lr = 3e-4; t.warmup = 5000; t.log_every = 100;
        t.checkpoint_every = 2000; t.val_every = 2000; t.val_items = 10000; t.ema_decay = 0.9999;
    } else {
        std::string names;
        for (auto& n : transformer_preset_names()) names += (names.empty() ? "" : ", ") + n;
        throw Error("unknown transformer preset '" + name + "'", {}, {}, "choose one of: " + names);
    }
    return p;
}

void check_tokens_fit(const TransformerConfig& cfg, const TokenFile& tf, const std::string& path) {
    if (tf.codebook_size != cfg.codebook_size)
        throw Error("token file does not fit the model", path,
                    "its codebook has " + std::to_string(tf.codebook_size) + " codes, the model " +
                        std::to_string(cfg.codebook_size),
                    "use tokens made with the tokenizer the model was trained on");
    if (tf.grid_t != cfg.grid_t || tf.grid_h != cfg.grid_h || tf.grid_w != cfg.grid_w)
        throw Error("token file does not fit the model", path,
                    "its token grid is " + std::to_string(tf.grid_t) + "x" + std::to_string(tf.grid_h) + "x" +
                        std::to_string(tf.grid_w) + " (" + std::to_string(tf.tokens_per_item()) +
                        " tokens), the model's " + std::to_string(cfg.grid_t) + "x" + std::to_string(cfg.grid_h) + "x" +
                        std::to_string(cfg.grid_w) + " (" + std::to_string(cfg.tokens()) + ")",
                    "use tokens made with the tokenizer the model was trained on");
    for (int64_t i = 0; i < tf.count(); ++i) {
        const int32_t y = tf.labels[static_cast<size_t>(i)];
        if (y < -1 || y >= cfg.num_classes)
            throw Error("token file does not fit the model", path,
                        "item " + std::to_string(i) + " has label " + std::to_string(y) + "; the model has " +
                            std::to_string(cfg.num_classes) + " classes (labels 0.." +
                            std::to_string(cfg.num_classes - 1) + ", -1 = unlabelled)",
                        "fix the labels or train a model on this token file");
    }
    if (tf.count() == 0) throw Error("token file is empty", path, {}, "encode some items first");
}

namespace {

// Masks for one batch, per METHOD 3: per example r ~ U(0,1), ceil(cos(pi/2 r) N)
// positions (at least 1) chosen by Philox keys. `index` is the example's global
// index within the stream, so masks do not depend on the batch split.
void make_masks(const Philox& rng, uint64_t ratio_stream, uint64_t pos_stream, int64_t index, int64_t N,
                uint8_t* mask, std::vector<std::pair<uint32_t, int64_t>>& keys) {
    const double r = rng.uniform_double(ratio_stream, static_cast<uint64_t>(index));
    int64_t n = static_cast<int64_t>(std::ceil(std::cos(M_PI / 2 * r) * static_cast<double>(N)));
    n = std::clamp<int64_t>(n, 1, N);
    keys.resize(static_cast<size_t>(N));
    for (int64_t j = 0; j < N; ++j)
        keys[static_cast<size_t>(j)] = {rng.u32(pos_stream, static_cast<uint64_t>(index * N + j)), j};
    std::sort(keys.begin(), keys.end());
    std::memset(mask, 0, static_cast<size_t>(N));
    for (int64_t j = 0; j < n; ++j) mask[keys[static_cast<size_t>(j)].second] = 1;
}

struct Batch {
    std::vector<int32_t> ids, targets;
    std::vector<uint8_t> mask;
    void resize(int64_t b, int64_t S, int64_t N) {
        ids.resize(static_cast<size_t>(b * S));
        targets.resize(static_cast<size_t>(b * N));
        mask.resize(static_cast<size_t>(b * N));
    }
};

// Fills ids/targets for items (with masks already in b.mask) and class tokens.
void fill_batch(const TransformerConfig& cfg, const TokenFile& tf, const int64_t* items, int64_t n, Batch& b,
                const uint8_t* drop_class) {
    const int64_t S = cfg.seq(), N = cfg.tokens();
    for (int64_t i = 0; i < n; ++i) {
        const int64_t it = items[i];
        const int32_t label = tf.labels[static_cast<size_t>(it)];
        b.ids[static_cast<size_t>(i * S)] = static_cast<int32_t>(
            label < 0 || (drop_class && drop_class[i]) ? cfg.null_id() : cfg.class_id(label));
        const uint16_t* tok = tf.tokens.data() + it * N;
        for (int64_t j = 0; j < N; ++j) {
            const int32_t y = tok[j];
            b.targets[static_cast<size_t>(i * N + j)] = y;
            b.ids[static_cast<size_t>(i * S + 1 + j)] =
                b.mask[static_cast<size_t>(i * N + j)] ? static_cast<int32_t>(cfg.mask_id()) : y;
        }
    }
}

} // namespace

std::vector<SubModelStats> validate_transformer(Transformer& model, const TokenFile& val, int64_t items, uint64_t seed,
                                                int64_t batch_size, dist::Comm* comm) {
    const int ranks = comm ? comm->size() : 1, rank = comm ? comm->rank() : 0;
    Transformer::Impl& m = model.impl();
    const TransformerConfig& cfg = m.cfg;
    const int64_t N = cfg.tokens(), S = cfg.seq();
    const int64_t n = std::min(items > 0 ? items : val.count(), val.count());
    Philox rng(seed);
    const uint64_t rs = stream_id("val-mask-ratio"), ps = stream_id("val-mask-pos");
    std::vector<std::pair<uint32_t, int64_t>> keys;
    const size_t F = cfg.factors.size();
    std::vector<double> ce(F, 0), ok(F, 0), loss(F, 0);
    int64_t masked = 0;
    Batch b;
    std::vector<int64_t> idx;
    for (int64_t first = 0, batch_no = 0; first < n; first += batch_size, ++batch_no) {
        if (batch_no % ranks != rank) continue; // the masks depend on the item, not on who computes it
        const int64_t cnt = std::min(batch_size, n - first);
        b.resize(cnt, S, N);
        idx.resize(static_cast<size_t>(cnt));
        for (int64_t i = 0; i < cnt; ++i) {
            idx[static_cast<size_t>(i)] = first + i;
            make_masks(rng, rs, ps, first + i, N, b.mask.data() + i * N, keys);
        }
        fill_batch(cfg, val, idx.data(), cnt, b, nullptr);
        int64_t mk = 0;
        for (int64_t i = 0; i < cnt * N; ++i) mk += b.mask[static_cast<size_t>(i)];
        for (size_t k = 0; k < F; ++k) {
            const SubModelStats st = m.forward_backward(cfg.factors[k], b.ids.data(), b.targets.data(), b.mask.data(),
                                                        cnt, 0.0, 1.0, nullptr, 1.0, false);
            ce[k] += st.ce * static_cast<double>(mk);
            ok[k] += st.accuracy * static_cast<double>(mk);
        }
        masked += mk;
    }
    if (ranks > 1) { // the sums of every rank's batches
        std::vector<double> sums(ce);
        sums.insert(sums.end(), ok.begin(), ok.end());
        sums.push_back(static_cast<double>(masked));
        comm->allreduce_sum(sums.data(), sums.size());
        std::copy(sums.begin(), sums.begin() + static_cast<std::ptrdiff_t>(F), ce.begin());
        std::copy(sums.begin() + static_cast<std::ptrdiff_t>(F), sums.begin() + static_cast<std::ptrdiff_t>(2 * F), ok.begin());
        masked = static_cast<int64_t>(sums.back());
    }
    std::vector<SubModelStats> out(F);
    for (size_t k = 0; k < F; ++k) {
        out[k].p = cfg.factors[k];
        out[k].ce = masked ? ce[k] / static_cast<double>(masked) : 0;
        out[k].loss = out[k].ce;
        out[k].accuracy = masked ? ok[k] / static_cast<double>(masked) : 0;
        out[k].masked = masked;
    }
    return out;
}

static Checkpoint make_checkpoint(Transformer& model) {
    Checkpoint ck;
    ck.format = transformer_format;
    ck.format_version = transformer_format_version;
    model.config().to_attrs(ck.attrs);
    for (const std::string& n : model.param_names()) ck.weights[n] = model.param(n);
    return ck;
}

void save_transformer(const Transformer& model, const std::string& path, const std::string& creator) {
    write_checkpoint(path, make_checkpoint(const_cast<Transformer&>(model)), creator);
}

int64_t train_transformer(Transformer& model, const TokenFile& train, const TokenFile* val,
                          const TransformerTrainOptions& opt,
                          const std::function<void(const TransformerLog&)>& on_log) {
    Transformer::Impl& m = model.impl();
    const TransformerConfig& cfg = m.cfg;
    const TransformerTrainConfig& tc = opt.train;
    const int64_t N = cfg.tokens(), S = cfg.seq(), B = tc.batch_size;
    check(tc.steps > 0 && B > 0, "cannot train transformer", "steps and batch size must be positive");
    check(!opt.output.empty(), "cannot train transformer", "no output path");
    check(tc.loss_weights.empty() || tc.loss_weights.size() == cfg.factors.size(), "cannot train transformer",
          std::to_string(tc.loss_weights.size()) + " loss weights for " + std::to_string(cfg.factors.size()) + " sub-models",
          "give one weight per factor (" + factors_to_string(cfg.factors) + ")");
    check_tokens_fit(cfg, train, train.source);
    if (val) check_tokens_fit(cfg, *val, val->source);

    // Data parallelism: this rank's share [lo, hi) of every global batch.
    const std::shared_ptr<dist::Comm> comm = opt.comm ? opt.comm : dist::single();
    const int ranks = comm->size();
    const bool root = comm->root();
    check(B >= ranks, "cannot train transformer",
          "the batch size " + std::to_string(B) + " is smaller than the number of ranks " + std::to_string(ranks),
          "use a --batch-size of at least " + std::to_string(ranks) + ", or fewer ranks");
    const auto [lo, hi] = dist::split_range(B, comm->rank(), ranks);
    // Runs f on every rank; when it throws on any rank, every rank throws (the
    // failing ones their own error), so none is left waiting in a collective.
    auto collectively = [&](const std::string& what, const std::function<void()>& f) {
        if (ranks == 1) return f();
        std::exception_ptr err;
        try {
            f();
        } catch (...) {
            err = std::current_exception();
        }
        int64_t failed = err ? 1 : 0;
        comm->allreduce_max(&failed, 1);
        if (err) std::rethrow_exception(err);
        if (failed) throw Error(what + " failed on another rank", opt.output, {}, "see that rank's message");
    };

    nn::AdamConfig ac;
    ac.beta1 = tc.beta1; ac.beta2 = tc.beta2; ac.eps = 1e-8; ac.weight_decay = tc.weight_decay;
    ac.clip_norm = tc.clip_norm;
    // Parameters, gradients, moments and EMA weights live in the backend's
    // memory (on a GPU: the device's; they come down only for checkpoints).
    m.params_to_host();
    m.params_to_device();
    nn::Adam adam(ac, *m.be);
    for (const std::string& n : m.order) {
        auto& p = m.params[n];
        adam.add(n, p.W(), p.G(), p.w.shape(), p.decay);
    }
    std::map<std::string, Tensor> ema;
    for (const std::string& n : m.order) ema[n] = m.params[n].w.clone();
    std::map<std::string, nn::BackendBuffer> ema_dev; // device backends
    auto ema_ptr = [&](const std::string& n) { return m.on_device() ? ema_dev[n].data() : ema[n].data(); };
    auto ema_to_device = [&]() {
        if (!m.on_device()) return;
        for (const std::string& n : m.order) {
            nn::BackendBuffer& d = ema_dev[n];
            d.bind(*m.be);
            m.be->upload(d.grow(static_cast<size_t>(ema[n].numel())), ema[n].data(), static_cast<size_t>(ema[n].numel()));
        }
    };
    ema_to_device();

    Philox rng(tc.seed);
    int64_t step = 0, last_saved = -1;
    if (opt.resume) collectively("reading the checkpoint", [&] {
        Checkpoint ck = read_checkpoint(opt.output, transformer_format, transformer_format_version, true);
        Attrs a1, a2;
        TransformerConfig::from_attrs(ck.attrs, opt.output).to_attrs(a1);
        cfg.to_attrs(a2);
        if (a1 != a2)
            throw Error("cannot resume", opt.output, "the checkpoint's model configuration differs from the requested one",
                        "resume with the same preset and model options, or train to a new output");
        if (!ck.has_state())
            throw Error("cannot resume", opt.output, "the file holds weights only (no training state)",
                        "train again without --resume");
        const TransformerTrainConfig st = TransformerTrainConfig::from_attrs(ck.attrs, opt.output);
        if (st.seed != tc.seed || st.batch_size != tc.batch_size || st.objective != tc.objective)
            throw Error("cannot resume", opt.output, "seed, batch size or objective differs from the interrupted run",
                        "resume with --seed " + std::to_string(st.seed) + " --batch-size " +
                            std::to_string(st.batch_size) + " (objective " + objective_name(st.objective) + ")");
        const std::string src = attr_string(ck.state_attrs, "data_source", opt.output);
        const int64_t count = attr_int(ck.state_attrs, "data_count", opt.output);
        const std::string hash = attr_string(ck.state_attrs, "data_tokenizer", opt.output);
        if (count != train.count() || hash != train.tokenizer_hash)
            throw Error("cannot resume", opt.output,
                        "the interrupted run trained on " + src + " (" + std::to_string(count) + " items, tokenizer " +
                            hash + "), not " + train.source + " (" + std::to_string(train.count()) + " items, tokenizer " +
                            train.tokenizer_hash + ")",
                        "resume with the same token file");
        transformer_load_weights(model, ck.weights, opt.output, "weight");
        m.params_to_device(); // the same device buffers: the optimizer's pointers stay valid
        for (const std::string& n : m.order) {
            auto it = ck.ema.find(n);
            check(it != ck.ema.end() && it->second.shape() == ema[n].shape(), "cannot resume",
                  "the checkpoint lacks EMA weight " + n);
            ema[n] = it->second.clone();
        }
        ema_to_device();
        adam.load(ck, opt.output);
        step = attr_int(ck.state_attrs, "step", opt.output);
        last_saved = step;
        if (root)
            log_info("resuming from step %lld of %lld (%s)", static_cast<long long>(step),
                     static_cast<long long>(tc.steps), opt.output.c_str());
    });

    // Every rank takes the same optimizer step on the same summed gradients,
    // so the weights must agree bit for bit; checked before each checkpoint.
    auto check_ranks_agree = [&](int64_t done) {
        const std::string h = model.hash();
        uint64_t v = 1469598103934665603ull; // FNV-1a of the hash string
        for (char c : h) v = (v ^ static_cast<unsigned char>(c)) * 1099511628211ull;
        int64_t mn = static_cast<int64_t>(v >> 1), mx = mn;
        comm->allreduce_min(&mn, 1);
        comm->allreduce_max(&mx, 1);
        if (mn != mx)
            throw Error("the ranks' weights differ at step " + std::to_string(done), opt.output,
                        "rank " + std::to_string(comm->rank()) + " has weights hash " + h +
                            "; the MPI all-reduce did not give every rank the same sums",
                        "report this with the MPI library and launcher used; meanwhile train with fewer ranks");
    };
    auto save = [&](int64_t done) {
        if (ranks > 1) check_ranks_agree(done);
        collectively("writing the checkpoint", [&] {
        if (!root) return; // rank 0 writes for everyone
        Checkpoint ck = make_checkpoint(model);
        tc.to_attrs(ck.attrs);
        if (!opt.init_from.empty()) ck.attrs["init_from"] = opt.init_from;
        ck.attrs["tokenizer_hash"] = train.tokenizer_hash; // the tokenizer whose codes the model speaks
        std::string names;
        for (const auto& c : train.class_names) names += (names.empty() ? "" : "\n") + c;
        ck.attrs["class_names"] = names; // newline-separated, for samplers and their PNGs
        if (m.on_device())
            for (const std::string& n : m.order)
                m.be->download(ema[n].data(), ema_dev[n].data(), static_cast<size_t>(ema[n].numel()));
        ck.ema = ema;
        adam.save(ck);
        ck.state_attrs["step"] = done;
        ck.state_attrs["seed"] = static_cast<int64_t>(tc.seed);
        ck.state_attrs["data_position"] = done * B;
        ck.state_attrs["data_source"] = train.source;
        ck.state_attrs["data_count"] = train.count();
        ck.state_attrs["data_tokenizer"] = train.tokenizer_hash;
        write_checkpoint(opt.output, ck, opt.creator);
        });
        last_saved = done;
    };
    auto diverged = [&](const std::string& why) {
        const std::string kept = last_saved >= 0
            ? "the last good checkpoint (step " + std::to_string(last_saved) + ") is kept in " + opt.output
            : "no checkpoint had been written yet";
        throw Error("training diverged at step " + std::to_string(step + 1), opt.output, why + "; " + kept,
                    last_saved >= 0 ? "train again with a lower --lr (e.g. half), or continue from the last good "
                                      "checkpoint with magnets-distill --objective ground-truth --lr X"
                                    : "train again with a lower --lr (e.g. half)");
    };
    auto run_validation = [&](int64_t done) {
        if (!val || !on_log) return;
        TransformerLog lg;
        lg.step = done; lg.steps = tc.steps; lg.validation = true;
        lg.subs = validate_transformer(model, *val, tc.val_items, 12345, 64, comm.get());
        if (root) on_log(lg);
    };

    nn::DataOrder order(tc.seed, train.count());
    Batch b;
    b.resize(B, S, N);
    std::vector<int64_t> idx(static_cast<size_t>(B));
    std::vector<uint8_t> drop(static_cast<size_t>(B));
    std::vector<std::pair<uint32_t, int64_t>> keys;
    double t_log = now_seconds();
    int64_t tokens_since_log = 0;
    if (step == 0 && !opt.init_from.empty()) run_validation(0); // distillation: the starting point

    while (step < tc.steps) {
        int64_t stop_now = (opt.stop && opt.stop->load()) || (opt.stop_after >= 0 && step >= opt.stop_after);
        if (ranks > 1) comm->allreduce_max(&stop_now, 1); // a signal seen by any rank stops them all
        if (stop_now) {
            save(step);
            if (root)
                log_info("stopped at step %lld; checkpoint written to %s", static_cast<long long>(step),
                         opt.output.c_str());
            return step;
        }
        const uint64_t rs = stream_id("mask-ratio", static_cast<uint64_t>(step));
        const uint64_t ps = stream_id("mask-pos", static_cast<uint64_t>(step));
        const uint64_t cs = stream_id("class-drop", static_cast<uint64_t>(step));
        for (int64_t i = 0; i < B; ++i) {
            idx[static_cast<size_t>(i)] = order.item(step * B + i);
            make_masks(rng, rs, ps, i, N, b.mask.data() + i * N, keys);
            drop[static_cast<size_t>(i)] = rng.uniform_double(cs, static_cast<uint64_t>(i)) < tc.class_dropout;
        }
        fill_batch(cfg, train, idx.data(), B, b, drop.data());

        const double alpha = tc.alpha_at(step);
        double total = 0;
        std::vector<SubModelStats> subs;
        if (ranks == 1) {
            subs = m.joint_forward_backward(b.ids.data(), b.targets.data(), b.mask.data(), B, tc.objective, alpha,
                                            tc.loss_weights, tc.label_smoothing, &total);
        } else {
            // Each rank's loss is its sum over its masked positions divided by
            // the whole batch's count, so the ranks' gradients add up to the
            // one-process gradient of the global batch.
            const auto count = [&](int64_t from, int64_t to) {
                return static_cast<int64_t>(std::count(b.mask.begin() + from * N, b.mask.begin() + to * N, uint8_t{1}));
            };
            const int64_t mg = count(0, B), ml = count(lo, hi);
            const size_t F = cfg.factors.size();
            std::vector<double> w(F);
            for (size_t k = 0; k < F; ++k)
                w[k] = (tc.loss_weights.empty() ? 1.0 : tc.loss_weights[k]) * static_cast<double>(ml) / static_cast<double>(mg);
            subs = m.joint_forward_backward(b.ids.data() + lo * S, b.targets.data() + lo * N, b.mask.data() + lo * N,
                                            hi - lo, tc.objective, alpha, w, tc.label_smoothing, nullptr);
            std::vector<double> sums(3 * F);
            for (size_t k = 0; k < F; ++k) {
                sums[k] = subs[k].loss * static_cast<double>(ml);
                sums[F + k] = subs[k].ce * static_cast<double>(ml);
                sums[2 * F + k] = subs[k].accuracy * static_cast<double>(ml);
            }
            comm->allreduce_sum(sums.data(), sums.size());
            for (size_t k = 0; k < F; ++k) {
                subs[k].loss = sums[k] / static_cast<double>(mg);
                subs[k].ce = sums[F + k] / static_cast<double>(mg);
                subs[k].accuracy = sums[2 * F + k] / static_cast<double>(mg);
                subs[k].masked = mg;
                total += (tc.loss_weights.empty() ? 1.0 : tc.loss_weights[k]) * subs[k].loss;
            }
            std::vector<std::pair<float*, size_t>> grads;
            for (const std::string& n : m.order)
                grads.emplace_back(m.params[n].G(), static_cast<size_t>(m.params[n].w.numel()));
            comm->allreduce_sum(*m.be, grads);
        }
        if (!std::isfinite(total)) diverged("the loss is " + std::to_string(total));
        double wsum = 0;
        for (size_t k = 0; k < cfg.factors.size(); ++k) wsum += tc.loss_weights.empty() ? 1.0 : tc.loss_weights[k];
        const double mean_loss = total / std::max(wsum, 1e-12);
        const double limit = tc.loss_limit > 0 ? tc.loss_limit : 3.0 * std::log(static_cast<double>(cfg.codebook_size));
        if (mean_loss > limit)
            diverged("the mean loss per sub-model " + std::to_string(mean_loss) + " exceeds the limit " +
                     std::to_string(limit) + " (--loss-limit; chance level is ln K = " +
                     std::to_string(std::log(static_cast<double>(cfg.codebook_size))) + ")");
        const double norm = adam.grad_norm();
        if (!std::isfinite(norm)) diverged("the gradient norm is " + std::to_string(norm));
        const double lr = nn::warmup_cosine_lr(step, tc.steps, tc.warmup, tc.lr, tc.lr_min_ratio);
        adam.step(lr, norm);
        const float d = static_cast<float>(std::min(tc.ema_decay, (1.0 + static_cast<double>(step)) /
                                                                       (10.0 + static_cast<double>(step))));
        m.params_to_device(); // after a checkpoint read them back
        for (const std::string& n : m.order) m.be->ema_update(ema_ptr(n), m.params[n].W(), d, ema[n].numel());
        ++step;
        tokens_since_log += B * N;

        if (step % std::max<int64_t>(tc.log_every, 1) == 0 || step == tc.steps) {
            TransformerLog lg;
            lg.step = step; lg.steps = tc.steps; lg.loss = total; lg.grad_norm = norm; lg.lr = lr; lg.alpha = alpha;
            lg.subs = subs;
            const double now = now_seconds();
            lg.tokens_per_s = static_cast<double>(tokens_since_log) / std::max(now - t_log, 1e-9);
            t_log = now;
            tokens_since_log = 0;
            if (on_log && root) on_log(lg);
        }
        const bool last = step == tc.steps;
        if (!last && tc.val_every > 0 && step % tc.val_every == 0) { run_validation(step); t_log = now_seconds(); }
        if (!last && tc.checkpoint_every > 0 && step % tc.checkpoint_every == 0) { save(step); t_log = now_seconds(); }
    }
    run_validation(step);
    save(step);
    return step;
}

} // namespace magnets

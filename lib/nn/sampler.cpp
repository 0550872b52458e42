// MaskGIT parallel decoding with decode-time model scaling and a KV cache
// (METHOD sections 6-7). The Decoder runs the nested transformer's inference
// forward on prefix slices of the weights with row-stable matmuls, over all
// positions (a refresh, rebuilding the cache) or over the uncached rows only.
#include "magnets/sampler.h"

#include "magnets/error.h"
#include "magnets/log.h"
#include "magnets/rng.h"
#include "nn/decoder.h"
#include "core/fastmath.h"
#include "nn/transformer_impl.h"
#include "nn/transformer_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>

namespace magnets {

// ---- schedules and policies ------------------------------------------------------

std::vector<ScheduleStage> parse_size_schedule(const std::string& s) {
    std::vector<ScheduleStage> out;
    std::stringstream ss(s);
    std::string item;
    auto bad = [&](const std::string& why) -> Error {
        return Error("invalid size schedule '" + s + "'", {}, why,
                     "write sub-model:steps pairs separated by commas, e.g. 8:3,4:3,2:3,1:3");
    };
    while (std::getline(ss, item, ',')) {
        const size_t colon = item.find(':');
        if (colon == std::string::npos) throw bad("'" + item + "' has no ':'");
        char *e1 = nullptr, *e2 = nullptr;
        const std::string a = item.substr(0, colon), b = item.substr(colon + 1);
        const long long p = std::strtoll(a.c_str(), &e1, 10), k = std::strtoll(b.c_str(), &e2, 10);
        if (a.empty() || b.empty() || *e1 || *e2 || p < 1 || k < 1)
            throw bad("'" + item + "' is not two positive integers");
        out.push_back({p, k});
    }
    if (out.empty()) throw bad("it is empty");
    if (schedule_steps(out) > 1024) throw bad("more than 1024 steps");
    return out;
}

std::string size_schedule_to_string(const std::vector<ScheduleStage>& s) {
    std::string out;
    for (const auto& st : s) out += (out.empty() ? "" : ",") + std::to_string(st.p) + ":" + std::to_string(st.steps);
    return out;
}

int64_t schedule_steps(const std::vector<ScheduleStage>& s) {
    int64_t t = 0;
    for (const auto& st : s) t += st.steps;
    return t;
}

const char* mask_schedule_name(MaskSchedule m) {
    switch (m) {
    case MaskSchedule::cosine: return "cosine";
    case MaskSchedule::linear: return "linear";
    case MaskSchedule::square: return "square";
    case MaskSchedule::cubic: return "cubic";
    case MaskSchedule::sqrt: return "sqrt";
    }
    return "?";
}

MaskSchedule parse_mask_schedule(const std::string& s) {
    for (auto m : {MaskSchedule::cosine, MaskSchedule::linear, MaskSchedule::square, MaskSchedule::cubic, MaskSchedule::sqrt})
        if (s == mask_schedule_name(m)) return m;
    throw Error("unknown mask schedule '" + s + "'", {}, {}, "choose one of: cosine, linear, square, cubic, sqrt");
}

double mask_gamma(MaskSchedule m, double r) {
    r = std::clamp(r, 0.0, 1.0);
    switch (m) {
    case MaskSchedule::cosine: return std::cos(M_PI / 2 * r);
    case MaskSchedule::linear: return 1.0 - r;
    case MaskSchedule::square: return 1.0 - r * r;
    case MaskSchedule::cubic: return 1.0 - r * r * r;
    case MaskSchedule::sqrt: return 1.0 - std::sqrt(r);
    }
    return 0.0;
}

CachePolicy parse_cache_policy(const std::string& s) {
    CachePolicy c;
    if (s == "on-switch") c.mode = CachePolicy::on_switch;
    else if (s == "never") c.mode = CachePolicy::never;
    else if (s == "none") c.mode = CachePolicy::none;
    else if (s.rfind("every:", 0) == 0) {
        char* end = nullptr;
        const long long k = std::strtoll(s.c_str() + 6, &end, 10);
        if (s.size() == 6 || *end || k < 1)
            throw Error("invalid cache policy '" + s + "'", {}, "every:K needs a positive K", "e.g. every:2");
        c.mode = CachePolicy::every;
        c.period = k;
    } else {
        throw Error("unknown cache policy '" + s + "'", {}, {}, "choose on-switch, never, every:K or none");
    }
    return c;
}

std::string cache_policy_to_string(const CachePolicy& c) {
    switch (c.mode) {
    case CachePolicy::none: return "none";
    case CachePolicy::on_switch: return "on-switch";
    case CachePolicy::never: return "never";
    case CachePolicy::every: return "every:" + std::to_string(c.period);
    }
    return "?";
}

void SampleConfig::validate(const TransformerConfig& model) const {
    for (const auto& st : schedule)
        if (std::find(model.factors.begin(), model.factors.end(), st.p) == model.factors.end())
            throw Error("the schedule names sub-model m_" + std::to_string(st.p), {},
                        "the checkpoint holds m_p for p in " + factors_to_string(model.factors),
                        "use only those factors in --schedule");
    if (steps() > model.tokens())
        throw Error("too many decoding steps", {},
                    std::to_string(steps()) + " steps for " + std::to_string(model.tokens()) + " tokens",
                    "every step reveals at least one token: use at most N steps");
    auto finite_pos = [](double v) { return std::isfinite(v) && v > 0; };
    if (!finite_pos(temperature) || !finite_pos(temperature_end))
        throw Error("invalid temperature", {}, "temperatures must be positive", "e.g. --temperature 1.0");
    if (!std::isfinite(choice_temperature) || choice_temperature < 0)
        throw Error("invalid choice temperature", {}, "it must be zero or positive", "MaskGIT uses 4.5");
    if (!std::isfinite(cfg_scale) || cfg_scale < 0)
        throw Error("invalid guidance scale", {}, "it must be zero or positive", "e.g. --cfg 2.0");
    if (top_k < 0 || top_k > model.codebook_size)
        throw Error("invalid top-k", {}, "it must be in [0, K]", "0 turns top-k off");
}

void SampleConfig::to_attrs(Attrs& a) const {
    a["sample_schedule"] = size_schedule_to_string(schedule);
    a["sample_steps"] = steps();
    a["sample_mask_schedule"] = std::string(mask_schedule_name(mask));
    a["sample_temperature"] = temperature;
    a["sample_temperature_end"] = temperature_end;
    a["sample_choice_temperature"] = choice_temperature;
    a["sample_top_k"] = top_k;
    a["sample_cfg_scale"] = cfg_scale;
    a["sample_cfg_ramp"] = static_cast<int64_t>(cfg_ramp);
    a["sample_cache"] = cache_policy_to_string(cache);
    a["sample_seed"] = static_cast<int64_t>(seed);
}

double step_flops(const TransformerConfig& c, int64_t p, int64_t rows, int64_t keys, int64_t head_rows) {
    const TransformerConfig::Sub s = c.sub(p);
    const double R = static_cast<double>(rows), r = static_cast<double>(s.resid), a = static_cast<double>(s.attn),
                 f = static_cast<double>(s.mlp), S = static_cast<double>(keys);
    // keys and values of every row in every layer; queries, attention, output
    // projection and MLP of every row except in the last layer, where only the
    // head's rows go on (nn::Decoder's out_rows)
    auto kv = [&](double rows_) { return 2.0 * rows_ * (2 * r * a); };
    auto rest = [&](double rows_) { return 2.0 * rows_ * (r * a + a * r + 2 * r * f) + 4.0 * rows_ * S * a; };
    const double L = static_cast<double>(c.layers), H = static_cast<double>(head_rows);
    return L * kv(R) + (L - 1) * rest(R) + rest(H) + 2.0 * H * r * static_cast<double>(c.codebook_size);
}

using Impl = Transformer::Impl;
using nn::Decoder;

// ---- sampling --------------------------------------------------------------------

SampleResult sample(Transformer& model, const SampleConfig& sc, const int32_t* classes, int64_t n, int64_t first_index,
                    int64_t batch_size, const std::function<void(const StepView&)>& on_step) {
    Impl& m = model.impl();
    const TransformerConfig& cfg = m.cfg;
    sc.validate(cfg);
    check(batch_size > 0, "sampler", "batch size must be positive");
    for (int64_t i = 0; i < n; ++i)
        if (classes[i] < -1 || classes[i] >= cfg.num_classes)
            throw Error("class out of range", {},
                        "class " + std::to_string(classes[i]) + "; the model has " + std::to_string(cfg.num_classes) +
                            " classes (0.." + std::to_string(cfg.num_classes - 1) + ", -1 = unconditional)",
                        "pick a class the model was trained on");
    const int64_t N = cfg.tokens(), S = cfg.seq(), K = cfg.codebook_size, T = sc.steps();
    const bool cfg_on = sc.cfg_scale > 0;
    const int64_t branches = cfg_on ? 2 : 1;

    // The sub-model of every step.
    std::vector<int64_t> step_p;
    for (const auto& st : sc.schedule)
        for (int64_t k = 0; k < st.steps; ++k) step_p.push_back(st.p);
    // Masked positions per image after each step (identical for every image).
    std::vector<int64_t> masked_after(static_cast<size_t>(T));
    int64_t prev = N;
    for (int64_t t = 1; t <= T; ++t) {
        int64_t keep = t == T ? 0 : static_cast<int64_t>(std::floor(static_cast<double>(N) * mask_gamma(sc.mask, static_cast<double>(t) / static_cast<double>(T))));
        keep = std::clamp<int64_t>(keep, 0, prev - 1);
        masked_after[static_cast<size_t>(t - 1)] = keep;
        prev = keep;
    }

    SampleResult res;
    res.tokens.assign(static_cast<size_t>(n * N), 0);
    res.steps.resize(static_cast<size_t>(T));
    const double t_start = now_seconds();

    // The weights in the backend's memory (uploaded once on a device), and
    // the whole decoding state there too: ids, masked and fresh flags, the
    // step's rows, logits, draws, tokens. A step runs as backend operations
    // (sampler_rows, the decoder, the head, draw_rows, reveal_top); on a GPU
    // nothing comes back to the host unless a step observer asks for it.
    Backend& be = *m.be;
    const nn::DecoderWeights weights(m);
    check(static_cast<double>(T) * static_cast<double>(N) < 2147483648.0, "sampler",
          "steps x tokens must stay below 2^31 (the draws' counters are int32)");
    struct IntBuf { // int32 arrays in the backend's memory
        nn::BackendBuffer buf;
        explicit IntBuf(Backend& b) : buf(b) {}
        int32_t* grow(int64_t n) { return reinterpret_cast<int32_t*>(buf.grow(static_cast<size_t>(std::max<int64_t>(n, 1)))); }
        void put(Backend& b, const std::vector<int32_t>& h) {
            b.upload(buf.grow(std::max<size_t>(h.size(), 1)), reinterpret_cast<const float*>(h.data()), h.size());
        }
        void get(Backend& b, std::vector<int32_t>& h) const {
            b.download(reinterpret_cast<float*>(h.data()), buf.data(), h.size());
        }
        int32_t* data() const { return buf.ints(); }
    };
    IntBuf d_ids(be), d_masked(be), d_fresh(be), d_tokens(be), d_streams(be), d_pos(be), d_out(be), d_meta(be),
        d_rowpos(be), d_drawn(be);
    nn::BackendBuffer d_logits(be), d_conf(be), d_conf_all(be);
    for (int64_t first = 0; first < n; first += batch_size) {
        const int64_t nb = std::min(batch_size, n - first), seqs = nb * branches;
        Decoder dec(m, seqs, &weights);
        {   // the batch's starting state: class (or NULL) token, then MASK everywhere
            std::vector<int32_t> ids(static_cast<size_t>(seqs * S));
            for (int64_t b = 0; b < seqs; ++b) {
                const int64_t img = b % nb;
                const int32_t c = classes[first + img];
                ids[static_cast<size_t>(b * S)] = static_cast<int32_t>(b >= nb || c < 0 ? cfg.null_id() : cfg.class_id(c));
                for (int64_t j = 0; j < N; ++j) ids[static_cast<size_t>(b * S + 1 + j)] = static_cast<int32_t>(cfg.mask_id());
            }
            d_ids.put(be, ids);
            d_masked.put(be, std::vector<int32_t>(static_cast<size_t>(nb * N), 1));
            d_fresh.put(be, std::vector<int32_t>(static_cast<size_t>(nb * N), 0));
            d_tokens.put(be, std::vector<int32_t>(static_cast<size_t>(nb * N), static_cast<int32_t>(K)));
            // per image, its token and choice streams (uint64 as two int32 words each)
            std::vector<int32_t> streams(static_cast<size_t>(4 * nb));
            for (int64_t img = 0; img < nb; ++img) {
                const uint64_t g = static_cast<uint64_t>(first_index + first + img);
                const uint64_t st[2] = {stream_id("sample-token", g), stream_id("sample-choice", g)};
                for (int w = 0; w < 2; ++w) {
                    streams[static_cast<size_t>(4 * img + 2 * w)] = static_cast<int32_t>(static_cast<uint32_t>(st[w]));
                    streams[static_cast<size_t>(4 * img + 2 * w + 1)] = static_cast<int32_t>(static_cast<uint32_t>(st[w] >> 32));
                }
            }
            d_streams.put(be, streams);
        }
        d_pos.grow(seqs * S);
        d_out.grow(seqs * N);
        d_meta.grow(2 * nb * N);
        d_rowpos.grow(nb * N);
        d_drawn.grow(nb * N);
        d_conf.grow(static_cast<size_t>(std::max<int64_t>(nb * N, 1)));
        d_conf_all.grow(static_cast<size_t>(std::max<int64_t>(nb * N, 1)));
        // host copies for a step observer
        std::vector<int32_t> h_tokens(static_cast<size_t>(nb * N)), h_fresh(static_cast<size_t>(nb * N));
        std::vector<uint16_t> view_tokens(static_cast<size_t>(nb * N));
        std::vector<uint8_t> revealed_now(static_cast<size_t>(nb * N));
        std::vector<float> conf_all(static_cast<size_t>(nb * N));
        int64_t masked_now = N, fresh_now = 0;

        for (int64_t s = 0; s < T; ++s) {
            const double ts = now_seconds();
            const int64_t p = step_p[static_cast<size_t>(s)];
            const TransformerConfig::Sub sub = cfg.sub(p);
            bool refresh = true;
            if (s > 0 && sc.cache.mode != CachePolicy::none) {
                const bool width_change = dec.cache_attn() != sub.attn;
                const bool switched = dec.cache_p() != p;
                refresh = width_change || (switched && sc.cache.mode == CachePolicy::on_switch) ||
                          (sc.cache.mode == CachePolicy::every && s % sc.cache.period == 0);
            }
            // Rows per sequence (the same positions in both branches): every
            // position on a refresh; else the still-masked ones and those the
            // previous step revealed (now with their ids). Only the masked ones
            // need logits: the decoder's last layer computes the other rows'
            // keys and values and nothing more.
            const int64_t rq = refresh ? S : masked_now + fresh_now;
            be.sampler_rows(d_masked.data(), d_fresh.data(), nb, seqs, N, refresh, rq, masked_now, s, d_pos.data(),
                            d_out.data(), d_meta.data(), d_rowpos.data());
            const float* hrows =
                dec.forward_backend(p, d_ids.data(), d_pos.data(), rq, refresh, d_out.data(), masked_now);

            // Final hidden rows of the masked positions -> logits [seqs * masked_now, K].
            const int64_t r = sub.resid, hr = seqs * masked_now, nd = nb * masked_now;
            float* lg = d_logits.grow(static_cast<size_t>(std::max<int64_t>(hr * K, 1)));
            be.matmul_rowstable(ConstMat(hrows, hr, r, r), ConstMat(weights(m.head_w), K, r, cfg.width),
                                weights(m.head_b), Mat{lg, hr, K, K});

            // Draw and score every masked position (row img * masked_now + mi:
            // image img's mi-th masked position j, counter s * N + j), then
            // rank and reveal per image.
            const double t1 = static_cast<double>(s + 1) / static_cast<double>(T);
            Backend::DrawSpec spec;
            spec.K = K;
            spec.cfg = cfg_on;
            spec.guidance = cfg_on ? (sc.cfg_ramp ? sc.cfg_scale * t1 : sc.cfg_scale) : 0.0;
            spec.tau = sc.temperature + (sc.temperature_end - sc.temperature) *
                                            (T > 1 ? static_cast<double>(s) / static_cast<double>(T - 1) : 0.0);
            spec.choice = sc.choice_temperature * (1.0 - t1);
            spec.top_k = sc.top_k;
            spec.seed = sc.seed;
            be.draw_rows(lg, nd, spec, d_meta.data(), d_streams.data(), d_drawn.data(), d_conf.data());
            const int64_t keep = masked_after[static_cast<size_t>(s)];
            be.reveal_top(d_drawn.data(), d_conf.data(), d_rowpos.data(), nb, masked_now, masked_now - keep, N, S,
                          branches, d_masked.data(), d_fresh.data(), d_tokens.data(), d_ids.data(), d_conf_all.data());
            be.synchronize(); // the step's wall-clock

            StepStats& st = res.steps[static_cast<size_t>(s)];
            st.step = s + 1;
            st.p = p;
            st.refresh = refresh;
            st.rows = rq;
            st.cached = S - rq;
            st.revealed = masked_now - keep;
            st.masked_after = keep;
            st.flops = static_cast<double>(branches) * step_flops(cfg, p, rq, S, masked_now);
            st.seconds += now_seconds() - ts;
            if (on_step) {
                d_tokens.get(be, h_tokens);
                d_fresh.get(be, h_fresh);
                be.download(conf_all.data(), d_conf_all.data(), conf_all.size());
                for (size_t i = 0; i < h_tokens.size(); ++i) {
                    view_tokens[i] = static_cast<uint16_t>(h_tokens[i]);
                    revealed_now[i] = static_cast<uint8_t>(h_fresh[i]);
                }
                StepView v;
                v.step = s + 1; v.p = p; v.first = first_index + first; v.count = nb;
                v.tokens = view_tokens.data(); v.revealed = revealed_now.data(); v.confidence = conf_all.data();
                v.refresh = refresh; v.cache_hits = S - rq;
                on_step(v);
            }
            fresh_now = masked_now - keep;
            masked_now = keep;
        }
        d_tokens.get(be, h_tokens);
        for (int64_t i = 0; i < nb * N; ++i)
            res.tokens[static_cast<size_t>(first * N + i)] = static_cast<uint16_t>(h_tokens[static_cast<size_t>(i)]);
    }
    res.seconds = now_seconds() - t_start;
    for (const auto& st : res.steps) res.flops_per_image += st.flops;
    return res;
}

} // namespace magnets

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
    // the logits there: on a CPU backend they are read in place, from a
    // device they come down once per step.
    const nn::DecoderWeights weights(m);
    nn::BackendBuffer dev_logits(*m.be), dev_meta(*m.be), dev_draw(*m.be), dev_streams(*m.be);
    check(static_cast<double>(T) * static_cast<double>(N) < 2147483648.0, "sampler",
          "steps x tokens must stay below 2^31 (the draws' counters are int32)");
    for (int64_t first = 0; first < n; first += batch_size) {
        const int64_t nb = std::min(batch_size, n - first), seqs = nb * branches;
        Decoder dec(m, seqs, &weights);
        std::vector<int32_t> ids(static_cast<size_t>(seqs * S));
        std::vector<uint8_t> masked(static_cast<size_t>(nb * N), 1), was_revealed_prev(static_cast<size_t>(nb * N), 0),
            revealed_now(static_cast<size_t>(nb * N), 0);
        for (int64_t b = 0; b < seqs; ++b) {
            const int64_t img = b % nb;
            const int32_t c = classes[first + img];
            ids[static_cast<size_t>(b * S)] = static_cast<int32_t>(
                b >= nb || c < 0 ? cfg.null_id() : cfg.class_id(c));
            for (int64_t j = 0; j < N; ++j) ids[static_cast<size_t>(b * S + 1 + j)] = static_cast<int32_t>(cfg.mask_id());
        }
        std::vector<uint16_t> view_tokens(static_cast<size_t>(nb * N), static_cast<uint16_t>(K));
        std::vector<float> conf_all(static_cast<size_t>(nb * N));
        std::vector<int32_t> pos, out_rows;
        // Per image, its token and choice streams (uint64 as two int32 words
        // each) for draw_rows; on a device, uploaded once per batch.
        std::vector<int32_t> streams(static_cast<size_t>(4 * nb));
        for (int64_t img = 0; img < nb; ++img) {
            const uint64_t g = static_cast<uint64_t>(first_index + first + img);
            const uint64_t st[2] = {stream_id("sample-token", g), stream_id("sample-choice", g)};
            for (int w = 0; w < 2; ++w) {
                streams[static_cast<size_t>(4 * img + 2 * w)] = static_cast<int32_t>(static_cast<uint32_t>(st[w]));
                streams[static_cast<size_t>(4 * img + 2 * w + 1)] = static_cast<int32_t>(static_cast<uint32_t>(st[w] >> 32));
            }
        }
        if (!m.be->host_memory())
            m.be->upload(dev_streams.grow(streams.size()), reinterpret_cast<const float*>(streams.data()), streams.size());
        std::vector<int32_t> row_meta, row_pos, drawn;
        std::vector<float> conf_rows;
        int64_t masked_now = N;

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
            // Rows to compute per sequence (same positions in both branches).
            int64_t rq = 0;
            pos.clear();
            if (refresh) {
                rq = S;
                for (int64_t b = 0; b < seqs; ++b)
                    for (int64_t j = 0; j < S; ++j) pos.push_back(static_cast<int32_t>(j));
            } else {
                // still masked, or revealed in the previous step (now with their ids)
                std::vector<int32_t> first_rows;
                for (int64_t b = 0; b < seqs; ++b) {
                    const int64_t img = b % nb;
                    int64_t cnt = 0;
                    for (int64_t j = 0; j < N; ++j) {
                        const size_t k = static_cast<size_t>(img * N + j);
                        if (masked[k] || was_revealed_prev[k]) {
                            pos.push_back(static_cast<int32_t>(1 + j));
                            ++cnt;
                        }
                    }
                    if (b == 0) rq = cnt;
                    check(cnt == rq, "sampler", "uncached rows differ between images");
                }
            }
            // Only the masked positions need logits: the decoder's last layer
            // computes the other rows' keys and values and nothing more.
            out_rows.clear();
            for (int64_t b = 0; b < seqs; ++b) {
                const int64_t img = b % nb;
                for (int64_t i = 0; i < rq; ++i) {
                    const int32_t ps = pos[static_cast<size_t>(b * rq + i)];
                    if (ps != 0 && masked[static_cast<size_t>(img * N + ps - 1)]) out_rows.push_back(static_cast<int32_t>(i));
                }
                check(static_cast<int64_t>(out_rows.size()) == (b + 1) * masked_now, "sampler", "masked row count mismatch");
            }
            const float* hrows = dec.forward(p, ids.data(), pos.data(), rq, refresh, out_rows.data(), masked_now);

            // Final hidden rows of the masked positions -> logits [seqs * masked_now, K].
            const int64_t r = sub.resid, hr = seqs * masked_now, nd = nb * masked_now;
            float* lg = dev_logits.grow(static_cast<size_t>(hr * K));
            m.be->matmul_rowstable(ConstMat(hrows, hr, r, r), ConstMat(weights(m.head_w), K, r, cfg.width),
                                   weights(m.head_b), Mat{lg, hr, K, K});

            // Draw and score every masked position (Backend::draw_rows: on the
            // device where the logits are; only a code and a confidence per
            // position come back). Row img * masked_now + mi is image img's
            // mi-th masked position j, drawn with counter s * N + j.
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
            row_meta.resize(static_cast<size_t>(2 * nd));
            row_pos.resize(static_cast<size_t>(nd));
            for (int64_t img = 0, i = 0; img < nb; ++img)
                for (int64_t j = 0; j < N; ++j)
                    if (masked[static_cast<size_t>(img * N + j)]) {
                        row_meta[static_cast<size_t>(2 * i)] = static_cast<int32_t>(img);
                        row_meta[static_cast<size_t>(2 * i + 1)] = static_cast<int32_t>(s * N + j);
                        row_pos[static_cast<size_t>(i++)] = static_cast<int32_t>(j);
                    }
            drawn.resize(static_cast<size_t>(nd));
            conf_rows.resize(static_cast<size_t>(nd));
            if (m.be->host_memory()) {
                m.be->draw_rows(lg, nd, spec, row_meta.data(), streams.data(), drawn.data(), conf_rows.data());
            } else {
                static_assert(sizeof(int32_t) == sizeof(float), "int32 arrays travel as floats");
                float* d_meta = dev_meta.grow(static_cast<size_t>(std::max<int64_t>(2 * nd, 1)));
                float* d_out = dev_draw.grow(static_cast<size_t>(std::max<int64_t>(2 * nd, 1)));
                m.be->upload(d_meta, reinterpret_cast<const float*>(row_meta.data()), row_meta.size());
                m.be->draw_rows(lg, nd, spec, reinterpret_cast<const int32_t*>(d_meta),
                                reinterpret_cast<const int32_t*>(dev_streams.data()),
                                reinterpret_cast<int32_t*>(d_out), d_out + nd);
                m.be->download(reinterpret_cast<float*>(drawn.data()), d_out, static_cast<size_t>(nd));
                m.be->download(conf_rows.data(), d_out + nd, static_cast<size_t>(nd));
            }

            // Rank and reveal per image: the most confident first, ties by position.
            const int64_t keep = masked_after[static_cast<size_t>(s)];
            std::fill(revealed_now.begin(), revealed_now.end(), 0);
            std::fill(conf_all.begin(), conf_all.end(), std::numeric_limits<float>::quiet_NaN());
            // Images are independent; each writes only its own entries of
            // masked, ids, view_tokens, ...
#pragma omp parallel for schedule(dynamic, 4) if (nd >= 4096)
            for (int64_t img = 0; img < nb; ++img) {
                std::vector<std::pair<float, int64_t>> order(static_cast<size_t>(masked_now));
                for (int64_t mi = 0; mi < masked_now; ++mi) {
                    const size_t i = static_cast<size_t>(img * masked_now + mi);
                    const int64_t j = row_pos[i];
                    conf_all[static_cast<size_t>(img * N + j)] = conf_rows[i];
                    order[static_cast<size_t>(mi)] = {-conf_rows[i], mi};
                }
                std::sort(order.begin(), order.end()); // most confident first, then by position
                const int64_t reveal = masked_now - keep;
                for (int64_t q = 0; q < reveal; ++q) {
                    const size_t i = static_cast<size_t>(img * masked_now + order[static_cast<size_t>(q)].second);
                    const int64_t j = row_pos[i];
                    const int32_t code = drawn[i];
                    const size_t k = static_cast<size_t>(img * N + j);
                    masked[k] = 0;
                    revealed_now[k] = 1;
                    view_tokens[k] = static_cast<uint16_t>(code);
                    for (int64_t br = 0; br < branches; ++br) ids[static_cast<size_t>((br * nb + img) * S + 1 + j)] = code;
                }
            }
            was_revealed_prev = revealed_now;
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
                StepView v;
                v.step = s + 1; v.p = p; v.first = first_index + first; v.count = nb;
                v.tokens = view_tokens.data(); v.revealed = revealed_now.data(); v.confidence = conf_all.data();
                v.refresh = refresh; v.cache_hits = S - rq;
                on_step(v);
            }
            masked_now = keep;
        }
        std::memcpy(res.tokens.data() + first * N, view_tokens.data(), sizeof(uint16_t) * static_cast<size_t>(nb * N));
    }
    res.seconds = now_seconds() - t_start;
    for (const auto& st : res.steps) res.flops_per_image += st.flops;
    return res;
}

} // namespace magnets

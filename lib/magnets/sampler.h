// magnets/sampler.h: MaskGIT-style parallel decoding with decode-time model
// scaling and a KV cache (MaGNeTS, METHOD sections 6-7).
//
// A size schedule runs sub-model m_p for k steps at a time, e.g.
// "8:3,4:3,2:3,1:3" (T = 12 steps): small models sketch, large models refine.
// Every step predicts the still-masked tokens, samples them, and reveals the
// most confident so that gamma(t/T) * N stay masked. The KV cache keeps keys
// and values of revealed positions so a step computes only the uncached rows;
// it is refreshed when the sub-model changes (and per the policy).
//
// Every random draw is a function of (seed, sample index, step, position),
// and the forward pass is row-stable (Backend::matmul_rowstable), so a seed
// gives the same tokens whatever the batch size, thread count or sharding.
//
//   magnets::SampleConfig sc;
//   sc.schedule = magnets::parse_size_schedule("8:3,4:3,2:3,1:3");
//   sc.cfg_scale = 2.0;
//   magnets::SampleResult r = magnets::sample(model, sc, classes, n, first_index, 64);
#pragma once
#include "magnets/transformer.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace magnets {

struct ScheduleStage {
    int64_t p = 1;     // sub-model m_p
    int64_t steps = 1; // consecutive steps it runs
};
// "8:3,4:3,2:3,1:3" -> stages; throws Error with a hint on malformed text.
std::vector<ScheduleStage> parse_size_schedule(const std::string& s);
std::string size_schedule_to_string(const std::vector<ScheduleStage>& s);
int64_t schedule_steps(const std::vector<ScheduleStage>& s);

// gamma(r), r = t/T in [0, 1]: the fraction of tokens still masked after step t.
enum class MaskSchedule { cosine, linear, square, cubic, sqrt };
const char* mask_schedule_name(MaskSchedule m);
MaskSchedule parse_mask_schedule(const std::string& s);
double mask_gamma(MaskSchedule m, double r);

// KV cache policy (METHOD 7). A refresh recomputes every position; it always
// happens on the first step and when the attention width changes.
struct CachePolicy {
    enum Mode { none, on_switch, never, every } mode = on_switch;
    int64_t period = 1; // every:k refreshes every k steps (and on a width change)
};
CachePolicy parse_cache_policy(const std::string& s); // "on-switch", "never", "every:K", "none"
std::string cache_policy_to_string(const CachePolicy& c);

struct SampleConfig {
    std::vector<ScheduleStage> schedule = {{8, 3}, {4, 3}, {2, 3}, {1, 3}};
    MaskSchedule mask = MaskSchedule::cosine;
    double temperature = 1.0, temperature_end = 1.0; // token temperature, linear from start to end
    double choice_temperature = 4.5;                 // tau_c, annealed by (1 - t/T)
    int64_t top_k = 0;                               // 0 = off
    double cfg_scale = 0.0;                          // classifier-free guidance s (0 = off)
    bool cfg_ramp = false;                           // s_t = s * t / T instead of constant
    CachePolicy cache;
    uint64_t seed = 1;

    int64_t steps() const { return schedule_steps(schedule); }
    void validate(const TransformerConfig& model) const; // throws Error with a hint
    void to_attrs(Attrs& a) const;                        // "sample_*" attributes
};

// Per decoding step, summed over the images of a run.
struct StepStats {
    int64_t step = 0, p = 1;
    bool refresh = true;       // every position recomputed (cache rebuilt)
    int64_t rows = 0;          // positions computed per image and branch (incl. the class token on refresh)
    int64_t cached = 0;        // positions read from the cache per image and branch
    int64_t revealed = 0;      // tokens revealed per image in this step
    int64_t masked_after = 0;  // still masked per image after this step
    double flops = 0;          // per image, all branches (2 per multiply-add)
    double seconds = 0;        // wall-clock of the step over the whole run
};

// Optional per-step observer (animation, --trace): tokens [n, N] after the
// step (masked positions hold MASK = K), and per position the step's
// confidence (NaN where nothing was sampled).
struct StepView {
    int64_t step = 0, p = 1, first = 0, count = 0;
    const uint16_t* tokens = nullptr;   // [count, N]; K = still masked
    const uint8_t* revealed = nullptr;  // [count, N]; 1 = revealed at this step
    const float* confidence = nullptr;  // [count, N]
    bool refresh = true;
    int64_t cache_hits = 0;             // per image and branch
};

struct SampleResult {
    std::vector<uint16_t> tokens; // [n, N]
    std::vector<StepStats> steps;
    double flops_per_image = 0;
    double seconds = 0;
};

// Generates n samples; classes[i] is a class index or -1 (unconditional).
// Sample i uses the random streams of global index first_index + i, so
// sample(..., first, ...) on any split of the index range reproduces the
// same tokens. batch_size bounds the images decoded together.
SampleResult sample(Transformer& model, const SampleConfig& cfg, const int32_t* classes, int64_t n,
                    int64_t first_index, int64_t batch_size,
                    const std::function<void(const StepView&)>& on_step = nullptr);

// Forward FLOPs per image for one step of sub-model p computing `rows`
// positions against `keys` positions, with `head_rows` rows through the
// output head (2 per multiply-add). The last layer computes keys and values
// for `rows` and everything else for the `head_rows` only.
double step_flops(const TransformerConfig& c, int64_t p, int64_t rows, int64_t keys, int64_t head_rows);

} // namespace magnets

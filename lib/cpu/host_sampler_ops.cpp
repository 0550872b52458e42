// The sampler's draw on the CPU backends (Backend::draw_rows in
// magnets/backend.h; its caller is lib/nn/sampler.cpp): for each masked
// position, classifier-free guidance, temperature, top-k, a draw from the
// softmax with a counter-based uniform, and the confidence used to rank it.
// lib/cuda/cuda_sampler_ops.cu computes the same on the GPU, with the same
// random numbers (core/philox.h) and exp (core/fastmath.h).
#include "cpu/host_backend.h"

#include "core/fastmath.h"
#include "core/philox.h"
#include "magnets/error.h"
#include "nn/transformer_ops.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

namespace magnets {

namespace {
uint64_t word64(const int32_t* w) {
    return static_cast<uint64_t>(static_cast<uint32_t>(w[0])) | static_cast<uint64_t>(static_cast<uint32_t>(w[1])) << 32;
}
} // namespace

void HostBackend::draw_rows(const float* logits, int64_t n, const DrawSpec& d, const int32_t* rows,
                            const int32_t* streams, int32_t* token, float* conf) {
    const int64_t K = d.K;
#pragma omp parallel if (n * K >= (int64_t{1} << 16))
    {
        std::vector<float> lp(static_cast<size_t>(K)), ex(static_cast<size_t>(K)), sorted;
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < n; ++i) {
            const int64_t img = rows[2 * i];
            const uint64_t ctr = static_cast<uint32_t>(rows[2 * i + 1]);
            const uint64_t tok_stream = word64(streams + 4 * img), gum_stream = word64(streams + 4 * img + 2);
            const float* lc = logits + i * K;
            const float* lu = d.cfg ? logits + (n + i) * K : nullptr;
            for (int64_t k = 0; k < K; ++k) {
                const double l = d.cfg ? lc[k] + d.guidance * (static_cast<double>(lc[k]) - lu[k]) : lc[k];
                lp[static_cast<size_t>(k)] = static_cast<float>(l / d.tau);
            }
            if (d.top_k > 0 && d.top_k < K) { // keep the k largest (ties: all equal to the k-th)
                sorted.assign(lp.begin(), lp.end());
                std::nth_element(sorted.begin(), sorted.begin() + (d.top_k - 1), sorted.end(), std::greater<float>());
                const float kth = sorted[static_cast<size_t>(d.top_k - 1)];
                for (auto& v : lp)
                    if (v < kth) v = -std::numeric_limits<float>::infinity();
            }
            const float mx = nn::ops::lane_max(lp.data(), K);
            for (int64_t k = 0; k < K; ++k) ex[static_cast<size_t>(k)] = nn::vexp(lp[static_cast<size_t>(k)] - mx);
            double total = 0;
            for (int64_t k = 0; k < K; ++k) total += ex[static_cast<size_t>(k)];
            const double u = philox::uniform_double(d.seed, tok_stream, ctr) * total;
            double acc = 0;
            int64_t pick = K - 1;
            for (int64_t k = 0; k < K; ++k) {
                acc += ex[static_cast<size_t>(k)];
                if (acc > u) { pick = k; break; }
            }
            while (!std::isfinite(lp[static_cast<size_t>(pick)])) --pick; // never a top-k-excluded code
            const double logp = static_cast<double>(lp[static_cast<size_t>(pick)] - mx) - std::log(total);
            token[i] = static_cast<int32_t>(pick);
            conf[i] = static_cast<float>(logp + d.choice * philox::gumbel(d.seed, gum_stream, ctr));
        }
    }
}

void HostBackend::sampler_rows(const int32_t* masked, const int32_t* fresh, int64_t nb, int64_t seqs, int64_t N,
                               bool refresh, int64_t rq, int64_t ro, int64_t step, int32_t* pos, int32_t* out_rows,
                               int32_t* meta, int32_t* row_pos) {
    const int64_t S = N + 1;
    for (int64_t b = 0; b < seqs; ++b) {
        const int64_t img = b % nb;
        const int32_t* mk = masked + img * N;
        const int32_t* fr = fresh + img * N;
        int32_t* pb = pos + b * rq;
        int32_t* ob = out_rows + b * ro;
        int64_t cnt = 0, out = 0;
        if (refresh) {
            for (int64_t j = 0; j < S; ++j) pb[j] = static_cast<int32_t>(j);
            cnt = S;
            for (int64_t j = 0; j < N; ++j)
                if (mk[j]) ob[out++] = static_cast<int32_t>(1 + j);
        } else {
            for (int64_t j = 0; j < N; ++j)
                if (mk[j] || fr[j]) {
                    if (mk[j]) ob[out++] = static_cast<int32_t>(cnt);
                    pb[cnt++] = static_cast<int32_t>(1 + j);
                }
        }
        check(cnt == rq && out == ro, "sampler", "the decoding state disagrees with the step's row counts");
    }
    for (int64_t img = 0, i = 0; img < nb; ++img)
        for (int64_t j = 0; j < N; ++j)
            if (masked[img * N + j]) {
                meta[2 * i] = static_cast<int32_t>(img);
                meta[2 * i + 1] = static_cast<int32_t>(step * N + j);
                row_pos[i++] = static_cast<int32_t>(j);
            }
}

void HostBackend::reveal_top(const int32_t* token, const float* conf, const int32_t* row_pos, int64_t nb, int64_t ro,
                             int64_t reveal, int64_t N, int64_t S, int64_t branches, int32_t* masked, int32_t* fresh,
                             int32_t* tokens, int32_t* ids, float* conf_all) {
    // Images are independent; each writes only its own entries.
#pragma omp parallel for schedule(dynamic, 4) if (nb * ro >= 4096)
    for (int64_t img = 0; img < nb; ++img) {
        std::fill(fresh + img * N, fresh + (img + 1) * N, 0);
        std::fill(conf_all + img * N, conf_all + (img + 1) * N, std::numeric_limits<float>::quiet_NaN());
        std::vector<std::pair<float, int64_t>> order(static_cast<size_t>(ro));
        for (int64_t mi = 0; mi < ro; ++mi) {
            const int64_t i = img * ro + mi;
            conf_all[img * N + row_pos[i]] = conf[i];
            order[static_cast<size_t>(mi)] = {-conf[i], mi};
        }
        std::sort(order.begin(), order.end()); // most confident first, then by position
        for (int64_t q = 0; q < reveal; ++q) {
            const int64_t i = img * ro + order[static_cast<size_t>(q)].second;
            const int64_t j = row_pos[i];
            masked[img * N + j] = 0;
            fresh[img * N + j] = 1;
            tokens[img * N + j] = token[i];
            for (int64_t br = 0; br < branches; ++br) ids[(br * nb + img) * S + 1 + j] = token[i];
        }
    }
}

} // namespace magnets

// The nested transformer's inference forward with a KV cache (see decoder.h).
#include "nn/decoder.h"

#include "magnets/error.h"
#include "core/fastmath.h"
#include "nn/transformer_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace magnets::nn {

void attention_rows(const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq, int64_t S,
                    int64_t heads, int64_t hd) {
    const int64_t a = heads * hd, sp = ops::pad16(S);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
#pragma omp parallel if (seqs * heads * rq * S * hd >= ops::kParallelWork)
    {
        // kt: K^T [hd, sp], its padding columns zero; e: exp of the scores [rq, sp]
        std::vector<float> kt(static_cast<size_t>(hd * sp), 0.0f), e(static_cast<size_t>(rq * sp)),
            inv(static_cast<size_t>(rq));
#pragma omp for schedule(dynamic, 8) // cores of a VM run at different speeds
        for (int64_t bh = 0; bh < seqs * heads; ++bh) {
            const int64_t b = bh / heads, h = bh % heads;
            const float* kb = kc + b * S * a + h * hd;
            const float* vb = vc + b * S * a + h * hd;
            const float* qb = q + b * rq * a + h * hd;
            float* ob = out + b * rq * a + h * hd;
            int64_t j0 = 0;
#if defined(MAGNETS_HAVE_FMA_BLOCK)
            if (hd % 8 == 0)
                for (; j0 + 8 <= S; j0 += 8)
                    for (int64_t d = 0; d < hd; d += 8) simd::transpose8(kb + j0 * a + d, a, kt.data() + d * sp + j0, sp);
#endif
            for (int64_t j = j0; j < S; ++j)
                for (int64_t d = 0; d < hd; ++d) kt[static_cast<size_t>(d * sp + j)] = kb[j * a + d];
            // scores q k^T straight from the q rows; the 1/sqrt(hd) scale goes
            // into the exponent, and the 1/sum onto the output rows (hd wide,
            // where the probabilities are S wide)
            ops::small_gemm(rq, sp, hd, qb, a, kt.data(), sp, e.data(), sp);
            for (int64_t i = 0; i < rq; ++i) {
                float* ei = e.data() + i * sp;
                const float mx = ops::lane_max(ei, S);
                for (int64_t j = 0; j < S; ++j) ei[j] = vexp((ei[j] - mx) * scale);
                inv[static_cast<size_t>(i)] = 1.0f / ops::lane_sum<float>(ei, nullptr, S);
            }
            ops::small_gemm(rq, hd, S, e.data(), sp, vb, a, ob, a);
            for (int64_t i = 0; i < rq; ++i)
                for (int64_t d = 0; d < hd; ++d) ob[i * a + d] *= inv[static_cast<size_t>(i)];
        }
    }
}

Decoder::Decoder(Transformer::Impl& m, int64_t seqs) : m_(m), cfg_(m.cfg), seqs_(seqs) {
    const int64_t S = cfg_.seq(), D = cfg_.width;
    kc_.resize(static_cast<size_t>(cfg_.layers));
    vc_.resize(static_cast<size_t>(cfg_.layers));
    for (int64_t l = 0; l < cfg_.layers; ++l) {
        kc_[static_cast<size_t>(l)].assign(static_cast<size_t>(seqs * S * D), 0.0f);
        vc_[static_cast<size_t>(l)].assign(static_cast<size_t>(seqs * S * D), 0.0f);
    }
}

void Decoder::forward(int64_t p, const int32_t* ids, const int32_t* pos, int64_t rq, bool refresh,
                      std::vector<float>& hidden, const int32_t* out_rows, int64_t ro) {
    using Param = Transformer::Impl::Param;
    const TransformerConfig::Sub s = cfg_.sub(p);
    const int64_t S = cfg_.seq(), D = cfg_.width, F = cfg_.mlp_width(), r = s.resid, a = s.attn, f = s.mlp;
    if (!out_rows) ro = rq;
    check(ro >= 0 && ro <= rq, "decoder", "more output rows than computed rows");
    int64_t R = seqs_ * rq; // rows in flight: seqs * ro from the last layer's queries on
    Backend& B = *m_.be;
    if (refresh) {
        check(rq == S, "decoder", "a refresh computes every position");
        cache_p_ = p;
        cache_attn_ = a;
    }
    check(cache_attn_ == a, "decoder", "cached step with another attention width than the cache's (refresh first)");
    for (auto* v : {&x_, &h_, &q_, &k_, &v_, &att_, &tmp_}) v->resize(static_cast<size_t>(R * D));
    u_.resize(static_cast<size_t>(R * F));
    mean_.resize(static_cast<size_t>(R));
    rstd_.resize(static_cast<size_t>(R));
    const float* te = m_.tok_emb->w.data();
    const float* pe = m_.pos_emb->w.data();
    // A refresh that lists every position in order writes keys and values
    // straight into the cache; other steps scatter their fresh rows there.
    bool in_order = rq == S;
    for (int64_t i = 0; in_order && i < R; ++i) in_order = pos[i] == i % S;
#pragma omp parallel for schedule(dynamic, 16) if (R * r >= ops::kParallelWork)
    for (int64_t i = 0; i < R; ++i) {
        const int64_t b = i / rq, ps = pos[i];
        const float* t = te + static_cast<int64_t>(ids[b * S + ps]) * D;
        const float* q = pe + ps * D;
        float* xi = x_.data() + i * r;
        for (int64_t j = 0; j < r; ++j) xi[j] = t[j] + q[j];
    }
    auto mm = [&](const float* in, int64_t k, const Param* w, const Param* bias, int64_t n, float* out,
                  Backend::Act act = Backend::Act::none) {
        B.matmul_rowstable(ConstMat(in, R, k, k), ConstMat(w->w.data(), n, k, w->w.dim(1)), bias->w.data(),
                           Mat{out, R, n, n}, act);
    };
    auto add_into_x = [&](const float* y) {
        float* x = x_.data();
#pragma omp parallel for schedule(dynamic, 4096) if (R * r >= ops::kParallelWork)
        for (int64_t i = 0; i < R * r; ++i) x[i] += y[i];
    };
    for (int64_t l = 0; l < cfg_.layers; ++l) {
        const Transformer::Impl::Layer& L = m_.layers[static_cast<size_t>(l)];
        ops::layernorm_forward(x_.data(), r, h_.data(), r, mean_.data(), rstd_.data(), L.ln1_w->w.data(),
                               L.ln1_b->w.data(), R, r);
        float* kc = kc_[static_cast<size_t>(l)].data();
        float* vc = vc_[static_cast<size_t>(l)].data();
        mm(h_.data(), r, L.k_w, L.k_b, a, in_order ? kc : k_.data()); // the cache has ld a
        mm(h_.data(), r, L.v_w, L.v_b, a, in_order ? vc : v_.data());
        if (!in_order) {
#pragma omp parallel for schedule(dynamic, 16) if (R * a >= ops::kParallelWork)
            for (int64_t i = 0; i < R; ++i) {
                const int64_t b = i / rq, ps = pos[i];
                std::memcpy(kc + (b * S + ps) * a, k_.data() + i * a, sizeof(float) * static_cast<size_t>(a));
                std::memcpy(vc + (b * S + ps) * a, v_.data() + i * a, sizeof(float) * static_cast<size_t>(a));
            }
        }
        if (l == cfg_.layers - 1 && ro < rq) {
            // The last layer's rows feed only the output: keep the requested
            // ones (their keys and values, above, still serve as keys).
            // Increasing indices compact in place: a row moves only down.
            for (int64_t b = 0; b < seqs_; ++b)
                for (int64_t k = 0; k < ro; ++k) {
                    const int64_t src = b * rq + out_rows[b * ro + k], dst = b * ro + k;
                    check(out_rows[b * ro + k] >= 0 && out_rows[b * ro + k] < rq &&
                              (k == 0 || out_rows[b * ro + k] > out_rows[b * ro + k - 1]),
                          "decoder", "output rows must be increasing row indices");
                    if (src == dst) continue;
                    std::memcpy(x_.data() + dst * r, x_.data() + src * r, sizeof(float) * static_cast<size_t>(r));
                    std::memcpy(h_.data() + dst * r, h_.data() + src * r, sizeof(float) * static_cast<size_t>(r));
                }
            R = seqs_ * ro;
            rq = ro;
        }
        mm(h_.data(), r, L.q_w, L.q_b, a, q_.data());
        attention_rows(q_.data(), kc, vc, att_.data(), seqs_, rq, S, s.heads, cfg_.head_dim());
        mm(att_.data(), a, L.o_w, L.o_b, r, tmp_.data());
        add_into_x(tmp_.data());
        ops::layernorm_forward(x_.data(), r, h_.data(), r, mean_.data(), rstd_.data(), L.ln2_w->w.data(),
                               L.ln2_b->w.data(), R, r);
        mm(h_.data(), r, L.fc1_w, L.fc1_b, f, u_.data(), Backend::Act::gelu);
        mm(u_.data(), f, L.fc2_w, L.fc2_b, r, tmp_.data());
        add_into_x(tmp_.data());
    }
    hidden.resize(static_cast<size_t>(R * r));
    ops::layernorm_forward(x_.data(), r, hidden.data(), r, mean_.data(), rstd_.data(), m_.lnf_w->w.data(),
                           m_.lnf_b->w.data(), R, r);
}

} // namespace magnets::nn

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
        std::vector<float> kt(static_cast<size_t>(hd * sp), 0.0f), sc(static_cast<size_t>(rq * sp)),
            qs(static_cast<size_t>(rq * hd)), pr(static_cast<size_t>(rq * S));
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < seqs * heads; ++bh) {
            const int64_t b = bh / heads, h = bh % heads;
            const float* kb = kc + b * S * a + h * hd;
            const float* vb = vc + b * S * a + h * hd;
            const float* qb = q + b * rq * a + h * hd;
            for (int64_t d = 0; d < hd; ++d)
                for (int64_t j = 0; j < S; ++j) kt[static_cast<size_t>(d * sp + j)] = kb[j * a + d];
            for (int64_t i = 0; i < rq; ++i)
                for (int64_t d = 0; d < hd; ++d) qs[static_cast<size_t>(i * hd + d)] = qb[i * a + d] * scale;
            ops::small_gemm(rq, sp, hd, qs.data(), hd, kt.data(), sp, sc.data(), sp);
            for (int64_t i = 0; i < rq; ++i) {
                float* si = sc.data() + i * sp;
                const float mx = ops::lane_max(si, S);
                for (int64_t j = 0; j < S; ++j) si[j] = vexp(si[j] - mx);
                const float inv = 1.0f / ops::lane_sum<float>(si, nullptr, S);
                float* pi = pr.data() + i * S;
                for (int64_t j = 0; j < S; ++j) pi[j] = si[j] * inv;
            }
            ops::small_gemm(rq, hd, S, pr.data(), S, vb, a, out + b * rq * a + h * hd, a);
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
                      std::vector<float>& hidden) {
    using Param = Transformer::Impl::Param;
    const TransformerConfig::Sub s = cfg_.sub(p);
    const int64_t S = cfg_.seq(), D = cfg_.width, F = cfg_.mlp_width(), r = s.resid, a = s.attn, f = s.mlp;
    const int64_t R = seqs_ * rq;
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
#pragma omp parallel for schedule(static) if (R * r >= ops::kParallelWork)
        for (int64_t i = 0; i < R * r; ++i) x[i] += y[i];
    };
    for (int64_t l = 0; l < cfg_.layers; ++l) {
        const Transformer::Impl::Layer& L = m_.layers[static_cast<size_t>(l)];
        ops::layernorm_forward(x_.data(), r, h_.data(), r, mean_.data(), rstd_.data(), L.ln1_w->w.data(),
                               L.ln1_b->w.data(), R, r);
        mm(h_.data(), r, L.q_w, L.q_b, a, q_.data());
        mm(h_.data(), r, L.k_w, L.k_b, a, k_.data());
        mm(h_.data(), r, L.v_w, L.v_b, a, v_.data());
        float* kc = kc_[static_cast<size_t>(l)].data();
        float* vc = vc_[static_cast<size_t>(l)].data();
        for (int64_t i = 0; i < R; ++i) { // fresh keys/values into the cache (ld a)
            const int64_t b = i / rq, ps = pos[i];
            std::memcpy(kc + (b * S + ps) * a, k_.data() + i * a, sizeof(float) * static_cast<size_t>(a));
            std::memcpy(vc + (b * S + ps) * a, v_.data() + i * a, sizeof(float) * static_cast<size_t>(a));
        }
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

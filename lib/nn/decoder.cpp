// The nested transformer's inference forward with a KV cache (see decoder.h).
#include "nn/decoder.h"

#include "magnets/error.h"

#include <algorithm>
#include <utility>

namespace magnets::nn {

using Param = Transformer::Impl::Param;

DecoderWeights::DecoderWeights(Transformer::Impl& m) : be_(*m.be) {
    m.params_to_host(); // a model trained on the device: its current weights
    if (be_.host_memory()) return;
    try {
        for (const std::string& name : m.order) {
            const Param& p = m.params.at(name);
            check(p.w.is_contiguous(), "decoder", "parameter " + name + " is not contiguous");
            float* d = be_.alloc(static_cast<size_t>(p.w.numel()));
            dev_[&p] = d;
            be_.upload(d, p.w.data(), static_cast<size_t>(p.w.numel()));
        }
    } catch (...) {
        for (auto& kv : dev_) be_.free(kv.second);
        throw;
    }
}

DecoderWeights::~DecoderWeights() {
    for (auto& kv : dev_) be_.free(kv.second);
}

const float* DecoderWeights::operator()(const Param* p) const {
    if (be_.host_memory()) return p->w.data();
    return dev_.at(p);
}

Decoder::Decoder(Transformer::Impl& m, int64_t seqs, const DecoderWeights* weights)
    : m_(m), cfg_(m.cfg), be_(*m.be), seqs_(seqs), x_(be_), h_(be_), q_(be_), k_(be_), v_(be_), att_(be_),
      tmp_(be_), u_(be_), hidden_(be_), ids_(be_), pos_(be_), out_(be_) {
    if (!weights) {
        own_w_ = std::make_unique<DecoderWeights>(m);
        weights = own_w_.get();
    }
    w_ = weights;
    const int64_t S = cfg_.seq(), D = cfg_.width;
    for (int64_t l = 0; l < cfg_.layers; ++l) {
        kc_.push_back(std::make_unique<BackendBuffer>(be_));
        vc_.push_back(std::make_unique<BackendBuffer>(be_));
        kc_.back()->grow(static_cast<size_t>(seqs * S * D));
        vc_.back()->grow(static_cast<size_t>(seqs * S * D));
    }
}

const int32_t* Decoder::ints(const int32_t* host, int64_t n, BackendBuffer& buf) {
    if (be_.host_memory()) return host;
    int32_t* d = reinterpret_cast<int32_t*>(buf.grow(static_cast<size_t>(std::max<int64_t>(n, 1))));
    static_assert(sizeof(int32_t) == sizeof(float), "int32 arrays travel as floats");
    be_.upload(reinterpret_cast<float*>(d), reinterpret_cast<const float*>(host), static_cast<size_t>(n));
    return d;
}

void Decoder::forward(int64_t p, const int32_t* ids, const int32_t* pos, int64_t rq, bool refresh,
                      std::vector<float>& hidden, const int32_t* out_rows, int64_t ro) {
    const float* h = forward(p, ids, pos, rq, refresh, out_rows, ro);
    hidden.resize(static_cast<size_t>(last_rows_ * last_width_));
    be_.download(hidden.data(), h, hidden.size());
}

const float* Decoder::forward(int64_t p, const int32_t* ids, const int32_t* pos, int64_t rq, bool refresh,
                              const int32_t* out_rows, int64_t ro) {
    const TransformerConfig::Sub s = cfg_.sub(p);
    const int64_t S = cfg_.seq(), D = cfg_.width, F = cfg_.mlp_width(), r = s.resid, a = s.attn, f = s.mlp;
    if (!out_rows) ro = rq;
    check(ro >= 0 && ro <= rq, "decoder", "more output rows than computed rows");
    const bool dev_arrays = arrays_on_backend_;
    arrays_on_backend_ = false;
    if (out_rows && !dev_arrays)
        for (int64_t b = 0; b < seqs_; ++b)
            for (int64_t k = 0; k < ro; ++k)
                check(out_rows[b * ro + k] >= 0 && out_rows[b * ro + k] < rq &&
                          (k == 0 || out_rows[b * ro + k] > out_rows[b * ro + k - 1]),
                      "decoder", "output rows must be increasing row indices");
    int64_t R = seqs_ * rq; // rows in flight: seqs * ro from the last layer's queries on
    Backend& B = be_;
    const DecoderWeights& W = *w_;
    if (refresh) {
        check(rq == S, "decoder", "a refresh computes every position");
        cache_p_ = p;
        cache_attn_ = a;
    }
    check(cache_attn_ == a, "decoder", "cached step with another attention width than the cache's (refresh first)");
    const size_t RD = static_cast<size_t>(R * D);
    float *x = x_.grow(RD), *h = h_.grow(RD), *q = q_.grow(RD), *k = k_.grow(RD), *v = v_.grow(RD);
    float *att = att_.grow(RD), *tmp = tmp_.grow(RD), *u = u_.grow(static_cast<size_t>(R * F));
    // A refresh that lists every position in order writes keys and values
    // straight into the cache; other steps scatter their fresh rows there.
    // (Arrays already on the backend: a refresh lists every position in order.)
    bool in_order = rq == S;
    if (dev_arrays) in_order = in_order && refresh;
    else
        for (int64_t i = 0; in_order && i < R; ++i) in_order = pos[i] == i % S;
    const int32_t* d_ids = dev_arrays ? ids : ints(ids, seqs_ * S, ids_);
    const int32_t* d_pos = dev_arrays ? pos : ints(pos, R, pos_);
    const int32_t* d_out = out_rows && ro < rq ? (dev_arrays ? out_rows : ints(out_rows, seqs_ * ro, out_)) : nullptr;
    B.embed_rows(d_ids, d_pos, rq, S, W(m_.tok_emb), W(m_.pos_emb), D, x, R, r);
    auto mm = [&](const float* in, int64_t kd, const Param* w, const Param* bias, int64_t n, float* out,
                  Backend::Act act = Backend::Act::none) {
        B.matmul_rowstable(ConstMat(in, R, kd, kd), ConstMat(W(w), n, kd, w->w.dim(1)), W(bias), Mat{out, R, n, n}, act);
    };
    for (int64_t l = 0; l < cfg_.layers; ++l) {
        const Transformer::Impl::Layer& L = m_.layers[static_cast<size_t>(l)];
        B.layernorm_rows(x, h, W(L.ln1_w), W(L.ln1_b), R, r);
        float* kc = kc_[static_cast<size_t>(l)]->data();
        float* vc = vc_[static_cast<size_t>(l)]->data();
        mm(h, r, L.k_w, L.k_b, a, in_order ? kc : k); // the cache has ld a
        mm(h, r, L.v_w, L.v_b, a, in_order ? vc : v);
        if (!in_order) {
            B.scatter_rows(k, d_pos, rq, S, kc, R, a);
            B.scatter_rows(v, d_pos, rq, S, vc, R, a);
        }
        if (l == cfg_.layers - 1 && d_out) {
            // The last layer's rows feed only the output: keep the requested
            // ones (their keys and values, above, still serve as keys).
            B.gather_rows(x, d_out, seqs_, rq, ro, tmp, r);
            std::swap(x, tmp);
            B.gather_rows(h, d_out, seqs_, rq, ro, tmp, r);
            std::swap(h, tmp);
            R = seqs_ * ro;
            rq = ro;
        }
        mm(h, r, L.q_w, L.q_b, a, q);
        B.attention_rows(q, kc, vc, att, seqs_, rq, S, s.heads, cfg_.head_dim());
        mm(att, a, L.o_w, L.o_b, r, tmp);
        B.add_into(x, tmp, R * r);
        B.layernorm_rows(x, h, W(L.ln2_w), W(L.ln2_b), R, r);
        mm(h, r, L.fc1_w, L.fc1_b, f, u, Backend::Act::gelu);
        mm(u, f, L.fc2_w, L.fc2_b, r, tmp);
        B.add_into(x, tmp, R * r);
    }
    float* out = hidden_.grow(static_cast<size_t>(R * r));
    B.layernorm_rows(x, out, W(m_.lnf_w), W(m_.lnf_b), R, r);
    last_rows_ = R;
    last_width_ = r;
    return out;
}

} // namespace magnets::nn

// The nested masked transformer: configuration, parameters, and the explicit
// forward/backward of one sub-model on prefix slices of the shared weights.
#include "nn/transformer_impl.h"
#include "nn/transformer_ops.h"

#include "magnets/error.h"
#include "magnets/rng.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

namespace magnets {

// ---- names and configuration ------------------------------------------------------

const char* nesting_name(Nesting n) {
    switch (n) {
    case Nesting::width: return "width";
    case Nesting::mone: return "mone";
    case Nesting::mlp: return "mlp";
    }
    return "?";
}

Nesting parse_nesting(const std::string& s) {
    if (s == "width") return Nesting::width;
    if (s == "mone") return Nesting::mone;
    if (s == "mlp") return Nesting::mlp;
    throw Error("unknown nesting mode '" + s + "'", {}, {}, "choose one of: width, mone, mlp");
}

std::string factors_to_string(const std::vector<int64_t>& f) {
    std::string s;
    for (int64_t p : f) s += (s.empty() ? "" : ",") + std::to_string(p);
    return s;
}

std::vector<int64_t> parse_factors(const std::string& s) {
    std::vector<int64_t> f;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        char* end = nullptr;
        const long long v = std::strtoll(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || v < 1)
            throw Error("invalid factor list '" + s + "'", {}, "'" + item + "' is not a positive integer",
                        "write the downscale factors as a comma-separated list, e.g. 8,4,2,1");
        f.push_back(v);
    }
    if (f.empty()) throw Error("invalid factor list '" + s + "'", {}, "it is empty", "e.g. --factors 8,4,2,1");
    std::sort(f.rbegin(), f.rend());
    if (std::adjacent_find(f.begin(), f.end()) != f.end())
        throw Error("invalid factor list '" + s + "'", {}, "a factor appears twice", "list each factor once");
    return f;
}

TransformerConfig::Sub TransformerConfig::sub(int64_t p) const {
    if (std::find(factors.begin(), factors.end(), p) == factors.end())
        throw Error("no sub-model m_" + std::to_string(p), {}, "the model's factors are " + factors_to_string(factors),
                    "use one of the model's factors");
    Sub s;
    s.p = p;
    const int64_t F = mlp_width();
    switch (nesting) {
    case Nesting::width: s.resid = width / p; s.attn = width / p; s.mlp = F / p; break;
    case Nesting::mone: s.resid = width / p; s.attn = width; s.mlp = F / p; break;
    case Nesting::mlp: s.resid = width; s.attn = width; s.mlp = F / p; break;
    }
    s.heads = s.attn / head_dim();
    return s;
}

double TransformerConfig::forward_flops(int64_t p) const {
    const Sub s = sub(p);
    const double S = static_cast<double>(seq()), r = static_cast<double>(s.resid), a = static_cast<double>(s.attn),
                 f = static_cast<double>(s.mlp);
    const double block = 2.0 * S * (3 * r * a + a * r + 2 * r * f) + 4.0 * S * S * a;
    return static_cast<double>(layers) * block + 2.0 * S * r * static_cast<double>(codebook_size);
}

int64_t TransformerConfig::num_params() const {
    const int64_t D = width, F = mlp_width();
    const int64_t block = 4 * D + 4 * (D * D + D) + F * D + F + D * F + D;
    return vocab() * D + seq() * D + layers * block + 2 * D + codebook_size * D + codebook_size;
}

void TransformerConfig::validate() const {
    auto bad = [](const std::string& why, const std::string& hint) {
        throw Error("invalid transformer configuration", {}, why, hint);
    };
    if (codebook_size < 2 || codebook_size > 65535) bad("codebook_size must be in [2, 65535]", "check the token file");
    if (num_classes < 0 || num_classes > 100000) bad("num_classes must be in [0, 100000]", "check the token file");
    if (grid_t < 1 || grid_h < 1 || grid_w < 1) bad("the token grid must be at least 1x1", "check the token file");
    if (width < 1 || heads < 1 || layers < 1 || mlp_ratio < 1) bad("width, heads, layers and mlp_ratio must be positive", "");
    if (width % heads != 0)
        bad("width " + std::to_string(width) + " is not a multiple of heads " + std::to_string(heads),
            "pick --width as a multiple of --heads");
    if (factors.empty()) bad("no sub-models (factors is empty)", "e.g. --factors 8,4,2,1");
    for (size_t i = 0; i < factors.size(); ++i) {
        const int64_t p = factors[i];
        if (p < 1) bad("factor " + std::to_string(p) + " is not positive", "");
        if (i > 0 && factors[i - 1] <= p) bad("factors must be distinct and in decreasing order", "e.g. 8,4,2,1");
        const std::string ps = std::to_string(p);
        if (mlp_width() % p != 0) bad("MLP width " + std::to_string(mlp_width()) + " is not divisible by factor " + ps, "");
        if (nesting != Nesting::mlp && width % p != 0)
            bad("width " + std::to_string(width) + " is not divisible by factor " + ps, "");
        if (nesting == Nesting::width && heads % p != 0)
            bad("heads " + std::to_string(heads) + " is not divisible by factor " + ps + " (width nesting keeps H/p heads)",
                "use more heads, fewer factors, or --nesting mone");
    }
}

void TransformerConfig::to_attrs(Attrs& a) const {
    a["codebook_size"] = codebook_size; a["num_classes"] = num_classes;
    a["grid_t"] = grid_t; a["grid_h"] = grid_h; a["grid_w"] = grid_w;
    a["width"] = width; a["heads"] = heads; a["layers"] = layers; a["mlp_ratio"] = mlp_ratio;
    a["nesting"] = std::string(nesting_name(nesting));
    a["factors"] = factors_to_string(factors);
}

TransformerConfig TransformerConfig::from_attrs(const Attrs& a, const std::string& path) {
    TransformerConfig c;
    c.codebook_size = attr_int(a, "codebook_size", path); c.num_classes = attr_int(a, "num_classes", path);
    c.grid_t = attr_int(a, "grid_t", path); c.grid_h = attr_int(a, "grid_h", path); c.grid_w = attr_int(a, "grid_w", path);
    c.width = attr_int(a, "width", path); c.heads = attr_int(a, "heads", path); c.layers = attr_int(a, "layers", path);
    c.mlp_ratio = attr_int(a, "mlp_ratio", path);
    c.nesting = parse_nesting(attr_string(a, "nesting", path));
    c.factors = parse_factors(attr_string(a, "factors", path));
    c.validate();
    return c;
}

// ---- parameters --------------------------------------------------------------------

Transformer::Impl::Impl(const TransformerConfig& c, std::shared_ptr<Backend> b) : cfg(c), be(std::move(b)) {
    cfg.validate();
    const int64_t D = cfg.width, F = cfg.mlp_width(), K = cfg.codebook_size;
    tok_emb = &add("tok_emb.weight", {cfg.vocab(), D}, true);
    pos_emb = &add("pos_emb.weight", {cfg.seq(), D}, true);
    for (int64_t l = 0; l < cfg.layers; ++l) {
        const std::string p = "blocks." + std::to_string(l) + ".";
        Layer L{};
        L.ln1_w = &add(p + "ln1.weight", {D}, false); L.ln1_b = &add(p + "ln1.bias", {D}, false);
        L.q_w = &add(p + "attn.q.weight", {D, D}, true); L.q_b = &add(p + "attn.q.bias", {D}, false);
        L.k_w = &add(p + "attn.k.weight", {D, D}, true); L.k_b = &add(p + "attn.k.bias", {D}, false);
        L.v_w = &add(p + "attn.v.weight", {D, D}, true); L.v_b = &add(p + "attn.v.bias", {D}, false);
        L.o_w = &add(p + "attn.o.weight", {D, D}, true); L.o_b = &add(p + "attn.o.bias", {D}, false);
        L.ln2_w = &add(p + "ln2.weight", {D}, false); L.ln2_b = &add(p + "ln2.bias", {D}, false);
        L.fc1_w = &add(p + "mlp.fc1.weight", {F, D}, true); L.fc1_b = &add(p + "mlp.fc1.bias", {F}, false);
        L.fc2_w = &add(p + "mlp.fc2.weight", {D, F}, true); L.fc2_b = &add(p + "mlp.fc2.bias", {D}, false);
        layers.push_back(L);
    }
    lnf_w = &add("ln_f.weight", {D}, false); lnf_b = &add("ln_f.bias", {D}, false);
    head_w = &add("head.weight", {K, D}, true); head_b = &add("head.bias", {K}, false);
    for (auto& L : layers) { L.ln1_w->w.fill(1.0f); L.ln2_w->w.fill(1.0f); }
    lnf_w->w.fill(1.0f);
}

Transformer::Impl::Param& Transformer::Impl::add(const std::string& name, std::vector<int64_t> shape, bool decay) {
    Param& p = params[name]; // std::map: references stay valid
    p.w = Tensor(shape);
    p.g = Tensor(shape);
    p.decay = decay;
    order.push_back(name);
    return p;
}

// ---- where the parameters live (device backends) ------------------------------------

void Transformer::Impl::params_to_device() {
    if (!on_device() || device_current) return;
    for (const std::string& n : order) {
        Param& p = params[n];
        const size_t count = static_cast<size_t>(p.w.numel());
        if (!p.dw.data()) {
            p.dw.bind(*be);
            p.dg.bind(*be);
            p.dg.grow(count);
            be->zero(p.dg.data(), count);
        }
        be->upload(p.dw.grow(count), p.w.data(), count);
    }
    device_current = true;
}

void Transformer::Impl::params_to_host() {
    if (!on_device() || !device_current) return;
    for (const std::string& n : order) {
        Param& p = params[n];
        be->download(p.w.data(), p.dw.data(), static_cast<size_t>(p.w.numel()));
    }
    device_current = false;
}

void Transformer::Impl::grad_to_host(Param& p) {
    if (on_device() && p.dg.data()) be->download(p.g.data(), p.dg.data(), static_cast<size_t>(p.g.numel()));
}

void Transformer::Impl::zero_grads() {
    for (auto& [name, prm] : params) {
        prm.g.zero();
        if (prm.dg.data()) be->zero(prm.dg.data(), static_cast<size_t>(prm.g.numel()));
    }
}

void Transformer::Impl::ensure_buffers(int64_t b) {
    const int64_t S = cfg.seq(), D = cfg.width, F = cfg.mlp_width(), R = b * S, K = cfg.codebook_size;
    auto need = [&](nn::BackendBuffer& buf, int64_t n) {
        buf.bind(*be);
        buf.grow(static_cast<size_t>(std::max<int64_t>(n, 1)));
    };
    acts.resize(static_cast<size_t>(cfg.layers));
    for (auto& A : acts) {
        for (auto* v : {&A.x_in, &A.h1, &A.q, &A.k, &A.v, &A.att, &A.x_mid, &A.h2}) need(*v, R * D);
        for (auto* v : {&A.mean1, &A.rstd1, &A.mean2, &A.rstd2}) need(*v, R);
        need(A.probs, b * cfg.heads * S * S);
        need(A.u, R * F);
        need(A.g, R * F);
    }
    for (auto* v : {&x_out, &hf, &dx, &dh, &dq, &dk, &dv, &datt}) need(*v, R * D);
    need(meanf, R);
    need(rstdf, R);
    need(du, R * F);
    need(logits, R * K);
    need(dlogits, R * K);
    if (static_cast<int64_t>(pos_host.size()) < R) {
        pos_host.resize(static_cast<size_t>(R));
        for (int64_t i = 0; i < R; ++i) pos_host[static_cast<size_t>(i)] = static_cast<int32_t>(i % S);
        if (on_device()) {
            need(d_pos, R);
            be->upload(d_pos.data(), reinterpret_cast<const float*>(pos_host.data()), static_cast<size_t>(R));
        }
    }
}

// ---- forward / backward ------------------------------------------------------------

namespace {
inline ConstMat cm(const float* d, int64_t rows, int64_t cols, int64_t ld) { return ConstMat(d, rows, cols, ld); }
inline Mat mm(float* d, int64_t rows, int64_t cols, int64_t ld) { return Mat{d, rows, cols, ld}; }

// A host array of n 4-byte values in the backend's memory: itself on a CPU
// backend, uploaded into buf on a device.
template <typename T>
const T* on_backend(Backend& be, const T* host, int64_t n, nn::BackendBuffer& buf) {
    static_assert(sizeof(T) == sizeof(float), "4-byte values travel as floats");
    if (be.host_memory()) return host;
    buf.bind(be);
    float* d = buf.grow(static_cast<size_t>(std::max<int64_t>(n, 1)));
    be.upload(d, reinterpret_cast<const float*>(host), static_cast<size_t>(n));
    return reinterpret_cast<const T*>(d);
}
// Bytes: uploaded in whole floats.
const uint8_t* bytes_on_backend(Backend& be, const uint8_t* host, int64_t n, nn::BackendBuffer& buf,
                                std::vector<float>& staging) {
    if (be.host_memory()) return host;
    const size_t floats = static_cast<size_t>((n + 3) / 4);
    staging.assign(std::max<size_t>(floats, 1), 0.0f);
    std::memcpy(staging.data(), host, static_cast<size_t>(n));
    buf.bind(be);
    float* d = buf.grow(staging.size());
    be.upload(d, staging.data(), staging.size());
    return reinterpret_cast<const uint8_t*>(d);
}
} // namespace

void Transformer::Impl::forward(int64_t p, const int32_t* ids, int64_t b, const int64_t* rows, int64_t n_rows) {
    const TransformerConfig::Sub s = cfg.sub(p);
    const int64_t S = cfg.seq(), D = cfg.width, F = cfg.mlp_width(), K = cfg.codebook_size, V = cfg.vocab();
    const int64_t R = b * S, r = s.resid, a = s.attn, f = s.mlp, hd = cfg.head_dim();
    for (int64_t i = 0; i < R; ++i)
        if (ids[i] < 0 || ids[i] >= V)
            throw Error("token id out of range", {},
                        "id " + std::to_string(ids[i]) + " at position " + std::to_string(i % S) + " of sequence " +
                            std::to_string(i / S) + " (vocabulary " + std::to_string(V) + ")",
                        "the tokens do not fit this model; check the token file's codebook size and classes");
    ensure_buffers(b);
    params_to_device();
    ids_saved.assign(ids, ids + R);
    batch = b;
    sub_p = p;
    Backend& B = *be;

    // embeddings: x[i] = tok_emb[ids[i]] + pos_emb[i % S]
    const int32_t* dids = on_backend(B, ids, R, d_ids);
    const int32_t* dpos = on_device() ? d_pos.ints() : pos_host.data();
    B.embed_rows(dids, dpos, S, S, tok_emb->W(), pos_emb->W(), D, acts[0].x_in.data(), R, r);
    for (int64_t l = 0; l < cfg.layers; ++l) {
        Acts& A = acts[static_cast<size_t>(l)];
        const Layer& L = layers[static_cast<size_t>(l)];
        float* x_next = l + 1 < cfg.layers ? acts[static_cast<size_t>(l + 1)].x_in.data() : x_out.data();
        B.layernorm_forward(A.x_in.data(), r, A.h1.data(), r, A.mean1.data(), A.rstd1.data(), L.ln1_w->W(),
                            L.ln1_b->W(), R, r);
        const ConstMat h1 = cm(A.h1.data(), R, r, r);
        B.matmul_bias(h1, false, cm(L.q_w->W(), a, r, D), true, mm(A.q.data(), R, a, a), L.q_b->W());
        B.matmul_bias(h1, false, cm(L.k_w->W(), a, r, D), true, mm(A.k.data(), R, a, a), L.k_b->W());
        B.matmul_bias(h1, false, cm(L.v_w->W(), a, r, D), true, mm(A.v.data(), R, a, a), L.v_b->W());
        B.attention_forward(A.q.data(), A.k.data(), A.v.data(), a, A.att.data(), A.probs.data(), b, S, s.heads, hd);
        B.matmul_residual(cm(A.att.data(), R, a, a), false, cm(L.o_w->W(), r, a, D), true,
                          mm(A.x_mid.data(), R, r, r), L.o_b->W(), A.x_in.data());
        B.layernorm_forward(A.x_mid.data(), r, A.h2.data(), r, A.mean2.data(), A.rstd2.data(), L.ln2_w->W(),
                            L.ln2_b->W(), R, r);
        B.matmul(cm(A.h2.data(), R, r, r), false, cm(L.fc1_w->W(), f, r, D), true, mm(A.u.data(), R, f, f));
        B.bias_gelu_forward(A.u.data(), L.fc1_b->W(), A.g.data(), R, f);
        B.matmul_residual(cm(A.g.data(), R, f, f), false, cm(L.fc2_w->W(), r, f, F), true, mm(x_next, R, r, r),
                          L.fc2_b->W(), A.x_mid.data());
    }
    B.layernorm_forward(x_out.data(), r, hf.data(), r, meanf.data(), rstdf.data(), lnf_w->W(), lnf_b->W(), R, r);
    head_selected = rows != nullptr;
    if (!head_selected) {
        head_rows.clear();
        B.matmul_bias(cm(hf.data(), R, r, r), false, cm(head_w->W(), K, r, D), true, mm(logits.data(), R, K, K),
                      head_b->W());
        return;
    }
    head_rows.assign(rows, rows + n_rows);
    rows32.resize(static_cast<size_t>(n_rows));
    for (int64_t i = 0; i < n_rows; ++i) rows32[static_cast<size_t>(i)] = static_cast<int32_t>(rows[i]);
    hsel.bind(B);
    hsel.grow(static_cast<size_t>(std::max<int64_t>(n_rows * r, 1)));
    if (n_rows == 0) return;
    B.gather_rows(hf.data(), on_backend(B, rows32.data(), n_rows, d_rows), 1, R, n_rows, hsel.data(), r);
    B.matmul_bias(cm(hsel.data(), n_rows, r, r), false, cm(head_w->W(), K, r, D), true,
                  mm(logits.data(), n_rows, K, K), head_b->W());
}

void Transformer::Impl::backward() {
    const TransformerConfig::Sub s = cfg.sub(sub_p);
    const int64_t S = cfg.seq(), D = cfg.width, F = cfg.mlp_width(), K = cfg.codebook_size;
    const int64_t R = batch * S, r = s.resid, a = s.attn, f = s.mlp, hd = cfg.head_dim();
    Backend& B = *be;
    // head and final layer norm
    if (!head_selected) {
        const ConstMat dlg = cm(dlogits.data(), R, K, K);
        B.matmul(dlg, false, cm(head_w->W(), K, r, D), false, mm(dh.data(), R, r, r));
        B.matmul(dlg, true, cm(hf.data(), R, r, r), false, mm(head_w->G(), K, r, D), 1.0f, 1.0f);
        B.bias_backward(dlogits.data(), K, head_b->G(), R, K);
    } else {
        const int64_t n = static_cast<int64_t>(head_rows.size());
        B.zero(dh.data(), static_cast<size_t>(R * r));
        if (n > 0) {
            const ConstMat dlg = cm(dlogits.data(), n, K, K);
            dhsel.bind(B);
            dhsel.grow(static_cast<size_t>(n * r));
            B.matmul(dlg, false, cm(head_w->W(), K, r, D), false, mm(dhsel.data(), n, r, r));
            B.matmul(dlg, true, cm(hsel.data(), n, r, r), false, mm(head_w->G(), K, r, D), 1.0f, 1.0f);
            B.bias_backward(dlogits.data(), K, head_b->G(), n, K);
            // the head rows (in the backend's memory since forward) back into dh
            const int32_t* drows = on_device() ? d_rows.ints() : rows32.data();
            B.scatter_rows(dhsel.data(), drows, n, S, dh.data(), n, r);
        }
    }
    B.layernorm_backward(x_out.data(), r, dh.data(), r, meanf.data(), rstdf.data(), lnf_w->W(), dx.data(), r,
                         lnf_w->G(), lnf_b->G(), R, r, false);
    for (int64_t l = cfg.layers - 1; l >= 0; --l) {
        Acts& A = acts[static_cast<size_t>(l)];
        const Layer& L = layers[static_cast<size_t>(l)];
        const ConstMat dxm = cm(dx.data(), R, r, r);
        // MLP: x_next = x_mid + fc2(gelu(fc1(LN2(x_mid))))
        B.matmul(dxm, true, cm(A.g.data(), R, f, f), false, mm(L.fc2_w->G(), r, f, F), 1.0f, 1.0f);
        B.bias_backward(dx.data(), r, L.fc2_b->G(), R, r);
        // du = (dx fc2) * GELU'(fc1 output), which forward left in A.u
        B.matmul_gelu_backward(dxm, false, cm(L.fc2_w->W(), r, f, F), false, mm(du.data(), R, f, f), A.u.data(),
                               L.fc1_b->G());
        const ConstMat dum = cm(du.data(), R, f, f);
        B.matmul(dum, false, cm(L.fc1_w->W(), f, r, D), false, mm(dh.data(), R, r, r));
        B.matmul(dum, true, cm(A.h2.data(), R, r, r), false, mm(L.fc1_w->G(), f, r, D), 1.0f, 1.0f);
        B.layernorm_backward(A.x_mid.data(), r, dh.data(), r, A.mean2.data(), A.rstd2.data(), L.ln2_w->W(), dx.data(),
                             r, L.ln2_w->G(), L.ln2_b->G(), R, r, true);
        // attention: x_mid = x_in + o(attn(LN1(x_in)))
        B.matmul(dxm, false, cm(L.o_w->W(), r, a, D), false, mm(datt.data(), R, a, a));
        B.matmul(dxm, true, cm(A.att.data(), R, a, a), false, mm(L.o_w->G(), r, a, D), 1.0f, 1.0f);
        B.bias_backward(dx.data(), r, L.o_b->G(), R, r);
        B.attention_backward(A.q.data(), A.k.data(), A.v.data(), A.probs.data(), datt.data(), a, dq.data(), dk.data(),
                             dv.data(), batch, S, s.heads, hd);
        const ConstMat h1 = cm(A.h1.data(), R, r, r);
        const std::pair<const float*, Param*> qkv[3] = {{dq.data(), L.q_w}, {dk.data(), L.k_w}, {dv.data(), L.v_w}};
        Param* biases[3] = {L.q_b, L.k_b, L.v_b};
        for (int i = 0; i < 3; ++i) {
            const ConstMat dy = cm(qkv[i].first, R, a, a);
            B.matmul(dy, false, cm(qkv[i].second->W(), a, r, D), false, mm(dh.data(), R, r, r), 1.0f,
                     i == 0 ? 0.0f : 1.0f);
            B.matmul(dy, true, h1, false, mm(qkv[i].second->G(), a, r, D), 1.0f, 1.0f);
            B.bias_backward(qkv[i].first, a, biases[i]->G(), R, a);
        }
        B.layernorm_backward(A.x_in.data(), r, dh.data(), r, A.mean1.data(), A.rstd1.data(), L.ln1_w->W(), dx.data(),
                             r, L.ln1_w->G(), L.ln1_b->G(), R, r, true);
    }
    // embeddings (fixed order: deterministic)
    B.embedding_backward(dx.data(), ids_saved.data(), R, S, r, D, tok_emb->G(), pos_emb->G());
}

SubModelStats Transformer::Impl::forward_backward(int64_t p, const int32_t* ids, const int32_t* targets,
                                                  const uint8_t* mask, int64_t b, double smoothing, double alpha,
                                                  const float* teacher_logits, double weight, bool backward_pass) {
    const int64_t S = cfg.seq(), N = cfg.tokens(), K = cfg.codebook_size;
    check(alpha >= 1.0 || teacher_logits != nullptr, "distillation", "a teacher is needed when alpha < 1");
    // The loss needs logits at the masked positions only: the head runs on those
    // rows (in row order), and targets, mask and teacher logits are compact too.
    std::vector<int64_t> rows;
    std::vector<int32_t> t;
    for (int64_t i = 0; i < b; ++i)
        for (int64_t n = 0; n < N; ++n) {
            const int32_t y = targets[i * N + n];
            if (y < 0 || y >= K)
                throw Error("target token out of range", {}, "code " + std::to_string(y) + " with codebook " + std::to_string(K),
                            "the token file does not fit this model");
            if (!mask[i * N + n]) continue;
            rows.push_back(i * S + 1 + n);
            t.push_back(y);
        }
    const int64_t M = static_cast<int64_t>(rows.size());
    forward(p, ids, b, rows.data(), M);
    const std::vector<uint8_t> m(static_cast<size_t>(M), 1);
    std::vector<float> staging;
    const Backend::LossSums L = be->masked_loss(
        logits.data(), K, teacher_logits, K, on_backend(*be, t.data(), M, d_targets),
        bytes_on_backend(*be, m.data(), M, d_mask, staging), M, K, smoothing, alpha, weight,
        backward_pass ? dlogits.data() : static_cast<float*>(nullptr), K);
    if (backward_pass) backward();
    SubModelStats st;
    st.p = p;
    st.loss = L.loss;
    st.ce = L.ce;
    st.accuracy = L.masked ? static_cast<double>(L.correct) / static_cast<double>(L.masked) : 0.0;
    st.masked = L.masked;
    return st;
}

std::vector<SubModelStats> Transformer::Impl::joint_forward_backward(const int32_t* ids, const int32_t* targets,
                                                                     const uint8_t* mask, int64_t b, Objective obj,
                                                                     double alpha, const std::vector<double>& weights,
                                                                     double smoothing, double* total, bool backward_pass) {
    const size_t n = cfg.factors.size();
    check(weights.empty() || weights.size() == n, "joint training",
          "loss weights: " + std::to_string(weights.size()) + " given for " + std::to_string(n) + " sub-models");
    if (backward_pass) zero_grads();
    std::vector<SubModelStats> out(n);
    double sum = 0;
    bool have_teacher = false;
    for (size_t k = n; k-- > 0;) { // smallest p (largest model) first
        const int64_t p = cfg.factors[k];
        const double w = weights.empty() ? 1.0 : weights[k];
        double a = 1.0;
        if (have_teacher && obj == Objective::progressive) a = alpha;
        if (have_teacher && obj == Objective::distill_only) a = 0.0;
        out[k] = forward_backward(p, ids, targets, mask, b, smoothing, a, have_teacher ? teacher.data() : nullptr, w,
                                  backward_pass);
        sum += w * out[k].loss;
        if (obj != Objective::ground_truth && k > 0) { // logits at the masked rows, the same for every sub-model
            const int64_t n_logits = static_cast<int64_t>(head_rows.size()) * cfg.codebook_size;
            teacher.bind(*be);
            teacher.grow(static_cast<size_t>(std::max<int64_t>(n_logits, 1)));
            be->copy(teacher.data(), logits.data(), static_cast<size_t>(n_logits));
            have_teacher = true;
        }
    }
    if (total) *total = sum;
    return out;
}

// ---- Transformer ---------------------------------------------------------------------

Transformer::Transformer(const TransformerConfig& cfg, std::shared_ptr<Backend> backend)
    : impl_(std::make_unique<Impl>(cfg, std::move(backend))) {}
Transformer::~Transformer() = default;
Transformer::Transformer(Transformer&&) noexcept = default;
Transformer& Transformer::operator=(Transformer&&) noexcept = default;

const TransformerConfig& Transformer::config() const { return impl_->cfg; }
Backend& Transformer::backend() { return *impl_->be; }
std::vector<std::string> Transformer::param_names() const { return impl_->order; }

Tensor& Transformer::param(const std::string& name) {
    auto it = impl_->params.find(name);
    check(it != impl_->params.end(), "no parameter named " + name);
    impl_->params_to_host(); // the caller may read or write it
    return it->second.w;
}
Tensor& Transformer::grad(const std::string& name) {
    auto it = impl_->params.find(name);
    check(it != impl_->params.end(), "no parameter named " + name);
    impl_->grad_to_host(it->second);
    return it->second.g;
}
void Transformer::zero_grads() { impl_->zero_grads(); }

std::string Transformer::hash() const {
    impl_->params_to_host();
    std::map<std::string, Tensor> w;
    for (auto& [n, p] : impl_->params) w[n] = p.w;
    return weights_hash(w);
}

void Transformer::init(uint64_t seed) {
    impl_->params_to_host();
    Philox rng(seed);
    for (const std::string& name : impl_->order) {
        Impl::Param& p = impl_->params[name];
        const bool is_ln = name.find(".ln") != std::string::npos || name.rfind("ln_f", 0) == 0;
        if (p.w.rank() == 1) {
            p.w.fill(is_ln && name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 ? 1.0f : 0.0f);
            continue;
        }
        const uint64_t st = stream_id(name.c_str());
        float* w = p.w.data();
        for (int64_t i = 0; i < p.w.numel(); ++i) w[i] = 0.02f * rng.normal(st, static_cast<uint64_t>(i));
    }
}

void Transformer::forward(int64_t p, const int32_t* ids, int64_t b, float* out) {
    const int64_t S = config().seq(), N = config().tokens(), K = config().codebook_size;
    constexpr int64_t chunk = 256;
    for (int64_t first = 0; first < b; first += chunk) {
        const int64_t n = std::min(chunk, b - first);
        impl_->forward(p, ids + first * S, n);
        for (int64_t i = 0; i < n; ++i)
            impl_->be->download(out + ((first + i) * N) * K, impl_->logits.data() + (i * S + 1) * K,
                                static_cast<size_t>(N * K));
    }
}

static void load_into(Transformer& m, const std::map<std::string, Tensor>& src, const std::string& path,
                      const char* group) {
    for (const std::string& n : m.param_names()) {
        Tensor& dst = m.param(n);
        auto it = src.find(n);
        if (it == src.end())
            throw Error("cannot load transformer", path, std::string(group) + " '" + n + "' is missing",
                        "the file is damaged or was written by an incompatible version");
        if (it->second.shape() != dst.shape())
            throw Error("cannot load transformer", path,
                        std::string(group) + " '" + n + "' has shape " + it->second.shape_str() + ", expected " +
                            dst.shape_str(),
                        "the file is damaged or its attributes were edited");
        const float* v = it->second.data();
        for (int64_t i = 0; i < it->second.numel(); ++i)
            if (!std::isfinite(v[i]))
                throw Error("cannot load transformer", path,
                            std::string(group) + " '" + n + "' holds a non-finite value at index " + std::to_string(i),
                            "the run that wrote it diverged or the file is damaged; use an earlier checkpoint");
        // into the existing storage: an optimizer may hold pointers to it
        const Tensor src_c = it->second.clone();
        check(dst.is_contiguous(), "cannot load transformer", "parameter " + n + " is not contiguous");
        std::memcpy(dst.data(), src_c.data(), sizeof(float) * static_cast<size_t>(src_c.numel()));
    }
}

Transformer Transformer::load(const std::string& path, std::shared_ptr<Backend> backend, bool ema) {
    Checkpoint ck = read_checkpoint(path, transformer_format, transformer_format_version, false);
    Transformer m(TransformerConfig::from_attrs(ck.attrs, path), std::move(backend));
    if (ema && !ck.ema.empty()) load_into(m, ck.ema, path, "EMA weight");
    else load_into(m, ck.weights, path, "weight");
    return m;
}

// Exposed for the training loop (transformer_train.cpp).
void transformer_load_weights(Transformer& m, const std::map<std::string, Tensor>& src, const std::string& path,
                              const char* group) {
    load_into(m, src, path, group);
}

} // namespace magnets

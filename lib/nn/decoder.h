// lib/nn/decoder.h (private): the nested transformer's inference forward with
// a KV cache, used by the sampler (METHOD section 7). forward() runs sub-model
// m_p on some rows of every sequence: all positions (a refresh, which rebuilds
// the cache) or only the uncached ones, whose queries attend to the cached
// keys/values of the other positions. Every matmul is row-stable
// (Backend::matmul_rowstable) and attention runs per sequence, so a
// sequence's result never depends on the batch it is decoded in.
//
// Everything runs through the model's backend on the backend's memory (its
// decoder operations: embed_rows, layernorm_rows, attention_rows, ...): host
// memory on the CPU backends, device memory on a GPU, where the weights are
// uploaded once (DecoderWeights) and only the step's ids and positions go up.
#pragma once
#include "magnets/backend.h"
#include "nn/backend_buffer.h"
#include "nn/transformer_impl.h"

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

namespace magnets::nn {

// The weights the decoder reads, in the backend's memory: the parameters
// themselves on a CPU backend, copies uploaded once on a device.
class DecoderWeights {
public:
    explicit DecoderWeights(Transformer::Impl& m);
    DecoderWeights(const DecoderWeights&) = delete;
    DecoderWeights& operator=(const DecoderWeights&) = delete;
    ~DecoderWeights();
    const float* operator()(const Transformer::Impl::Param* p) const;

private:
    Backend& be_;
    std::map<const Transformer::Impl::Param*, float*> dev_;
};

class Decoder {
public:
    // weights: shared between decoders (one per batch) of the same model; null
    // makes the decoder its own.
    Decoder(Transformer::Impl& m, int64_t seqs, const DecoderWeights* weights = nullptr);
    int64_t cache_p() const { return cache_p_; }
    int64_t cache_attn() const { return cache_attn_; }
    const DecoderWeights& weights() const { return *w_; }

    // Runs sub-model p on `rq` rows per sequence: positions pos[b * rq + i]
    // with ids ids[b * S + pos] (S = N + 1; ids, pos and out_rows are host
    // arrays). A refresh (rq = S, every position) rebuilds the cache;
    // otherwise the cache must hold the same attention width. Fresh
    // keys/values are written into the cache. Returns the final hidden rows
    // (after LN_f) [seqs * rq, r_p] in the backend's memory, valid until the
    // next call; with out_rows, only those rows: ro increasing indices into
    // [0, rq) per sequence (out_rows[b * ro + k]), [seqs * ro, r_p]. The last
    // layer then computes keys and values for all rq rows and everything else
    // for the ro rows only, with the same bits as the full computation.
    const float* forward(int64_t p, const int32_t* ids, const int32_t* pos, int64_t rq, bool refresh,
                         const int32_t* out_rows = nullptr, int64_t ro = -1);
    // The same with ids, pos and out_rows already in the backend's memory
    // (the sampler keeps its decoding state there); a refresh's pos must list
    // every position in order.
    const float* forward_backend(int64_t p, const int32_t* ids, const int32_t* pos, int64_t rq, bool refresh,
                                 const int32_t* out_rows, int64_t ro) {
        arrays_on_backend_ = true;
        return forward(p, ids, pos, rq, refresh, out_rows, ro);
    }
    // The same, with the hidden rows copied to a host vector.
    void forward(int64_t p, const int32_t* ids, const int32_t* pos, int64_t rq, bool refresh, std::vector<float>& hidden,
                 const int32_t* out_rows = nullptr, int64_t ro = -1);

private:
    // ints on the host, or uploaded into buf on a device
    const int32_t* ints(const int32_t* host, int64_t n, BackendBuffer& buf);

    Transformer::Impl& m_;
    const TransformerConfig& cfg_;
    Backend& be_;
    int64_t seqs_;
    std::unique_ptr<DecoderWeights> own_w_;
    const DecoderWeights* w_;
    int64_t cache_p_ = 0, cache_attn_ = 0, last_rows_ = 0, last_width_ = 0;
    bool arrays_on_backend_ = false; // set by forward_backend for one call
    std::vector<std::unique_ptr<BackendBuffer>> kc_, vc_; // per layer [seqs * S, a] (a of the cache's sub-model)
    BackendBuffer x_, h_, q_, k_, v_, att_, tmp_, u_, hidden_, ids_, pos_, out_;
};

} // namespace magnets::nn

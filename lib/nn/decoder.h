// lib/nn/decoder.h (private): the nested transformer's inference forward with
// a KV cache, used by the sampler (METHOD section 7). forward() runs sub-model
// m_p on some rows of every sequence: all positions (a refresh, which rebuilds
// the cache) or only the uncached ones, whose queries attend to the cached
// keys/values of the other positions. Every matmul is row-stable
// (Backend::matmul_rowstable) and attention runs per sequence, so a
// sequence's result never depends on the batch it is decoded in.
#pragma once
#include "magnets/backend.h"
#include "nn/transformer_impl.h"

#include <cstdint>
#include <vector>

namespace magnets::nn {

// Attention of `rq` query rows per sequence against all S cached keys/values.
// q/out: [seqs * rq, heads * hd]; kc/vc: [seqs * S, heads * hd].
void attention_rows(const float* q, const float* kc, const float* vc, float* out, int64_t seqs, int64_t rq, int64_t S,
                    int64_t heads, int64_t hd);

class Decoder {
public:
    Decoder(Transformer::Impl& m, int64_t seqs);
    int64_t cache_p() const { return cache_p_; }
    int64_t cache_attn() const { return cache_attn_; }

    // Runs sub-model p on `rq` rows per sequence: positions pos[b * rq + i]
    // with ids ids[b * S + pos] (S = N + 1). A refresh (rq = S, every
    // position) rebuilds the cache; otherwise the cache must hold the same
    // attention width. Fresh keys/values are written into the cache. Writes
    // the final hidden rows (after LN_f) to hidden [seqs * rq, r_p]; with
    // out_rows, only those rows: ro increasing indices into [0, rq) per
    // sequence (out_rows[b * ro + k]), hidden [seqs * ro, r_p]. The last layer
    // then computes keys and values for all rq rows and everything else for
    // the ro rows only, with the same bits as the full computation.
    void forward(int64_t p, const int32_t* ids, const int32_t* pos, int64_t rq, bool refresh, std::vector<float>& hidden,
                 const int32_t* out_rows = nullptr, int64_t ro = -1);

private:
    Transformer::Impl& m_;
    const TransformerConfig& cfg_;
    int64_t seqs_;
    int64_t cache_p_ = 0, cache_attn_ = 0;
    std::vector<std::vector<float>> kc_, vc_; // per layer [seqs * S, a] (a of the cache's sub-model)
    std::vector<float> x_, h_, q_, k_, v_, att_, tmp_, u_, mean_, rstd_;
};

} // namespace magnets::nn

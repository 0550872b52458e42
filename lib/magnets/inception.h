// magnets/inception.h: Inception-v3 in the FID variant (pool3, 2048-d features).
//
// The network of the standard FID (TensorFlow's 2015-12-05 Inception graph as
// ported by pytorch-fid): torchvision's Inception-v3 layers with BatchNorm
// (eps 0.001) and the FID patches (average pools that exclude the padding in
// Mixed_5b..5d, 6b..6e and 7b; a max pool in Mixed_7c's pool branch). Images
// are bilinearly resized to 299x299 (align_corners=False, as torch's
// F.interpolate), scaled from [0, 1] to [-1, 1], run through the graph up to
// the final global average pool: one 2048-d vector per image.
//
// Weights come from a "magnets-inception" file (version 1, a checkpoint with
// /weights/<torchvision state_dict key>, e.g. Conv2d_1a_3x3.conv.weight,
// Conv2d_1a_3x3.bn.running_mean); scripts/convert_inception.py writes one from
// pytorch-fid's pt_inception-2015-12-05-*.pth. No weights ship with magnets.
// BatchNorm is folded into the convolutions at load.
//
//   auto be = magnets::make_backend("auto");
//   auto net = magnets::InceptionV3::load("inception.h5", be);
//   std::vector<float> feats(n * magnets::InceptionV3::feature_dim);
//   net.features(images, n, h, w, 3, feats.data());   // images [n, 3, h, w] in [0, 1]
//
// Needs a backend on host memory (ref, onednn). Convolutions go through
// Backend::conv2d_forward; padding, pools and concatenation run here.
#pragma once
#include "magnets/backend.h"
#include "magnets/formats.h"
#include "magnets/tensor.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace magnets {

inline constexpr const char* inception_format = "magnets-inception";
inline constexpr int64_t inception_format_version = 1;

class InceptionV3 {
public:
    static constexpr int64_t feature_dim = 2048; // pool3 features per image
    static constexpr int64_t input_size = 299;   // images are resized to this square

    // Reads a magnets-inception file; throws Error (with a hint) for another
    // format, a missing or misshapen tensor, or a non-host backend.
    static InceptionV3 load(const std::string& path, std::shared_ptr<Backend> backend);
    // The same from a checkpoint in memory (attrs need variant = "fid" and bn_eps);
    // `path` only names the source in errors.
    static InceptionV3 from_checkpoint(const Checkpoint& ck, std::shared_ptr<Backend> backend,
                                       const std::string& path = {});
    // Every tensor the graph needs, with its shape, in graph order (extra tensors
    // in a file, such as fc.* or AuxLogits.*, are ignored).
    static std::vector<std::pair<std::string, std::vector<int64_t>>> weight_shapes();

    ~InceptionV3();
    InceptionV3(InceptionV3&&) noexcept;
    InceptionV3& operator=(InceptionV3&&) noexcept;

    Backend& backend();
    // weights_hash of the graph's tensors as read (before folding): the
    // network's identity, to record beside statistics computed with it.
    const std::string& hash() const;

    // images [n, channels, h, w] (channels 1 or 3; gray is replicated to RGB),
    // values in [0, 1] (not clamped) -> out [n, 2048]. Runs `batch` images at a
    // time (memory grows ~20 MB per image in a batch); results do not depend on it.
    void features(const float* images, int64_t n, int64_t h, int64_t w, int64_t channels, float* out,
                  int64_t batch = 16);

    // Debugging: called after each stage with its output [b, c, h, w] for the
    // current batch of images. Stages: "input" (resized, scaled), "Conv2d_1a_3x3",
    // "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
    // "Conv2d_4a_3x3", "maxpool2", "Mixed_5b" ... "Mixed_7c", "avgpool".
    using StageHook = std::function<void(const std::string& stage, const Tensor& output)>;
    void set_stage_hook(StageHook hook);

    struct Impl;

private:
    explicit InceptionV3(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace magnets

// magnets/classifier.h: the feature network of magnets-eval: a small CNN
// classifier trained on a labelled real set, whose penultimate activations
// are the features of the Frechet distance ("FID" with this network named in
// every report), KID and precision/recall, and whose class probabilities give
// the Inception-Score analogue and class-conditional accuracy.
//
// Architecture (images [n, c, s, s] in [0, 1], s = image_size):
//   conv 3x3 c->32, ReLU; conv 3x3/2 32->64, ReLU; conv 3x3/2 64->64, ReLU;
//   fc (64 s/4 s/4) -> 128, ReLU  = the 128-d features;  fc 128 -> C logits.
//
//   auto be = magnets::make_backend("auto");
//   magnets::Classifier net = magnets::Classifier::load("data/fmnist_classifier.h5", be);
//   std::vector<float> feats(n * net.feature_dim()), probs(n * net.num_classes());
//   net.features(images, n, feats.data(), probs.data());
#pragma once
#include "magnets/backend.h"
#include "magnets/dataset.h"
#include "magnets/formats.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace magnets {

inline constexpr const char* classifier_format = "magnets-classifier";
inline constexpr int64_t classifier_format_version = 1;

struct ClassifierConfig {
    int64_t image_size = 32, channels = 1, num_classes = 10;
    int64_t width1 = 32, width2 = 64, feature_dim = 128;
    // A clip classifier (the spatio-temporal feature network of video metrics)
    // takes a clip's clip_frames frames stacked as input channels; 1 = images.
    int64_t clip_frames = 1;
    std::string dataset;                  // what it was trained on ("fashion-mnist", a folder)
    int64_t in_channels() const { return channels * clip_frames; }
    std::vector<std::string> class_names; // index = label
    void to_attrs(Attrs& a) const;
    static ClassifierConfig from_attrs(const Attrs& a, const std::string& path = {});
};

struct ClassifierTrainConfig {
    int64_t epochs = 3, batch_size = 128;
    double lr = 1e-3;
    uint64_t seed = 1;
    int64_t log_every = 100;
};

class Classifier {
public:
    Classifier(const ClassifierConfig& cfg, std::shared_ptr<Backend> backend);
    ~Classifier();
    Classifier(Classifier&&) noexcept;
    Classifier& operator=(Classifier&&) noexcept;
    static Classifier load(const std::string& path, std::shared_ptr<Backend> backend);
    void save(const std::string& path, const std::string& creator, const Attrs& extra = {}) const;

    const ClassifierConfig& config() const;
    int64_t feature_dim() const { return config().feature_dim; }
    int64_t num_classes() const { return config().num_classes; }
    std::string hash() const; // weights hash: the feature network's identity in reports

    void init(uint64_t seed);
    // images [n, c, s, s] in [0, 1] -> features [n, feature_dim] and/or
    // softmax probabilities [n, C] (either may be null). Batched internally.
    void features(const float* images, int64_t n, float* features, float* probs);

    struct Log { int64_t step = 0, steps = 0; double loss = 0, accuracy = 0, images_per_s = 0; };
    // Adam on cross-entropy; deterministic in the seed (data order from Philox).
    void train(const ImageSet& data, const ClassifierTrainConfig& tc, const std::function<void(const Log&)>& on_log);
    // Top-1 accuracy on a labelled set.
    double accuracy(const ImageSet& data, int64_t batch_size = 256);

    struct Impl;
private:
    std::unique_ptr<Impl> impl_;
};

} // namespace magnets

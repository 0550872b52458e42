// The process group of magnets/dist.h: a single process, or MPI's world.
#include "magnets/dist.h"

#include "magnets/backend.h"
#include "magnets/error.h"
#include "magnets_config.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#if MAGNETS_HAVE_MPI
#define OMPI_SKIP_MPICXX 1 // the C API only
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace magnets::dist {

std::pair<int64_t, int64_t> split_range(int64_t total, int rank, int size) {
    const int64_t base = total / size, extra = total % size;
    const int64_t lo = rank * base + std::min<int64_t>(rank, extra);
    return {lo, lo + base + (rank < extra ? 1 : 0)};
}

bool built_with_mpi() { return MAGNETS_HAVE_MPI; }

bool launched_by_mpi() {
    // Open MPI, MPICH/Intel MPI (Hydra's PMI), PMIx (srun --mpi=pmix, prterun), MVAPICH.
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"})
        if (std::getenv(v)) return true;
    return false;
}

namespace {

class SingleComm final : public Comm {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    std::string describe() const override { return "single process"; }
    void allreduce_sum(Backend&, const std::vector<std::pair<float*, size_t>>&) override {}
    void allreduce_sum(double*, size_t) override {}
    void allreduce_max(int64_t*, size_t) override {}
    void allreduce_min(int64_t*, size_t) override {}
    void barrier() override {}
    [[noreturn]] void abort(int status) override { std::exit(status); }
};

#if MAGNETS_HAVE_MPI

void mpi_check(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw Error(std::string("MPI call failed: ") + what, {}, std::string(msg, static_cast<size_t>(len)),
                "check the MPI installation and the launcher's options (mpirun --help)");
}

// Counts above INT_MAX go in pieces: MPI counts are int.
template <typename T>
void allreduce_chunks(T* data, size_t n, MPI_Datatype type, MPI_Op op, const char* what) {
    constexpr size_t chunk = size_t{1} << 30;
    for (size_t off = 0; off < n; off += chunk)
        mpi_check(MPI_Allreduce(MPI_IN_PLACE, data + off, static_cast<int>(std::min(chunk, n - off)), type, op,
                                MPI_COMM_WORLD),
                  what);
}

class MpiComm final : public Comm {
public:
    MpiComm() {
        int inited = 0;
        MPI_Initialized(&inited);
        if (!inited) {
            int provided = 0;
            // Only the main thread calls MPI; OpenMP threads never do.
            mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
            owner_ = true;
        }
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
        MPI_Comm_size(MPI_COMM_WORLD, &size_);
        MPI_Comm node;
        mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
                  "MPI_Comm_split_type");
        int local = 0;
        MPI_Comm_rank(node, &local);
        MPI_Comm_free(&node);
        int64_t first = local == 0 ? 1 : 0;
        allreduce_sum_i64(&first);
        hosts_ = first;
        char lib[MPI_MAX_LIBRARY_VERSION_STRING];
        int len = 0;
        MPI_Get_library_version(lib, &len);
        library_.assign(lib, static_cast<size_t>(len));
        library_ = library_.substr(0, library_.find_first_of(",\n")); // "Open MPI v4.1.4"
    }
    ~MpiComm() override {
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (owner_ && !finalized) MPI_Finalize();
    }
    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string describe() const override {
        return "MPI (" + library_ + "), " + std::to_string(size_) + " ranks on " + std::to_string(hosts_) +
               (hosts_ == 1 ? " host" : " hosts");
    }
    void allreduce_sum(Backend& be, const std::vector<std::pair<float*, size_t>>& bufs) override {
        size_t total = 0;
        for (const auto& b : bufs) total += b.second;
        staging_.resize(total);
        size_t off = 0;
        for (const auto& [p, n] : bufs) { // device memory comes down through the backend
            if (be.host_memory()) std::memcpy(staging_.data() + off, p, n * sizeof(float));
            else be.download(staging_.data() + off, p, n);
            off += n;
        }
        allreduce_chunks(staging_.data(), total, MPI_FLOAT, MPI_SUM, "MPI_Allreduce (gradients)");
        off = 0;
        for (const auto& [p, n] : bufs) {
            if (be.host_memory()) std::memcpy(p, staging_.data() + off, n * sizeof(float));
            else be.upload(p, staging_.data() + off, n);
            off += n;
        }
    }
    void allreduce_sum(double* data, size_t n) override {
        allreduce_chunks(data, n, MPI_DOUBLE, MPI_SUM, "MPI_Allreduce (sums)");
    }
    void allreduce_max(int64_t* data, size_t n) override {
        allreduce_chunks(data, n, MPI_INT64_T, MPI_MAX, "MPI_Allreduce (max)");
    }
    void allreduce_min(int64_t* data, size_t n) override {
        allreduce_chunks(data, n, MPI_INT64_T, MPI_MIN, "MPI_Allreduce (min)");
    }
    void barrier() override { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
    [[noreturn]] void abort(int status) override {
        MPI_Abort(MPI_COMM_WORLD, status);
        std::exit(status); // not reached
    }

private:
    void allreduce_sum_i64(int64_t* v) { allreduce_chunks(v, 1, MPI_INT64_T, MPI_SUM, "MPI_Allreduce (hosts)"); }
    bool owner_ = false;
    int rank_ = 0, size_ = 1;
    int64_t hosts_ = 1;
    std::string library_;
    std::vector<float> staging_;
};

#endif

} // namespace

std::shared_ptr<Comm> single() { return std::make_shared<SingleComm>(); }

namespace {
std::mutex world_mu;
std::shared_ptr<Comm> world_comm;
} // namespace

std::shared_ptr<Comm> world() {
    std::lock_guard<std::mutex> lock(world_mu);
    if (!world_comm) {
#if MAGNETS_HAVE_MPI
        if (launched_by_mpi()) world_comm = std::make_shared<MpiComm>();
#else
        // Started as one of several ranks by a build without MPI: each would
        // train alone and overwrite the others' checkpoints.
        for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"}) {
            const char* s = std::getenv(v);
            if (s && std::atoi(s) > 1)
                throw Error("started by an MPI launcher with " + std::string(s) + " ranks, but this build has no MPI",
                            {}, {}, "install an MPI (Debian: libopenmpi-dev openmpi-bin), rebuild (meson setup "
                                    "--reconfigure build -Dmpi=enabled), or run one process without mpirun");
        }
#endif
        if (!world_comm) world_comm = single();
    }
    return world_comm;
}

void abort_group_on_error(int status) {
    std::shared_ptr<Comm> w;
    {
        std::lock_guard<std::mutex> lock(world_mu);
        w = world_comm;
    }
    if (w && w->size() > 1) w->abort(status);
}

int group_rank() {
    std::lock_guard<std::mutex> lock(world_mu);
    return world_comm && world_comm->size() > 1 ? world_comm->rank() : -1;
}

} // namespace magnets::dist

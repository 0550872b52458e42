// magnets/dist.h: data-parallel training over several processes (and
// machines) through MPI.
//
// magnets does not move data between processes itself: every collective is
// one MPI call (MPI_Allreduce on host memory; device memory is staged through
// the host). A training run started by an MPI launcher,
//
//   mpirun -n 4 magnets-train --tokens train.h5 -o model.h5
//   srun --mpi=pmix magnets-train ...
//
// splits each step's global batch over the ranks, sums the gradients with
// one all-reduce, and takes the same optimizer step on every rank, so the
// weights stay equal everywhere (checked at every checkpoint); rank 0 alone
// prints, logs and writes checkpoints. Started without a launcher (or built
// without MPI), a program is one process, as before.
//
//   auto comm = magnets::dist::world();     // MPI's world, or a single process
//   comm->allreduce_sum(be, grad, n);       // in place, on every rank
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace magnets {

class Backend;

namespace dist {

class Comm {
public:
    virtual ~Comm() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    // "single process", or "MPI (Open MPI v4.1.4), 4 ranks on 2 hosts".
    virtual std::string describe() const = 0;

    // Element-wise sums over the ranks, in place, the result equal on every
    // rank. `bufs` are (pointer, count) pairs in `be`'s memory, reduced in one
    // call (packed into one host buffer).
    virtual void allreduce_sum(Backend& be, const std::vector<std::pair<float*, size_t>>& bufs) = 0;
    void allreduce_sum(Backend& be, float* data, size_t n) { allreduce_sum(be, {{data, n}}); }
    // Host doubles and integers.
    virtual void allreduce_sum(double* data, size_t n) = 0;
    virtual void allreduce_max(int64_t* data, size_t n) = 0;
    virtual void allreduce_min(int64_t* data, size_t n) = 0;
    virtual void barrier() = 0;
    // Ends every process of the group with `status` (MPI_Abort): for an error
    // seen by one rank while the others wait in a collective.
    [[noreturn]] virtual void abort(int status) = 0;

    bool root() const { return rank() == 0; }
};

// The group this process was started in: MPI's world when built with MPI and
// started by an MPI launcher (mpirun, mpiexec, srun), MPI is initialised on
// the first call and finalised at exit; otherwise a single process. The same
// object on every call.
std::shared_ptr<Comm> world();

// After an error on this rank: if world() made a group of several ranks,
// ends all of them with `status` (the others may be waiting in a collective
// this rank will never join); otherwise returns.
void abort_group_on_error(int status);
// This process's rank when world() made a group of several, else -1 (for
// error messages).
int group_rank();

// A single-process group (tests, library users who do not want MPI).
std::shared_ptr<Comm> single();

// Whether this build has MPI, and whether the environment names an MPI
// launcher (without initialising anything).
bool built_with_mpi();
bool launched_by_mpi();

// Rank [lo, hi) of `total` items split as evenly as possible over `size`
// ranks (the first `total % size` ranks get one more).
std::pair<int64_t, int64_t> split_range(int64_t total, int rank, int size);

} // namespace dist
} // namespace magnets

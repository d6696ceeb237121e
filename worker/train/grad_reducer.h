// Data-parallel gradient reduction in fixed-size buckets, overlapped with backward.
//
// The trainable parameters are packed, in reverse registration order (roughly the order
// backward produces their gradients), into flat buckets of about `bucket_bytes`. During the
// last micro-batch's backward a hook on every parameter copies its full gradient (what earlier
// micro-batches accumulated plus this one) into its bucket slot; when a bucket is complete it
// is handed to a communication thread that sums it over the dp group while backward goes on.
// Buckets are launched strictly in index order, so every rank issues the same collectives in
// the same order whatever order its hooks fire in. Finish() launches what is left (a
// parameter that got no gradient this step contributes zeros), waits, and writes the summed
// gradient back into each parameter's .grad(). Frozen parameters are never given to it.
//
// Thread safety: Arm/Finish from the training thread; hooks run on autograd's thread (the
// training thread on CPU); the communication thread only touches launched buckets.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "common/status.h"
#include "worker/comm/communicator.h"

namespace vlorch::train {

struct GradReducerOptions {
  // Target bucket size. Default 25 MiB (as PyTorch DDP's bucket_cap_mb).
  int64_t bucket_bytes = int64_t{25} << 20;
  // Reduce buckets during backward from a background thread. Default true; false reduces
  // everything in Finish() (the baseline the benchmark compares against).
  bool overlap = true;
};

struct GradReducerStats {
  double comm_seconds = 0;     // inside all-reduce calls, summed over the step
  double exposed_seconds = 0;  // Finish() waiting: communication not hidden by backward
  int64_t bytes = 0;           // reduced per step
  int buckets = 0;
};

class GradReducer {
 public:
  // `params` in registration order; `comm` must outlive the reducer. Hooks are registered on
  // every parameter now and stay for the reducer's lifetime.
  GradReducer(std::vector<torch::Tensor> params, comm::Communicator* comm, const GradReducerOptions& options);
  ~GradReducer();

  // The next backward is the step's last micro-batch: its hooks feed the buckets.
  void Arm();
  // After that backward: reduce what is left, wait, write .grad(). The first communication
  // error poisons the step (and the communicator).
  Status Finish();
  const GradReducerStats& stats() const { return stats_; }
  int num_buckets() const { return static_cast<int>(buckets_.size()); }

 private:
  struct Slot {
    int bucket;
    int64_t offset, numel;
  };
  struct Bucket {
    torch::Tensor buffer;
    int pending = 0;  // parameters whose hook has not fired this step
    bool launched = false, done = false;
  };

  void OnGrad(size_t index, const torch::Tensor& grad);
  void LaunchReadyLocked();  // launch buckets in order while the next one is complete
  void CommLoop();

  std::vector<torch::Tensor> params_;
  std::vector<Slot> slots_;
  std::vector<std::vector<size_t>> bucket_params_;
  std::vector<Bucket> buckets_;
  std::vector<char> fired_;
  comm::Communicator* comm_;
  GradReducerOptions options_;
  GradReducerStats stats_;
  bool armed_ = false;
  int next_launch_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int> queue_;
  bool stopping_ = false;
  Status error_;
  double comm_seconds_ = 0;
  std::thread thread_;
};

}  // namespace vlorch::train

#include "worker/train/grad_reducer.h"

#include <chrono>

namespace vlorch::train {
namespace {
double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GradReducer::GradReducer(std::vector<torch::Tensor> params, comm::Communicator* comm, const GradReducerOptions& options)
    : params_(std::move(params)), comm_(comm), options_(options) {
  slots_.resize(params_.size());
  fired_.assign(params_.size(), 0);
  // Reverse registration order: the last layers' gradients are ready first.
  int64_t filled = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const torch::Tensor& p = params_[k];
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    if (bucket_params_.empty() || (filled > 0 && filled + bytes > options_.bucket_bytes) ||
        params_[bucket_params_.back().front()].scalar_type() != p.scalar_type()) {
      bucket_params_.emplace_back();
      filled = 0;
    }
    const int b = static_cast<int>(bucket_params_.size()) - 1;
    int64_t offset = 0;
    for (size_t q : bucket_params_[b]) offset += params_[q].numel();
    slots_[k] = Slot{b, offset, p.numel()};
    bucket_params_[b].push_back(k);
    filled += bytes;
  }
  buckets_.resize(bucket_params_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    int64_t n = 0;
    for (size_t q : bucket_params_[b]) n += params_[q].numel();
    buckets_[b].buffer = torch::zeros({n}, params_[bucket_params_[b].front()].options().requires_grad(false));
    stats_.bytes += n * static_cast<int64_t>(buckets_[b].buffer.element_size());
  }
  stats_.buckets = static_cast<int>(buckets_.size());
  for (size_t k = 0; k < params_.size(); ++k)
    params_[k].register_hook([this, k](const torch::Tensor& grad) { OnGrad(k, grad); });
  if (options_.overlap) thread_ = std::thread([this] { CommLoop(); });
}

GradReducer::~GradReducer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void GradReducer::Arm() {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = true;
  next_launch_ = 0;
  comm_seconds_ = 0;
  std::fill(fired_.begin(), fired_.end(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    buckets_[b].pending = static_cast<int>(bucket_params_[b].size());
    buckets_[b].launched = buckets_[b].done = false;
  }
}

void GradReducer::OnGrad(size_t k, const torch::Tensor& grad) {
  if (!armed_) return;
  torch::NoGradGuard no_grad;
  const Slot& s = slots_[k];
  torch::Tensor dst = buckets_[s.bucket].buffer.narrow(0, s.offset, s.numel).view(params_[k].sizes());
  const torch::Tensor& acc = params_[k].grad();
  if (acc.defined()) torch::add_out(dst, acc, grad);
  else dst.copy_(grad);
  std::lock_guard<std::mutex> lock(mu_);
  if (fired_[k]) return;  // a parameter used twice in the graph fires once per use: not here
  fired_[k] = 1;
  --buckets_[s.bucket].pending;
  if (options_.overlap) LaunchReadyLocked();
}

void GradReducer::LaunchReadyLocked() {
  bool any = false;
  while (next_launch_ < static_cast<int>(buckets_.size()) && buckets_[next_launch_].pending == 0) {
    buckets_[next_launch_].launched = true;
    queue_.push_back(next_launch_++);
    any = true;
  }
  if (any) cv_.notify_all();
}

void GradReducer::CommLoop() {
  for (;;) {
    int b;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      b = queue_.front();
      queue_.pop_front();
      if (!error_.ok()) {  // a failed call poisoned the communicator: do not start another
        buckets_[b].done = true;
        cv_.notify_all();
        continue;
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    Status s = comm_->AllReduce(buckets_[b].buffer, comm::ReduceOp::kSum);
    const double dt = Since(t0);
    {
      std::lock_guard<std::mutex> lock(mu_);
      comm_seconds_ += dt;
      if (!s.ok() && error_.ok()) error_ = s;
      buckets_[b].done = true;
    }
    cv_.notify_all();
  }
}

Status GradReducer::Finish() {
  const auto t0 = std::chrono::steady_clock::now();
  Status result;
  {
    std::unique_lock<std::mutex> lock(mu_);
    armed_ = false;
    // Parameters whose hook did not fire (no gradient in the last micro-batch): their
    // accumulated gradient, or zeros.
    torch::NoGradGuard no_grad;
    for (size_t k = 0; k < params_.size(); ++k) {
      if (fired_[k]) continue;
      const Slot& s = slots_[k];
      torch::Tensor dst = buckets_[s.bucket].buffer.narrow(0, s.offset, s.numel);
      if (params_[k].grad().defined()) dst.copy_(params_[k].grad().reshape({-1}));
      else dst.zero_();
      fired_[k] = 1;
      --buckets_[s.bucket].pending;
    }
    if (options_.overlap) {
      LaunchReadyLocked();
      cv_.wait(lock, [&] {
        for (const auto& b : buckets_)
          if (!b.done) return false;
        return true;
      });
      result = error_;
      stats_.comm_seconds = comm_seconds_;
    }
  }
  if (!options_.overlap) {
    const auto tc = std::chrono::steady_clock::now();
    for (auto& b : buckets_) {
      Status s = comm_->AllReduce(b.buffer, comm::ReduceOp::kSum);
      if (!s.ok()) {
        result = s;
        break;
      }
    }
    stats_.comm_seconds = Since(tc);
  }
  stats_.exposed_seconds = Since(t0);
  RETURN_IF_ERROR(result);
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < params_.size(); ++k) {
    const Slot& s = slots_[k];
    params_[k].mutable_grad() = buckets_[s.bucket].buffer.narrow(0, s.offset, s.numel).view(params_[k].sizes());
  }
  return Status::OK();
}

}  // namespace vlorch::train

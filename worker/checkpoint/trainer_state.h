// trainer_state.json: what a training stage needs besides the tensors to continue exactly
// (docs/checkpoints.md). Torch-free: the stage runner fills it from its generator and cursor.
//
// Reading it back is checked field by field: a checkpoint whose trainer state is damaged
// (missing key, wrong type, negative count, a cursor or RNG state that does not parse) is a
// damaged checkpoint, passed over by FindLatest through a ContentCheck, never an exception.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "dataflow/sample_order.h"
#include "jobs/checkpoint_layout.h"

namespace vlorch::checkpoint {


struct TrainerState {
  std::string job;
  std::string stage;
  int64_t step = 0;             // optimizer steps of the stage completed
  int64_t optimizer_steps = 0;  // the optimizer's own count (bias correction)
  int64_t total_steps = 0;
  dataflow::Cursor cursor;      // the global data cursor after `step`
  int64_t samples = 0;          // trained so far, over every rank
  int64_t tokens = 0;           // label tokens so far
  double lr = 0;                // the last step's learning rate
  double loss = 0;              // NaN is written as null and reads back as NaN
  uint64_t seed = 0;
  int dp = 1, tp = 1, ep = 1;   // the layout that wrote it
  std::vector<uint8_t> rng_state;  // the CPU generator's state, written as hex
};

// The file's text.
std::string TrainerStateJson(const TrainerState& state);

// Reads `<checkpoint_dir>/trainer_state.json`. Corruption naming the file and the field when
// a field is missing, of the wrong type or out of range, when `step` is not `expected_step`,
// or when `rng_state_bytes` > 0 and the RNG state has another size.
StatusOr<TrainerState> ReadTrainerState(const std::string& checkpoint_dir, int64_t expected_step,
                                        size_t rng_state_bytes);

}  // namespace vlorch::checkpoint

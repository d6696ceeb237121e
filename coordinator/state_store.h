// The coordinator's durable state: one RocksDB database (the state directory's `db/`).
//
//   job/<id>                      the JobRecord as JSON (written with a synced WAL)
//   event/<id>/<seq, 12 digits>   the job's append-only event log, one JSON object each
//   rank/<id>/<rank, 6 digits>    the latest metrics of each rank (flushed once a second)
//   meta/next_job_number          the counter job ids end with
//
// A coordinator killed with kill -9 loses at most the last second of per-rank metrics; jobs
// and events are synced before the call that wrote them returns.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "coordinator/job_record.h"

namespace rocksdb {
class DB;
}

namespace vlorch::coord {

struct JobEvent {
  int64_t seq = 0;
  double time = 0;
  std::string kind;     // submitted, launched, registered, checkpoint, stage_done, failure, ...
  std::string message;  // one human-readable line
  nlohmann::json fields = nlohmann::json::object();
};
nlohmann::json ToJson(const JobEvent& e);

class StateStore {
 public:
  static StatusOr<std::unique_ptr<StateStore>> Open(const std::string& dir);
  ~StateStore();

  Status PutJob(const JobRecord& job);
  StatusOr<std::vector<JobRecord>> LoadJobs();
  // Appends with the next sequence number of that job; returns it.
  StatusOr<int64_t> AppendEvent(const std::string& job_id, JobEvent event);
  StatusOr<std::vector<JobEvent>> Events(const std::string& job_id, int64_t after_seq = -1, size_t limit = 100000);
  Status PutRanks(const std::string& job_id, const std::vector<RankInfo>& ranks);
  StatusOr<std::vector<RankInfo>> LoadRanks(const std::string& job_id);
  StatusOr<int64_t> NextJobNumber();
  // Job names registered for attach mode (Coordinator::RegisterAttach), one synced key.
  Status PutAttachNames(const std::set<std::string>& names);
  StatusOr<std::set<std::string>> LoadAttachNames();

 private:
  explicit StateStore(std::unique_ptr<rocksdb::DB> db);
  Status Put(const std::string& key, const std::string& value, bool sync);
  std::unique_ptr<rocksdb::DB> db_;
  std::map<std::string, int64_t> last_event_;  // job -> last event seq (loaded lazily)
};

}  // namespace vlorch::coord

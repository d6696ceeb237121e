#include "coordinator/state_store.h"

#include <fmt/format.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "jobs/control_protocol.h"

namespace vlorch::coord {
namespace {

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::OK();
  if (s.IsNotFound()) return NotFoundError(what + ": not found");
  if (s.IsCorruption()) return CorruptionError(fmt::format("{}: {}", what, s.ToString()));
  return IOError(fmt::format("{}: {}", what, s.ToString()));
}

std::string EventKey(const std::string& job, int64_t seq) { return fmt::format("event/{}/{:012d}", job, seq); }

// Records hold text from outside (spec files, mpirun's output, worker causes): invalid UTF-8
// is stored as U+FFFD rather than thrown at (a strict dump aborts the coordinator).
std::string DumpReplacingInvalidUtf8(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

nlohmann::json ToJson(const JobEvent& e) {
  return {{"seq", e.seq}, {"time", e.time}, {"kind", e.kind}, {"message", e.message}, {"fields", e.fields}};
}

StateStore::StateStore(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}
StateStore::~StateStore() = default;

StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& dir) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.max_open_files = 256;
  o.keep_log_file_num = 4;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, dir, &raw);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos)
      return UnavailableError(fmt::format("coordinator state {} is in use by another coordinator ({}); stop it "
                                          "with `vlorch coordinator stop` or pick another --state-dir",
                                          dir, s.ToString()));
    return FromRocks(s, "opening coordinator state " + dir);
  }
  return std::unique_ptr<StateStore>(new StateStore(std::unique_ptr<rocksdb::DB>(raw)));
}

Status StateStore::Put(const std::string& key, const std::string& value, bool sync) {
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  return FromRocks(db_->Put(wo, key, value), "writing " + key);
}

Status StateStore::PutJob(const JobRecord& job) { return Put("job/" + job.id, DumpReplacingInvalidUtf8(ToJson(job)), true); }

StatusOr<std::vector<JobRecord>> StateStore::LoadJobs() {
  std::vector<JobRecord> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("job/"); it->Valid() && it->key().starts_with("job/"); it->Next()) {
    auto j = nlohmann::json::parse(it->value().ToString(), nullptr, false);
    if (j.is_discarded()) return CorruptionError(fmt::format("coordinator state: {} is not valid JSON", it->key().ToString()));
    ASSIGN_OR_RETURN(JobRecord job, JobFromJson(j));
    out.push_back(std::move(job));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "reading jobs"));
  return out;
}

StatusOr<int64_t> StateStore::AppendEvent(const std::string& job_id, JobEvent event) {
  auto found = last_event_.find(job_id);
  if (found == last_event_.end()) {
    int64_t last = -1;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    const std::string prefix = "event/" + job_id + "/";
    it->SeekForPrev(prefix + "~");
    if (it->Valid() && it->key().starts_with(prefix)) last = std::stoll(it->key().ToString().substr(prefix.size()));
    found = last_event_.emplace(job_id, last).first;
  }
  event.seq = found->second + 1;
  RETURN_IF_ERROR(Put(EventKey(job_id, event.seq), DumpReplacingInvalidUtf8(ToJson(event)), true));
  found->second = event.seq;
  return event.seq;
}

StatusOr<std::vector<JobEvent>> StateStore::Events(const std::string& job_id, int64_t after_seq, size_t limit) {
  std::vector<JobEvent> out;
  const std::string prefix = "event/" + job_id + "/";
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(EventKey(job_id, after_seq + 1)); it->Valid() && it->key().starts_with(prefix) && out.size() < limit;
       it->Next()) {
    auto j = nlohmann::json::parse(it->value().ToString(), nullptr, false);
    if (j.is_discarded()) return CorruptionError(fmt::format("coordinator state: {} is not valid JSON", it->key().ToString()));
    JobEvent e;
    e.seq = j.value("seq", int64_t{0});
    e.time = j.value("time", 0.0);
    e.kind = j.value("kind", "");
    e.message = j.value("message", "");
    e.fields = j.value("fields", nlohmann::json::object());
    out.push_back(std::move(e));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "reading events of " + job_id));
  return out;
}

Status StateStore::PutRanks(const std::string& job_id, const std::vector<RankInfo>& ranks) {
  rocksdb::WriteBatch batch;
  std::string value;
  for (const auto& r : ranks) {
    value.clear();
    AppendJson(r, &value);
    batch.Put(fmt::format("rank/{}/{:06d}", job_id, r.rank), value);
  }
  return FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "writing rank metrics of " + job_id);
}

StatusOr<std::vector<RankInfo>> StateStore::LoadRanks(const std::string& job_id) {
  std::vector<RankInfo> out;
  const std::string prefix = "rank/" + job_id + "/";
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto j = nlohmann::json::parse(it->value().ToString(), nullptr, false);
    if (!j.is_discarded()) out.push_back(RankFromJson(j));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "reading rank metrics of " + job_id));
  return out;
}

StatusOr<int64_t> StateStore::NextJobNumber() {
  std::string value;
  int64_t next = 1;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), "meta/next_job_number", &value);
  if (s.ok()) next = std::stoll(value);
  else if (!s.IsNotFound()) return FromRocks(s, "reading the job counter");
  RETURN_IF_ERROR(Put("meta/next_job_number", std::to_string(next + 1), true));
  return next;
}

Status StateStore::PutAttachNames(const std::set<std::string>& names) {
  return Put("meta/attach_names", nlohmann::json(names).dump(), true);
}

StatusOr<std::set<std::string>> StateStore::LoadAttachNames() {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), "meta/attach_names", &value);
  if (s.IsNotFound()) return std::set<std::string>();
  if (!s.ok()) return FromRocks(s, "reading the attach registrations");
  auto j = nlohmann::json::parse(value, nullptr, false);
  std::set<std::string> names;
  if (j.is_array())
    for (const auto& n : j)
      if (n.is_string() && IsValidJobId(n.get<std::string>())) names.insert(n.get<std::string>());
  return names;
}

}  // namespace vlorch::coord

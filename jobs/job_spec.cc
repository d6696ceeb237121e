#include "jobs/job_spec.h"

#include "common/durable_file.h"
#include "jobs/control_protocol.h"
#include "jobs/model_schema.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

namespace vlorch {
namespace {

// Reads one YAML mapping field by field; remembers which keys were read so that Finish()
// can reject the rest (a misspelt key must not be silently ignored).
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, const std::string& file)
      : node_(node), path_(std::move(path)), file_(file) {}

  Status Check() const {
    if (!node_.IsMap()) return Error(node_, path_, "expected a mapping");
    return Status::OK();
  }

  Status Error(const YAML::Node& at, const std::string& field, const std::string& problem) const {
    const YAML::Mark m = at.Mark();
    if (m.is_null()) return InvalidArgumentError(fmt::format("{}: {}: {}", file_, field, problem));
    return InvalidArgumentError(fmt::format("{}:{}:{}: {}: {}", file_, m.line + 1, m.column + 1, field, problem));
  }

  std::string Field(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  // Optional scalar: leaves *out unchanged when absent.
  template <typename T>
  Status Get(const std::string& key, T* out) {
    seen_.insert(key);
    const YAML::Node n = node_[key];
    if (!n) return Status::OK();
    if (!n.IsScalar()) return Error(n, Field(key), "expected a single value");
    try {
      *out = n.as<T>();
    } catch (const YAML::Exception&) {
      return Error(n, Field(key), fmt::format("'{}' is not a valid {}", n.Scalar(), TypeName<T>()));
    }
    return Status::OK();
  }

  template <typename T>
  Status GetRange(const std::string& key, T* out, T lo, T hi) {
    RETURN_IF_ERROR(Get(key, out));
    if (node_[key] && (*out < lo || *out > hi))
      return Error(node_[key], Field(key), fmt::format("{} is out of range; allowed {} to {}", *out, lo, hi));
    return Status::OK();
  }

  Status GetChoice(const std::string& key, std::string* out, const std::vector<std::string>& allowed) {
    RETURN_IF_ERROR(Get(key, out));
    if (!node_[key]) return Status::OK();
    for (const auto& a : allowed)
      if (*out == a) return Status::OK();
    return Error(node_[key], Field(key), fmt::format("'{}' is not one of: {}", *out, fmt::join(allowed, ", ")));
  }

  template <typename T>
  Status GetList(const std::string& key, std::vector<T>* out) {
    seen_.insert(key);
    const YAML::Node n = node_[key];
    if (!n) return Status::OK();
    if (!n.IsSequence()) return Error(n, Field(key), "expected a list");
    out->clear();
    for (size_t i = 0; i < n.size(); ++i) {
      try {
        out->push_back(n[i].as<T>());
      } catch (const YAML::Exception&) {
        return Error(n[i], fmt::format("{}[{}]", Field(key), i), fmt::format("expected a {}", TypeName<T>()));
      }
    }
    return Status::OK();
  }

  // A nested mapping; absent is fine (fn is not called).
  Status Nested(const std::string& key, const std::function<Status(MapReader&)>& fn) {
    seen_.insert(key);
    const YAML::Node n = node_[key];
    if (!n) return Status::OK();
    MapReader sub(n, Field(key), file_);
    RETURN_IF_ERROR(sub.Check());
    RETURN_IF_ERROR(fn(sub));
    return sub.Finish();
  }

  // A list of mappings.
  Status NestedList(const std::string& key, const std::function<Status(MapReader&, size_t)>& fn) {
    seen_.insert(key);
    const YAML::Node n = node_[key];
    if (!n) return Status::OK();
    if (!n.IsSequence()) return Error(n, Field(key), "expected a list");
    for (size_t i = 0; i < n.size(); ++i) {
      MapReader sub(n[i], fmt::format("{}[{}]", Field(key), i), file_);
      RETURN_IF_ERROR(sub.Check());
      RETURN_IF_ERROR(fn(sub, i));
      RETURN_IF_ERROR(sub.Finish());
    }
    return Status::OK();
  }

  Status Finish() const {
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const std::string key = it->first.as<std::string>("");
      if (!seen_.count(key)) {
        std::vector<std::string> known(seen_.begin(), seen_.end());
        return Error(it->first, Field(key), fmt::format("unknown key; allowed here: {}", fmt::join(known, ", ")));
      }
    }
    return Status::OK();
  }

  const YAML::Node& node() const { return node_; }
  bool Has(const std::string& key) const { return static_cast<bool>(node_[key]); }

 private:
  template <typename T>
  static const char* TypeName() {
    if constexpr (std::is_same_v<T, bool>) return "boolean (true/false)";
    else if constexpr (std::is_integral_v<T>) return "integer";
    else if constexpr (std::is_floating_point_v<T>) return "number";
    else return "string";
  }

  YAML::Node node_;
  std::string path_;
  const std::string& file_;
  std::set<std::string> seen_;
};

Status ReadVision(MapReader& r, VisionConfig* v) {
  RETURN_IF_ERROR(r.GetRange("image_size", &v->image_size, 1, 8192));
  RETURN_IF_ERROR(r.GetRange("patch_size", &v->patch_size, 1, 1024));
  RETURN_IF_ERROR(r.GetRange("hidden", &v->hidden, 1, 1 << 16));
  RETURN_IF_ERROR(r.GetRange("layers", &v->layers, 1, 1024));
  RETURN_IF_ERROR(r.GetRange("heads", &v->heads, 1, 1024));
  RETURN_IF_ERROR(r.GetRange("intermediate", &v->intermediate, 1, 1 << 18));
  RETURN_IF_ERROR(r.Get("quick_gelu", &v->quick_gelu));
  RETURN_IF_ERROR(r.GetRange("feature_layer", &v->feature_layer, -1024, -1));
  RETURN_IF_ERROR(r.Get("drop_cls", &v->drop_cls));
  RETURN_IF_ERROR(r.GetRange("layer_norm_eps", &v->layer_norm_eps, 0.0, 1.0));
  Status s = v->Validate();
  return s.ok() ? s : r.Error(r.node(), r.Field(""), s.message());
}

Status ReadQFormer(MapReader& r, QFormerConfig* q) {
  RETURN_IF_ERROR(r.GetRange("num_queries", &q->num_queries, 1, 4096));
  RETURN_IF_ERROR(r.GetRange("hidden", &q->hidden, 1, 1 << 16));
  RETURN_IF_ERROR(r.GetRange("layers", &q->layers, 1, 1024));
  RETURN_IF_ERROR(r.GetRange("heads", &q->heads, 1, 1024));
  RETURN_IF_ERROR(r.GetRange("intermediate", &q->intermediate, 1, 1 << 18));
  RETURN_IF_ERROR(r.GetRange("cross_attention_frequency", &q->cross_attention_frequency, 1, 1024));
  RETURN_IF_ERROR(r.GetRange("layer_norm_eps", &q->layer_norm_eps, 0.0, 1.0));
  Status s = q->Validate();
  return s.ok() ? s : r.Error(r.node(), r.Field(""), s.message());
}

Status ReadLlm(MapReader& r, LlmConfig* l) {
  std::string kind = LlmKindName(l->kind);
  RETURN_IF_ERROR(r.GetChoice("kind", &kind, {"opt", "llama"}));
  l->kind = kind == "opt" ? LlmKind::kOpt : LlmKind::kLlama;
  if (l->kind == LlmKind::kLlama) l->tie_embeddings = false;
  RETURN_IF_ERROR(r.GetRange("vocab_size", &l->vocab_size, 1, 1 << 24));
  RETURN_IF_ERROR(r.GetRange("hidden", &l->hidden, 1, 1 << 16));
  RETURN_IF_ERROR(r.GetRange("layers", &l->layers, 1, 1024));
  RETURN_IF_ERROR(r.GetRange("heads", &l->heads, 1, 1024));
  RETURN_IF_ERROR(r.GetRange("kv_heads", &l->kv_heads, 0, 1024));
  RETURN_IF_ERROR(r.GetRange("intermediate", &l->intermediate, 1, 1 << 18));
  RETURN_IF_ERROR(r.GetRange("max_positions", &l->max_positions, 1, 1 << 24));
  RETURN_IF_ERROR(r.GetRange("rope_theta", &l->rope_theta, 1.0, 1e12));
  RETURN_IF_ERROR(r.GetRange("norm_eps", &l->norm_eps, 0.0, 1.0));
  RETURN_IF_ERROR(r.Get("tie_embeddings", &l->tie_embeddings));
  if (l->kind == LlmKind::kOpt && !l->tie_embeddings)
    return r.Error(r.node()["tie_embeddings"], r.Field("tie_embeddings"), "OPT always ties its LM head; remove the key");
  Status s = l->Validate();
  return s.ok() ? s : r.Error(r.node(), r.Field(""), s.message());
}

Status ReadModel(MapReader& r, ModelConfig* m) {
  RETURN_IF_ERROR(r.Nested("vision", [&](MapReader& s) { return ReadVision(s, &m->vision); }));
  m->use_qformer = r.Has("qformer");
  RETURN_IF_ERROR(r.Nested("qformer", [&](MapReader& s) { return ReadQFormer(s, &m->qformer); }));
  RETURN_IF_ERROR(r.Nested("projector", [&](MapReader& s) {
    std::string kind = ProjectorKindName(m->projector.kind);
    RETURN_IF_ERROR(s.GetChoice("kind", &kind, {"linear", "mlp", "two_linear"}));
    m->projector.kind = kind == "linear" ? ProjectorKind::kLinear
                        : kind == "mlp"  ? ProjectorKind::kMlp
                                         : ProjectorKind::kTwoLinear;
    return s.GetRange("hidden", &m->projector.hidden, 0, 1 << 16);
  }));
  RETURN_IF_ERROR(r.Nested("llm", [&](MapReader& s) { return ReadLlm(s, &m->llm); }));
  if (!r.Has("llm")) return r.Error(r.node(), r.Field("llm"), "missing; every model needs an LLM");
  return Status::OK();
}

Status ReadData(MapReader& r, DataSpec* d) {
  RETURN_IF_ERROR(r.GetList("stores", &d->stores));
  if (d->stores.empty()) return r.Error(r.node(), r.Field("stores"), "missing; list at least one shard store directory");
  RETURN_IF_ERROR(r.GetList("weights", &d->weights));
  if (!d->weights.empty() && d->weights.size() != d->stores.size())
    return r.Error(r.node()["weights"], r.Field("weights"),
                   fmt::format("{} weights for {} stores; give one per store or none", d->weights.size(), d->stores.size()));
  for (double w : d->weights)
    if (!(w > 0)) return r.Error(r.node()["weights"], r.Field("weights"), "weights must be > 0");
  RETURN_IF_ERROR(r.Get("template", &d->template_name));
  RETURN_IF_ERROR(r.GetRange("max_len", &d->max_len, 0, 1 << 24));
  RETURN_IF_ERROR(r.GetRange<uint64_t>("shuffle_window", &d->shuffle_window, 1, uint64_t{1} << 32));
  RETURN_IF_ERROR(r.GetRange("workers", &d->workers, 1, 256));
  RETURN_IF_ERROR(r.GetRange("prefetch", &d->prefetch, 1, 1024));
  RETURN_IF_ERROR(r.Get("balance_tokens", &d->balance_tokens));
  RETURN_IF_ERROR(r.GetRange("balance_group", &d->balance_group, 0, 1 << 20));
  return r.Nested("tokenizer", [&](MapReader& s) {
    RETURN_IF_ERROR(s.GetChoice("kind", &d->tokenizer.kind, {"byte", "gpt2", "sentencepiece"}));
    RETURN_IF_ERROR(s.Get("vocab", &d->tokenizer.vocab));
    RETURN_IF_ERROR(s.Get("merges", &d->tokenizer.merges));
    RETURN_IF_ERROR(s.Get("model", &d->tokenizer.model));
    if (d->tokenizer.kind == "gpt2" && (d->tokenizer.vocab.empty() || d->tokenizer.merges.empty()))
      return s.Error(s.node(), s.Field("kind"), "gpt2 needs `vocab` (vocab.json) and `merges` (merges.txt)");
    if (d->tokenizer.kind == "sentencepiece" && d->tokenizer.model.empty())
      return s.Error(s.node(), s.Field("kind"), "sentencepiece needs `model` (tokenizer.model)");
    return Status::OK();
  });
}

Status ReadTransform(MapReader& r, TransformSpec* t) {
  RETURN_IF_ERROR(r.GetChoice("kind", &t->kind, {"transfer_vpg"}));
  if (t->kind.empty()) return r.Error(r.node(), r.Field("kind"), "missing; allowed: transfer_vpg");
  RETURN_IF_ERROR(r.Get("from", &t->from));
  if (t->from.empty()) return r.Error(r.node(), r.Field("from"), "missing; name the earlier stage whose checkpoint is the source");
  RETURN_IF_ERROR(r.GetChoice("pairs", &t->pairs, {"auto", "shared_ids", "captions"}));
  RETURN_IF_ERROR(r.GetRange<int64_t>("steps", &t->steps, 1, int64_t{1} << 40));
  RETURN_IF_ERROR(r.GetRange("lr", &t->lr, 0.0, 10.0));
  RETURN_IF_ERROR(r.GetRange<int64_t>("batch_size", &t->batch_size, 1, int64_t{1} << 30));
  RETURN_IF_ERROR(r.GetRange<int64_t>("caption_samples", &t->caption_samples, 1, int64_t{1} << 40));
  return r.GetRange<int64_t>("checkpoint_every", &t->checkpoint_every, 1, int64_t{1} << 40);
}

Status ReadStage(MapReader& r, StageSpec* st) {
  RETURN_IF_ERROR(r.Get("name", &st->name));
  if (st->name.empty()) return r.Error(r.node(), r.Field("name"), "every stage needs a name");
  for (char c : st->name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'))
      return r.Error(r.node()["name"], r.Field("name"), "use letters, digits, '_' and '-' only (it names a directory)");
  RETURN_IF_ERROR(r.Get("model", &st->model));
  RETURN_IF_ERROR(r.Nested("data", [&](MapReader& s) {
    st->data.emplace();
    return ReadData(s, &*st->data);
  }));
  RETURN_IF_ERROR(r.Nested("init", [&](MapReader& s) {
    RETURN_IF_ERROR(s.Get("stage", &st->init_stage));
    return s.NestedList("weights", [&](MapReader& w, size_t) {
      WeightsSpec ws;
      RETURN_IF_ERROR(w.Get("path", &ws.path));
      RETURN_IF_ERROR(w.Get("prefix", &ws.prefix));
      if (ws.path.empty()) return w.Error(w.node(), w.Field("path"), "missing");
      st->init_weights.push_back(ws);
      return Status::OK();
    });
  }));
  if (r.Has("transform")) {
    // A transform stage trains nothing: training keys are left unread, so Finish() rejects them.
    // Its `init` (a stage or weights) is where the target model starts; `transform.from` is the
    // source.
    RETURN_IF_ERROR(r.Nested("transform", [&](MapReader& s) {
      st->transform.emplace();
      return ReadTransform(s, &*st->transform);
    }));
    return Status::OK();
  }
  RETURN_IF_ERROR(r.GetList("trainable", &st->trainable));
  if (st->trainable.empty())
    return r.Error(r.node(), r.Field("trainable"), "missing; list the parameter-name patterns this stage trains");
  RETURN_IF_ERROR(r.NestedList("lr_multipliers", [&](MapReader& m, size_t) {
    LrMultiplier lm;
    RETURN_IF_ERROR(m.Get("pattern", &lm.pattern));
    RETURN_IF_ERROR(m.GetRange("factor", &lm.factor, 0.0, 1e6));
    st->lr_multipliers.push_back(lm);
    return Status::OK();
  }));
  RETURN_IF_ERROR(r.Nested("optimizer", [&](MapReader& s) {
    RETURN_IF_ERROR(s.GetRange("lr", &st->optimizer.lr, 0.0, 10.0));
    RETURN_IF_ERROR(s.GetRange("beta1", &st->optimizer.beta1, 0.0, 0.999999));
    RETURN_IF_ERROR(s.GetRange("beta2", &st->optimizer.beta2, 0.0, 0.999999999));
    RETURN_IF_ERROR(s.GetRange("eps", &st->optimizer.eps, 0.0, 1.0));
    return s.GetRange("weight_decay", &st->optimizer.weight_decay, 0.0, 10.0);
  }));
  RETURN_IF_ERROR(r.Nested("schedule", [&](MapReader& s) {
    std::string kind = "cosine";
    RETURN_IF_ERROR(s.GetChoice("kind", &kind, {"constant", "cosine"}));
    st->schedule.kind = kind == "cosine" ? ScheduleKind::kCosine : ScheduleKind::kConstant;
    RETURN_IF_ERROR(s.GetRange<int64_t>("warmup_steps", &st->schedule.warmup_steps, 0, int64_t{1} << 40));
    RETURN_IF_ERROR(s.GetRange("warmup_init_lr", &st->schedule.warmup_init_lr, 0.0, 10.0));
    RETURN_IF_ERROR(s.GetRange("min_lr", &st->schedule.min_lr, 0.0, 10.0));
    std::string per = "step";
    RETURN_IF_ERROR(s.GetChoice("per", &per, {"step", "epoch"}));
    st->schedule.per_epoch = per == "epoch";
    return Status::OK();
  }));
  RETURN_IF_ERROR(r.GetRange<int64_t>("steps", &st->steps, 0, int64_t{1} << 40));
  RETURN_IF_ERROR(r.GetRange("epochs", &st->epochs, 0.0, 1e6));
  if ((st->steps > 0) == (st->epochs > 0))
    return r.Error(r.node(), r.Field("steps"), "give exactly one of `steps` and `epochs`");
  RETURN_IF_ERROR(r.GetRange<int64_t>("batch_size", &st->batch_size, 1, int64_t{1} << 20));
  RETURN_IF_ERROR(r.GetRange("grad_accum", &st->grad_accum, 1, 1 << 16));
  RETURN_IF_ERROR(r.GetRange("clip_grad_norm", &st->clip_grad_norm, 0.0, 1e9));
  RETURN_IF_ERROR(r.GetRange("log_every", &st->log_every, 1, 1 << 30));
  return r.Nested("checkpoint", [&](MapReader& s) {
    RETURN_IF_ERROR(s.GetRange<int64_t>("every_steps", &st->checkpoint.every_steps, 0, int64_t{1} << 40));
    RETURN_IF_ERROR(s.GetRange("keep", &st->checkpoint.keep, 1, 1 << 20));
    return s.Get("async", &st->checkpoint.async);
  });
}

std::string ModelNames(const JobSpec& spec) {
  std::vector<std::string> names;
  for (const auto& m : spec.models) names.push_back(m.name);
  return fmt::format("{}", fmt::join(names, ", "));
}

std::string Modules(const ModelConfig& m) {
  std::vector<std::string> mods = {"vision_model"};
  if (m.use_qformer) mods.insert(mods.end(), {"query_tokens", "qformer"});
  mods.insert(mods.end(), {"language_projection", "language_model"});
  return fmt::format("{}", fmt::join(mods, ", "));
}

bool SameShapes(const ModelConfig& a, const ModelConfig& b) {
  const auto pa = ModelParameters(a), pb = ModelParameters(b);
  if (pa.size() != pb.size()) return false;
  for (size_t i = 0; i < pa.size(); ++i)
    if (pa[i].name != pb[i].name || pa[i].shape != pb[i].shape) return false;
  return true;
}

// Checks that need the whole spec: the model exists, patterns name parameters of it, an init
// stage has the same parameters, and a transform's models have what it moves. `spec.stages`
// holds the earlier stages.
Status CheckStage(const JobSpec& spec, StageSpec& st, MapReader& r) {
  if (st.model.empty()) {
    if (spec.models.size() != 1)
      return r.Error(r.node(), r.Field("model"), fmt::format("missing; the job defines models {}: name one", ModelNames(spec)));
    st.model = spec.models[0].name;
  }
  const NamedModel* model = nullptr;
  for (const auto& m : spec.models)
    if (m.name == st.model) model = &m;
  if (model == nullptr)
    return r.Error(r.node()["model"], r.Field("model"), fmt::format("no model '{}'; the job defines: {}", st.model, ModelNames(spec)));
  const std::vector<ParameterShape> params = ModelParameters(model->config);
  auto check_pattern = [&](const std::string& pattern, const YAML::Node& at, const std::string& field) {
    for (const auto& p : params)
      if (MatchesGlob(pattern, p.name)) return Status::OK();
    return r.Error(at, field, fmt::format("'{}' matches no parameter of model '{}' (its modules: {}); `vlorch job plan` "
                                          "lists the parameters", pattern, st.model, Modules(model->config)));
  };
  for (size_t i = 0; i < st.trainable.size(); ++i)
    RETURN_IF_ERROR(check_pattern(st.trainable[i], r.node()["trainable"][i], r.Field(fmt::format("trainable[{}]", i))));
  for (size_t i = 0; i < st.lr_multipliers.size(); ++i)
    RETURN_IF_ERROR(check_pattern(st.lr_multipliers[i].pattern, r.node()["lr_multipliers"][i],
                                  r.Field(fmt::format("lr_multipliers[{}].pattern", i))));
  if (!st.init_stage.empty()) {
    const StageSpec* init = spec.FindStage(st.init_stage);
    if (init->model != st.model && !SameShapes(spec.ModelOf(*init), model->config))
      return r.Error(r.node()["init"], r.Field("init.stage"),
                     fmt::format("stage '{}' trains model '{}', whose parameters differ from model '{}' here; go "
                                 "through a transform stage (e.g. transfer_vpg) to change models",
                                 init->name, init->model, st.model));
  }
  if (!st.transform) return Status::OK();
  const TransformSpec& t = *st.transform;
  const YAML::Node at = r.node()["transform"];
  const std::string field = r.Field("transform.from");
  const StageSpec* from = spec.FindStage(t.from);
  if (from == nullptr)
    return r.Error(at["from"], field, fmt::format("'{}' is not an earlier stage of this job", t.from));
  const ModelConfig& src = spec.ModelOf(*from);
  const ModelConfig& dst = model->config;
  auto lacks = [&](const std::string& which, const std::string& name, const std::string& module) {
    return r.Error(at, r.Field("transform"),
                   fmt::format("transfer_vpg moves the {} but {} model '{}' has none (its modules: {})", module, which,
                               name, Modules(which == "source" ? src : dst)));
  };
  if (!src.use_qformer) return lacks("source", from->model, "VPG (query_tokens, qformer)");
  if (!dst.use_qformer) return lacks("target", st.model, "VPG (query_tokens, qformer)");
  ModelConfig src_vpg = src, dst_vpg = dst;
  src_vpg.llm = dst_vpg.llm = LlmConfig{};
  src_vpg.projector = dst_vpg.projector = ProjectorConfig{};
  if (!SameShapes(src_vpg, dst_vpg))
    return r.Error(at, r.Field("transform"),
                   fmt::format("models '{}' and '{}' differ in vision encoder or Q-Former; transfer_vpg copies them, "
                               "so give both the same `vision` and `qformer`", from->model, st.model));
  if (src.projector.kind != dst.projector.kind ||
      (src.projector.kind != ProjectorKind::kLinear && src.projector.hidden != dst.projector.hidden) ||
      (src.projector.kind != ProjectorKind::kLinear && src.projector.hidden == 0))
    return r.Error(at, r.Field("transform"),
                   fmt::format("transfer_vpg fuses the converter into the projector's last layer: the projectors of "
                               "'{}' and '{}' must be the same kind, and for {} set the same non-zero `hidden`",
                               from->model, st.model, ProjectorKindName(src.projector.kind)));
  return Status::OK();
}

}  // namespace

const char* ProjectorKindName(ProjectorKind kind) {
  switch (kind) {
    case ProjectorKind::kLinear: return "linear";
    case ProjectorKind::kMlp: return "mlp";
    case ProjectorKind::kTwoLinear: return "two_linear";
  }
  return "?";
}

const char* LlmKindName(LlmKind kind) { return kind == LlmKind::kOpt ? "opt" : "llama"; }

Status VisionConfig::Validate() const {
  if (image_size % patch_size != 0)
    return InvalidArgumentError(fmt::format("image_size {} is not a multiple of patch_size {}", image_size, patch_size));
  if (hidden % heads != 0)
    return InvalidArgumentError(fmt::format("vision hidden {} is not divisible by heads {}", hidden, heads));
  if (-feature_layer > layers)
    return InvalidArgumentError(fmt::format("feature_layer {} but the encoder has {} layers", feature_layer, layers));
  return Status::OK();
}

Status QFormerConfig::Validate() const {
  if (hidden % heads != 0)
    return InvalidArgumentError(fmt::format("qformer hidden {} is not divisible by heads {}", hidden, heads));
  return Status::OK();
}

Status LlmConfig::Validate() const {
  if (hidden % heads != 0)
    return InvalidArgumentError(fmt::format("llm hidden {} is not divisible by heads {}", hidden, heads));
  const int kv = kv_heads == 0 ? heads : kv_heads;
  if (heads % kv != 0)
    return InvalidArgumentError(fmt::format("llm heads {} is not divisible by kv_heads {}", heads, kv));
  if (kind == LlmKind::kLlama && (hidden / heads) % 2 != 0)
    return InvalidArgumentError("rotary positions need an even head size (hidden / heads)");
  return Status::OK();
}

Status ModelConfig::Validate() const {
  RETURN_IF_ERROR(vision.Validate());
  if (use_qformer) RETURN_IF_ERROR(qformer.Validate());
  return llm.Validate();
}

const StageSpec* JobSpec::FindStage(const std::string& stage_name) const {
  for (const auto& s : stages)
    if (s.name == stage_name) return &s;
  return nullptr;
}

const ModelConfig& JobSpec::ModelOf(const StageSpec& stage) const {
  for (const auto& m : models)
    if (m.name == stage.model) return m.config;
  return models.front().config;
}

const DataSpec& JobSpec::DataOf(const StageSpec& stage) const { return stage.data ? *stage.data : data; }

std::string JobSpec::Resolve(const std::string& path) const {
  if (path.empty() || path[0] == '/') return path;
  return (std::filesystem::path(base_dir) / path).lexically_normal().string();
}

bool MatchesGlob(const std::string& pattern, const std::string& name) {
  // Iterative wildcard match with backtracking to the last '*'.
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == name[n]) {
      ++p, ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

StatusOr<JobSpec> ParseJobSpec(const std::string& yaml_text, const std::string& source_name,
                               const std::string& base_dir) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(
        fmt::format("{}:{}:{}: not valid YAML: {}", source_name, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  JobSpec spec;
  spec.source = source_name;
  spec.base_dir = base_dir;
  MapReader r(root, "", spec.source);
  RETURN_IF_ERROR(r.Check());
  try {
    RETURN_IF_ERROR(r.Get("name", &spec.name));
    if (spec.name.empty()) return r.Error(root, "name", "missing; every job needs a name");
    // It names the default run directory and the coordinator's job id: no path in it.
    if (!IsValidJobId(spec.name))
      return r.Error(root["name"], "name",
                     "use letters, digits, '.', '_' and '-' only, at most 64, not starting with '.' (it names the run "
                     "directory)");
    RETURN_IF_ERROR(r.Get("run_dir", &spec.run_dir));
    if (!spec.run_dir.empty() && spec.run_dir[0] != '/') {
      const auto normal = std::filesystem::path(spec.run_dir).lexically_normal();
      if (!normal.empty() && *normal.begin() == "..")
        return r.Error(root["run_dir"], "run_dir",
                       fmt::format("'{}' climbs out of the spec's folder; give an absolute path to keep runs elsewhere",
                                   spec.run_dir));
    }
    RETURN_IF_ERROR(r.Get("seed", &spec.seed));
    RETURN_IF_ERROR(r.GetRange("threads", &spec.threads, 1, 1024));
    if (r.Has("model") == r.Has("models"))
      return r.Error(root, "model", "give exactly one of `model` (one definition) and `models` (named definitions)");
    if (r.Has("model")) {
      spec.models.push_back({"model", {}});
      RETURN_IF_ERROR(r.Nested("model", [&](MapReader& s) { return ReadModel(s, &spec.models.back().config); }));
    } else {
      const YAML::Node models = root["models"];
      if (!models.IsMap() || models.size() == 0)
        return r.Error(models, "models", "expected a mapping from model names to model definitions");
      RETURN_IF_ERROR(r.Nested("models", [&](MapReader& s) {
        for (auto it = models.begin(); it != models.end(); ++it) {
          const std::string name = it->first.as<std::string>("");
          spec.models.push_back({name, {}});
          RETURN_IF_ERROR(s.Nested(name, [&](MapReader& m) { return ReadModel(m, &spec.models.back().config); }));
        }
        return Status::OK();
      }));
    }
    RETURN_IF_ERROR(r.Nested("data", [&](MapReader& s) { return ReadData(s, &spec.data); }));
    RETURN_IF_ERROR(r.Nested("layout", [&](MapReader& s) {
      RETURN_IF_ERROR(s.GetRange("dp", &spec.layout.dp, 0, 1 << 20));
      RETURN_IF_ERROR(s.GetRange("tp", &spec.layout.tp, 1, 1 << 20));
      return s.GetRange("ep", &spec.layout.ep, 1, 1 << 20);
    }));
    std::set<std::string> earlier;
    RETURN_IF_ERROR(r.NestedList("stages", [&](MapReader& s, size_t) {
      StageSpec st;
      RETURN_IF_ERROR(ReadStage(s, &st));
      if (earlier.count(st.name)) return s.Error(s.node()["name"], s.Field("name"), fmt::format("duplicate stage '{}'", st.name));
      if (!st.init_stage.empty() && !earlier.count(st.init_stage))
        return s.Error(s.node()["init"], s.Field("init.stage"),
                       fmt::format("'{}' is not an earlier stage of this job", st.init_stage));
      RETURN_IF_ERROR(CheckStage(spec, st, s));
      earlier.insert(st.name);
      spec.stages.push_back(std::move(st));
      return Status::OK();
    }));
    if (spec.stages.empty()) return r.Error(root, "stages", "missing; a job needs at least one stage");
    for (size_t i = 0; i < spec.stages.size(); ++i)
      if (!r.Has("data") && !spec.stages[i].data)
        return r.Error(root["stages"][i], fmt::format("stages[{}].data", i),
                       "missing; give the job a `data` section or this stage its own");
    RETURN_IF_ERROR(r.Finish());
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(fmt::format("{}: {}", source_name, e.what()));
  }
  if (spec.run_dir.empty()) spec.run_dir = "runs/" + spec.name;
  spec.run_dir = spec.Resolve(spec.run_dir);
  return spec;
}

StatusOr<JobSpec> LoadJobSpec(const std::string& path) {
  auto text = ReadRegularFile(path, kMaxJobSpecBytes);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return NotFoundError(fmt::format("cannot open job spec {}", path));
    return InvalidArgumentError(fmt::format("job spec: {}", text.status().message()));
  }
  const std::string base = std::filesystem::absolute(path).parent_path().string();
  return ParseJobSpec(*text, path, base);
}

}  // namespace vlorch

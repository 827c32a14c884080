#include "client/cpp/arch_json.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nt/v1/tensor.pb.h"

namespace nt::client {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// Position of a value in the tree, for error messages.
struct Where {
  std::string path;   // e.g. "architecture.layers[2]"
  std::string layer;  // e.g. "Dense"
  std::string arg;    // e.g. "W_std"; empty at layer level.

  absl::Status Error(absl::string_view what) const {
    std::string out = absl::StrCat(path, ": layer ", layer);
    if (!arg.empty()) absl::StrAppend(&out, ", argument '", arg, "'");
    return absl::InvalidArgumentError(absl::StrCat(out, ": ", what));
  }
};

std::string Short(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// ---- JSON -> scalars ----

absl::StatusOr<int64_t> ToInt(const json& v, const Where& w) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return w.Error(absl::StrCat("integer out of range: ", Short(v)));
    }
    return v.get<int64_t>();
  }
  // 3.0 is accepted as 3 (JSON writers may not distinguish).
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      return static_cast<int64_t>(d);
    }
  }
  return w.Error(absl::StrCat("expected an integer, got ", Short(v)));
}

absl::StatusOr<double> ToDouble(const json& v, const Where& w) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = absl::AsciiStrToLower(v.get<std::string>());
    if (s == "inf" || s == "+inf" || s == "infinity") return std::numeric_limits<double>::infinity();
    if (s == "-inf" || s == "-infinity") return -std::numeric_limits<double>::infinity();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
  }
  return w.Error(absl::StrCat("expected a number, got ", Short(v)));
}

template <typename J>
J FromDouble(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  return d;
}

absl::StatusOr<const EnumValueDescriptor*> ToEnum(const json& v, const FieldDescriptor* field,
                                                  const Where& w) {
  if (!v.is_string()) {
    return w.Error(
        absl::StrCat("expected one of the names of ", field->enum_type()->name(), ", got ", Short(v)));
  }
  const std::string name = absl::AsciiStrToUpper(v.get<std::string>());
  const EnumValueDescriptor* value = field->enum_type()->FindValueByName(name);
  if (value == nullptr || value->number() == 0) {
    std::string names;
    for (int i = 1; i < field->enum_type()->value_count(); ++i) {
      absl::StrAppend(&names, i > 1 ? ", " : "", field->enum_type()->value(i)->name());
    }
    return w.Error(absl::StrCat("unknown value ", Short(v), " (expected one of ", names, ")"));
  }
  return value;
}

// Sets (or, for a repeated field, appends) one scalar value.
absl::Status SetScalar(Message* msg, const FieldDescriptor* field, const json& v, const Where& w) {
  const Reflection* r = msg->GetReflection();
  const bool rep = field->is_repeated();
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT64: {
      absl::StatusOr<int64_t> x = ToInt(v, w);
      if (!x.ok()) return x.status();
      rep ? r->AddInt64(msg, field, *x) : r->SetInt64(msg, field, *x);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_INT32: {
      absl::StatusOr<int64_t> x = ToInt(v, w);
      if (!x.ok()) return x.status();
      if (*x < std::numeric_limits<int32_t>::min() || *x > std::numeric_limits<int32_t>::max()) {
        return w.Error(absl::StrCat("integer out of range: ", *x));
      }
      rep ? r->AddInt32(msg, field, static_cast<int32_t>(*x))
          : r->SetInt32(msg, field, static_cast<int32_t>(*x));
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      absl::StatusOr<double> x = ToDouble(v, w);
      if (!x.ok()) return x.status();
      rep ? r->AddDouble(msg, field, *x) : r->SetDouble(msg, field, *x);
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      absl::StatusOr<double> x = ToDouble(v, w);
      if (!x.ok()) return x.status();
      rep ? r->AddFloat(msg, field, static_cast<float>(*x)) : r->SetFloat(msg, field, static_cast<float>(*x));
      return absl::OkStatus();
    }
    case FieldDescriptor::CPPTYPE_BOOL:
      if (!v.is_boolean()) return w.Error(absl::StrCat("expected true or false, got ", Short(v)));
      rep ? r->AddBool(msg, field, v.get<bool>()) : r->SetBool(msg, field, v.get<bool>());
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_STRING:
      if (!v.is_string()) return w.Error(absl::StrCat("expected a string, got ", Short(v)));
      rep ? r->AddString(msg, field, v.get<std::string>()) : r->SetString(msg, field, v.get<std::string>());
      return absl::OkStatus();
    case FieldDescriptor::CPPTYPE_ENUM: {
      absl::StatusOr<const EnumValueDescriptor*> e = ToEnum(v, field, w);
      if (!e.ok()) return e.status();
      rep ? r->AddEnum(msg, field, *e) : r->SetEnum(msg, field, *e);
      return absl::OkStatus();
    }
    default:
      return w.Error(absl::StrCat("unsupported field type of ", field->full_name()));
  }
}

absl::Status ParseLayer(const json& j, const std::string& path, nt::v1::Layer* out);
absl::Status SetMessage(Message* msg, const json& v, const Where& w);

// Sets field `field` of `msg` from JSON value `v` (null: leave unset).
absl::Status SetField(Message* msg, const FieldDescriptor* field, const json& v, const Where& w) {
  if (v.is_null()) return absl::OkStatus();
  const Reflection* r = msg->GetReflection();
  if (field->is_repeated()) {
    // A bare scalar stands for a one-element tuple (LayerNorm(axis=-1)).
    const json list = v.is_array() ? v : json::array({v});
    for (size_t i = 0; i < list.size(); ++i) {
      if (list[i].is_null()) return w.Error(absl::StrCat("null entry at position ", i));
      absl::Status s = field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE
                           ? SetMessage(r->AddMessage(msg, field), list[i], w)
                           : SetScalar(msg, field, list[i], w);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
    return SetMessage(r->MutableMessage(msg, field), v, w);
  }
  return SetScalar(msg, field, v, w);
}

absl::Status IntList(const json& v, google::protobuf::RepeatedField<int64_t>* out, const Where& w) {
  const json list = v.is_array() ? v : json::array({v});
  for (const json& x : list) {
    absl::StatusOr<int64_t> i = ToInt(x, w);
    if (!i.ok()) return i.status();
    out->Add(*i);
  }
  return absl::OkStatus();
}

absl::Status SetTensor(nt::v1::Tensor* t, const json& v, const Where& w) {
  // A bare number is a scalar constant.
  const json obj = v.is_number() ? json{{"shape", json::array()}, {"data", json::array({v})}} : v;
  if (!obj.is_object() || !obj.contains("shape") || !obj.contains("data")) {
    return w.Error(
        absl::StrCat("expected an array object {\"shape\": [...], \"data\": [...]}, got ", Short(v)));
  }
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (it.key() != "shape" && it.key() != "data") {
      return w.Error(absl::StrCat("unexpected key '", it.key(), "' in an array object"));
    }
  }
  if (!obj["shape"].is_array()) return w.Error("\"shape\" must be a list");
  absl::Status s = IntList(obj["shape"], t->mutable_shape(), w);
  if (!s.ok()) return s;
  int64_t n = 1;
  for (int64_t d : t->shape()) {
    if (d < 0) return w.Error("negative dimension");
    n *= d;
  }
  const json data = obj["data"].is_array() ? obj["data"] : json::array({obj["data"]});
  if (static_cast<int64_t>(data.size()) != n) {
    return w.Error(absl::StrCat("\"data\" has ", data.size(), " values, the shape needs ", n));
  }
  std::string bytes(static_cast<size_t>(n) * sizeof(double), '\0');
  for (size_t i = 0; i < data.size(); ++i) {
    absl::StatusOr<double> d = ToDouble(data[i], w);
    if (!d.ok()) return d.status();
    std::memcpy(bytes.data() + i * sizeof(double), &*d, sizeof(double));
  }
  t->set_dtype(nt::v1::FLOAT64);
  t->set_data(std::move(bytes));
  return absl::OkStatus();
}

absl::Status SetSlice(nt::v1::Slice* s, const json& v, const Where& w) {
  if (!v.is_array() || v.empty() || v.size() > 3) {
    return w.Error(absl::StrCat("a slice is [start, stop, step], got ", Short(v)));
  }
  // Python's slice(stop) / slice(start, stop) / slice(start, stop, step).
  const json start = v.size() == 1 ? json() : v[0];
  const json stop = v.size() == 1 ? v[0] : v[1];
  const json step = v.size() == 3 ? v[2] : json();
  if (!start.is_null()) {
    absl::StatusOr<int64_t> x = ToInt(start, w);
    if (!x.ok()) return x.status();
    s->set_start(*x);
  }
  if (!stop.is_null()) {
    absl::StatusOr<int64_t> x = ToInt(stop, w);
    if (!x.ok()) return x.status();
    s->set_stop(*x);
  }
  if (!step.is_null()) {
    absl::StatusOr<int64_t> x = ToInt(step, w);
    if (!x.ok()) return x.status();
    if (*x == 0) return w.Error("slice step cannot be zero");
    s->set_step(*x);
  }
  return absl::OkStatus();
}

absl::Status SetIndexItem(nt::v1::IndexItem* item, const json& v, const Where& w) {
  if (v.is_string()) {
    if (v.get<std::string>() != "...") {
      return w.Error(absl::StrCat("the only string index item is \"...\", got ", Short(v)));
    }
    item->set_ellipsis(true);
    return absl::OkStatus();
  }
  if (v.is_object()) {
    if (v.size() != 1 || !v.contains("slice")) {
      return w.Error(absl::StrCat("expected {\"slice\": [start, stop, step]}, got ", Short(v)));
    }
    return SetSlice(item->mutable_slice(), v["slice"], w);
  }
  absl::StatusOr<int64_t> x = ToInt(v, w);
  if (!x.ok()) {
    return w.Error(
        absl::StrCat("an index item is an integer, \"...\" or {\"slice\": [...]}, got ", Short(v)));
  }
  item->set_index(*x);
  return absl::OkStatus();
}

absl::Status SetDotDimensionNumbers(nt::v1::DotDimensionNumbers* d, const json& v, const Where& w) {
  const char* kForm = "expected [[lhs_contracting, rhs_contracting], [lhs_batch, rhs_batch]]";
  if (!v.is_array() || v.size() != 2 || !v[0].is_array() || v[0].size() != 2 || !v[1].is_array() ||
      v[1].size() != 2) {
    return w.Error(absl::StrCat(kForm, ", got ", Short(v)));
  }
  for (absl::Status s :
       {IntList(v[0][0], d->mutable_lhs_contracting(), w), IntList(v[0][1], d->mutable_rhs_contracting(), w),
        IntList(v[1][0], d->mutable_lhs_batch(), w), IntList(v[1][1], d->mutable_rhs_batch(), w)}) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status SetConvDimensionNumbers(nt::v1::ConvDimensionNumbers* d, const json& v, const Where& w) {
  if (!v.is_array() || v.size() != 3 || !v[0].is_string() || !v[1].is_string() || !v[2].is_string()) {
    return w.Error(absl::StrCat("expected [lhs_spec, rhs_spec, out_spec] strings, got ", Short(v)));
  }
  d->set_lhs_spec(v[0].get<std::string>());
  d->set_rhs_spec(v[1].get<std::string>());
  d->set_out_spec(v[2].get<std::string>());
  return absl::OkStatus();
}

// A message-typed argument: the special JSON forms by type, otherwise an object keyed by field name.
absl::Status SetMessage(Message* msg, const json& v, const Where& w) {
  const std::string& type = msg->GetDescriptor()->full_name();
  if (type == "nt.v1.Tensor") return SetTensor(static_cast<nt::v1::Tensor*>(msg), v, w);
  if (type == "nt.v1.IndexItem") return SetIndexItem(static_cast<nt::v1::IndexItem*>(msg), v, w);
  if (type == "nt.v1.Slice") return SetSlice(static_cast<nt::v1::Slice*>(msg), v, w);
  if (type == "nt.v1.Axes") {
    return IntList(v, static_cast<nt::v1::Axes*>(msg)->mutable_axes(), w);
  }
  if (type == "nt.v1.DotDimensionNumbers") {
    return SetDotDimensionNumbers(static_cast<nt::v1::DotDimensionNumbers*>(msg), v, w);
  }
  if (type == "nt.v1.ConvDimensionNumbers" && v.is_array()) {
    return SetConvDimensionNumbers(static_cast<nt::v1::ConvDimensionNumbers*>(msg), v, w);
  }
  if (type == "nt.v1.Layer") {
    return ParseLayer(v, absl::StrCat(w.path, ".", w.arg), static_cast<nt::v1::Layer*>(msg));
  }
  if (!v.is_object()) {
    return w.Error(absl::StrCat("expected an object for ", msg->GetDescriptor()->name(), ", got ", Short(v)));
  }
  for (auto it = v.begin(); it != v.end(); ++it) {
    const FieldDescriptor* field = msg->GetDescriptor()->FindFieldByName(it.key());
    if (field == nullptr) {
      return w.Error(absl::StrCat("unknown key '", it.key(), "' in ", msg->GetDescriptor()->name()));
    }
    absl::Status s = SetField(msg, field, it.value(), w);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// The Layer oneof field for an upstream layer name (combinators excluded).
const FieldDescriptor* LayerField(const std::string& name) {
  const google::protobuf::OneofDescriptor* kind = nt::v1::Layer::descriptor()->FindOneofByName("kind");
  for (int i = 0; i < kind->field_count(); ++i) {
    const FieldDescriptor* f = kind->field(i);
    if (f->message_type() == nullptr) continue;
    const Descriptor* t = f->message_type();
    if (t == nt::v1::Serial::descriptor() || t == nt::v1::Parallel::descriptor() ||
        t == nt::v1::Repeat::descriptor()) {
      continue;
    }
    if (t->name() == name) return f;
  }
  return nullptr;
}

absl::Status ParseLayers(const json& j, const std::string& path, const Where& w,
                         google::protobuf::RepeatedPtrField<nt::v1::Layer>* out) {
  if (!j.contains("layers") || !j["layers"].is_array()) {
    return w.Error("needs a \"layers\" list");
  }
  const json& layers = j["layers"];
  for (size_t i = 0; i < layers.size(); ++i) {
    absl::Status s = ParseLayer(layers[i], absl::StrCat(path, ".layers[", i, "]"), out->Add());
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ParseLayer(const json& j, const std::string& path, nt::v1::Layer* out) {
  if (!j.is_object() || !j.contains("layer") || !j["layer"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a layer object {\"layer\": name, \"args\": {...}}, got ", Short(j)));
  }
  const std::string name = j["layer"].get<std::string>();
  Where w{path, name, ""};
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "layer" && it.key() != "args" && it.key() != "layers") {
      return w.Error(absl::StrCat("unexpected key '", it.key(), "'"));
    }
  }
  static const json kNoArgs = json::object();
  const json& args = j.contains("args") && !j["args"].is_null() ? j["args"] : kNoArgs;
  if (!args.is_object()) return w.Error("\"args\" must be an object");

  if (name == "serial" || name == "parallel") {
    if (!args.empty()) {
      return w.Error(absl::StrCat("takes no arguments, got '", args.begin().key(), "'"));
    }
    auto* layers = name == "serial" ? out->mutable_serial()->mutable_layers()
                                    : out->mutable_parallel()->mutable_layers();
    return ParseLayers(j, path, w, layers);
  }
  if (name == "repeat") {
    nt::v1::Repeat* repeat = out->mutable_repeat();
    for (auto it = args.begin(); it != args.end(); ++it) {
      if (it.key() != "n") {
        return Where{path, name, it.key()}.Error("unknown argument");
      }
      absl::StatusOr<int64_t> n = ToInt(it.value(), Where{path, name, "n"});
      if (!n.ok()) return n.status();
      repeat->set_n(*n);
    }
    if (!repeat->has_n()) return Where{path, name, "n"}.Error("missing");
    if (!j.contains("layers") || !j["layers"].is_array() || j["layers"].size() != 1) {
      return w.Error("needs \"layers\" with exactly one layer");
    }
    return ParseLayer(j["layers"][0], absl::StrCat(path, ".layers[0]"), repeat->mutable_layer());
  }

  const FieldDescriptor* field = LayerField(name);
  if (field == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unknown layer '", name, "'"));
  }
  if (j.contains("layers")) return w.Error("only combinators take \"layers\"");
  Message* msg = out->GetReflection()->MutableMessage(out, field);
  const Descriptor* type = field->message_type();
  for (auto it = args.begin(); it != args.end(); ++it) {
    const Where aw{path, name, it.key()};
    const FieldDescriptor* arg = type->FindFieldByName(it.key());
    if (arg == nullptr) return aw.Error("unknown argument");
    absl::Status s = SetField(msg, arg, it.value(), aw);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

// ---- Layer -> JSON ----
// Written as ordered_json: "layer" before "args", arguments in upstream (field) order.

absl::StatusOr<ojson> LayerToOrdered(const nt::v1::Layer& layer);

absl::StatusOr<ojson> MessageToJson(const Message& msg);

absl::StatusOr<ojson> ScalarToJson(const Message& msg, const FieldDescriptor* f, int i) {
  const Reflection* r = msg.GetReflection();
  const bool rep = f->is_repeated();
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT64:
      return ojson(rep ? r->GetRepeatedInt64(msg, f, i) : r->GetInt64(msg, f));
    case FieldDescriptor::CPPTYPE_INT32:
      return ojson(rep ? r->GetRepeatedInt32(msg, f, i) : r->GetInt32(msg, f));
    case FieldDescriptor::CPPTYPE_DOUBLE:
      return FromDouble<ojson>(rep ? r->GetRepeatedDouble(msg, f, i) : r->GetDouble(msg, f));
    case FieldDescriptor::CPPTYPE_FLOAT:
      return FromDouble<ojson>(rep ? r->GetRepeatedFloat(msg, f, i) : r->GetFloat(msg, f));
    case FieldDescriptor::CPPTYPE_BOOL:
      return ojson(rep ? r->GetRepeatedBool(msg, f, i) : r->GetBool(msg, f));
    case FieldDescriptor::CPPTYPE_STRING:
      return ojson(rep ? r->GetRepeatedString(msg, f, i) : r->GetString(msg, f));
    case FieldDescriptor::CPPTYPE_ENUM:
      return ojson((rep ? r->GetRepeatedEnum(msg, f, i) : r->GetEnum(msg, f))->name());
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return MessageToJson(rep ? r->GetRepeatedMessage(msg, f, i) : r->GetMessage(msg, f));
    default:
      break;
  }
  return absl::InternalError(absl::StrCat("unsupported field type of ", f->full_name()));
}

absl::StatusOr<ojson> TensorToJson(const nt::v1::Tensor& t) {
  int64_t n = 1;
  ojson shape = ojson::array();
  for (int64_t d : t.shape()) {
    shape.push_back(d);
    n *= d;
  }
  size_t item;
  switch (t.dtype()) {
    case nt::v1::DTYPE_UNSPECIFIED:
    case nt::v1::FLOAT64:
    case nt::v1::INT64:
      item = 8;
      break;
    case nt::v1::FLOAT32:
      item = 4;
      break;
    case nt::v1::BOOL:
      item = 1;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor of unknown dtype ", t.dtype()));
  }
  if (t.data().size() != static_cast<size_t>(n) * item) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor has ", t.data().size(), " data bytes for ", n, " elements"));
  }
  ojson data = ojson::array();
  const char* p = t.data().data();
  for (int64_t i = 0; i < n; ++i) {
    double d;
    if (t.dtype() == nt::v1::FLOAT32) {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      d = f;
    } else if (t.dtype() == nt::v1::INT64) {
      int64_t x;
      std::memcpy(&x, p + 8 * i, 8);
      d = static_cast<double>(x);
    } else if (t.dtype() == nt::v1::BOOL) {
      d = p[i] != 0 ? 1.0 : 0.0;
    } else {
      std::memcpy(&d, p + 8 * i, 8);
    }
    data.push_back(FromDouble<ojson>(d));
  }
  return ojson{{"shape", shape}, {"data", data}};
}

ojson IntsToJson(const google::protobuf::RepeatedField<int64_t>& v) {
  return ojson(std::vector<int64_t>(v.begin(), v.end()));
}

ojson OptionalInt(bool has, int64_t v) { return has ? ojson(v) : ojson(); }

absl::StatusOr<ojson> MessageToJson(const Message& msg) {
  const std::string& type = msg.GetDescriptor()->full_name();
  if (type == "nt.v1.Tensor") return TensorToJson(static_cast<const nt::v1::Tensor&>(msg));
  if (type == "nt.v1.Slice") {
    const auto& s = static_cast<const nt::v1::Slice&>(msg);
    return ojson::array({OptionalInt(s.has_start(), s.start()), OptionalInt(s.has_stop(), s.stop()),
                         OptionalInt(s.has_step(), s.step())});
  }
  if (type == "nt.v1.IndexItem") {
    const auto& item = static_cast<const nt::v1::IndexItem&>(msg);
    switch (item.item_case()) {
      case nt::v1::IndexItem::kSlice: {
        absl::StatusOr<ojson> s = MessageToJson(item.slice());
        if (!s.ok()) return s;
        return ojson{{"slice", *s}};
      }
      case nt::v1::IndexItem::kIndex:
        return ojson(item.index());
      case nt::v1::IndexItem::kEllipsis:
        if (item.ellipsis()) return ojson("...");
        break;
      default:
        break;
    }
    return absl::InvalidArgumentError("empty Index item");
  }
  if (type == "nt.v1.Axes") return IntsToJson(static_cast<const nt::v1::Axes&>(msg).axes());
  if (type == "nt.v1.DotDimensionNumbers") {
    const auto& d = static_cast<const nt::v1::DotDimensionNumbers&>(msg);
    return ojson::array({ojson::array({IntsToJson(d.lhs_contracting()), IntsToJson(d.rhs_contracting())}),
                         ojson::array({IntsToJson(d.lhs_batch()), IntsToJson(d.rhs_batch())})});
  }
  if (type == "nt.v1.ConvDimensionNumbers") {
    const auto& d = static_cast<const nt::v1::ConvDimensionNumbers&>(msg);
    return ojson::array({d.lhs_spec(), d.rhs_spec(), d.out_spec()});
  }
  if (type == "nt.v1.Layer") return LayerToOrdered(static_cast<const nt::v1::Layer&>(msg));

  // Generic: every field that is set, keyed by its (upstream) name.
  ojson out = ojson::object();
  const Descriptor* d = msg.GetDescriptor();
  const Reflection* r = msg.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) {
      const int n = r->FieldSize(msg, f);
      if (n == 0) continue;
      ojson list = ojson::array();
      for (int k = 0; k < n; ++k) {
        absl::StatusOr<ojson> v = ScalarToJson(msg, f, k);
        if (!v.ok()) return v;
        list.push_back(std::move(*v));
      }
      out[f->name()] = std::move(list);
      continue;
    }
    // HasField is presence for optional scalars and messages, "non-default" for plain proto3
    // scalars and enums (an UNSPECIFIED enum means the upstream default).
    if (!r->HasField(msg, f)) continue;
    absl::StatusOr<ojson> v = ScalarToJson(msg, f, 0);
    if (!v.ok()) return v;
    out[f->name()] = std::move(*v);
  }
  return out;
}

absl::StatusOr<ojson> LayerToOrdered(const nt::v1::Layer& layer) {
  const google::protobuf::OneofDescriptor* kind = nt::v1::Layer::descriptor()->FindOneofByName("kind");
  const FieldDescriptor* field = layer.GetReflection()->GetOneofFieldDescriptor(layer, kind);
  if (field == nullptr) return absl::InvalidArgumentError("Layer with no kind set");
  switch (layer.kind_case()) {
    case nt::v1::Layer::kSerial:
    case nt::v1::Layer::kParallel: {
      const auto& layers = layer.has_serial() ? layer.serial().layers() : layer.parallel().layers();
      ojson list = ojson::array();
      for (const nt::v1::Layer& l : layers) {
        absl::StatusOr<ojson> v = LayerToOrdered(l);
        if (!v.ok()) return v;
        list.push_back(std::move(*v));
      }
      return ojson{{"layer", layer.has_serial() ? "serial" : "parallel"}, {"layers", list}};
    }
    case nt::v1::Layer::kRepeat: {
      absl::StatusOr<ojson> inner = LayerToOrdered(layer.repeat().layer());
      if (!inner.ok()) return inner;
      return ojson{
          {"layer", "repeat"}, {"args", {{"n", layer.repeat().n()}}}, {"layers", ojson::array({*inner})}};
    }
    default:
      break;
  }
  const Message& msg = layer.GetReflection()->GetMessage(layer, field);
  absl::StatusOr<ojson> args = MessageToJson(msg);
  if (!args.ok()) return args;
  return ojson{{"layer", field->message_type()->name()}, {"args", *args}};
}

}  // namespace

absl::StatusOr<nt::v1::Layer> LayerFromJsonValue(const nlohmann::json& json) {
  nt::v1::Layer layer;
  absl::Status s = ParseLayer(json, "architecture", &layer);
  if (!s.ok()) return s;
  return layer;
}

absl::StatusOr<nt::v1::Layer> LayerFromJson(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("architecture: invalid JSON");
  return LayerFromJsonValue(j);
}

absl::StatusOr<nt::v1::Layer> LayerFromJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  json j = json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON"));
  if (j.is_object() && !j.contains("layer") && j.contains("architecture")) j = j["architecture"];
  absl::StatusOr<nt::v1::Layer> layer = LayerFromJsonValue(j);
  if (!layer.ok()) {
    return absl::Status(layer.status().code(), absl::StrCat(path, ": ", layer.status().message()));
  }
  return layer;
}

absl::StatusOr<nlohmann::json> LayerToJsonValue(const nt::v1::Layer& layer) {
  absl::StatusOr<ojson> j = LayerToOrdered(layer);
  if (!j.ok()) return j.status();
  return nlohmann::json(*j);
}

absl::StatusOr<std::string> LayerToJson(const nt::v1::Layer& layer, int indent) {
  absl::StatusOr<ojson> j = LayerToOrdered(layer);
  if (!j.ok()) return j.status();
  return j->dump(indent);
}

}  // namespace nt::client

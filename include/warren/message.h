// -----------------------------------------------------------------------------
// File: warren/message.h
// -----------------------------------------------------------------------------
//
// A warren message is a body of bytes plus AMQP-style properties and free-form
// headers. This header defines:
//
//   * `HeaderValue`  — one header value: void, bool, integer, double, string,
//                      bytes, a list or a table (so RabbitMQ-style headers such
//                      as `x-death` survive intact).
//   * `Headers`      — the ordered header table of a message (and the argument
//                      table of a headers-exchange binding).
//   * `Properties`   — the AMQP basic properties (message id, correlation id,
//                      content type, priority, expiration, ...).
//   * `Message`      — body plus properties. Built by the producer, moved into
//                      `Broker::Publish`, and immutable from then on: a publish
//                      that lands in N queues shares one copy of the message.
//
// Example:
//
//   warren::Message m("{\"id\":42}");
//   m.properties().message_id = "42";
//   m.properties().content_type = "application/json";
//   m.headers()["tenant"] = "acme";
//   m.headers()["retries-allowed"] = int64_t{3};
//   broker->Publish("orders", "order.created", std::move(m));
//
// Thread-safety: `Message`, `Properties` and `HeaderValue` are plain values
// (thread-compatible). Once published, a message is only ever read.

#ifndef WARREN_MESSAGE_H_
#define WARREN_MESSAGE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/time/time.h"

namespace warren {

class HeaderValue;

// An ordered table of header values keyed by name. Lookups accept
// `std::string_view`.
using Headers = std::map<std::string, HeaderValue, std::less<>>;

// A list of header values (an AMQP field array).
using HeaderList = std::vector<HeaderValue>;

// Opaque bytes in a header: distinguished from a UTF-8 string, as AMQP's
// byte arrays are.
struct Bytes {
  std::string data;
  friend bool operator==(const Bytes&, const Bytes&) = default;
};

// How deep header values may nest: a header whose value is a list of lists
// holds its innermost values 2 deep. `Publish` and `Bind` refuse headers and
// binding arguments nested deeper (kInvalidArgument).
inline constexpr int kMaxHeaderNesting = 64;

// One header value. A default-constructed value is "void" (AMQP's `V`): in a
// headers-exchange binding it means "the header is present, any value".
class HeaderValue {
 public:
  enum class Kind {
    kVoid,
    kBool,
    kInt,
    kDouble,
    kString,
    kBytes,
    kList,
    kTable
  };

  HeaderValue() = default;
  HeaderValue(bool v) : value_(v) {}  // NOLINT(google-explicit-constructor)
  template <typename T,
            std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>,
                             int> = 0>
  HeaderValue(T v) : value_(static_cast<int64_t>(v)) {}        // NOLINT
  HeaderValue(double v) : value_(v) {}                         // NOLINT
  HeaderValue(const char* v) : value_(std::string(v)) {}       // NOLINT
  HeaderValue(std::string v) : value_(std::move(v)) {}         // NOLINT
  HeaderValue(std::string_view v) : value_(std::string(v)) {}  // NOLINT
  HeaderValue(Bytes v) : value_(std::move(v)) {}               // NOLINT
  HeaderValue(HeaderList v) : value_(std::move(v)) {}          // NOLINT
  HeaderValue(Headers v) : value_(std::move(v)) {}             // NOLINT

  Kind kind() const { return static_cast<Kind>(value_.index()); }
  bool is_void() const { return kind() == Kind::kVoid; }

  // Typed access: a pointer to the value, or nullptr when the value holds
  // another kind.
  const bool* as_bool() const { return std::get_if<bool>(&value_); }
  const int64_t* as_int() const { return std::get_if<int64_t>(&value_); }
  const double* as_double() const { return std::get_if<double>(&value_); }
  const std::string* as_string() const {
    return std::get_if<std::string>(&value_);
  }
  const Bytes* as_bytes() const { return std::get_if<Bytes>(&value_); }
  const HeaderList* as_list() const { return std::get_if<HeaderList>(&value_); }
  const Headers* as_table() const { return std::get_if<Headers>(&value_); }
  HeaderList* as_list() { return std::get_if<HeaderList>(&value_); }
  Headers* as_table() { return std::get_if<Headers>(&value_); }

  // Values are equal when they hold the same kind and equal contents. An
  // integer never equals a double, as in RabbitMQ's headers exchange.
  friend bool operator==(const HeaderValue& a, const HeaderValue& b);

 private:
  std::variant<std::monostate, bool, int64_t, double, std::string, Bytes,
               HeaderList, Headers>
      value_;
};

// AMQP basic properties. Every field is optional; an empty string means
// "not set".
struct Properties {
  std::string message_id;
  std::string correlation_id;
  std::string content_type;
  std::string content_encoding;
  std::string reply_to;
  std::string type;
  std::string app_id;
  std::string user_id;
  // A finite time within 64-bit microseconds of the epoch (about 292,000
  // years); Publish refuses others.
  std::optional<absl::Time> timestamp;
  // 0 (lowest) to 255; a queue with `max_priority` clamps it to that maximum.
  // A message without a priority counts as 0.
  std::optional<uint8_t> priority;
  // Per-message time-to-live, counted from the publish (AMQP `expiration`).
  std::optional<absl::Duration> expiration;
  Headers headers;

  friend bool operator==(const Properties&, const Properties&) = default;
};

// A message: body bytes and properties. Movable and copyable; copying copies
// the body and the properties. Thread-compatible. The properties live apart
// from the message and only once something sets them, so a message without
// properties costs its body and one pointer.
class Message {
 public:
  Message() = default;
  explicit Message(std::string body) : body_(std::move(body)) {}
  explicit Message(std::string_view body) : body_(body) {}
  explicit Message(const char* body) : body_(body) {}
  Message(std::string body, Properties properties)
      : body_(std::move(body)),
        properties_(std::make_unique<Properties>(std::move(properties))) {}

  Message(const Message& other)
      : body_(other.body_), properties_(CopyOf(other.properties_)) {}
  Message& operator=(const Message& other) {
    if (this != &other) {
      body_ = other.body_;
      properties_ = CopyOf(other.properties_);
    }
    return *this;
  }
  Message(Message&&) noexcept = default;
  Message& operator=(Message&&) noexcept = default;

  std::string_view body() const { return body_; }
  std::string& mutable_body() { return body_; }

  // All fields empty when none was set.
  const Properties& properties() const {
    return properties_ != nullptr ? *properties_ : NoProperties();
  }
  // Allocates the properties on first use.
  Properties& properties() {
    if (properties_ == nullptr) properties_ = std::make_unique<Properties>();
    return *properties_;
  }

  const Headers& headers() const { return properties().headers; }
  Headers& headers() { return properties().headers; }

 private:
  static const Properties& NoProperties() {
    static const Properties* const none = new Properties();
    return *none;
  }
  static std::unique_ptr<Properties> CopyOf(
      const std::unique_ptr<Properties>& p) {
    return p != nullptr ? std::make_unique<Properties>(*p) : nullptr;
  }

  std::string body_;
  std::unique_ptr<Properties> properties_;  // null until set
};

}  // namespace warren

#endif  // WARREN_MESSAGE_H_

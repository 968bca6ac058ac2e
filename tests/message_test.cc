// Tests for warren::Message's value semantics (include/warren/message.h):
// properties are stored apart and only once set, yet a message behaves as a
// plain value.

#include "warren/message.h"

#include <catch2/catch.hpp>
#include <string>
#include <utility>

#include "absl/time/time.h"

namespace warren {
namespace {

TEST_CASE("A message without properties reads every property as unset",
          "[message]") {
  const Message m("body");
  CHECK(m.body() == "body");
  CHECK(m.properties().message_id.empty());
  CHECK(m.properties().content_type.empty());
  CHECK_FALSE(m.properties().timestamp.has_value());
  CHECK_FALSE(m.properties().priority.has_value());
  CHECK_FALSE(m.properties().expiration.has_value());
  CHECK(m.headers().empty());
}

TEST_CASE("A copied message owns its properties and headers", "[message]") {
  Message original("body");
  original.properties().message_id = "m-1";
  original.properties().priority = 7;
  original.headers()["tenant"] = "acme";

  Message copy = original;
  copy.properties().message_id = "m-2";
  copy.headers()["tenant"] = "other";
  copy.mutable_body() = "changed";

  CHECK(original.body() == "body");
  CHECK(original.properties().message_id == "m-1");
  CHECK(original.properties().priority == 7);
  CHECK(*original.headers().at("tenant").as_string() == "acme");
  CHECK(copy.properties().message_id == "m-2");
  CHECK(copy.properties().priority == 7);
  CHECK(*copy.headers().at("tenant").as_string() == "other");

  Message assigned("other body");
  assigned.properties().reply_to = "replies";
  assigned = original;
  CHECK(assigned.body() == "body");
  CHECK(assigned.properties().message_id == "m-1");
  CHECK(assigned.properties().reply_to.empty());

  // Assigning a message without properties clears them.
  assigned = Message("bare");
  CHECK(assigned.properties().message_id.empty());
  CHECK(assigned.headers().empty());
}

TEST_CASE("Moving a message moves its properties", "[message]") {
  Message m("body", Properties{.message_id = "m-1", .type = "order"});
  Message moved = std::move(m);
  CHECK(moved.body() == "body");
  CHECK(moved.properties().message_id == "m-1");
  CHECK(moved.properties().type == "order");
}

TEST_CASE("Properties compare equal only when every field is equal",
          "[message]") {
  Properties a{.message_id = "m-1"};
  a.headers["tenant"] = "acme";
  Properties b = a;
  CHECK(a == b);
  b.priority = 0;
  CHECK_FALSE(a == b);
  b = a;
  b.headers["tenant"] = "other";
  CHECK_FALSE(a == b);
  CHECK(Message("x").properties() == Properties{});
}

}  // namespace
}  // namespace warren

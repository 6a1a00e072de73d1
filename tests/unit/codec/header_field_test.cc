#include "gateway/codec/header_field.h"

#include <gtest/gtest.h>

namespace mailgate::codec {
namespace {

TEST(HeaderField, FindsTheFieldCaseInsensitively) {
  const std::string m = "Received: from x\r\n\tby y\r\nmessage-id: <a@b>\r\nSubject: s\r\n\r\nbody\r\n";
  EXPECT_EQ(headerField(m, "Message-ID"), "<a@b>");
  EXPECT_EQ(headerField(m, "Subject"), "s");
}

TEST(HeaderField, UnfoldsAndTrims) {
  const std::string m = "Message-ID:\r\n  <long@example.org>  \r\n\r\n";
  EXPECT_EQ(headerField(m, "Message-ID"), "<long@example.org>");
}

TEST(HeaderField, StopsAtTheBody) {
  const std::string m = "Subject: s\r\n\r\nMessage-ID: <in@body>\r\n";
  EXPECT_EQ(headerField(m, "Message-ID"), "");
}

TEST(HeaderField, ContinuationOfAnotherFieldIsNotAMatch) {
  const std::string m = "Subject: s\r\n Message-ID: <no>\r\n\r\n";
  EXPECT_EQ(headerField(m, "Message-ID"), "");
}

TEST(HeaderField, CutsAtMaxAndToleratesACutHead) {
  const std::string m = "Message-ID: <" + std::string(500, 'x');
  EXPECT_EQ(headerField(m, "Message-ID", 20).size(), 20u);
  EXPECT_EQ(headerField("", "Message-ID"), "");
  EXPECT_EQ(headerField("Message-ID", "Message-ID"), "");
}

}  // namespace
}  // namespace mailgate::codec

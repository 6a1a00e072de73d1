#include "gateway/session/listener_changes.h"

#include <gtest/gtest.h>

namespace mailgate::session {
namespace {

conf::ListenerConfig listener(const std::string& name, std::vector<std::string> listen) {
  conf::ListenerConfig l;
  l.name = name;
  l.listen = std::move(listen);
  return l;
}

TEST(ListenerChanges, NoneWhenOnlyTheOrderDiffers) {
  const auto bound = boundListeners({listener("imap", {"127.0.0.1:143", "[::1]:143"}), listener("pop3", {"127.0.0.1:110"})});
  EXPECT_TRUE(listenerChanges(bound, {listener("pop3", {"127.0.0.1:110"}),
                                      listener("imap", {"[::1]:143", "127.0.0.1:143"})})
                  .empty());
}

TEST(ListenerChanges, NamesEachChange) {
  const auto bound = boundListeners({listener("imap", {"127.0.0.1:143"}), listener("pop3", {"127.0.0.1:110"})});
  const auto changes = listenerChanges(bound, {listener("imap", {"127.0.0.1:1143"}), listener("smtp", {"0.0.0.0:25"})});
  ASSERT_EQ(changes.size(), 3u);
  EXPECT_EQ(changes[0].kind, ListenerChange::Kind::kMoved);
  EXPECT_EQ(describe(changes[0]), "listener imap: 127.0.0.1:143 -> 127.0.0.1:1143");
  EXPECT_TRUE(changes[0].new_privileged_ports.empty());
  EXPECT_EQ(changes[1].kind, ListenerChange::Kind::kRemoved);
  EXPECT_EQ(describe(changes[1]), "listener pop3 removed (listening on 127.0.0.1:110)");
  EXPECT_EQ(changes[2].kind, ListenerChange::Kind::kAdded);
  EXPECT_EQ(describe(changes[2]), "listener smtp added: 0.0.0.0:25");
  EXPECT_EQ(changes[2].new_privileged_ports, std::vector<uint16_t>{25});
}

TEST(ListenerChanges, APrivilegedPortAlreadyBoundIsNotNew) {
  const auto bound = boundListeners({listener("imap", {"127.0.0.1:143"})});
  const auto changes = listenerChanges(bound, {listener("imap", {"127.0.0.1:143", "[::1]:143", "127.0.0.1:993"})});
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].new_privileged_ports, std::vector<uint16_t>{993});
}

}  // namespace
}  // namespace mailgate::session

// The epoll backend must give the completions io_uring gives for the entries mailgate
// uses: real sockets (socketpairs, loopback TCP), no mocks.
#include "gateway/io/epoll_ring.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "gateway/io/ring.h"

// Counts allocations, to show that the steady state allocates nothing per event.
static std::atomic<uint64_t> g_allocations{0};
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // malloc'd by the operator new below
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace mailgate::io {
namespace {

constexpr unsigned kBufs = 4;
constexpr unsigned kBufSize = 4096;
constexpr uint16_t kGroup = 1;

struct Cqe {
  uint64_t user_data;
  int res;
  uint32_t flags;
  bool more() const { return flags & IORING_CQE_F_MORE; }
  bool hasBuffer() const { return flags & IORING_CQE_F_BUFFER; }
  uint16_t bid() const { return static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT); }
};

class EpollRingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bufs_.resize(kBufs * kBufSize);
    ASSERT_TRUE(ring_.init(16, bufs_.data(), kBufs, kBufSize, kGroup).ok());
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp_), 0);
  }
  void TearDown() override {
    ring_.close();
    for (int fd : sp_)
      if (fd >= 0) ::close(fd);
    for (int fd : extra_) ::close(fd);
  }

  io_uring_sqe* sqe() {
    io_uring_sqe* s = nullptr;
    ring_.sqes(1, &s);
    return s;
  }
  void armRecv(int fd, uint64_t ud) {
    io_uring_sqe* s = sqe();
    io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = kGroup;
    io_uring_sqe_set_data64(s, ud);
  }
  void cancelFd(int fd, uint64_t ud) {
    io_uring_sqe* s = sqe();
    io_uring_prep_cancel_fd(s, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(s, ud);
  }
  // Submits, then polls (never blocks) until `want` completions arrived or 3 s passed.
  std::vector<Cqe> collect(size_t want, int ms = 3000) {
    std::vector<Cqe> got;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
      EXPECT_GE(ring_.submitAndWait(0), 0);
      ring_.forEachCqe([&](io_uring_cqe* c) { got.push_back(Cqe{c->user_data, c->res, c->flags}); });
      if (got.size() >= want || std::chrono::steady_clock::now() >= deadline) return got;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  std::string bufText(const Cqe& c) {
    return std::string(bufs_.data() + c.bid() * kBufSize, static_cast<size_t>(c.res));
  }
  void write(int fd, const std::string& s) {
    ASSERT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
  }

  // A loopback listener (backlog `backlog`) and its address.
  int listener(int backlog, sockaddr_in* addr) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd, backlog), 0);
    socklen_t len = sizeof *addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(addr), &len);
    extra_.push_back(fd);
    return fd;
  }

  std::vector<char> bufs_;
  EpollRing ring_;
  int sp_[2] = {-1, -1};
  std::vector<int> extra_;
};

TEST_F(EpollRingTest, RecvMultishotDeliversIntoProvidedBuffersUntilEof) {
  armRecv(sp_[0], 7);
  write(sp_[1], "hello");
  auto got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].user_data, 7u);
  EXPECT_EQ(got[0].res, 5);
  EXPECT_TRUE(got[0].more());
  ASSERT_TRUE(got[0].hasBuffer());
  EXPECT_EQ(bufText(got[0]), "hello");
  ring_.recycle(got[0].bid());

  write(sp_[1], "world");
  got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].res, 5);
  EXPECT_TRUE(got[0].more());
  EXPECT_EQ(bufText(got[0]), "world");
  ring_.recycle(got[0].bid());

  ::shutdown(sp_[1], SHUT_WR);
  got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].res, 0);          // EOF
  EXPECT_FALSE(got[0].more());       // ends the multishot
  EXPECT_FALSE(got[0].hasBuffer());  // and carries no buffer
  EXPECT_EQ(ring_.pendingOps(), 0u);
  EXPECT_EQ(ring_.watchedFds(), 0u);  // no op left: out of the epoll set
}

TEST_F(EpollRingTest, RecvEndsWithEnobufsWhenNoBufferIsFreeAndResumesAfterRecycle) {
  armRecv(sp_[0], 9);
  std::vector<uint16_t> held;
  for (unsigned i = 0; i < kBufs; i++) {
    write(sp_[1], "x" + std::to_string(i));
    auto got = collect(1);
    ASSERT_EQ(got.size(), 1u);
    ASSERT_GT(got[0].res, 0);
    ASSERT_TRUE(got[0].more());
    held.push_back(got[0].bid());
  }
  write(sp_[1], "late");
  auto got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].res, -ENOBUFS);
  EXPECT_FALSE(got[0].more());
  EXPECT_FALSE(got[0].hasBuffer());

  ring_.recycle(held[0]);
  armRecv(sp_[0], 10);  // what the session does: re-arm
  got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].user_data, 10u);
  EXPECT_EQ(bufText(got[0]), "late");  // nothing was lost
}

TEST_F(EpollRingTest, RecvReportsAReset) {
  int tcp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, tcp), 0);
  extra_.push_back(tcp[0]);
  armRecv(tcp[0], 3);
  ::close(tcp[1]);
  auto got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].res, 0);
  EXPECT_FALSE(got[0].more());
}

TEST_F(EpollRingTest, SendCompletesAtOnceAndShortWhenTheSocketBufferIsFull) {
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, sp_[0], "abc", 3, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(s, 1);
  auto got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].res, 3);
  char b[8] = {};
  EXPECT_EQ(::recv(sp_[1], b, sizeof b, MSG_DONTWAIT), 3);

  int small = 4096;
  ASSERT_EQ(::setsockopt(sp_[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  std::string big(1 << 20, 'z');
  s = sqe();
  io_uring_prep_send(s, sp_[0], big.data(), big.size(), MSG_NOSIGNAL);
  io_uring_sqe_set_data64(s, 2);
  got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_GT(got[0].res, 0);
  EXPECT_LT(got[0].res,
            static_cast<int>(big.size()));  // short, as io_uring gives it: the caller sends the rest

  // The queue is full now: the next send waits for room, then completes.
  s = sqe();
  io_uring_prep_send(s, sp_[0], big.data(), 1000, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(s, 3);
  got = collect(1, 100);
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(ring_.watchedFds(), 1u);
  std::vector<char> sink(1 << 20);
  while (::recv(sp_[1], sink.data(), sink.size(), MSG_DONTWAIT) > 0) {
  }
  got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].user_data, 3u);
  EXPECT_EQ(got[0].res, 1000);
  EXPECT_EQ(ring_.watchedFds(), 0u);
}

TEST_F(EpollRingTest, SendToAClosedPeerFails) {
  ::close(sp_[1]);
  sp_[1] = -1;
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, sp_[0], "abc", 3, 0);  // no MSG_NOSIGNAL: the ring adds it
  io_uring_sqe_set_data64(s, 1);
  auto got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].res, -EPIPE);
}

TEST_F(EpollRingTest, MultishotAcceptGivesNonBlockingCloexecSockets) {
  sockaddr_in addr{};
  int lfd = listener(16, &addr);
  io_uring_sqe* s = sqe();
  io_uring_prep_multishot_accept(s, lfd, nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(s, 5);
  EXPECT_EQ(ring_.submitAndWait(0), 0);
  EXPECT_TRUE(::fcntl(lfd, F_GETFL) & O_NONBLOCK);  // set when the fd is first seen
  for (int i = 0; i < 2; i++) {
    int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_EQ(::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    extra_.push_back(c);
  }
  auto got = collect(2);
  ASSERT_EQ(got.size(), 2u);
  for (const auto& c : got) {
    EXPECT_EQ(c.user_data, 5u);
    ASSERT_GE(c.res, 0);
    EXPECT_TRUE(c.more());
    EXPECT_TRUE(::fcntl(c.res, F_GETFL) & O_NONBLOCK);
    EXPECT_TRUE(::fcntl(c.res, F_GETFD) & FD_CLOEXEC);
    extra_.push_back(c.res);
  }
  cancelFd(lfd, 6);
  got = collect(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].user_data, 5u);
  EXPECT_EQ(got[0].res, -ECANCELED);
  EXPECT_FALSE(got[0].more());
  EXPECT_EQ(got[1].user_data, 6u);
  EXPECT_EQ(got[1].res, 1);  // CANCEL_ALL: how many
}

struct ConnectResult {
  int connect = 1, timeout = 1;
};

class EpollConnectTest : public EpollRingTest {
 protected:
  ConnectResult connectWithTimeout(const sockaddr_in& addr, long ms) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);  // blocking: the ring makes it non-blocking
    extra_.push_back(fd);
    ts_.tv_sec = ms / 1000;
    ts_.tv_nsec = (ms % 1000) * 1000000;
    addr_ = addr;
    io_uring_sqe* chain[2];
    ring_.sqes(2, chain);
    io_uring_prep_connect(chain[0], fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_);
    chain[0]->flags |= IOSQE_IO_LINK;
    io_uring_sqe_set_data64(chain[0], 100);
    io_uring_prep_link_timeout(chain[1], &ts_, 0);
    io_uring_sqe_set_data64(chain[1], 101);
    ConnectResult r;
    for (const auto& c : collect(2)) (c.user_data == 100 ? r.connect : r.timeout) = c.res;
    return r;
  }
  __kernel_timespec ts_{};
  sockaddr_in addr_{};
};

TEST_F(EpollConnectTest, ConnectSucceedsAndCancelsItsLinkTimeout) {
  sockaddr_in addr{};
  listener(16, &addr);
  auto r = connectWithTimeout(addr, 2000);
  EXPECT_EQ(r.connect, 0);
  EXPECT_EQ(r.timeout, -ECANCELED);
  EXPECT_EQ(ring_.pendingOps(), 0u);
}

TEST_F(EpollConnectTest, ConnectRefusedCancelsItsLinkTimeout) {
  sockaddr_in addr{};
  int l = listener(16, &addr);
  ::close(l);
  extra_.pop_back();
  auto r = connectWithTimeout(addr, 2000);
  EXPECT_EQ(r.connect, -ECONNREFUSED);
  EXPECT_EQ(r.timeout, -ECANCELED);
}

TEST_F(EpollConnectTest, LinkTimeoutExpiresAgainstAListenerWithAFullBacklog) {
  sockaddr_in addr{};
  listener(0, &addr);  // backlog 0: one queued connection fills it, later SYNs are dropped
  for (int i = 0; i < 2; i++) {
    int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    ::connect(c, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    extra_.push_back(c);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto t0 = std::chrono::steady_clock::now();
  auto r = connectWithTimeout(addr, 150);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.timeout, -ETIME);      // the link_timeout's own completion
  EXPECT_EQ(r.connect, -ECANCELED);  // the connect it cancelled
  EXPECT_GE(ms, 140);
  EXPECT_LT(ms, 2000);
  EXPECT_EQ(ring_.pendingOps(), 0u);
  EXPECT_EQ(ring_.watchedFds(), 0u);
}

TEST_F(EpollRingTest, CancelFdCancelsEveryOpAndForgetsTheFd) {
  armRecv(sp_[0], 1);
  int small = 4096;
  ASSERT_EQ(::setsockopt(sp_[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
  std::string big(1 << 20, 'z');
  io_uring_sqe* s = sqe();
  io_uring_prep_send(s, sp_[0], big.data(), big.size(), MSG_NOSIGNAL);
  io_uring_sqe_set_data64(s, 2);
  auto got = collect(1);  // a short send
  ASSERT_EQ(got.size(), 1u);
  s = sqe();
  io_uring_prep_send(s, sp_[0], big.data(), big.size(), MSG_NOSIGNAL);  // waits for room
  io_uring_sqe_set_data64(s, 3);
  EXPECT_TRUE(collect(1, 50).empty());
  EXPECT_EQ(ring_.pendingOps(), 2u);
  cancelFd(sp_[0], 4);
  got = collect(3);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].user_data, 1u);
  EXPECT_EQ(got[0].res, -ECANCELED);
  EXPECT_FALSE(got[0].more());
  EXPECT_EQ(got[1].user_data, 3u);
  EXPECT_EQ(got[1].res, -ECANCELED);
  EXPECT_EQ(got[2].user_data, 4u);
  EXPECT_EQ(got[2].res, 2);
  EXPECT_EQ(ring_.pendingOps(), 0u);
  EXPECT_EQ(ring_.watchedFds(), 0u);

  cancelFd(sp_[0], 5);  // nothing left
  got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].res, -ENOENT);
}

TEST_F(EpollRingTest, AReusedFdNumberInheritsNothing) {
  armRecv(sp_[0], 1);
  cancelFd(sp_[0], 2);
  EXPECT_EQ(collect(2).size(), 2u);
  int old = sp_[0];
  ::close(sp_[0]);  // closed only after the cancellations completed, as sessions do
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  sp_[0] = pair[0];
  extra_.push_back(pair[1]);
  EXPECT_EQ(pair[0], old);  // the lowest free number: the same one
  armRecv(pair[0], 3);
  write(pair[1], "new");
  auto got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].user_data, 3u);
  EXPECT_EQ(bufText(got[0]), "new");
}

TEST_F(EpollRingTest, CancelByUserData) {
  armRecv(sp_[0], 11);
  io_uring_sqe* s = sqe();
  io_uring_prep_cancel64(s, 11, 0);
  io_uring_sqe_set_data64(s, 12);
  auto got = collect(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].user_data, 11u);
  EXPECT_EQ(got[0].res, -ECANCELED);
  EXPECT_FALSE(got[0].more());
  EXPECT_EQ(got[1].user_data, 12u);
  EXPECT_EQ(got[1].res, 0);

  s = sqe();
  io_uring_prep_cancel64(s, 11, 0);  // gone already
  io_uring_sqe_set_data64(s, 13);
  got = collect(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].res, -ENOENT);
}

TEST_F(EpollRingTest, TimeoutEndsTheWait) {
  __kernel_timespec ts{0, 60 * 1000 * 1000};
  io_uring_sqe* s = sqe();
  io_uring_prep_timeout(s, &ts, 0, 0);
  io_uring_sqe_set_data64(s, 42);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<Cqe> got;
  while (got.empty()) {
    ASSERT_GE(ring_.submitAndWait(1), 0);  // blocks in epoll_wait until the timeout
    ring_.forEachCqe([&](io_uring_cqe* c) { got.push_back(Cqe{c->user_data, c->res, c->flags}); });
  }
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].user_data, 42u);
  EXPECT_EQ(got[0].res, -ETIME);
  EXPECT_GE(ms, 55);
  EXPECT_LT(ms, 1000);
}

TEST_F(EpollRingTest, TimeoutsFireInDeadlineOrderAndCancelledOnesLeave) {
  __kernel_timespec ts[5] = {{0, 80000000}, {0, 20000000}, {0, 50000000}, {0, 200000000}, {0, 30000000}};
  for (uint64_t i = 0; i < 5; i++) {
    io_uring_sqe* s = sqe();
    io_uring_prep_timeout(s, &ts[i], 0, 0);
    io_uring_sqe_set_data64(s, i + 1);
  }
  for (uint64_t ud : {3u, 4u}) {  // one from the middle of the heap, one from its end
    io_uring_sqe* s = sqe();
    io_uring_prep_cancel64(s, ud, 0);
    io_uring_sqe_set_data64(s, 100 + ud);
  }
  std::vector<Cqe> got;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (got.size() < 7 && std::chrono::steady_clock::now() < deadline) {
    ASSERT_GE(ring_.submitAndWait(1), 0);
    ring_.forEachCqe([&](io_uring_cqe* c) { got.push_back(Cqe{c->user_data, c->res, c->flags}); });
  }
  ASSERT_EQ(got.size(), 7u);
  std::vector<uint64_t> expired;
  for (const auto& c : got) {
    if (c.user_data == 3 || c.user_data == 4) {
      EXPECT_EQ(c.res, -ECANCELED);
    } else if (c.user_data >= 100) {
      EXPECT_EQ(c.res, 0);
    } else {
      EXPECT_EQ(c.res, -ETIME);
      expired.push_back(c.user_data);
    }
  }
  EXPECT_EQ(expired, (std::vector<uint64_t>{2, 5, 1}));
  EXPECT_EQ(ring_.pendingOps(), 0u);
}

TEST_F(EpollRingTest, PollMultishotOnAnEventfd) {
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  extra_.push_back(efd);
  io_uring_sqe* s = sqe();
  io_uring_prep_poll_multishot(s, efd, POLLIN);
  io_uring_sqe_set_data64(s, 8);
  EXPECT_TRUE(collect(1, 30).empty());
  uint64_t one = 1;
  ASSERT_EQ(::write(efd, &one, sizeof one), 8);
  auto got = collect(1);
  ASSERT_GE(got.size(), 1u);
  EXPECT_EQ(got[0].res & POLLIN, POLLIN);
  EXPECT_TRUE(got[0].more());
}

TEST_F(EpollRingTest, UnsupportedEntriesCompleteWithEinval) {
  char b[4];
  io_uring_sqe* s = sqe();
  io_uring_prep_read(s, sp_[0], b, sizeof b, 0);
  io_uring_sqe_set_data64(s, 1);
  s = sqe();
  io_uring_prep_recv_multishot(s, sp_[0], nullptr, 0, 0);  // multishot without a buffer group
  io_uring_sqe_set_data64(s, 2);
  auto got = collect(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].res, -EINVAL);
  EXPECT_EQ(got[1].res, -EINVAL);
  EXPECT_EQ(ring_.pendingOps(), 0u);
}

TEST_F(EpollRingTest, AFullQueueIsSubmittedInOrderAndKeepsChainsWhole) {
  for (int i = 0; i < 15; i++) {
    io_uring_sqe* s = sqe();
    io_uring_prep_nop(s);
    io_uring_sqe_set_data64(s, 1000 + static_cast<uint64_t>(i));
  }
  // One entry left: the pair does not fit, so the queue goes first and the pair stays whole.
  __kernel_timespec ts{5, 0};
  io_uring_sqe* chain[2];
  sockaddr_in addr{};
  listener(16, &addr);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  extra_.push_back(fd);
  EXPECT_TRUE(ring_.sqes(2, chain));
  io_uring_prep_connect(chain[0], fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  chain[0]->flags |= IOSQE_IO_LINK;
  io_uring_sqe_set_data64(chain[0], 1);
  io_uring_prep_link_timeout(chain[1], &ts, 0);
  io_uring_sqe_set_data64(chain[1], 2);
  auto got = collect(17);
  ASSERT_EQ(got.size(), 17u);
  for (int i = 0; i < 15; i++)
    EXPECT_EQ(got[static_cast<size_t>(i)].user_data, 1000u + static_cast<uint64_t>(i));
  EXPECT_EQ(got[15].user_data, 1u);
  EXPECT_EQ(got[15].res, 0);
  EXPECT_EQ(got[16].user_data, 2u);
  EXPECT_EQ(got[16].res, -ECANCELED);
}

TEST_F(EpollRingTest, SteadyStateAllocatesNothingPerEvent) {
  armRecv(sp_[0], 1);
  __kernel_timespec ts{5, 0};
  auto round = [&] {
    // A receive into a provided buffer, a send, a timeout armed and cancelled.
    ASSERT_EQ(::send(sp_[1], "q", 1, 0), 1);
    io_uring_sqe* s = sqe();
    io_uring_prep_send(s, sp_[0], "r", 1, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(s, 2);
    s = sqe();
    io_uring_prep_timeout(s, &ts, 0, 0);
    io_uring_sqe_set_data64(s, 3);
    s = sqe();
    io_uring_prep_cancel64(s, 3, 0);
    io_uring_sqe_set_data64(s, 4);
    unsigned seen = 0;
    bool got_recv = false;
    for (int spin = 0; spin < 1000 && !(got_recv && seen >= 4); spin++) {
      ASSERT_GE(ring_.submitAndWait(0), 0);
      ring_.forEachCqe([&](io_uring_cqe* c) {
        seen++;
        if (c->user_data == 1) {
          ASSERT_EQ(c->res, 1);
          ASSERT_TRUE(c->flags & IORING_CQE_F_MORE);
          ring_.recycle(static_cast<uint16_t>(c->flags >> IORING_CQE_BUFFER_SHIFT));
          got_recv = true;
        }
      });
    }
    ASSERT_TRUE(got_recv);
    char b[4];
    ASSERT_EQ(::recv(sp_[1], b, sizeof b, 0), 1);
  };
  for (int i = 0; i < 50; i++) round();  // warm-up: the vectors reach their high-water mark
  const uint64_t before = g_allocations.load();
  for (int i = 0; i < 1000; i++) round();
  EXPECT_EQ(g_allocations.load() - before, 0u);
}

// Through io::Ring: the same buffers and calls the reactor uses.
TEST(RingEpollBackend, RecvAndTickThroughRing) {
  Ring ring;
  ASSERT_TRUE(ring.init(64, Ring::Backend::kEpoll).ok());
  EXPECT_EQ(ring.backend(), Ring::Backend::kEpoll);
  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
  io_uring_sqe* s = ring.sqe();
  io_uring_prep_recv_multishot(s, sp[0], nullptr, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = Ring::kBufGroup;
  io_uring_sqe_set_data64(s, 1);
  __kernel_timespec tick{0, 20 * 1000 * 1000};
  s = ring.sqe();
  io_uring_prep_timeout(s, &tick, 0, 0);
  io_uring_sqe_set_data64(s, 2);
  ASSERT_EQ(::send(sp[1], "ping", 4, 0), 4);
  bool got_data = false, got_tick = false;
  for (int i = 0; i < 100 && !(got_data && got_tick); i++) {
    ASSERT_GE(ring.submitAndWait(1), 0);
    ring.forEachCqe([&](io_uring_cqe* c) {
      if (c->user_data == 1) {
        ASSERT_TRUE(c->flags & IORING_CQE_F_BUFFER);
        uint16_t bid = static_cast<uint16_t>(c->flags >> IORING_CQE_BUFFER_SHIFT);
        EXPECT_EQ(std::string(ring.buffer(bid), static_cast<size_t>(c->res)), "ping");
        ring.recycle(bid);
        got_data = true;
      } else if (c->user_data == 2) {
        EXPECT_EQ(c->res, -ETIME);
        got_tick = true;
      }
    });
  }
  EXPECT_TRUE(got_data);
  EXPECT_TRUE(got_tick);
  ring.close();
  ::close(sp[0]);
  ::close(sp[1]);
}

}  // namespace
}  // namespace mailgate::io

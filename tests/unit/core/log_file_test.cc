// log.file: lines go to the file; openFile() again (logrotate moved it) swaps in a
// new file while other threads log, and no line is lost, cut or doubled.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gateway/core/log.h"

namespace mailgate::log {
namespace {

std::string readAll(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

class LogFile : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailgate-logfile-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    stopAsync();
    ASSERT_TRUE(openFile("").ok());  // back to stderr for the other tests
    std::filesystem::remove_all(dir_);
  }
  std::filesystem::path dir_;
};

TEST_F(LogFile, ReopenUnderConcurrentLoggingLosesNothing) {
  const auto path = dir_ / "mailgate.log";
  ASSERT_TRUE(openFile(path.string()).ok());
  EXPECT_EQ(filePath(), path.string());
  startAsync(-1, size_t{64} << 20);  // large: nothing is dropped in this test

  constexpr int kThreads = 4, kLines = 5000, kRotations = 20;
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; t++)
    ts.emplace_back([&go, t] {
      while (!go.load()) std::this_thread::yield();
      for (int i = 0; i < kLines; i++) emit(Level::kInfo, "line", {{"t", t}, {"i", i}});
    });
  go = true;
  for (int r = 0; r < kRotations; r++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::filesystem::rename(path, dir_ / ("mailgate.log." + std::to_string(r)));
    ASSERT_TRUE(openFile(path.string()).ok());
    emit(Level::kInfo, "reopened", {{"r", r}});
  }
  for (auto& t : ts) t.join();
  stopAsync();

  std::vector<std::vector<int>> seen(kThreads, std::vector<int>(kLines, 0));
  int reopened = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    const std::string text = readAll(e.path());
    ASSERT_TRUE(text.empty() || text.back() == '\n') << e.path() << ": a cut line";
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      ASSERT_EQ(line.front(), '{') << line;
      ASSERT_EQ(line.back(), '}') << line;
      if (line.find("\"msg\":\"reopened\"") != std::string::npos) {
        reopened++;
        continue;
      }
      int t = -1, i = -1;
      const size_t at = line.find("\"t\":");
      ASSERT_NE(at, std::string::npos) << line;
      ASSERT_EQ(std::sscanf(line.c_str() + at, "\"t\":%d,\"i\":%d}", &t, &i), 2) << line;
      seen[static_cast<size_t>(t)][static_cast<size_t>(i)]++;
    }
  }
  EXPECT_EQ(reopened, kRotations);
  for (int t = 0; t < kThreads; t++)
    for (int i = 0; i < kLines; i++) ASSERT_EQ(seen[t][i], 1) << "thread " << t << " line " << i;
  EXPECT_TRUE(std::filesystem::exists(path));
}

TEST_F(LogFile, SynchronousLinesGoToTheFileToo) {
  const auto path = dir_ / "sync.log";
  ASSERT_TRUE(openFile(path.string()).ok());
  emit(Level::kWarn, "before the sink starts");
  std::filesystem::rename(path, dir_ / "sync.log.1");
  ASSERT_TRUE(openFile(path.string()).ok());
  emit(Level::kWarn, "after the reopen");
  EXPECT_NE(readAll(dir_ / "sync.log.1").find("before the sink starts"), std::string::npos);
  EXPECT_EQ(readAll(dir_ / "sync.log.1").find("after the reopen"), std::string::npos);
  EXPECT_NE(readAll(path).find("after the reopen"), std::string::npos);
}

TEST_F(LogFile, AnUnopenablePathKeepsTheCurrentOutput) {
  const auto path = dir_ / "keep.log";
  ASSERT_TRUE(openFile(path.string()).ok());
  auto bad = openFile((dir_ / "no" / "such" / "dir.log").string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().find("No such file or directory"), std::string::npos);
  EXPECT_EQ(filePath(), path.string());
  emit(Level::kWarn, "still here");
  EXPECT_NE(readAll(path).find("still here"), std::string::npos);
}

}  // namespace
}  // namespace mailgate::log

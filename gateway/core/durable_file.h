#pragma once
// Writes that must survive a crash (the quarantine's and the exception queue's
// files): every octet written, the file and then its directory fsync'd.
#include <string>
#include <string_view>

namespace mailgate::core {

// write(2) until all of data is written (EINTR retried); false on an error (errno set).
bool writeAll(int fd, std::string_view data);
// fsync(2) of a directory: the names created or renamed in it are durable.
bool fsyncDirectory(const std::string& dir);

}  // namespace mailgate::core

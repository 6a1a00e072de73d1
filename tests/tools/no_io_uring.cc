// no_io_uring COMMAND [ARG...]: runs COMMAND with io_uring denied, as the default
// seccomp profiles of container runtimes do: io_uring_setup, io_uring_enter and
// io_uring_register fail with EPERM, every other system call is allowed. The test
// harness runs the gateway through it (MAILGATE_IO_SECCOMP=1) so that `server.io: auto`
// falls back to the epoll reactor. No library needed: a classic BPF filter installed
// with prctl, after PR_SET_NO_NEW_PRIVS (which lets an unprivileged process do it).
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>

#if defined(__x86_64__)
constexpr unsigned kArch = AUDIT_ARCH_X86_64;
constexpr unsigned kX32Bit = 0x40000000u;  // x32 system calls: the same numbers with this bit
#elif defined(__aarch64__)
constexpr unsigned kArch = AUDIT_ARCH_AARCH64;
constexpr unsigned kX32Bit = 0;
#else
#error "no_io_uring: add this architecture's AUDIT_ARCH"
#endif

#ifndef SECCOMP_RET_KILL_PROCESS
#define SECCOMP_RET_KILL_PROCESS SECCOMP_RET_KILL
#endif

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s COMMAND [ARG...]\n", argv[0]);
    return 2;
  }
  sock_filter filter[] = {
      // Another architecture's system call numbers mean something else: refuse them all.
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~kX32Bit),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
  };
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(sizeof filter / sizeof filter[0]);
  prog.filter = filter;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    std::fprintf(stderr, "no_io_uring: PR_SET_NO_NEW_PRIVS: %s\n", std::strerror(errno));
    return 126;
  }
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
    std::fprintf(stderr, "no_io_uring: PR_SET_SECCOMP: %s\n", std::strerror(errno));
    return 126;
  }
  execvp(argv[1], argv + 1);
  std::fprintf(stderr, "no_io_uring: %s: %s\n", argv[1], std::strerror(errno));
  return 127;
}
